//! The services a turn uses, bundled once at startup.

use std::sync::Arc;

use super::registry::TurnRegistry;
use crate::cluster::RedisConnections;
use crate::config::Settings;
use crate::context::TokenCounter;
use crate::llm::ChatModel;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::replies::ReplyHub;
use crate::store::usage::UsageStore;
use crate::store::ConversationStore;

/// What turns need of the application, cheap to clone; the HTTP routes
/// and socket handlers reach the same services through it.
#[derive(Clone)]
pub struct Chat {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn ConversationStore>,
    /// Tokens spent per user and day, and their quotas (`quota.rs`).
    pub usage: Arc<dyn UsageStore>,
    /// The default model's client (titles, uploads, summaries).
    pub llm: Arc<dyn ChatModel>,
    /// The default model's tokenizer (the cached counts of stored messages).
    pub tokens: TokenCounter,
    /// Every model of the catalogue; a conversation's turns use its own.
    pub models: Arc<super::models::Models>,
    /// Events for all of a user's sockets.
    pub notifier: Arc<dyn Notifier>,
    pub metrics: Arc<Metrics>,
    /// Replies in flight, for other tabs and resuming clients.
    pub replies: Arc<ReplyHub>,
    /// Turns in flight, to stop them.
    pub turns: Arc<TurnRegistry>,
    /// Set in multi-instance mode (stops are published to the others).
    pub redis: Option<RedisConnections>,
    /// Slots for replies generated at once (`LLM_MAX_CONCURRENCY`); `None`:
    /// no cap.
    pub llm_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Conversations whose last summary failed wait before the next.
    pub summary_backoff: Arc<super::backoff::SummaryBackoff>,
}
