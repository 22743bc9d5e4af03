//! HTTP sessions: where they are kept and how a request finds its own.
//!
//! This module owns the tower-sessions layer (the cookie's settings, signed
//! with several instances), the two facts the app keeps in a session (the
//! user id, given on first contact, and the current conversation), and the
//! choice of session store: beside the conversations (the SQLite file, or
//! MongoDB's `sessions` collection), or in Redis with several instances.
//! [`open`] opens the conversation store and its sessions together;
//! [`Sessions::apply`] puts the session layer around the router.
//!
//! The stores themselves: [`sqlite`], [`mongo`], [`redis`]; what they read
//! from a session's data to index it by account: `record`.

pub mod deferred;
pub mod mongo;
mod record;
pub mod redis;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tower_sessions::cookie::SameSite;
use tower_sessions::session::Record;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

use crate::cluster::RedisConnections;
use crate::config::Settings;
use crate::domain::{ConversationId, UserId};
use crate::oidc::PendingLogin;
use crate::store::accounts::AccountStore;
use crate::store::cache::CachedStore;
use crate::store::mongo::MongoStore;
use crate::store::shares::ShareStore;
use crate::store::sqlite::{SqliteDb, SqliteStore};
use crate::store::tokens::TokenStore;
use crate::store::usage::UsageStore;
use crate::store::{Backend, ConversationStore};

use self::record::{AUTH_KEY, USER_KEY};

pub use self::deferred::SessionWrites;
pub use self::mongo::MongoSessionStore;
pub use self::redis::RedisSessionStore;
pub use self::sqlite::SqliteSessionStore;

/// Name of the session cookie over plain HTTP (as the original app named it).
pub const COOKIE_NAME: &str = "chat_session";
/// Name of the session cookie when it is `Secure` (`COOKIE_SECURE=true`):
/// with the `__Host-` prefix, browsers accept it only from a secure origin,
/// with `Path=/` and no `Domain`, so a sibling subdomain or a plain-HTTP
/// page cannot set or shadow it.
pub const SECURE_COOKIE_NAME: &str = "__Host-chat_session";

/// The session cookie's name for these settings.
pub fn cookie_name(settings: &Settings) -> &'static str {
    if settings.cookie_secure {
        SECURE_COOKIE_NAME
    } else {
        COOKIE_NAME
    }
}
const CONVERSATION_KEY: &str = "conversation_id";
/// `AUTH_MODE=proxy`: the email the proxy named when the session signed in.
const PROXIED_KEY: &str = "proxied_email";
/// Single sign-on logins begun in this browser and not finished yet.
const OIDC_PENDING_KEY: &str = "oidc_pending";
/// The provider the session signed in with, and its ID token (for logout).
const OIDC_SESSION_KEY: &str = "oidc_session";

/// Where sessions are kept: in Redis with several instances, else beside
/// the conversations. Cheap to clone (each store is a handle).
#[derive(Clone)]
pub enum Sessions {
    Sqlite(SqliteSessionStore),
    Mongo(MongoSessionStore),
    Redis(RedisSessionStore),
}

impl Sessions {
    /// Every unexpired session (for copying between stores).
    pub async fn live_records(&self) -> anyhow::Result<Vec<Record>> {
        match self {
            Sessions::Sqlite(store) => store.live_records().await,
            Sessions::Mongo(store) => store.live_records().await,
            Sessions::Redis(_) => anyhow::bail!("sessions in Redis are not copied"),
        }
        .map_err(|e| anyhow::anyhow!("reading sessions: {e}"))
    }

    /// Writes a session as it is (stored already or not).
    pub async fn save(&self, record: &Record) -> anyhow::Result<()> {
        match self {
            Sessions::Sqlite(store) => store.copy(record).await,
            Sessions::Mongo(store) => store.copy(record).await,
            Sessions::Redis(store) => store.copy(record).await,
        }
        .map_err(|e| anyhow::anyhow!("writing sessions: {e}"))
    }

    /// Ends every session signed in to `user` (sign out everywhere, or an
    /// administrator disabled the account); returns how many. A request
    /// of one of them that is still running cannot bring it back: the
    /// stores save a signed-in session only while it is stored.
    pub async fn revoke_user(&self, user: &UserId) -> anyhow::Result<u64> {
        match self {
            Sessions::Sqlite(store) => store
                .revoke_user(user)
                .await
                .map(|count| count as u64)
                .map_err(|e| anyhow::anyhow!("{e}")),
            Sessions::Mongo(store) => store
                .revoke_user(user)
                .await
                .map_err(|e| anyhow::anyhow!("{e}")),
            Sessions::Redis(store) => store
                .revoke_user(user)
                .await
                .map_err(|e| anyhow::anyhow!("{e}")),
        }
        .context("ending the account's sessions")
    }

    /// Puts the session layer around `router` (its cookie signed when
    /// sessions are in Redis), with [`deferred::refresh_on_use`] inside it;
    /// with SQLite, also starts the task that removes expired sessions.
    pub fn apply(self, router: Router, settings: &Settings) -> Router {
        let router = router.layer(axum::middleware::from_fn(deferred::refresh_on_use));
        match self {
            Sessions::Sqlite(store) => {
                tokio::spawn(expire_sessions(store.clone()));
                router.layer(layer(store, settings))
            }
            Sessions::Mongo(store) => router.layer(layer(store, settings)),
            Sessions::Redis(store) => {
                let secret = settings
                    .secret_key
                    .as_ref()
                    .map(|k| k.expose())
                    .unwrap_or_default();
                router.layer(signed_layer(store, settings, secret))
            }
        }
    }
}

/// What one backend holds: conversations, accounts, tokens, share links,
/// usage and sessions.
pub struct Backends {
    pub conversations: Arc<dyn ConversationStore>,
    pub accounts: Arc<dyn AccountStore>,
    pub tokens: Arc<dyn TokenStore>,
    /// Users' presets.
    pub presets: Arc<dyn crate::store::presets::PresetStore>,
    /// Share links and their snapshots.
    pub shares: Arc<dyn ShareStore>,
    /// Token usage and quotas.
    pub usage: Arc<dyn UsageStore>,
    pub sessions: Sessions,
}

/// Opens one backend: the SQLite file at `DATABASE_PATH`, or MongoDB at
/// `MONGODB_URI` (a clear error when it is not set or cannot be reached).
pub async fn open_backend(backend: Backend, settings: &Settings) -> anyhow::Result<Backends> {
    match backend {
        Backend::MongoDb => {
            let Some(uri) = &settings.mongodb_uri else {
                anyhow::bail!("MONGODB_URI is not set: it names the MongoDB server to use");
            };
            let store = Arc::new(
                MongoStore::connect(uri, &settings.mongodb_db)
                    .await?
                    .with_limits(settings.conversation_limits),
            );
            tracing::info!(database = %settings.mongodb_db, text_search = store.text_search(), "conversations in MongoDB");
            Ok(Backends {
                sessions: Sessions::Mongo(store.session_store()),
                conversations: store.clone(),
                accounts: store.clone(),
                usage: store.clone(),
                presets: store.clone(),
                shares: store.clone(),
                tokens: store,
            })
        }
        Backend::Sqlite => {
            let db = SqliteDb::open(&settings.database_path)
                .with_context(|| format!("DATABASE_PATH={}", settings.database_path.display()))?;
            tracing::info!(path = %settings.database_path.display(), "conversations in SQLite");
            let store =
                Arc::new(SqliteStore::new(db.clone()).with_limits(settings.conversation_limits));
            Ok(Backends {
                conversations: store.clone(),
                accounts: store.clone(),
                usage: store.clone(),
                presets: store.clone(),
                shares: store.clone(),
                tokens: store,
                sessions: Sessions::Sqlite(SqliteSessionStore::new(db)),
            })
        }
    }
}

/// The store the settings ask for (MongoDB when `MONGODB_URI` is set, else
/// SQLite), with sessions in Redis when it is there.
pub async fn open(
    settings: &Settings,
    redis: Option<&RedisConnections>,
) -> anyhow::Result<Backends> {
    let backend = if settings.mongodb_uri.is_some() {
        Backend::MongoDb
    } else {
        Backend::Sqlite
    };
    let mut opened = open_backend(backend, settings).await?;
    // The embedded file without Redis has this process as its one writer:
    // the cache trusts its copies. Otherwise other instances (or the
    // original app, on MongoDB) write too: each copy is checked against the
    // conversation's revision first (one small read instead of the whole
    // history).
    if settings.conversation_cache_bytes > 0 {
        let cache = if backend == Backend::Sqlite && redis.is_none() {
            CachedStore::new(opened.conversations, settings.conversation_cache_bytes)
        } else {
            CachedStore::shared(opened.conversations, settings.conversation_cache_bytes)
        };
        opened.conversations = Arc::new(cache);
    }
    if let Some(redis) = redis {
        opened.sessions = Sessions::Redis(RedisSessionStore::new(redis));
    }
    Ok(opened)
}

/// Removes expired SQLite sessions once an hour (MongoDB's TTL index and
/// Redis's key expiry do it by themselves).
async fn expire_sessions(store: SqliteSessionStore) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        match store.delete_expired().await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "expired sessions removed"),
            Err(err) => tracing::warn!(error = %err, "could not remove expired sessions"),
        }
    }
}

/// The session layer with the app's cookie settings.
pub fn layer<S: SessionWrites + Clone>(
    store: S,
    settings: &Settings,
) -> SessionManagerLayer<deferred::Deferred<S>> {
    let ttl = time::Duration::seconds(settings.session_ttl.as_secs() as i64);
    SessionManagerLayer::new(deferred::Deferred::new(store, settings.session_ttl))
        .with_name(cookie_name(settings))
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(settings.cookie_secure)
        // `/` and no domain: what the `__Host-` name requires.
        .with_path("/")
        // The stored expiry moves on when the session changes, and when
        // it is used: `deferred::refresh_on_use` touches only the expiry, at
        // most once a day. Not `always_save`: every request would write
        // back its whole, possibly stale, copy and could undo a concurrent
        // change of the current conversation.
        .with_expiry(Expiry::OnInactivity(ttl))
}

/// The session layer with its cookie signed by a key derived from
/// `SECRET_KEY` (several instances: every instance must accept the cookies
/// of the others, and nobody else can forge one).
pub fn signed_layer<S: SessionWrites + Clone>(
    store: S,
    settings: &Settings,
    secret: &str,
) -> SessionManagerLayer<deferred::Deferred<S>, tower_sessions::service::SignedCookie> {
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
        keep(session).await?;
        return Ok(UserId::from_stored(raw));
    }
    let user = UserId::new();
    adopt(session, &user).await?;
    Ok(user)
}

/// Gives a session without a user the (so far unsaved) anonymous `user`,
/// to be stored with the response; see [`ensure_user`] for the new id.
pub async fn adopt(session: &Session, user: &UserId) -> Result<(), tower_sessions::session::Error> {
    if session.id().is_some() {
        session.cycle_id().await?;
    }
    session.insert(USER_KEY, user.as_ref()).await
}

/// Gives a first-time visitor (no session, or one the store does not hold)
/// a pending session: a cookie and a user id, nothing stored until the
/// session is given data (see [`deferred`]).
pub async fn begin_pending(session: &Session) -> Result<(), tower_sessions::session::Error> {
    if session.get::<String>(USER_KEY).await?.is_some() {
        return Ok(());
    }
    session.insert(deferred::PENDING_KEY, true).await
}

/// Whether the session is pending: it has a user, but is not stored yet.
pub async fn is_pending(session: &Session) -> Result<bool, tower_sessions::session::Error> {
    Ok(session.get::<bool>(deferred::PENDING_KEY).await? == Some(true))
}

/// The session is being given data: from now on it is stored (its first
/// write may create it; see [`deferred`]).
async fn keep(session: &Session) -> Result<(), tower_sessions::session::Error> {
    if is_pending(session).await? {
        session.insert(deferred::PENDING_KEY, false).await?;
    }
    Ok(())
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

/// The signed-in account's user id; `None` for an anonymous user (or none).
pub async fn signed_in(
    session: &Session,
) -> Result<Option<UserId>, tower_sessions::session::Error> {
    if session.get::<String>(AUTH_KEY).await?.is_none() {
        return Ok(None);
    }
    existing_user(session).await
}

/// How the session signed in (`local`, `oidc`, `proxy`), if it did.
pub async fn sign_in_method(
    session: &Session,
) -> Result<Option<String>, tower_sessions::session::Error> {
    session.get::<String>(AUTH_KEY).await
}

/// A value of an older shape reads as absent; a store failure stays one.
fn malformed_is_none<T>(
    err: tower_sessions::session::Error,
) -> Result<Option<T>, tower_sessions::session::Error> {
    match err {
        tower_sessions::session::Error::SerdeJson(_) => Ok(None),
        other => Err(other),
    }
}

/// Keeps a begun single sign-on login for its callback (which another
/// instance may serve: the session is shared). Expired logins are dropped,
/// and the oldest beyond [`crate::oidc::MAX_PENDING_LOGINS`].
pub async fn push_pending_login(
    session: &Session,
    login: PendingLogin,
) -> Result<(), tower_sessions::session::Error> {
    let mut pending = session
        .get::<Vec<PendingLogin>>(OIDC_PENDING_KEY)
        .await
        .or_else(malformed_is_none)?
        .unwrap_or_default();
    pending.retain(|known| !known.expired());
    pending.push(login);
    let excess = pending
        .len()
        .saturating_sub(crate::oidc::MAX_PENDING_LOGINS);
    pending.drain(..excess);
    session.insert(OIDC_PENDING_KEY, pending).await
}

/// Takes (and so uses up) the begun login of `provider` with this `state`;
/// it may have expired, the caller checks. Expired logins are dropped.
pub async fn take_pending_login(
    session: &Session,
    provider: &str,
    state: &str,
) -> Result<Option<PendingLogin>, tower_sessions::session::Error> {
    let Some(mut pending) = session
        .get::<Vec<PendingLogin>>(OIDC_PENDING_KEY)
        .await
        .or_else(malformed_is_none)?
    else {
        return Ok(None);
    };
    let found = pending
        .iter()
        .position(|login| login.matches(provider, state))
        .map(|index| pending.remove(index));
    pending.retain(|login| !login.expired());
    if pending.is_empty() {
        session.remove_value(OIDC_PENDING_KEY).await?;
    } else {
        session.insert(OIDC_PENDING_KEY, pending).await?;
    }
    Ok(found)
}

/// Remembers the provider this session signed in with and its ID token
/// (after [`sign_in`]).
pub async fn set_provider_session(
    session: &Session,
    provider: &str,
    id_token: &str,
) -> Result<(), tower_sessions::session::Error> {
    session.insert(OIDC_SESSION_KEY, (provider, id_token)).await
}

/// The provider this session signed in with and its ID token, if any.
pub async fn provider_session(
    session: &Session,
) -> Result<Option<(String, String)>, tower_sessions::session::Error> {
    session
        .get::<(String, String)>(OIDC_SESSION_KEY)
        .await
        .or_else(malformed_is_none)
}

/// The email a trusted proxy named when this session signed in.
pub async fn proxied_email(
    session: &Session,
) -> Result<Option<String>, tower_sessions::session::Error> {
    session.get::<String>(PROXIED_KEY).await
}

/// Remembers the email a trusted proxy named (after [`sign_in`]).
pub async fn set_proxied_email(
    session: &Session,
    email: &str,
) -> Result<(), tower_sessions::session::Error> {
    session.insert(PROXIED_KEY, email).await
}

/// Signs `user` in (by `method`, e.g. `local`) under a new session id, so
/// whoever knew the old id is not signed in. Returns the anonymous user the
/// session had until now, whose conversations should move to the account.
pub async fn sign_in(
    session: &Session,
    user: &UserId,
    method: &'static str,
) -> Result<Option<UserId>, tower_sessions::session::Error> {
    let anonymous = match session.get::<String>(AUTH_KEY).await? {
        Some(_) => None,
        None => existing_user(session).await?,
    };
    keep(session).await?;
    session.cycle_id().await?;
    session.insert(USER_KEY, user.as_ref()).await?;
    session.insert(AUTH_KEY, method).await?;
    session.remove::<String>(PROXIED_KEY).await?;
    session.remove_value(OIDC_SESSION_KEY).await?;
    Ok(anonymous.filter(|previous| previous != user))
}

/// Ends the session: its record is deleted and the cookie cleared; the
/// next request starts a new one.
pub async fn sign_out(session: &Session) -> Result<(), tower_sessions::session::Error> {
    session.flush().await
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
    keep(session).await?;
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

    use tower_sessions::session_store::SessionStore;

    use super::*;
    use crate::store::sqlite::SqliteDb;

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
