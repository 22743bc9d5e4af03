//! Sessions in Redis (several instances): `RedisSessionStore`, one key per
//! session under the deployment's prefix, expiring with the session, and
//! per account a sorted set of its signed-in sessions (score: their
//! expiry), so all of an account's sessions can be ended at once.

use std::sync::Arc;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface, SortedSetsInterface};
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

use super::deferred::SessionWrites;
use super::record::account_of;
use crate::cluster::{timed, RedisConnections};
use crate::domain::UserId;
use crate::metrics::Histogram;

/// The end of the scripts below: the session (ARGV[4]) in its account's
/// index (KEYS[2], if any) with its expiry (ARGV[2]) as score; entries
/// whose sessions have expired (before ARGV[5], the time now) leave the
/// index here; the index itself expires with its latest session.
macro_rules! index_and_return {
    () => {
        r#"
if KEYS[2] then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5])
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if last[2] then redis.call('EXPIREAT', KEYS[2], last[2]) end
end
return 1
"#
    };
}

/// Writes a session and, for a signed-in one, its entry in the account's
/// index, in one atomic step (a sign-out everywhere in between cannot miss
/// a session that was written).
///
/// KEYS: the session, then the account's index (none for an anonymous
/// session). ARGV: the value, its expiry (Unix seconds), `NX` (new), `XX`
/// (stored only) or `ANY`, the session id, the time now. Returns 1 when
/// written.
const WRITE: &str = concat!(
    r#"
local written
if ARGV[3] == 'ANY' then
  written = redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[2])
else
  written = redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[2], ARGV[3])
end
if not written then return 0 end
"#,
    index_and_return!()
);

/// Moves a stored session's expiry on, and nothing else: the stored value
/// (`[data,expiry]`) keeps its data byte for byte, only its trailing expiry
/// changes, in one atomic step, so a concurrent change of the data is not
/// undone. Nothing when the session is not stored (any more) or already
/// expires as late.
///
/// KEYS and ARGV as for `WRITE` (ARGV[1] and ARGV[3] unused). Returns 1
/// when touched.
const TOUCH: &str = concat!(
    r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local head, old = string.match(raw, '^(.*,)(%d+)%]$')
if not head or tonumber(old) >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], head .. ARGV[2] .. ']', 'EXAT', ARGV[2], 'XX')
"#,
    index_and_return!()
);

/// How a session is written.
#[derive(Clone, Copy)]
enum Mode {
    /// Only a new one (never overwrites another session).
    New,
    /// Only one that is still stored (a signed-in session's save).
    Existing,
    /// Either.
    Any,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::New => "NX",
            Mode::Existing => "XX",
            Mode::Any => "ANY",
        }
    }
}

/// Sessions in Redis under `{prefix}:session:<id>`, expiring with them;
/// a signed-in account's session ids in `{prefix}:sessions-of:<user id>`.
/// (tower-sessions-redis-store keys by bare id, which collides between
/// deployments and test runs sharing a Redis.)
#[derive(Clone)]
pub struct RedisSessionStore {
    client: Client,
    prefix: String,
    index_prefix: String,
    latency: Arc<Histogram>,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisSessionStore")
    }
}

fn redis_error(err: fred::error::Error) -> session_store::Error {
    session_store::Error::Backend(format!("redis: {err}"))
}

impl RedisSessionStore {
    pub fn new(connections: &RedisConnections) -> Self {
        // The scripts above touch a session and its account's index at once, and a Redis
        // Cluster runs a script only on keys of one hash slot: there every session key and
        // index carries the same hash tag, `{<prefix>:sessions}`, so they live on one master.
        // (Elsewhere the keys stay as they were, so upgrading signs nobody out.)
        let (prefix, index_prefix) = if connections.client.is_clustered() {
            let tag = format!("{{{}}}", connections.key("sessions"));
            (format!("{tag}:session:"), format!("{tag}:of:"))
        } else {
            (connections.key("session:"), connections.key("sessions-of:"))
        };
        Self {
            client: connections.client.clone(),
            prefix,
            index_prefix,
            latency: connections.latency.clone(),
        }
    }

    fn key(&self, id: &Id) -> String {
        format!("{}{id}", self.prefix)
    }

    fn index_key(&self, user: &str) -> String {
        format!("{}{user}", self.index_prefix)
    }

    async fn write(&self, record: &Record, mode: Mode) -> session_store::Result<bool> {
        let expires = record.expiry_date.unix_timestamp();
        let value = serde_json::to_string(&(&record.data, expires))
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        self.run(WRITE, record, value, mode).await
    }

    /// Runs `script` (`WRITE` or `TOUCH`) for `record`; whether it wrote.
    async fn run(
        &self,
        script: &'static str,
        record: &Record,
        value: String,
        mode: Mode,
    ) -> session_store::Result<bool> {
        let expires = record.expiry_date.unix_timestamp();
        let mut keys = vec![self.key(&record.id)];
        keys.extend(account_of(record).map(|user| self.index_key(user)));
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let args = vec![
            value,
            expires.to_string(),
            mode.arg().to_string(),
            record.id.to_string(),
            now.to_string(),
        ];
        // EVAL with the text each time: the script is short, and sessions
        // are written only when they change (or once a day in use).
        let written: i64 = timed(&self.latency, self.client.eval(script, keys, args))
            .await
            .map_err(redis_error)?;
        Ok(written == 1)
    }

    /// Writes a session as it is, whether or not it is stored already.
    pub async fn copy(&self, record: &Record) -> session_store::Result<()> {
        self.write(record, Mode::Any).await.map(|_| ())
    }

    /// Deletes every session signed in to `user`; returns how many were
    /// listed for it.
    pub async fn revoke_user(&self, user: &UserId) -> session_store::Result<u64> {
        let index = self.index_key(user.as_ref());
        let ids: Vec<String> = timed(
            &self.latency,
            self.client.zrange(&index, 0, -1, None, false, None, false),
        )
        .await
        .map_err(redis_error)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("{}{id}", self.prefix))
            .collect();
        let pipeline = self.client.pipeline();
        let _: () = pipeline.del(keys).await.map_err(redis_error)?;
        // Only the entries read: a sign-in meanwhile keeps its own.
        let _: () = pipeline
            .zrem(&index, ids.clone())
            .await
            .map_err(redis_error)?;
        timed(&self.latency, pipeline.all::<fred::types::Value>())
            .await
            .map_err(redis_error)?;
        Ok(ids.len() as u64)
    }
}

/// A stored value: the session's data and its expiry.
fn decode(raw: &str) -> session_store::Result<Record> {
    let (data, expires): (std::collections::HashMap<String, serde_json::Value>, i64) =
        serde_json::from_str(raw).map_err(|e| session_store::Error::Decode(e.to_string()))?;
    Ok(Record {
        id: Id::default(),
        data,
        expiry_date: OffsetDateTime::from_unix_timestamp(expires)
            .map_err(|e| session_store::Error::Decode(e.to_string()))?,
    })
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // NX: a new session never overwrites an existing one.
        for _ in 0..4 {
            if self.write(record, Mode::New).await? {
                return Ok(());
            }
            record.id = Id::default();
        }
        Err(session_store::Error::Backend(
            "could not allocate a session id".into(),
        ))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        // Only while it is still stored (XX, as tower-sessions-redis-store
        // does): a request that began before the session was ended (its id
        // rotated, signed out, here or everywhere) must not bring it back
        // when it finishes. (A pending session's first write is `put`.)
        self.write(record, Mode::Existing).await.map(|_| ())
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let raw: Option<String> = timed(&self.latency, self.client.get(self.key(session_id)))
            .await
            .map_err(redis_error)?;
        let Some(raw) = raw else { return Ok(None) };
        let record = decode(&raw)?;
        Ok(Some(Record {
            id: *session_id,
            ..record
        }))
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        let key = self.key(session_id);
        // Read first, to take the session out of its account's index too.
        let raw: Option<String> = timed(&self.latency, self.client.get(&key))
            .await
            .map_err(redis_error)?;
        let account = raw
            .as_deref()
            .and_then(|raw| decode(raw).ok())
            .and_then(|record| account_of(&record).map(str::to_string));
        let pipeline = self.client.pipeline();
        let _: () = pipeline.del(&key).await.map_err(redis_error)?;
        if let Some(user) = account {
            let _: () = pipeline
                .zrem(self.index_key(&user), session_id.to_string())
                .await
                .map_err(redis_error)?;
        }
        timed(&self.latency, pipeline.all::<fred::types::Value>())
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}

#[async_trait]
impl SessionWrites for RedisSessionStore {
    async fn put(&self, record: &Record) -> session_store::Result<()> {
        self.write(record, Mode::Any).await.map(|_| ())
    }

    async fn touch(&self, record: &Record) -> session_store::Result<()> {
        self.run(TOUCH, record, String::new(), Mode::Existing)
            .await
            .map(|_| ())
    }
}
