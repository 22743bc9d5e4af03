//! Socket.IO on namespace `/`: the connect middleware (origin check), the
//! socket's identity taken from the HTTP session of its handshake, and the
//! registration of one handler per event (`handlers.rs`). The turn itself
//! lives in `turn/`.
//!
//! Handlers are generic over the adapter, so the same code serves the local
//! adapter (one instance) and the Redis adapter (several).

mod handlers;
mod handshake;
mod sink;
mod socket;

use std::sync::atomic::Ordering;

use socketioxide::adapter::Adapter;
use socketioxide::extract::{MaybeHttpExtension, SocketRef, State};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;
use socketioxide_core::adapter::DefinedAdapter;
use tower_sessions::Session;

use handlers::{
    on_disconnect, on_edit_message, on_regenerate, on_send_message, on_stop_generation,
    on_switch_branch, on_watch_conversation,
};
pub use handshake::{slim_handshake, HandshakeHeaders};
pub use sink::{SocketNotifier, SOCKET_BUFFER};
pub use socket::SocketUser;

use crate::auth::bearer_token;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::events;
use crate::notify::user_room;
use crate::sessions;
use crate::state::AppState;

/// Registers the namespace and its handlers.
///
/// Middlewares run before the server acknowledges the connection; the
/// connect handler is spawned after it (socketioxide 0.18 has no synchronous
/// connect handler). So the identity and the event handlers are settled in
/// a middleware: an event sent right after connecting always finds its
/// handler.
pub fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>) -> A::InitRes {
    // `with` puts a middleware before the ones already there: the origin
    // check runs first.
    io.ns(
        "/",
        on_connect::<A>.with(identify::<A>).with(check_origin::<A>),
    )
}

/// Why a connection was refused (sent as the `connect_error` message).
#[derive(Debug)]
struct Refused(&'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Whether a request's `Origin` may use this server: absent (not a
/// browser), the server's own host, or listed in `CORS_ALLOWED_ORIGINS`.
pub fn origin_allowed(headers: &axum::http::HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let origin = origin.trim_end_matches('/');
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers.get("host").and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// A cross-site page must not drive a user's chat with their cookie.
async fn check_origin<A: Adapter>(
    socket: SocketRef<A>,
    State(state): State<AppState>,
) -> Result<(), Refused> {
    if origin_allowed(
        &socket.req_parts().headers,
        &state.chat.settings.cors_allowed_origins,
    ) {
        Ok(())
    } else {
        tracing::info!(socket = %socket.id, "socket refused: cross-site origin");
        Err(Refused("This origin is not allowed."))
    }
}

/// The socket acts as the user of the session its handshake carried (or
/// of its access token).
async fn identify<A: Adapter>(
    socket: SocketRef<A>,
    MaybeHttpExtension(session): MaybeHttpExtension<Session>,
    State(state): State<AppState>,
) -> Result<(), Refused> {
    let anonymous_allowed = state.chat.settings.auth.allow_anonymous;
    // A script's personal access token names its user outright.
    if let Some(token) = bearer_token(&socket.req_parts().headers) {
        let user = state.token_user(token).await.map_err(|_| {
            tracing::info!(socket = %socket.id, "socket refused: unknown access token");
            Refused("The access token is not valid.")
        })?;
        accept(&socket, &state, user, session, Who::Account);
        return Ok(());
    }
    // Behind a sign-in proxy, its header names the account.
    let peer = socket
        .req_parts()
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    if let Some(peer) = peer {
        let proxied = state
            .proxied_user(peer, &socket.req_parts().headers, None)
            .await
            .map_err(|err| {
                tracing::info!(socket = %socket.id, error = %err, "socket refused: proxy identity");
                Refused("Sign in to continue.")
            })?;
        if let Some(user) = proxied {
            accept(&socket, &state, user, session, Who::Account);
            return Ok(());
        }
    }
    let stored = session.as_ref().filter(|session| session.id().is_some());
    if let Some(session) = stored {
        if let Some(user) = signed_in_account(&socket, &state, session).await? {
            accept(&socket, &state, user, Some(session.clone()), Who::Account);
            return Ok(());
        }
    }
    let user = match stored {
        Some(session) if anonymous_allowed => {
            sessions::existing_user(session).await.map_err(|err| {
                tracing::warn!(error = %err, "could not read the socket's session");
                Refused("The session could not be read. Please try again.")
            })?
        }
        _ => None,
    };
    // Without a session the socket gets an identity of its own, which lives
    // as long as the socket (a socket cannot set a cookie), where anonymous
    // use is allowed.
    let user = match user {
        Some(user) => user,
        None if anonymous_allowed => UserId::new(),
        None => {
            tracing::info!(socket = %socket.id, "socket refused: not signed in");
            return Err(Refused("Sign in to continue."));
        }
    };
    accept(&socket, &state, user, session, Who::Anonymous);
    Ok(())
}

/// Whom a socket acts for: an account (each event checks it may still
/// act) or an anonymous user (the per-address limits apply).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Account,
    Anonymous,
}

/// The account the handshake's session is signed in to, if any (always
/// `None` without accounts). A disabled account is refused.
///
/// The socket joins the account's room before its session is read again:
/// a sign-out everywhere ends the sessions and then disconnects the room,
/// so a socket connecting meanwhile either finds its session gone here or
/// is in the room in time to be disconnected.
async fn signed_in_account<A: Adapter>(
    socket: &SocketRef<A>,
    state: &AppState,
    session: &Session,
) -> Result<Option<UserId>, Refused> {
    if !state.chat.settings.auth.accounts() {
        return Ok(None);
    }
    let unreadable = |err: tower_sessions::session::Error| {
        tracing::warn!(error = %err, "could not read the socket's session");
        Refused("The session could not be read. Please try again.")
    };
    let Some(user) = sessions::signed_in(session).await.map_err(unreadable)? else {
        return Ok(None);
    };
    match state.require_active(&user).await {
        Ok(()) => {}
        Err(ApiError::Unauthenticated) => {
            tracing::info!(socket = %socket.id, "socket refused: account disabled");
            return Err(Refused("Sign in to continue."));
        }
        Err(err) => {
            tracing::warn!(error = %err, "could not check the socket's account");
            return Err(Refused("The session could not be read. Please try again."));
        }
    }
    let room = user_room(&user);
    socket.join(room.clone());
    session.load().await.map_err(unreadable)?;
    if sessions::signed_in(session)
        .await
        .map_err(unreadable)?
        .as_ref()
        != Some(&user)
    {
        socket.leave(room);
        tracing::info!(socket = %socket.id, "socket refused: its session has just ended");
        return Err(Refused("Sign in to continue."));
    }
    Ok(Some(user))
}

/// Joins the user's room and registers the event handlers.
fn accept<A: Adapter>(
    socket: &SocketRef<A>,
    state: &AppState,
    user: UserId,
    session: Option<Session>,
    who: Who,
) {
    socket.join(user_room(&user));
    let parts = socket.req_parts();
    let client = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| {
            state
                .chat
                .settings
                .auth
                .client_address(info.0.ip(), &parts.headers)
        });
    socket.extensions.insert(SocketUser {
        user,
        session,
        anonymous: who == Who::Anonymous,
        client,
        account: who == Who::Account,
    });
    socket
        .extensions
        .insert(std::sync::Arc::new(sink::SendBurst::default()));
    state
        .chat
        .metrics
        .sockets_connected
        .fetch_add(1, Ordering::Relaxed);
    socket.on(events::SEND_MESSAGE, on_send_message::<A>);
    socket.on(events::STOP_GENERATION, on_stop_generation::<A>);
    socket.on(events::WATCH_CONVERSATION, on_watch_conversation::<A>);
    socket.on(events::REGENERATE, on_regenerate::<A>);
    socket.on(events::EDIT_MESSAGE, on_edit_message::<A>);
    socket.on(events::SWITCH_BRANCH, on_switch_branch::<A>);
    socket.on_disconnect(on_disconnect::<A>);
}

/// Everything was set up before the acknowledgement (see [`register`]).
async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    tracing::debug!(socket = %socket.id, "socket connected");
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn same_origin_and_listed_origins_pass_others_are_refused() {
        assert!(origin_allowed(&headers(&[("host", "a.test:5000")]), &[]));
        assert!(origin_allowed(
            &headers(&[("host", "a.test:5000"), ("origin", "http://a.test:5000")]),
            &[]
        ));
        assert!(!origin_allowed(
            &headers(&[("host", "a.test:5000"), ("origin", "https://evil.test")]),
            &[]
        ));
        assert!(origin_allowed(
            &headers(&[("host", "a.test"), ("origin", "https://app.test/")]),
            &["https://app.test".to_string()]
        ));
    }
}
