//! Sessions in MongoDB: `MongoSessionStore`, the `sessions` collection in
//! the conversations' database, whose expired sessions the server removes
//! through a TTL index (created with the other indexes in `store::mongo`).
//! A signed-in session names its account (`user_id`, indexed), so all of an
//! account's sessions can be ended at once.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use mongodb::bson::{self, doc, Document};
use mongodb::Collection;
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

use super::deferred::SessionWrites;
use super::record::account_of;
use crate::domain::UserId;
use crate::redact::Redactor;
use crate::store::mongo::{code, command_code, map_error, MongoStore};

impl MongoStore {
    /// The HTTP session store, in the same database.
    pub fn session_store(&self) -> MongoSessionStore {
        MongoSessionStore {
            sessions: self.sessions.clone(),
            redactor: self.redactor.clone(),
        }
    }
}

/// HTTP sessions in the collection `sessions`:
/// `{_id: session id, data: JSON text, expires_at: date, user_id: account
/// or null}`, with a TTL index on `expires_at` so MongoDB removes expired
/// ones, and an index on `user_id`.
#[derive(Clone)]
pub struct MongoSessionStore {
    sessions: Collection<Document>,
    redactor: Arc<Redactor>,
}

impl fmt::Debug for MongoSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MongoSessionStore")
    }
}

fn session_error(redactor: &Redactor, err: mongodb::error::Error) -> session_store::Error {
    session_store::Error::Backend(map_error(redactor, err).to_string())
}

/// A stored session document as a tower-sessions record.
fn session_record(id: Id, d: &Document) -> session_store::Result<Record> {
    let data = d
        .get_str("data")
        .map_err(|e| session_store::Error::Decode(e.to_string()))?;
    let expires = d
        .get_datetime("expires_at")
        .map_err(|e| session_store::Error::Decode(e.to_string()))?;
    Ok(Record {
        id,
        data: serde_json::from_str(data)
            .map_err(|e| session_store::Error::Decode(e.to_string()))?,
        expiry_date: OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(expires.timestamp_millis()) * 1_000_000,
        )
        .map_err(|e| session_store::Error::Decode(e.to_string()))?,
    })
}

/// The stored fields of `record` but its id.
fn session_fields(record: &Record) -> session_store::Result<Document> {
    let data = serde_json::to_string(&record.data)
        .map_err(|e| session_store::Error::Encode(e.to_string()))?;
    Ok(doc! {
        "data": data,
        "expires_at": expiry(record.expiry_date),
        "user_id": account_of(record),
    })
}

impl MongoSessionStore {
    /// Writes a session as it is, whether or not it is stored already (for
    /// copying between backends).
    pub async fn copy(&self, record: &Record) -> session_store::Result<()> {
        self.sessions
            .update_one(
                doc! {"_id": record.id.to_string()},
                doc! {"$set": session_fields(record)?},
            )
            .upsert(true)
            .await
            .map_err(|e| session_error(&self.redactor, e))?;
        Ok(())
    }

    /// Deletes every session signed in to `user`; returns how many.
    pub async fn revoke_user(&self, user: &UserId) -> session_store::Result<u64> {
        let deleted = self
            .sessions
            .delete_many(doc! {"user_id": user.as_ref()})
            .await
            .map_err(|e| session_error(&self.redactor, e))?;
        Ok(deleted.deleted_count)
    }

    /// Every unexpired session (for copying between backends).
    pub async fn live_records(&self) -> session_store::Result<Vec<Record>> {
        use futures_util::TryStreamExt;
        let docs: Vec<Document> = self
            .sessions
            .find(doc! {"expires_at": {"$gte": expiry(OffsetDateTime::now_utc())}})
            .await
            .map_err(|e| session_error(&self.redactor, e))?
            .try_collect()
            .await
            .map_err(|e| session_error(&self.redactor, e))?;
        let mut records = Vec::with_capacity(docs.len());
        for d in &docs {
            let Some(id) = d.get_str("_id").ok().and_then(|raw| raw.parse::<Id>().ok()) else {
                continue;
            };
            records.push(session_record(id, d)?);
        }
        Ok(records)
    }
}

fn expiry(at: OffsetDateTime) -> bson::DateTime {
    let millis = at.unix_timestamp_nanos() / 1_000_000;
    bson::DateTime::from_millis(millis.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

#[async_trait]
impl SessionStore for MongoSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // A fresh id on the (astronomically unlikely) collision: an existing
        // session is never overwritten.
        for _ in 0..4 {
            let mut d = doc! {"_id": record.id.to_string()};
            d.extend(session_fields(record)?);
            match self.sessions.insert_one(d).await {
                Ok(_) => return Ok(()),
                Err(e) if command_code(&e) == Some(code::DUPLICATE_KEY) => {
                    record.id = Id::default();
                }
                Err(e) => return Err(session_error(&self.redactor, e)),
            }
        }
        Err(session_store::Error::Backend(
            "could not allocate a session id".into(),
        ))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        // Only while it is still stored (no upsert): a request that began
        // before the session was ended (its id rotated, signed out, here or
        // everywhere) must not bring it back when it finishes. (A pending
        // session's first write is `put`.)
        self.sessions
            .update_one(
                doc! {"_id": record.id.to_string()},
                doc! {"$set": session_fields(record)?},
            )
            .await
            .map_err(|e| session_error(&self.redactor, e))?;
        Ok(())
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let found = self
            .sessions
            .find_one(doc! {
                "_id": session_id.to_string(),
                "expires_at": {"$gte": expiry(OffsetDateTime::now_utc())},
            })
            .await
            .map_err(|e| session_error(&self.redactor, e))?;
        let Some(d) = found else {
            return Ok(None);
        };
        session_record(*session_id, &d).map(Some)
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        self.sessions
            .delete_one(doc! {"_id": session_id.to_string()})
            .await
            .map_err(|e| session_error(&self.redactor, e))?;
        Ok(())
    }
}

#[async_trait]
impl SessionWrites for MongoSessionStore {
    async fn put(&self, record: &Record) -> session_store::Result<()> {
        self.copy(record).await
    }

    async fn touch(&self, record: &Record) -> session_store::Result<()> {
        let expires = expiry(record.expiry_date);
        self.sessions
            .update_one(
                doc! {"_id": record.id.to_string(), "expires_at": {"$lt": expires}},
                doc! {"$set": {"expires_at": expires}},
            )
            .await
            .map_err(|e| session_error(&self.redactor, e))?;
        Ok(())
    }
}
