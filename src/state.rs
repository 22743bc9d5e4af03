//! Shared application state, cheap to clone: handed to the HTTP router and
//! to the Socket.IO handlers alike, so both act on one world.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::chat::TurnRegistry;
use crate::config::Settings;
use crate::context::TokenCounter;
use crate::domain::UserId;
use crate::llm::ChatModel;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::redis::RedisConnections;
use crate::replies::ReplyHub;
use crate::store::ConversationStore;

/// Sends an event to every socket of a user (all tabs; later on all
/// instances, through the Redis adapter).
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    async fn to_user(&self, user: &UserId, event: &'static str, payload: Value);
}

/// Everything a handler may need.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn ConversationStore>,
    pub llm: Arc<dyn ChatModel>,
    pub tokens: TokenCounter,
    pub notifier: Arc<dyn Notifier>,
    pub turns: Arc<TurnRegistry>,
    pub metrics: Arc<Metrics>,
    /// Replies in flight, for other tabs and resuming clients.
    pub replies: Arc<ReplyHub>,
    pub limiter: Arc<dyn RateLimiter>,
    /// Set in multi-instance mode.
    pub redis: Option<RedisConnections>,
    /// Set when shutdown began: no new turns, `/readyz` answers 503.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Changes with every build, so browsers refetch static files.
    pub asset_version: Arc<str>,
}

/// The room every socket of a user joins.
pub fn user_room(user: &UserId) -> String {
    format!("user:{user}")
}
