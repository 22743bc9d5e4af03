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

/// A reply in flight on this instance whose lease a round renews.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Renewal {
    pub(super) reply: Arc<str>,
    pub(super) user: Arc<str>,
    pub(super) conversation: Arc<str>,
    /// Whether its log's expiry (set for a reply in flight at its start)
    /// is set again too: a reply streaming for a long time keeps its log.
    pub(super) rearm: bool,
}

/// Where reply events are kept (for resuming) and how they reach the
/// other instances.
#[async_trait]
pub(super) trait ReplyLog: Send + Sync + 'static {
    /// One round: renews the leases of `renewals`, then appends the events
    /// of any number of replies, each reply's in order (a `Started` event
    /// replaces the previous reply's log), and publishes them to the other
    /// instances (in one message). With Redis, one round trip.
    async fn record(&self, envelopes: &[Envelope], renewals: &[Renewal]) -> Result<(), String>;
    /// The current reply's events, oldest first.
    async fn read(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Vec<Logged>, String>;
    /// Whether a write may succeed now (connected), so a relay retries its
    /// backlog without waiting a command timeout during an outage.
    fn available(&self) -> bool {
        true
    }
}

/// One round's events as published between instances: the publishing
/// instance's id, a tab, then the envelopes (of any replies and
/// conversations) as a JSON array. A receiver skips its own batches by the
/// prefix, without parsing them, and parses each other batch once, however
/// many events it holds.
pub(super) fn publish_batch(instance: &str, envelopes: &[Envelope]) -> Result<String, String> {
    let json = serde_json::to_string(envelopes).map_err(|e| e.to_string())?;
    Ok(format!("{instance}\t{json}"))
}

/// The envelopes of a batch published by another instance than `own`
/// (`None` for our own batches and for anything malformed).
pub(super) fn received_batch(own: &str, raw: &str) -> Option<Vec<Envelope>> {
    let (from, json) = raw.split_once('\t')?;
    if from == own {
        return None;
    }
    serde_json::from_str(json).ok()
}
