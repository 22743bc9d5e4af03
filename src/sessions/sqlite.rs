//! Sessions in the embedded SQLite database: `SqliteSessionStore`, the
//! `sessions` table of the conversations' file (created with the rest of the
//! schema in `store::sqlite`), so a restart does not log anyone out. A
//! signed-in session's row names its account (`user_id`, indexed), so all of
//! an account's sessions can be ended at once.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

use super::deferred::SessionWrites;
use super::record::account_of;
use crate::domain::UserId;
use crate::store::sqlite::SqliteDb;
use crate::store::StoreError;

/// Sessions kept in the embedded SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteSessionStore {
    db: SqliteDb,
}

impl SqliteSessionStore {
    pub fn new(db: SqliteDb) -> Self {
        Self { db }
    }

    /// Every unexpired session (for copying between backends).
    pub async fn live_records(&self) -> session_store::Result<Vec<Record>> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let rows = self
            .db
            .call(move |conn| {
                let mut stmt = conn
                    .prepare("SELECT id, data, expires_at FROM sessions WHERE expires_at >= ?1")
                    .map_err(|e| StoreError::Backend(e.into()))?;
                let rows = stmt
                    .query_map(params![now], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    })
                    .map_err(|e| StoreError::Backend(e.into()))?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StoreError::Backend(e.into()))
            })
            .await
            .map_err(store_error)?;
        let mut records = Vec::with_capacity(rows.len());
        for (id, data, expires) in rows {
            let Ok(id) = id.parse::<Id>() else { continue };
            records.push(Record {
                id,
                data: serde_json::from_str(&data)
                    .map_err(|e| session_store::Error::Decode(e.to_string()))?,
                expiry_date: OffsetDateTime::from_unix_timestamp(expires)
                    .map_err(|e| session_store::Error::Decode(e.to_string()))?,
            });
        }
        Ok(records)
    }

    /// Writes a session as it is, whether or not it is stored already (for
    /// copying between backends).
    pub async fn copy(&self, record: &Record) -> session_store::Result<()> {
        self.write(record, WRITE_ANY).await.map(|_| ())
    }

    /// Deletes every session signed in to `user`; returns how many.
    pub async fn revoke_user(&self, user: &UserId) -> Result<usize, StoreError> {
        let user = user.to_string();
        self.db
            .call(move |conn| {
                conn.execute("DELETE FROM sessions WHERE user_id = ?1", params![user])
                    .map_err(|e| StoreError::Backend(e.into()))
            })
            .await
    }

    /// Runs `statement` (one of the `WRITE_` ones) for `record`; the number
    /// of rows written.
    async fn write(
        &self,
        record: &Record,
        statement: &'static str,
    ) -> session_store::Result<usize> {
        let data = serde_json::to_string(&record.data)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        let (id, expires) = (record.id.to_string(), record.expiry_date.unix_timestamp());
        let user = account_of(record).map(str::to_string);
        self.db
            .call(move |conn| {
                conn.prepare_cached(statement)
                    .and_then(|mut stmt| stmt.execute(params![id, data, expires, user]))
                    .map_err(|e| StoreError::Backend(e.into()))
            })
            .await
            .map_err(store_error)
    }

    /// Removes expired sessions; returns how many.
    pub async fn delete_expired(&self) -> Result<usize, StoreError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.db
            .call(move |conn| {
                conn.execute("DELETE FROM sessions WHERE expires_at < ?1", params![now])
                    .map_err(|e| StoreError::Backend(e.into()))
            })
            .await
    }
}

/// A new session; nothing when the id is taken.
const WRITE_NEW: &str =
    "INSERT OR IGNORE INTO sessions (id, data, expires_at, user_id) VALUES (?1, ?2, ?3, ?4)";
/// A session that is stored; nothing when it is not (any more).
const WRITE_EXISTING: &str =
    "UPDATE sessions SET data = ?2, expires_at = ?3, user_id = ?4 WHERE id = ?1";
/// A stored session's expiry, moved on only (nothing when it is not stored).
const TOUCH: &str = "UPDATE sessions SET expires_at = ?2 WHERE id = ?1 AND expires_at < ?2";
/// A session, stored or not.
const WRITE_ANY: &str =
    "INSERT INTO sessions (id, data, expires_at, user_id) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at, \
     user_id = excluded.user_id";

fn store_error(err: StoreError) -> session_store::Error {
    session_store::Error::Backend(err.to_string())
}

#[async_trait]
impl SessionStore for SqliteSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // Ids are 128 random bits; a collision is astronomically unlikely, but
        // a new id on conflict costs nothing and never overwrites a session.
        for _ in 0..4 {
            if self.write(record, WRITE_NEW).await? == 1 {
                return Ok(());
            }
            record.id = Id::default();
        }
        Err(session_store::Error::Backend(
            "could not allocate a session id".into(),
        ))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        // Only while it is still stored: a request that began before the
        // session was ended (its id rotated, signed out, here or
        // everywhere) must not bring it back when it finishes. (A pending
        // session's first write is `put`.)
        self.write(record, WRITE_EXISTING).await.map(|_| ())
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let id = session_id.to_string();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let row = self
            .db
            .call(move |conn| {
                conn.prepare_cached(
                    "SELECT data, expires_at FROM sessions WHERE id = ?1 AND expires_at >= ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![id, now], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                    })
                    .optional()
                })
                .map_err(|e| StoreError::Backend(e.into()))
            })
            .await
            .map_err(store_error)?;
        let Some((data, expires)) = row else {
            return Ok(None);
        };
        Ok(Some(Record {
            id: *session_id,
            data: serde_json::from_str(&data)
                .map_err(|e| session_store::Error::Decode(e.to_string()))?,
            expiry_date: OffsetDateTime::from_unix_timestamp(expires)
                .map_err(|e| session_store::Error::Decode(e.to_string()))?,
        }))
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        let id = session_id.to_string();
        self.db
            .call(move |conn| {
                conn.execute("DELETE FROM sessions WHERE id = ?1", params![id])
                    .map_err(|e| StoreError::Backend(e.into()))
            })
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

#[async_trait]
impl SessionWrites for SqliteSessionStore {
    async fn put(&self, record: &Record) -> session_store::Result<()> {
        self.copy(record).await
    }

    async fn touch(&self, record: &Record) -> session_store::Result<()> {
        let (id, expires) = (record.id.to_string(), record.expiry_date.unix_timestamp());
        self.db
            .call(move |conn| {
                conn.prepare_cached(TOUCH)
                    .and_then(|mut stmt| stmt.execute(params![id, expires]))
                    .map_err(|e| StoreError::Backend(e.into()))
            })
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_stored_before_the_account_column_are_found_by_their_account() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let account = UserId::new();
        let later = OffsetDateTime::now_utc().unix_timestamp() + 3600;
        {
            // The sessions table as it was before accounts were indexed.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE sessions (id TEXT PRIMARY KEY, data TEXT NOT NULL, expires_at INTEGER NOT NULL);",
            )
            .unwrap();
            let signed_in = serde_json::json!({"user_id": account.as_ref(), "auth": "local"});
            let anonymous = serde_json::json!({"user_id": account.as_ref()});
            for data in [signed_in, anonymous] {
                conn.execute(
                    "INSERT INTO sessions (id, data, expires_at) VALUES (?1, ?2, ?3)",
                    params![Id::default().to_string(), data.to_string(), later],
                )
                .unwrap();
            }
        }
        let store = SqliteSessionStore::new(SqliteDb::open(&path).unwrap());

        assert_eq!(store.revoke_user(&account).await.unwrap(), 1);

        let left: Vec<String> = store
            .live_records()
            .await
            .unwrap()
            .iter()
            .map(|record| {
                record
                    .data
                    .get("auth")
                    .cloned()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(left, vec!["null"], "the anonymous session is kept");
    }
}
