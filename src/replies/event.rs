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
    /// A turn began; `message` is the user's message.
    Started {
        message: String,
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
            ReplyEvent::Started { message } => ServerEvent::ReplyStarted(ReplyStarted {
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
    Arc::from(uuid::Uuid::new_v4().simple().to_string())
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
