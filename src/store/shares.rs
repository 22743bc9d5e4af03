//! Share links: a read-only copy of a conversation as it was when the link
//! was made, reachable by anyone holding the link's token. Only the token's
//! SHA-256 is stored (like access tokens); the snapshot's messages are
//! copied into the share, so later messages never appear through it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;
use crate::domain::{ChatMessage, ConversationId, UserId};

/// A share link as its owner lists it (never its token, nor its messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// A UUID, to name the link in `DELETE /api/shares/{id}`.
    pub id: String,
    pub user_id: UserId,
    /// The conversation the snapshot was taken of.
    pub conversation_id: ConversationId,
    pub title: Option<String>,
    /// Messages in the snapshot.
    pub message_count: u64,
    pub created_at: DateTime<Utc>,
}

/// What a link shows: the snapshot, and whose it is (for the server's own
/// checks; never shown).
#[derive(Debug, Clone, PartialEq)]
pub struct SharedConversation {
    pub owner: UserId,
    pub title: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub created_at: DateTime<Utc>,
}

/// A share about to be stored.
#[derive(Debug, Clone)]
pub struct NewShare {
    pub id: String,
    pub token_hash: String,
    pub conversation_id: ConversationId,
    pub title: Option<String>,
    pub messages: Vec<ChatMessage>,
}

/// A share as stored (its hash and snapshot too), for `migrate` to copy.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredShare {
    pub share: Share,
    pub token_hash: String,
    pub messages: Vec<ChatMessage>,
}

/// Storage of share links, scoped by user except for [`ShareStore::shared`],
/// which finds a snapshot by its token's hash alone.
#[async_trait]
pub trait ShareStore: Send + Sync + 'static {
    /// Stores a new share for `user`; `None` when the user has
    /// `max_per_user` shares already (a create racing others may be refused
    /// below the limit, never let past it).
    async fn create_share(
        &self,
        user: &UserId,
        share: NewShare,
        max_per_user: u32,
    ) -> StoreResult<Option<Share>>;
    /// The user's shares, newest first.
    async fn shares(&self, user: &UserId) -> StoreResult<Vec<Share>>;
    /// Deletes the user's share `id`; `false` when the user has no such share.
    async fn delete_share(&self, user: &UserId, id: &str) -> StoreResult<bool>;
    /// The snapshot of the share whose token has this hash.
    async fn shared(&self, token_hash: &str) -> StoreResult<Option<SharedConversation>>;
    /// Deletes every share of the user's conversation (it was deleted);
    /// returns how many.
    async fn delete_conversation_shares(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> StoreResult<u64>;
    /// Gives every share of `from` to `to` (an anonymous browser's
    /// conversations moved to the account it signed in to); returns how many.
    async fn transfer_shares(&self, from: &UserId, to: &UserId) -> StoreResult<u64>;

    /// Every share with its hash and snapshot, ordered by id, `limit` at a
    /// time after the id `after`: for `migrate`.
    async fn shares_for_copy(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<StoredShare>>;

    /// Writes a share as it is (id, owner, conversation, hash, snapshot,
    /// date), for `migrate`: `false` when its id or hash is already there
    /// (left as it is). The per-user limit is not applied: the source held it.
    async fn import_share(&self, share: &StoredShare) -> StoreResult<bool>;
}
