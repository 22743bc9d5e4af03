//! The HTTP routes, one router per resource, merged here.

pub mod conversations;
pub mod extract;
pub mod files;
pub mod health;
pub mod page;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::{Json, Router};
use serde_json::json;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::state::AppState;

/// Largest JSON body accepted (few-shot examples are the largest).
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// All routes, without the session and socket layers (see `startup.rs`).
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(page::router())
        .merge(conversations::router())
        .merge(health::router())
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .merge(files::router(state.settings.max_file_size_bytes))
        .fallback(not_found)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
}

/// The page runs no inline script or style and loads nothing from
/// elsewhere; injected markup could not run either.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'self'";

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": "Not found.", "error": "not_found"})),
    )
}
