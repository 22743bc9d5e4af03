//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store_up = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let llm = if state.llm.info().demo {
        "demo"
    } else {
        "configured"
    };
    let status = if store_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if store_up { "ready" } else { "not_ready" },
            "checks": {
                "store": if store_up { "up" } else { "down" },
                "store_backend": state.store.backend(),
                "llm": llm,
            },
        })),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    text.push_str(&format!(
        "# HELP chat_turns_in_flight Replies being generated now.\n# TYPE chat_turns_in_flight gauge\nchat_turns_in_flight {}\n",
        state.turns.len()
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
