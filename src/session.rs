//! HTTP sessions: the tower-sessions layer and its store, plus the two facts
//! the app keeps in a session: the user id (given on first contact) and the
//! current conversation.
//!
//! Embedded mode keeps sessions in the same SQLite file as conversations, so a
//! restart does not log anyone out. The Redis store arrives with
//! multi-instance mode.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use time::OffsetDateTime;
use tower_sessions::cookie::SameSite;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};
use tower_sessions::{Expiry, Session, SessionManagerLayer};

use crate::config::Settings;
use crate::domain::{ConversationId, UserId};
use crate::store::sqlite::SqliteDb;
use crate::store::StoreError;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "chat_session";
const USER_KEY: &str = "user_id";
const CONVERSATION_KEY: &str = "conversation_id";

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

fn store_error(err: StoreError) -> session_store::Error {
    session_store::Error::Backend(err.to_string())
}

#[async_trait]
impl SessionStore for SqliteSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // Ids are 128 random bits; a collision is astronomically unlikely, but
        // a new id on conflict costs nothing and never overwrites a session.
        for _ in 0..4 {
            let data = serde_json::to_string(&record.data)
                .map_err(|e| session_store::Error::Encode(e.to_string()))?;
            let (id, expires) = (record.id.to_string(), record.expiry_date.unix_timestamp());
            let inserted = self
                .db
                .call(move |conn| {
                    conn.prepare_cached(
                        "INSERT OR IGNORE INTO sessions (id, data, expires_at) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut stmt| stmt.execute(params![id, data, expires]))
                    .map_err(|e| StoreError::Backend(e.into()))
                })
                .await
                .map_err(store_error)?;
            if inserted == 1 {
                return Ok(());
            }
            record.id = Id::default();
        }
        Err(session_store::Error::Backend(
            "could not allocate a session id".into(),
        ))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let data = serde_json::to_string(&record.data)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        let (id, expires) = (record.id.to_string(), record.expiry_date.unix_timestamp());
        self.db
            .call(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO sessions (id, data, expires_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at",
                )
                .and_then(|mut stmt| stmt.execute(params![id, data, expires]))
                .map_err(|e| StoreError::Backend(e.into()))
            })
            .await
            .map_err(store_error)?;
        Ok(())
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

/// The session layer with the app's cookie settings.
pub fn layer<S: SessionStore + Clone>(store: S, settings: &Settings) -> SessionManagerLayer<S> {
    let ttl = time::Duration::seconds(settings.session_ttl.as_secs() as i64);
    SessionManagerLayer::new(store)
        .with_name(COOKIE_NAME)
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(settings.cookie_secure)
        .with_path("/")
        // The stored expiry moves on when the session changes (the page
        // changes it on every load). Not `always_save`: every request would
        // write back its whole, possibly stale, copy and could undo a
        // concurrent change of the current conversation.
        .with_expiry(Expiry::OnInactivity(ttl))
}

/// The session layer with its cookie signed by a key derived from
/// `SECRET_KEY` (several instances: every instance must accept the cookies
/// of the others, and nobody else can forge one).
pub fn signed_layer<S: SessionStore + Clone>(
    store: S,
    settings: &Settings,
    secret: &str,
) -> SessionManagerLayer<S, tower_sessions::service::SignedCookie> {
    use sha2::Digest;
    let key = tower_sessions::cookie::Key::from(sha2::Sha512::digest(secret.as_bytes()).as_slice());
    layer(store, settings).with_signed(key)
}

/// The session's user, created (and saved) on first contact.
///
/// A session is given its user id under a new session id when the cookie
/// named a stored session (one without a user): whoever knew the old id
/// (planted it, saw it) does not get to act as the new user. tower-sessions
/// already replaces ids it cannot find in the store.
pub async fn ensure_user(session: &Session) -> Result<UserId, tower_sessions::session::Error> {
    if let Some(raw) = session.get::<String>(USER_KEY).await? {
        return Ok(UserId::from_stored(raw));
    }
    let user = UserId::new();
    if session.id().is_some() {
        session.cycle_id().await?;
    }
    session.insert(USER_KEY, user.as_ref()).await?;
    Ok(user)
}

/// The session's user if it has one (sockets cannot set cookies).
pub async fn existing_user(
    session: &Session,
) -> Result<Option<UserId>, tower_sessions::session::Error> {
    Ok(session
        .get::<String>(USER_KEY)
        .await?
        .map(UserId::from_stored))
}

/// The session's current conversation, if any (ignoring a malformed value).
pub async fn current_conversation(
    session: &Session,
) -> Result<Option<ConversationId>, tower_sessions::session::Error> {
    Ok(session
        .get::<String>(CONVERSATION_KEY)
        .await?
        .and_then(|raw| ConversationId::parse(&raw).ok()))
}

/// Makes `id` the session's current conversation.
pub async fn set_current_conversation(
    session: &Session,
    id: &ConversationId,
) -> Result<(), tower_sessions::session::Error> {
    session.insert(CONVERSATION_KEY, id.as_ref()).await
}

/// Forgets the current conversation.
pub async fn clear_current_conversation(
    session: &Session,
) -> Result<(), tower_sessions::session::Error> {
    session.remove::<String>(CONVERSATION_KEY).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn store() -> (tempfile::TempDir, SqliteSessionStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("s.db")).unwrap();
        (dir, SqliteSessionStore::new(db))
    }

    #[tokio::test]
    async fn a_stored_session_given_its_first_user_gets_a_new_id_and_the_old_one_is_gone() {
        let (_dir, store) = store();
        // A stored session without a user (planted, or from an older version).
        let planted = Session::new(None, Arc::new(store.clone()), None);
        planted.insert("note", "x").await.unwrap();
        planted.save().await.unwrap();
        let old_id = planted.id().unwrap();

        let session = Session::new(Some(old_id), Arc::new(store.clone()), None);
        let user = ensure_user(&session).await.unwrap();
        session.save().await.unwrap();

        let new_id = session.id().unwrap();
        assert_ne!(new_id, old_id, "the session id was not rotated");
        assert!(
            store.load(&old_id).await.unwrap().is_none(),
            "old id still valid"
        );
        let record = store.load(&new_id).await.unwrap().unwrap();
        assert_eq!(record.data[USER_KEY], serde_json::json!(user.as_ref()));
        assert_eq!(record.data["note"], serde_json::json!("x"), "data was lost");
    }

    #[tokio::test]
    async fn a_session_with_a_user_keeps_its_id_and_user() {
        let (_dir, store) = store();
        let first = Session::new(None, Arc::new(store.clone()), None);
        let user = ensure_user(&first).await.unwrap();
        first.save().await.unwrap();
        let id = first.id().unwrap();

        let again = Session::new(Some(id), Arc::new(store.clone()), None);
        assert_eq!(ensure_user(&again).await.unwrap(), user);
        again.save().await.unwrap();

        assert_eq!(again.id(), Some(id));
    }
}
