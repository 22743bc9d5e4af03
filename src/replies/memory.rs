//! The in-process reply log: one instance, no Redis. Ended replies are kept
//! for `REPLY_RESUME_TTL_SECONDS`, then dropped by a sweep at most once a
//! second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::event::{Logged, ReplyEvent};
use super::log::{Envelope, Renewal, ReplyLog};
use crate::domain::{ConversationId, UserId};

/// A reply's events and, once it ended, when they expire.
type LoggedReply = (Vec<Logged>, Option<Instant>);

/// In-process log: one instance, no Redis.
pub(super) struct MemoryLog {
    pub(super) replies: Mutex<MemoryReplies>,
    pub(super) ttl: Duration,
}

#[derive(Default)]
pub(super) struct MemoryReplies {
    /// Looked up on every event: a fast hasher (seeded per process).
    replies: HashMap<(Arc<str>, Arc<str>), LoggedReply, foldhash::fast::RandomState>,
    /// When expired replies were last dropped: a sweep goes over every
    /// logged reply, so it runs once a second, not on every chunk.
    swept: Option<Instant>,
}

impl MemoryLog {
    /// Appends one event of the reply of `key` (the relay calls this
    /// directly: no task, no await).
    pub(super) fn append(&self, key: &(Arc<str>, Arc<str>), logged: &Logged) {
        let event = &logged.event;
        let mut log = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if log
            .swept
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            log.replies
                .retain(|_, (_, expires)| expires.is_none_or(|at| at > now));
            log.swept = Some(now);
        }
        let entry = match log.replies.get_mut(key) {
            Some(entry) => entry,
            None => log.replies.entry(key.clone()).or_default(),
        };
        if matches!(event, ReplyEvent::Started { .. }) {
            *entry = (Vec::new(), None);
        }
        entry.0.push(logged.clone());
        if event.is_final() {
            entry.1 = Some(now + self.ttl);
        }
    }
}

#[async_trait]
impl ReplyLog for MemoryLog {
    async fn record(&self, envelopes: &[Envelope], _renewals: &[Renewal]) -> Result<(), String> {
        for envelope in envelopes {
            let key = (envelope.user.clone(), envelope.conversation.clone());
            self.append(&key, &envelope.logged);
        }
        Ok(())
    }

    async fn read(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Vec<Logged>, String> {
        let log = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        Ok(log
            .replies
            .get(&(Arc::from(user.as_ref()), Arc::from(conversation.as_ref())))
            .filter(|(_, expires)| expires.is_none_or(|at| at > now))
            .map(|(events, _)| events.clone())
            .unwrap_or_default())
    }
}
