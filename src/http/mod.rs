//! The HTTP routes, one router per resource, merged here.

pub mod conversations;
pub mod extract;
pub mod files;
pub mod health;
pub mod page;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
use serde_json::json;

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
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": "Not found.", "error": "not_found"})),
    )
}
