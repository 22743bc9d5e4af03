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
//!
//! The wrapper also decides how a stored session is written. Only its
//! first write (a pending session given data) may create it; every later
//! save writes it only while it is still stored, so a request that loaded
//! a session before it was deleted (its id rotated at sign-in, signed out,
//! ended everywhere) cannot bring it back. And a session in use has its
//! expiry moved on at most once per [`refresh_every`] without its data being
//! written: [`refresh_on_use`] (a middleware inside the session layer) asks
//! for it when the request loaded a session whose stored expiry is that far
//! behind, and the save then only touches the expiry (see [`SessionWrites`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};
use tower_sessions::Session;

use crate::domain::UserId;

/// The session's user id (every session with a user has it).
pub(super) use super::record::USER_KEY;
/// Marks a record that must not be written (yet): `true`; `false` once it
/// is given data, until its first write (which may create it). Never stored.
pub(super) const PENDING_KEY: &str = "pending";
/// Marks a save that only moves the expiry on (set by [`refresh_on_use`]).
/// Never stored.
const REFRESH_KEY: &str = "refresh_expiry";

/// The writes a session store offers besides `SessionStore`'s: there,
/// `create` writes only a new session and `save` only one that is still
/// stored.
#[async_trait]
pub trait SessionWrites: SessionStore {
    /// Writes the session whether or not it is stored (a pending session's
    /// first write, a copy between stores).
    async fn put(&self, record: &Record) -> session_store::Result<()>;

    /// Moves a stored session's expiry on to `record.expiry_date` and
    /// writes nothing else; nothing when it is not stored (any more).
    async fn touch(&self, record: &Record) -> session_store::Result<()>;
}

/// How often at most a session in use has its expiry moved on without
/// being changed: once a day, or a quarter of a shorter lifetime.
pub fn refresh_every(ttl: Duration) -> Duration {
    (ttl / 4).min(Duration::from_secs(86_400))
}

tokio::task_local! {
    /// Set when the request's session was loaded and is due for a refresh.
    static REFRESH_DUE: Arc<AtomicBool>;
}

/// Middleware inside the session layer: when the request loaded a stored
/// session whose expiry is due to move on, and did not change the session
/// (a change saves it, expiry and all), marks it so that the session layer
/// saves it, which only touches its expiry (and sends the cookie again with
/// a new `Max-Age`). Requests that never read the session load nothing.
pub async fn refresh_on_use(request: Request, next: Next) -> Response {
    let Some(session) = request.extensions().get::<Session>().cloned() else {
        return next.run(request).await;
    };
    let due = Arc::new(AtomicBool::new(false));
    let response = REFRESH_DUE.scope(due.clone(), next.run(request)).await;
    if due.load(Ordering::Acquire) && !session.is_modified() {
        if let Err(err) = session.insert(REFRESH_KEY, true).await {
            tracing::warn!(error = %err, "could not refresh the session's expiry");
        }
    }
    response
}

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
    record.data.get(PENDING_KEY) == Some(&serde_json::Value::Bool(true))
}

/// `record` without the marks that are never stored.
fn unmarked(record: &Record) -> Record {
    let mut record = record.clone();
    record.data.remove(PENDING_KEY);
    record.data.remove(REFRESH_KEY);
    record
}

impl<S> Deferred<S> {
    /// Whether a stored session's expiry is more than [`refresh_every`]
    /// behind where a refresh now would put it.
    fn refresh_due(&self, record: &Record) -> bool {
        let refreshed =
            time::OffsetDateTime::now_utc() + time::Duration::seconds(self.ttl.as_secs() as i64);
        let behind = refreshed - record.expiry_date;
        behind > refresh_every(self.ttl)
    }
}

#[async_trait]
impl<S: SessionWrites + Clone> SessionStore for Deferred<S> {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        if is_pending(record) {
            record.id = pending_id();
            record.data.insert(
                USER_KEY.to_string(),
                serde_json::json!(pending_user(&record.id).as_ref()),
            );
            return Ok(());
        }
        let mut stored = unmarked(record);
        self.inner.create(&mut stored).await?;
        record.id = stored.id;
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        if is_pending(record) {
            return Ok(());
        }
        if record.data.contains_key(REFRESH_KEY) {
            return self.inner.touch(&unmarked(record)).await;
        }
        if record.data.contains_key(PENDING_KEY) {
            // A pending session given data: its first write.
            return self.inner.put(&unmarked(record)).await;
        }
        self.inner.save(record).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        match self.inner.load(id).await? {
            Some(record) => {
                if self.refresh_due(&record) {
                    // Outside a request (a socket's later reads) nobody asks.
                    let _ = REFRESH_DUE.try_with(|due| due.store(true, Ordering::Release));
                }
                Ok(Some(record))
            }
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
    fn a_stored_session_is_due_for_a_refresh_once_a_day_or_a_quarter_of_its_lifetime() {
        let now = time::OffsetDateTime::now_utc();
        let record = |expires: time::OffsetDateTime| Record {
            id: Id::default(),
            data: Default::default(),
            expiry_date: expires,
        };
        let month = Deferred::new((), Duration::from_secs(30 * 86_400));
        let in_days = |days: f64| now + time::Duration::seconds_f64(days * 86_400.0);
        assert!(!month.refresh_due(&record(in_days(30.0))));
        assert!(!month.refresh_due(&record(in_days(29.1))), "within a day");
        assert!(
            month.refresh_due(&record(in_days(28.9))),
            "over a day behind"
        );
        assert!(month.refresh_due(&record(in_days(-1.0))));
        let minute = Deferred::new((), Duration::from_secs(60));
        let in_secs = |secs: i64| now + time::Duration::seconds(secs);
        assert!(!minute.refresh_due(&record(in_secs(50))), "a sixth behind");
        assert!(minute.refresh_due(&record(in_secs(40))), "a third behind");
        assert_eq!(
            refresh_every(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
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
