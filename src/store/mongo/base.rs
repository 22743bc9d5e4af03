//! What every part of the MongoDB store shares: the `MongoStore` handle,
//! the collection names, the size limits and the estimate's constants, the
//! server's error codes and how driver errors map to `StoreError`. A leaf:
//! it imports no sibling.

use std::fmt;
use std::sync::Arc;

use anyhow::anyhow;
use mongodb::bson::{doc, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::{Collection, Database};

use crate::config::ConversationLimits;
use crate::domain::{ConversationId, UserId};
use crate::redact::Redactor;
use crate::store::StoreError;

/// Collection holding conversations (the original's name).
pub const CONVERSATIONS: &str = "conversations";
/// Collection holding HTTP sessions.
pub const SESSIONS: &str = "sessions";
/// Collection holding local accounts (`super::accounts`).
pub const USERS: &str = "users";
/// Collection holding personal access tokens (`super::tokens`).
pub const TOKENS: &str = "tokens";
/// Collection holding share links and their snapshots (`super::shares`).
pub const SHARES: &str = "shares";
/// Collection holding identities from providers linked to accounts.
pub const IDENTITIES: &str = "identities";
/// Collection holding token usage per user and day (`super::usage`).
pub const USAGE: &str = "usage";
/// Collection holding the per-user daily quotas an admin set.
pub const QUOTAS: &str = "quotas";
/// Collection holding the store's own markers (the first account's).
pub const META: &str = "meta";

/// Refuse a write that would take a conversation past this estimated size:
/// 15 MiB, leaving 1 MiB of MongoDB's 16 MiB document limit for the title,
/// the summary and the estimate's slack.
pub const SIZE_LIMIT_BYTES: i64 = 15 * 1024 * 1024;
/// MongoDB's hard limit on a document (what an import may not exceed).
pub(super) const HARD_LIMIT_BYTES: usize = 16 * 1024 * 1024;
/// What a driver error over the document limit maps to (outside a
/// conversation store, which says its cap's sentence instead).
pub const TOO_LARGE_MESSAGE: &str = "This conversation has reached its size limit (about 15 MB of text). Please start a new conversation.";
/// Estimated bytes of a document's fixed part (ids, dates, counters, keys).
pub(super) const BASE_BYTES: i64 = 512;
/// Estimated bytes one message adds besides twice its content (once in the
/// history, once in `conversation_text`): the history item's keys, role and
/// token count, the text's `"Assistant: "` prefix and newline.
pub(super) const PER_MESSAGE_BYTES: i64 = 80;

/// MongoDB error codes this store reacts to.
pub(crate) mod code {
    pub const INDEX_NOT_FOUND: i32 = 27;
    pub const NAMESPACE_EXISTS: i32 = 48;
    pub const DUPLICATE_KEY: i32 = 11000;
    /// `BSONObjectTooLarge` and "Resulting document after update is larger than".
    pub const TOO_LARGE: [i32; 3] = [10334, 17419, 17420];
    /// The server cannot answer now: shutting down, stepping down, not primary,
    /// host unreachable, network timeout, socket exception, exceeded time limit.
    pub const RETRYABLE: [i32; 14] = [
        6, 7, 89, 91, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436, 50,
    ];
}

/// The MongoDB conversation store.
#[derive(Clone)]
pub struct MongoStore {
    pub(super) db: Database,
    pub(super) conversations: Collection<Document>,
    /// HTTP sessions (`crate::sessions::mongo`).
    pub(crate) sessions: Collection<Document>,
    /// Local accounts, one document each.
    pub(super) users: Collection<Document>,
    /// The first-account marker.
    pub(super) meta: Collection<Document>,
    /// Personal access tokens, one document each.
    pub(super) tokens: Collection<Document>,
    /// Share links, one document each with its snapshot.
    pub(super) shares: Collection<Document>,
    /// External identities (`{_id: "<provider>\n<subject>", user_id,
    /// created_at}`), linked to accounts.
    pub(super) identities: Collection<Document>,
    /// Token usage, one document per user and day.
    pub(super) usage: Collection<Document>,
    /// Per-user daily quotas, one document per user who has one.
    pub(super) quotas: Collection<Document>,
    pub(super) text_search: bool,
    /// The conversation cap (`MAX_CONVERSATION_*`).
    pub(super) limits: ConversationLimits,
    /// Hides the URI's password in every error, the session store's too.
    pub(crate) redactor: Arc<Redactor>,
}

impl fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.db.name())
            .field("text_search", &self.text_search)
            .finish()
    }
}

impl MongoStore {
    /// Maps a driver error; a document over MongoDB's limit is told to
    /// the user with the same sentence as the conversation cap.
    pub(super) fn err(&self, err: mongodb::error::Error) -> StoreError {
        match map_error(&self.redactor, err) {
            StoreError::TooLarge(_) => self.too_large(),
            other => other,
        }
    }

    /// The refusal of a conversation that is full (the cap's sentence, also
    /// for the 15 MiB guard behind it).
    pub(super) fn too_large(&self) -> StoreError {
        StoreError::TooLarge(self.limits.full_message())
    }

    pub(super) fn key(user: &UserId, id: &ConversationId) -> Document {
        doc! {"conversation_id": id.as_ref(), "user_id": user.as_ref()}
    }
}

/// Maps a driver error: unreachable server → `Unavailable`, a document over
/// the size limit → `TooLarge`, anything else → `Backend`. Messages never
/// carry the URI's password.
pub(crate) fn map_error(redactor: &Redactor, err: mongodb::error::Error) -> StoreError {
    let message = redactor.clean(&err.kind.to_string());
    match err.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => StoreError::Unavailable(format!("MongoDB: {message}")),
        ErrorKind::Command(c) if code::RETRYABLE.contains(&c.code) => {
            StoreError::Unavailable(format!("MongoDB: {message}"))
        }
        ErrorKind::Command(c) if code::TOO_LARGE.contains(&c.code) => {
            StoreError::TooLarge(TOO_LARGE_MESSAGE.to_string())
        }
        ErrorKind::Write(WriteFailure::WriteError(w)) if code::TOO_LARGE.contains(&w.code) => {
            StoreError::TooLarge(TOO_LARGE_MESSAGE.to_string())
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(w))
            if code::RETRYABLE.contains(&w.code) =>
        {
            StoreError::Unavailable(format!("MongoDB: {message}"))
        }
        _ => StoreError::Backend(anyhow!("MongoDB: {message}")),
    }
}

/// The server's error code of a command or write error.
pub(crate) fn command_code(err: &mongodb::error::Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|w| w.code),
        _ => None,
    }
}
