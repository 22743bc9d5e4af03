//! Share links in SQLite: [`ShareStore`] for [`SqliteStore`] over the
//! `shares` table (see `schema`), one row per link holding its token's
//! SHA-256 (never the token) and the snapshot's messages as JSON.

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::{params, OptionalExtension};

use super::exec::{backend, exec};
use super::rows::parse_time;
use super::SqliteStore;
use crate::domain::{ChatMessage, ConversationId, UserId};
use crate::store::shares::{NewShare, Share, ShareStore, SharedConversation, StoredShare};
use crate::store::{rfc3339, StoreError, StoreResult};

fn conversion(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, err.into())
}

fn share_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Share> {
    let conversation: String = row.get(2)?;
    Ok(Share {
        id: row.get(0)?,
        user_id: UserId::from_stored(row.get(1)?),
        conversation_id: ConversationId::parse(&conversation).map_err(conversion)?,
        title: row.get(3)?,
        message_count: row.get::<_, i64>(4)?.max(0) as u64,
        created_at: parse_time(row.get_ref(5)?.as_str()?)?,
    })
}

#[async_trait]
impl ShareStore for SqliteStore {
    async fn create_share(
        &self,
        user: &UserId,
        share: NewShare,
        max_per_user: u32,
    ) -> StoreResult<Option<Share>> {
        let user = user.clone();
        let messages =
            serde_json::to_string(&share.messages).map_err(|e| StoreError::Backend(e.into()))?;
        self.db
            .call(move |conn| {
                // The count and the insert are one transaction, as for tokens.
                let tx = conn.savepoint().map_err(backend)?;
                let count: i64 = tx
                    .prepare_cached("SELECT COUNT(*) FROM shares WHERE user_id = ?1")
                    .and_then(|mut stmt| stmt.query_row(params![user.as_ref()], |row| row.get(0)))
                    .map_err(backend)?;
                if count >= i64::from(max_per_user) {
                    return Ok(None);
                }
                let created_at = rfc3339::format(&Utc::now());
                let message_count = share.messages.len() as u64;
                exec(
                    &tx,
                    "INSERT INTO shares (id, user_id, conversation_id, token_hash, title, \
                     messages, message_count, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        share.id,
                        user.as_ref(),
                        share.conversation_id.as_ref(),
                        share.token_hash,
                        share.title,
                        messages,
                        message_count as i64,
                        created_at
                    ],
                )?;
                tx.commit().map_err(backend)?;
                Ok(Some(Share {
                    id: share.id,
                    user_id: user,
                    conversation_id: share.conversation_id,
                    title: share.title,
                    message_count,
                    created_at: parse_time(&created_at).map_err(backend)?,
                }))
            })
            .await
    }

    async fn shares(&self, user: &UserId) -> StoreResult<Vec<Share>> {
        let user = user.to_string();
        self.db
            .call(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, user_id, conversation_id, title, message_count, created_at \
                         FROM shares WHERE user_id = ?1 ORDER BY created_at DESC, rowid DESC",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![user], share_from_row)
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn delete_share(&self, user: &UserId, id: &str) -> StoreResult<bool> {
        let (user, id) = (user.to_string(), id.to_string());
        self.db
            .call(move |conn| {
                exec(
                    conn,
                    "DELETE FROM shares WHERE user_id = ?1 AND id = ?2",
                    params![user, id],
                )
                .map(|deleted| deleted > 0)
            })
            .await
    }

    async fn shared(&self, token_hash: &str) -> StoreResult<Option<SharedConversation>> {
        let hash = token_hash.to_string();
        self.db
            .call(move |conn| {
                conn.prepare_cached(
                    "SELECT user_id, title, messages, created_at FROM shares WHERE token_hash = ?1",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![hash], |row| {
                        let messages: String = row.get(2)?;
                        Ok(SharedConversation {
                            owner: UserId::from_stored(row.get(0)?),
                            title: row.get(1)?,
                            messages: serde_json::from_str::<Vec<ChatMessage>>(&messages)
                                .map_err(conversion)?,
                            created_at: parse_time(row.get_ref(3)?.as_str()?)?,
                        })
                    })
                    .optional()
                })
                .map_err(backend)
            })
            .await
    }

    async fn delete_conversation_shares(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> StoreResult<u64> {
        let (user, conversation) = (user.to_string(), conversation.to_string());
        self.db
            .call(move |conn| {
                exec(
                    conn,
                    "DELETE FROM shares WHERE user_id = ?1 AND conversation_id = ?2",
                    params![user, conversation],
                )
                .map(|deleted| deleted as u64)
            })
            .await
    }

    async fn transfer_shares(&self, from: &UserId, to: &UserId) -> StoreResult<u64> {
        let (from, to) = (from.to_string(), to.to_string());
        self.db
            .call(move |conn| {
                exec(
                    conn,
                    "UPDATE shares SET user_id = ?2 WHERE user_id = ?1",
                    params![from, to],
                )
                .map(|moved| moved as u64)
            })
            .await
    }

    async fn shares_for_copy(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<StoredShare>> {
        let after = after.unwrap_or_default().to_string();
        self.db
            .call(move |conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT id, user_id, conversation_id, title, message_count, created_at, \
                         token_hash, messages FROM shares WHERE id > ?1 ORDER BY id LIMIT ?2",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![after, i64::from(limit)], |row| {
                        let messages: String = row.get(7)?;
                        Ok(StoredShare {
                            share: share_from_row(row)?,
                            token_hash: row.get(6)?,
                            messages: serde_json::from_str(&messages).map_err(conversion)?,
                        })
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn import_share(&self, stored: &StoredShare) -> StoreResult<bool> {
        let stored = stored.clone();
        let messages =
            serde_json::to_string(&stored.messages).map_err(|e| StoreError::Backend(e.into()))?;
        self.db
            .call(move |conn| {
                let share = &stored.share;
                exec(
                    conn,
                    "INSERT OR IGNORE INTO shares (id, user_id, conversation_id, token_hash, \
                     title, messages, message_count, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        share.id,
                        share.user_id.as_ref(),
                        share.conversation_id.as_ref(),
                        stored.token_hash,
                        share.title,
                        messages,
                        stored.messages.len() as i64,
                        rfc3339::format(&share.created_at)
                    ],
                )
                .map(|inserted| inserted > 0)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::schema::SCHEMA;
    use super::super::SqliteDb;
    use super::*;
    use crate::domain::Role;

    #[tokio::test]
    async fn a_database_of_a_version_without_shares_gets_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(SCHEMA)
            .unwrap();

        let store = SqliteStore::new(SqliteDb::open(&path).unwrap());
        let (user, conversation) = (UserId::new(), ConversationId::new());
        let share = NewShare {
            id: "s1".into(),
            token_hash: "hash-1".into(),
            conversation_id: conversation,
            title: None,
            messages: vec![ChatMessage::new(Role::User, "hi")],
        };
        let made = store.create_share(&user, share, 10).await.unwrap().unwrap();
        assert_eq!(store.shares(&user).await.unwrap(), vec![made]);
        drop(store);
        // Opening it again changes nothing.
        let store = SqliteStore::new(SqliteDb::open(&path).unwrap());
        let shared = store.shared("hash-1").await.unwrap().unwrap();
        assert_eq!(shared.owner, user);
        assert_eq!(shared.messages, vec![ChatMessage::new(Role::User, "hi")]);
    }
}
