//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::bodies::{Health, Readiness, ReadinessChecks};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = async {
        tokio::time::timeout(std::time::Duration::from_secs(2), state.chat.store.ping())
            .await
            .is_ok_and(|r| r.is_ok())
    };
    let redis = async {
        match &state.chat.redis {
            None => None,
            Some(redis) => {
                let (up, adapter, control) = tokio::join!(
                    redis.ping(),
                    redis.adapter_subscribed(),
                    redis.control_subscribed()
                );
                Some((up, adapter && control))
            }
        }
    };
    let (store_up, redis) = tokio::join!(store, redis);
    let llm = if state.chat.llm.info().demo {
        "demo"
    } else {
        "configured"
    };
    let draining = state.draining.load(std::sync::atomic::Ordering::Relaxed);
    let mut checks = ReadinessChecks {
        store: if store_up { "up" } else { "down" },
        store_backend: state.chat.store.backend(),
        llm,
        draining: draining.then_some(true),
        redis: None,
        adapter: None,
    };
    let mut ready = store_up && !draining;
    if let Some((redis_up, subscribed)) = redis {
        checks.redis = Some(if redis_up { "up" } else { "down" });
        // A deaf instance (no adapter subscription) drops events silently:
        // take it out of the balancer.
        checks.adapter = Some(if subscribed { "subscribed" } else { "missing" });
        ready &= redis_up && subscribed;
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ready { "ready" } else { "not_ready" },
            checks,
            redis: state.chat.redis.as_ref().map(|redis| redis.topology()),
        }),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.chat.metrics.render();
    text.push_str(&format!(
        "# HELP chat_turns_in_flight Replies being generated now.\n# TYPE chat_turns_in_flight gauge\nchat_turns_in_flight {}\n",
        state.chat.turns.len()
    ));
    text.push_str(&format!(
        "# HELP chat_reply_watchers Sockets following a conversation on this instance now.\n# TYPE chat_reply_watchers gauge\nchat_reply_watchers {}\n",
        state.chat.replies.watcher_count()
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
