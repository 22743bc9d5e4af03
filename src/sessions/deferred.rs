//! Sessions that are not stored until they are given data.
//!
//! Loading the page gives a first-time visitor a cookie and a user id, so
//! that its socket and its later requests are one user, but nothing is
//! written: the cookie names a *pending* session, whose id carries the time
//! it was issued and whose user id is derived from the id. A request that
//! names a pending id the store does not hold gets that session back as it
//! was issued; the first request that gives it data (a conversation, a
//! sign-in) writes it under the same id. So a script that loads the page
//! or lists conversations a thousand times stores nothing.
//!
//! A pending id is only honoured for the session lifetime after it was
//! issued: an expired session's cookie cannot bring its user back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

use crate::domain::UserId;

/// The session's user id (every session with a user has it).
pub(super) use super::record::USER_KEY;
/// Marks a record that must not be written (yet).
pub(super) const PENDING_KEY: &str = "pending";
/// The top 16 bits of every pending id.
const TAG: u128 = 0x70e5;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new pending id: the tag, the time of issue (32 bits of seconds) and
/// 80 random bits.
fn pending_id() -> Id {
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    let issued = u128::from(now_secs() as u32);
    Id(((TAG << 112) | (issued << 80) | random) as i128)
}

/// When `id` was issued, if it is a pending id.
fn issued_at(id: &Id) -> Option<u64> {
    let bits = id.0 as u128;
    (bits >> 112 == TAG).then(|| u64::from((bits >> 80) as u32))
}

/// The user of a pending session: a UUID made from a hash of its id (the
/// same on every instance; the id cannot be recovered from it).
pub(super) fn pending_user(id: &Id) -> UserId {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("pending-session-user:{id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    UserId::from_stored(
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string(),
    )
}

/// Wraps a session store: records marked pending are never written, and a
/// fresh pending id the store does not hold loads as issued.
#[derive(Debug, Clone)]
pub struct Deferred<S> {
    inner: S,
    ttl: Duration,
}

impl<S> Deferred<S> {
    pub fn new(inner: S, ttl: Duration) -> Self {
        Self { inner, ttl }
    }

    /// The record a pending id stands for, while it is fresh.
    fn issued_record(&self, id: &Id) -> Option<Record> {
        let issued = issued_at(id)?;
        let now = now_secs();
        // 32 bits of seconds: compare within the same wrap-around.
        let age = (now as u32).wrapping_sub(issued as u32);
        if u64::from(age) > self.ttl.as_secs() {
            return None;
        }
        let mut record = Record {
            id: *id,
            data: Default::default(),
            expiry_date: time::OffsetDateTime::now_utc()
                + time::Duration::seconds(self.ttl.as_secs() as i64),
        };
        record.data.insert(
            USER_KEY.to_string(),
            serde_json::json!(pending_user(id).as_ref()),
        );
        record
            .data
            .insert(PENDING_KEY.to_string(), serde_json::json!(true));
        Some(record)
    }
}

fn is_pending(record: &Record) -> bool {
    record.data.contains_key(PENDING_KEY)
}

#[async_trait]
impl<S: SessionStore + Clone> SessionStore for Deferred<S> {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        if is_pending(record) {
            record.id = pending_id();
            record.data.insert(
                USER_KEY.to_string(),
                serde_json::json!(pending_user(&record.id).as_ref()),
            );
            return Ok(());
        }
        self.inner.create(record).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        if is_pending(record) {
            return Ok(());
        }
        self.inner.save(record).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        match self.inner.load(id).await? {
            Some(record) => Ok(Some(record)),
            None => Ok(self.issued_record(id)),
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.inner.delete(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_ids_carry_their_time_and_random_ids_rarely_look_pending() {
        let id = pending_id();
        let issued = issued_at(&id).unwrap();
        assert!(now_secs().abs_diff(issued) <= 1);
        assert_ne!(pending_id(), id);
        assert_eq!(pending_user(&id), pending_user(&id));
        assert_ne!(pending_user(&id), pending_user(&pending_id()));
        let randoms = (0..1000).filter(|_| issued_at(&Id::default()).is_some());
        assert!(randoms.count() < 5);
    }

    #[test]
    fn a_pending_id_is_honoured_for_the_session_lifetime_only() {
        let deferred = Deferred::new((), Duration::from_secs(3600));
        let fresh = pending_id();
        let bits = fresh.0 as u128;
        let issued = (bits >> 80) as u32;
        let old =
            Id(((bits & !(0xffff_ffffu128 << 80)) | (u128::from(issued - 7200) << 80)) as i128);

        let record = deferred.issued_record(&fresh).unwrap();
        assert_eq!(
            record.data[USER_KEY],
            serde_json::json!(pending_user(&fresh).as_ref())
        );
        assert!(deferred.issued_record(&old).is_none());
        assert!(deferred.issued_record(&Id(1)).is_none());
    }
}
