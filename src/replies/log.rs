//! Where reply events are kept for resuming, and the envelope they travel
//! in between instances.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::event::Logged;
use crate::domain::{ConversationId, UserId};

/// A reply event with where it belongs, as published between instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Envelope {
    pub(super) instance: Arc<str>,
    pub(super) user: Arc<str>,
    pub(super) conversation: Arc<str>,
    pub(super) logged: Logged,
}

/// Where reply events are kept (for resuming) and how they reach the
/// other instances.
#[async_trait]
pub(super) trait ReplyLog: Send + Sync + 'static {
    /// Appends events of one reply, in order (a `Started` event replaces
    /// the previous reply's log), and publishes them to the other instances.
    async fn record(&self, envelopes: &[Envelope]) -> Result<(), String>;
    /// The current reply's events, oldest first.
    async fn read(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Vec<Logged>, String>;
    /// Renews the lease of reply `reply`, in flight on this instance
    /// (nothing to do with one instance).
    async fn renew(&self, _reply: &str) -> Result<(), String> {
        Ok(())
    }
    /// Whether a write may succeed now (connected), so a relay retries its
    /// backlog without waiting a command timeout during an outage.
    fn available(&self) -> bool {
        true
    }
}
