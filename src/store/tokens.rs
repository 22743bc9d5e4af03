//! Personal access tokens: a person's keys for REST, Socket.IO and
//! scripts. Only a token's SHA-256 is stored; the token itself is shown
//! once, when it is made.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;
use crate::domain::UserId;

/// A stored token, as its owner lists it (never the token itself).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessToken {
    /// A UUID, to name the token in `DELETE /api/tokens/{id}`.
    pub id: String,
    pub user_id: UserId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// Storage of access tokens, scoped by user.
/// A token as stored, with its hash, for `migrate` to copy.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredToken {
    pub token: AccessToken,
    pub token_hash: String,
}

#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Stores a new token (its hash) for `user`; `None` when the user has
    /// `max_per_user` tokens already (the count and the insert are one
    /// atomic step).
    async fn create_token(
        &self,
        user: &UserId,
        id: &str,
        name: &str,
        token_hash: &str,
        max_per_user: u32,
    ) -> StoreResult<Option<AccessToken>>;
    /// The user's tokens, newest first.
    async fn tokens(&self, user: &UserId) -> StoreResult<Vec<AccessToken>>;
    /// Deletes the user's token `id`; `false` when the user has no such token.
    async fn delete_token(&self, user: &UserId, id: &str) -> StoreResult<bool>;
    /// The owner of the token with this hash.
    async fn token_owner(&self, token_hash: &str) -> StoreResult<Option<UserId>>;

    /// Every token with its hash, oldest first, for `migrate`.
    async fn tokens_for_copy(&self) -> StoreResult<Vec<StoredToken>>;

    /// Writes a token as it is (id, owner, name, hash, date), for `migrate`:
    /// `false` when its id or hash is already there (left as it is). The
    /// per-user limit is not applied: the source held it.
    async fn import_token(&self, token: &StoredToken) -> StoreResult<bool>;
}
