//! Waiting between failed summaries of a conversation: after a summary
//! request fails, the turns that follow do not ask again at once (each one
//! would send the same large request to an upstream that just refused it);
//! they leave the oldest turns out of the prompt instead, as a failed
//! summary does, until the wait is over. The wait doubles with each failure
//! in a row, from one minute up to an hour; a success forgets it.
//!
//! Kept in this instance's memory: another instance keeps its own, so a
//! conversation is tried at most once per wait per instance.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{ConversationId, UserId};

/// The first wait after a failure.
const FIRST_WAIT: Duration = Duration::from_secs(60);
/// The longest wait.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Conversations remembered at most; past it the ones whose wait is over
/// go first, then the soonest to end.
const MAX_ENTRIES: usize = 10_000;

type Key = (UserId, ConversationId);

struct Waiting {
    failures: u32,
    until: Instant,
}

/// Failed summaries per conversation, and until when not to try again.
#[derive(Default)]
pub struct SummaryBackoff {
    waiting: Mutex<HashMap<Key, Waiting>>,
}

impl SummaryBackoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the conversation may be summarised now.
    pub fn ready(&self, user: &UserId, id: &ConversationId) -> bool {
        let key = (user.clone(), id.clone());
        self.lock()
            .get(&key)
            .is_none_or(|w| w.until <= Instant::now())
    }

    /// A summary of the conversation failed: wait before the next.
    pub fn failed(&self, user: &UserId, id: &ConversationId) {
        let now = Instant::now();
        let mut waiting = self.lock();
        if waiting.len() >= MAX_ENTRIES {
            waiting.retain(|_, w| w.until > now);
            if waiting.len() >= MAX_ENTRIES {
                let soonest = waiting
                    .iter()
                    .min_by_key(|(_, w)| w.until)
                    .map(|(key, _)| key.clone());
                if let Some(key) = soonest {
                    waiting.remove(&key);
                }
            }
        }
        let entry = waiting
            .entry((user.clone(), id.clone()))
            .or_insert(Waiting {
                failures: 0,
                until: now,
            });
        entry.failures = entry.failures.saturating_add(1);
        entry.until = now + wait_after(entry.failures);
    }

    /// A summary of the conversation succeeded: no more waiting.
    pub fn succeeded(&self, user: &UserId, id: &ConversationId) {
        self.lock().remove(&(user.clone(), id.clone()));
    }
}

/// The wait after `failures` failures in a row: 1, 2, 4 … minutes, at
/// most an hour.
fn wait_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_WAIT.saturating_mul(1 << doublings).min(MAX_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_an_hour() {
        assert_eq!(wait_after(1), Duration::from_secs(60));
        assert_eq!(wait_after(2), Duration::from_secs(120));
        assert_eq!(wait_after(4), Duration::from_secs(480));
        assert_eq!(wait_after(30), MAX_WAIT);
    }

    #[test]
    fn a_failure_blocks_that_conversation_only_until_a_success() {
        let backoff = SummaryBackoff::default();
        let (user, id, other) = (UserId::new(), ConversationId::new(), ConversationId::new());
        assert!(backoff.ready(&user, &id));
        backoff.failed(&user, &id);
        assert!(!backoff.ready(&user, &id));
        assert!(backoff.ready(&user, &other));
        backoff.succeeded(&user, &id);
        assert!(backoff.ready(&user, &id));
    }
}
