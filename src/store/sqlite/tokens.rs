//! Personal access tokens in SQLite: [`TokenStore`] for [`SqliteStore`] over
//! the `tokens` table (see `schema`), one row per token holding its SHA-256,
//! never the token.

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::{params, OptionalExtension};

use super::exec::{backend, exec};
use super::rows::parse_time;
use super::SqliteStore;
use crate::domain::UserId;
use crate::store::tokens::{AccessToken, StoredToken, TokenStore};
use crate::store::{rfc3339, StoreResult};

fn token_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AccessToken> {
    Ok(AccessToken {
        id: row.get(0)?,
        user_id: UserId::from_stored(row.get(1)?),
        name: row.get(2)?,
        created_at: parse_time(row.get_ref(3)?.as_str()?)?,
    })
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_token(
        &self,
        user: &UserId,
        id: &str,
        name: &str,
        token_hash: &str,
        max_per_user: u32,
    ) -> StoreResult<Option<AccessToken>> {
        let (user, id, name, hash) = (
            user.clone(),
            id.to_string(),
            name.to_string(),
            token_hash.to_string(),
        );
        self.db
            .call(move |conn| {
                // The count and the insert are one transaction, on the one
                // connection's thread, inside the batch's `BEGIN IMMEDIATE`
                // (which also holds off another process sharing the file).
                let tx = conn.savepoint().map_err(backend)?;
                let count: i64 = tx
                    .prepare_cached("SELECT COUNT(*) FROM tokens WHERE user_id = ?1")
                    .and_then(|mut stmt| stmt.query_row(params![user.as_ref()], |row| row.get(0)))
                    .map_err(backend)?;
                if count >= i64::from(max_per_user) {
                    return Ok(None);
                }
                let created_at = rfc3339::format(&Utc::now());
                // A taken id or hash (random, so never, short of a bug) fails
                // with its constraint: `Backend`, like a taken user id.
                exec(
                    &tx,
                    "INSERT INTO tokens (id, user_id, name, token_hash, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, user.as_ref(), name, hash, created_at],
                )?;
                tx.commit().map_err(backend)?;
                Ok(Some(AccessToken {
                    id,
                    user_id: user,
                    name,
                    // As stored (microseconds), so a later read is equal.
                    created_at: parse_time(&created_at).map_err(backend)?,
                }))
            })
            .await
    }

    async fn tokens(&self, user: &UserId) -> StoreResult<Vec<AccessToken>> {
        let user = user.to_string();
        self.db
            .call(move |conn| {
                // Newest first; the row id orders tokens made in the same
                // microsecond as they were inserted.
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, user_id, name, created_at FROM tokens WHERE user_id = ?1 \
                         ORDER BY created_at DESC, rowid DESC",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![user], token_from_row)
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn delete_token(&self, user: &UserId, id: &str) -> StoreResult<bool> {
        let (user, id) = (user.to_string(), id.to_string());
        self.db
            .call(move |conn| {
                exec(
                    conn,
                    "DELETE FROM tokens WHERE user_id = ?1 AND id = ?2",
                    params![user, id],
                )
                .map(|deleted| deleted > 0)
            })
            .await
    }

    async fn token_owner(&self, token_hash: &str) -> StoreResult<Option<UserId>> {
        let hash = token_hash.to_string();
        self.db
            .call(move |conn| {
                conn.prepare_cached("SELECT user_id FROM tokens WHERE token_hash = ?1")
                    .and_then(|mut stmt| {
                        stmt.query_row(params![hash], |row| row.get::<_, String>(0))
                            .optional()
                    })
                    .map(|owner| owner.map(UserId::from_stored))
                    .map_err(backend)
            })
            .await
    }

    async fn tokens_for_copy(&self) -> StoreResult<Vec<StoredToken>> {
        self.db
            .call(|conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT id, user_id, name, created_at, token_hash FROM tokens \
                         ORDER BY created_at, rowid",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok(StoredToken {
                            token: token_from_row(row)?,
                            token_hash: row.get(4)?,
                        })
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn import_token(&self, stored: &StoredToken) -> StoreResult<bool> {
        let stored = stored.clone();
        self.db
            .call(move |conn| {
                let token = &stored.token;
                exec(
                    conn,
                    "INSERT OR IGNORE INTO tokens (id, user_id, name, token_hash, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        token.id,
                        token.user_id.as_ref(),
                        token.name,
                        stored.token_hash,
                        rfc3339::format(&token.created_at)
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
    use super::super::tests::store;
    use super::super::SqliteDb;
    use super::*;
    use crate::store::StoreError;

    #[tokio::test]
    async fn a_database_of_a_version_without_tokens_gets_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(SCHEMA)
            .unwrap();

        let store = SqliteStore::new(SqliteDb::open(&path).unwrap());
        let user = UserId::new();
        let made = store
            .create_token(&user, "t1", "laptop", "hash-1", 10)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.tokens(&user).await.unwrap(), vec![made]);
        drop(store);
        // Opening it again changes nothing.
        let store = SqliteStore::new(SqliteDb::open(&path).unwrap());
        assert_eq!(store.token_owner("hash-1").await.unwrap(), Some(user));
    }

    #[tokio::test]
    async fn a_taken_id_or_hash_is_an_error_and_stores_nothing() {
        let (_dir, store) = store();
        let (user, other) = (UserId::new(), UserId::new());
        store
            .create_token(&user, "t1", "laptop", "hash-1", 10)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            store
                .create_token(&other, "t2", "phone", "hash-1", 10)
                .await,
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            store
                .create_token(&other, "t1", "phone", "hash-2", 10)
                .await,
            Err(StoreError::Backend(_))
        ));
        assert!(store.tokens(&other).await.unwrap().is_empty());
        assert_eq!(store.token_owner("hash-2").await.unwrap(), None);
        assert_eq!(store.tokens(&user).await.unwrap().len(), 1);
    }
}
