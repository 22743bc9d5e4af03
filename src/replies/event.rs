//! The events of one reply, as logged (for resuming) and passed between
//! instances, and the Socket.IO event each becomes for a watching tab.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::ConversationId;
use crate::events::{ErrorEvent, ReplyStarted, ResponseChunk, ResponseEnd, ServerEvent};

/// One event of a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplyEvent {
    /// A turn began; `message` is the user's message, `branch` where it
    /// goes when the turn answers on a new branch (absent in events logged
    /// by older versions: an append).
    Started {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<BranchPoint>,
    },
    Chunk {
        index: u64,
        chunk: String,
    },
    End {
        stopped: bool,
        chunks: u64,
    },
    Error {
        message: String,
        error: String,
    },
}

/// Where a branch turn (`edit_message`, `regenerate`) stores its messages,
/// logged with its start: an instance that ends the reply for a dead one
/// stores the user's message as the turn would have on failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchPoint {
    /// How many messages of the history come before the user's.
    pub prefix: u64,
    /// The user's message is the stored one at `prefix` (a regenerate:
    /// nothing of the user's is new); else it is new (an edit).
    pub user_stored: bool,
}

impl ReplyEvent {
    /// The event for a failed turn.
    pub fn error(body: &crate::error::ErrorBody) -> Self {
        ReplyEvent::Error {
            message: body.message.clone(),
            error: body.error.to_string(),
        }
    }

    pub(super) fn is_final(&self) -> bool {
        matches!(self, ReplyEvent::End { .. } | ReplyEvent::Error { .. })
    }

    /// The Socket.IO event a watcher receives for this event of reply `reply_id`.
    pub(super) fn to_socket<'a>(
        &'a self,
        conversation: &'a ConversationId,
        reply_id: &'a str,
    ) -> ServerEvent<'a> {
        let conversation_id = conversation.as_ref();
        match self {
            ReplyEvent::Started { message, .. } => ServerEvent::ReplyStarted(ReplyStarted {
                conversation_id,
                message,
                reply_id,
            }),
            ReplyEvent::Chunk { index, chunk } => ServerEvent::ResponseChunk(ResponseChunk {
                chunk,
                index: *index,
                conversation_id,
                reply_id,
            }),
            ReplyEvent::End { stopped, chunks } => ServerEvent::ResponseEnd(ResponseEnd {
                conversation_id,
                stopped: *stopped,
                chunks: *chunks,
                reply_id: Some(reply_id),
            }),
            ReplyEvent::Error { message, error } => ServerEvent::Error(ErrorEvent {
                message,
                error,
                retry_after: None,
                resets_at: None,
                conversation_id: Some(conversation_id),
                reply_id: Some(reply_id),
            }),
        }
    }
}

/// One logged event: which reply it belongs to and which socket sent the
/// message it answers (that socket gets the reply from the turn itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Logged {
    pub(super) reply: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) origin: Option<Arc<str>>,
    pub(super) event: ReplyEvent,
}

impl Logged {
    pub(super) fn to_socket<'a>(&'a self, conversation: &'a ConversationId) -> ServerEvent<'a> {
        self.event.to_socket(conversation, &self.reply)
    }
}

/// A new reply id: unique across instances and restarts.
pub(super) fn new_reply_id() -> Arc<str> {
    Arc::from(crate::domain::new_uuid().simple().to_string())
}

/// What a turn sends when it was interrupted: its instance stopped
/// renewing the reply's lease (it died or lost Redis).
pub(super) fn interrupted() -> ReplyEvent {
    ReplyEvent::Error {
        message: INTERRUPTED.to_string(),
        error: "interrupted".to_string(),
    }
}

/// The message of an interrupted reply's `error`.
pub const INTERRUPTED: &str = "The reply was interrupted. Please try again.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_logged_by_an_older_version_reads_as_an_append_and_a_branch_one_keeps_its_point() {
        let older: ReplyEvent =
            serde_json::from_str(r#"{"kind":"started","message":"hi"}"#).unwrap();
        assert_eq!(
            older,
            ReplyEvent::Started {
                message: "hi".into(),
                branch: None
            }
        );
        // A plain turn's start is logged as before.
        assert_eq!(
            serde_json::to_string(&older).unwrap(),
            r#"{"kind":"started","message":"hi"}"#
        );
        let edit = ReplyEvent::Started {
            message: "better".into(),
            branch: Some(BranchPoint {
                prefix: 2,
                user_stored: false,
            }),
        };
        let logged = serde_json::to_string(&edit).unwrap();
        assert_eq!(serde_json::from_str::<ReplyEvent>(&logged).unwrap(), edit);
    }
}
