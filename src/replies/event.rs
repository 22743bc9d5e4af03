//! The events of one reply, as logged (for resuming) and passed between
//! instances, and the Socket.IO event each becomes for a watching tab.

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

    /// The Socket.IO event a watcher receives for this event.
    pub(super) fn to_socket<'a>(&'a self, conversation: &'a ConversationId) -> ServerEvent<'a> {
        let conversation_id = conversation.as_ref();
        match self {
            ReplyEvent::Started { message } => ServerEvent::ReplyStarted(ReplyStarted {
                conversation_id,
                message,
            }),
            ReplyEvent::Chunk { index, chunk } => ServerEvent::ResponseChunk(ResponseChunk {
                chunk,
                index: *index,
                conversation_id,
            }),
            ReplyEvent::End { stopped, chunks } => ServerEvent::ResponseEnd(ResponseEnd {
                conversation_id,
                stopped: *stopped,
                chunks: *chunks,
            }),
            ReplyEvent::Error { message, error } => ServerEvent::Error(ErrorEvent {
                message,
                error,
                retry_after: None,
                resets_at: None,
                conversation_id: Some(conversation_id),
            }),
        }
    }
}
