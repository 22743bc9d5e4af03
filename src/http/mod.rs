//! The HTTP routes, one router per resource, merged here.

pub mod admin;
pub mod auth;
pub mod bodies;
pub mod conversations;
pub mod extract;
pub mod files;
pub mod health;
pub mod import;
pub mod oidc;
pub mod openai_api;
pub mod page;
pub mod presets;
pub mod shares;
pub mod tokens;
pub mod usage;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method};
use axum::response::IntoResponse;
use axum::Router;
use tower_http::compression::predicate::{And, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::state::AppState;

/// Largest JSON body accepted (few-shot examples are the largest).
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// All routes, without the session and socket layers (see `startup.rs`).
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(page::router())
        .merge(conversations::router())
        .merge(auth::router())
        .merge(oidc::router())
        .merge(tokens::router())
        .merge(presets::router())
        .merge(shares::router())
        .merge(usage::router())
        .merge(admin::router())
        .merge(health::router())
        .merge(openai_api::router())
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .merge(files::router(state.chat.settings.max_file_size_bytes))
        .merge(import::router(state.chat.settings.import_max_bytes))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            same_origin_only,
        ))
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
        .layer(compression())
}

/// Smallest body worth compressing: below it the encoding's framing costs
/// about what it saves.
pub const COMPRESS_MIN_BYTES: u16 = 1024;

/// gzip or brotli, as the client's `Accept-Encoding` prefers, for text
/// answers (the page, scripts, styles, JSON, `/metrics`) of at least
/// [`COMPRESS_MIN_BYTES`]. Everything else passes untouched: already
/// compressed or binary types, event streams (whose chunks must reach the
/// client as they are written) and anything that already has a
/// `Content-Encoding`. Socket.IO sits outside these routes (see
/// `startup.rs`), so its long-polling and WebSocket traffic is never
/// compressed here.
fn compression() -> CompressionLayer<And<SizeAbove, TextOnly>> {
    CompressionLayer::new().compress_when(SizeAbove::new(COMPRESS_MIN_BYTES).and(TextOnly))
}

/// Compresses only answers whose type [`compressible`] names.
#[derive(Clone, Copy)]
struct TextOnly;

impl Predicate for TextOnly {
    fn should_compress<B: axum::body::HttpBody>(&self, response: &axum::http::Response<B>) -> bool {
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(compressible)
    }
}

/// Whether a `Content-Type` names text that compresses well.
fn compressible(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "text/event-stream" {
        return false;
    }
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json" | "application/javascript" | "application/xml" | "image/svg+xml"
        )
}

/// The page runs no inline script or style and loads nothing from
/// elsewhere; injected markup could not run either.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'self'";

/// CSRF protection for the routes the session cookie authorises: a request
/// that changes something must come from this site (or an origin listed in
/// `CORS_ALLOWED_ORIGINS`). Browsers send `Origin` (and `Sec-Fetch-Site`) on
/// such requests; clients that are not browsers send neither and pass.
async fn same_origin_only(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // `/v1` takes only personal access tokens, never the cookie: a
    // request from another site cannot act with a person's rights there.
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) || request.uri().path().starts_with("/v1/");
    if !safe {
        let headers = request.headers();
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        let origin_ok =
            crate::realtime::origin_allowed(headers, &state.chat.settings.cors_allowed_origins);
        let listed_origin = headers.get("origin").is_some() && origin_ok;
        if !origin_ok || (cross_site && !listed_origin) {
            tracing::info!(method = %request.method(), path = %request.uri().path(), "cross-site request refused");
            return crate::error::ApiError::Forbidden.into_response();
        }
    }
    next.run(request).await
}

async fn not_found() -> axum::response::Response {
    bodies::not_found()
}
