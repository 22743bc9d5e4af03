//! Socket.IO on namespace `/`: the connect middleware (origin check), the
//! socket's identity taken from the HTTP session of its handshake, and one
//! handler per event, taking the typed payloads of `events.rs`. The turn
//! itself lives in `turn/`.
//!
//! Handlers are generic over the adapter, so the same code serves the local
//! adapter (one instance) and the Redis adapter (several).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Extension, MaybeHttpExtension, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;
use socketioxide_core::adapter::DefinedAdapter;
use tower_sessions::Session;

use crate::domain::{ConversationId, Role, UserId};
use crate::error::ApiError;
use crate::events::{
    self, EventSink, Field, Inbound, Regenerate, SendMessage, ServerEvent, StopGeneration,
    WatchAck, WatchConversation,
};
use crate::notify::{user_room, Notifier};
use crate::ratelimit::{Bucket, Limit};
use crate::sessions;
use crate::state::AppState;
use crate::turn::{check_message, stop_everywhere, Turn, TurnGuard};

/// Who a socket acts as: the user of the session its handshake carried.
#[derive(Clone)]
pub struct SocketUser {
    pub user: UserId,
    pub session: Option<Session>,
}

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
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
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

/// The socket acts as the user of the session its handshake carried.
async fn identify<A: Adapter>(
    socket: SocketRef<A>,
    MaybeHttpExtension(session): MaybeHttpExtension<Session>,
    State(state): State<AppState>,
) -> Result<(), Refused> {
    let user = match &session {
        Some(session) if session.id().is_some() => {
            sessions::existing_user(session).await.map_err(|err| {
                tracing::warn!(error = %err, "could not read the socket's session");
                Refused("The session could not be read. Please try again.")
            })?
        }
        _ => None,
    };
    // Without a session the socket gets an identity of its own, which lives
    // as long as the socket (a socket cannot set a cookie).
    let user = user.unwrap_or_default();
    socket.join(user_room(&user));
    socket.extensions.insert(SocketUser { user, session });
    state
        .chat
        .metrics
        .sockets_connected
        .fetch_add(1, Ordering::Relaxed);
    socket.on(events::SEND_MESSAGE, on_send_message::<A>);
    socket.on(events::STOP_GENERATION, on_stop_generation::<A>);
    socket.on(events::WATCH_CONVERSATION, on_watch_conversation::<A>);
    socket.on(events::REGENERATE, on_regenerate::<A>);
    socket.on_disconnect(on_disconnect::<A>);
    Ok(())
}

/// Everything was set up before the acknowledgement (see [`register`]).
async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    tracing::debug!(socket = %socket.id, "socket connected");
}

/// Waits until socketioxide has marked the socket connected. It runs the
/// connect middlewares (where our handlers are registered), sends the
/// connect packet, and only then sets the flag; a client that sends at
/// once can have its event handled in between, and emits to a socket not
/// yet marked connected are dropped. The gap is microseconds, but a
/// loaded machine can stretch it.
async fn settled<A: Adapter>(socket: &SocketRef<A>) {
    for _ in 0..1000 {
        if socket.connected() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

struct SocketSink<A: Adapter>(SocketRef<A>);

impl<A: Adapter> EventSink for SocketSink<A> {
    fn emit(&self, event: ServerEvent<'_>) {
        let name = event.name();
        if let Err(err) = self.0.emit(name, &event) {
            tracing::debug!(socket = %self.0.id, event = name, error = %err, "emit failed");
        }
    }
}

/// Sends `err` as the `error` event.
fn emit_error(sink: &dyn EventSink, err: &ApiError, id: Option<&ConversationId>) {
    sink.emit(err.body().event(id));
}

fn invalid_id() -> ApiError {
    ApiError::invalid("Invalid conversation id.")
}

/// The conversation a message is for: the payload's id, else the session's
/// current one, read now (a conversation started after connecting counts).
async fn target_conversation(
    conversation_id: &Field<String>,
    who: &SocketUser,
) -> Result<ConversationId, ApiError> {
    match conversation_id {
        Field::Given(raw) if !raw.is_empty() => {
            return ConversationId::parse(raw).map_err(|_| invalid_id());
        }
        Field::Absent | Field::Given(_) => {}
        Field::Wrong => return Err(invalid_id()),
    }
    let no_conversation =
        ApiError::NoConversation("No active conversation. Please start a new conversation.");
    // A socket that came without a cookie has no stored session to read.
    let Some(session) = who.session.as_ref().filter(|s| s.id().is_some()) else {
        return Err(no_conversation);
    };
    session.load().await?;
    sessions::current_conversation(session)
        .await?
        .ok_or(no_conversation)
}

/// Refuses the event when the user is over the message rate limit.
async fn within_message_limit(state: &AppState, who: &SocketUser, sink: &dyn EventSink) -> bool {
    let limit = Limit {
        count: state.chat.settings.rate_limit_messages_per_minute,
        window: Duration::from_secs(60),
    };
    match state
        .limiter
        .check(Bucket::Messages, &who.user, limit)
        .await
    {
        Ok(()) => true,
        Err(retry_after) => {
            emit_error(sink, &ApiError::RateLimited(retry_after), None);
            false
        }
    }
}

async fn on_send_message<A: Adapter>(
    socket: SocketRef<A>,
    TryData(data): TryData<Inbound<SendMessage>>,
    Extension(who): Extension<SocketUser>,
    State(state): State<AppState>,
) {
    settled(&socket).await;
    let sink = SocketSink(socket.clone());
    let Inbound(payload) = data.unwrap_or_default();
    if !within_message_limit(&state, &who, &sink).await {
        return;
    }
    let message = match check_message(&payload.message, state.chat.settings.max_message_chars) {
        Ok(message) => message,
        Err(err) => return emit_error(&sink, &err, None),
    };
    let id = match target_conversation(&payload.conversation_id, &who).await {
        Ok(id) => id,
        Err(err) => return emit_error(&sink, &err, None),
    };
    let Some(guard) = begin_turn(&state, &who, &id, &socket, &sink).await else {
        return;
    };
    let turn = Turn {
        user: &who.user,
        conversation: &id,
        guard: &guard,
        sink: &sink,
        origin_socket: Some(socket.id.to_string()),
    };
    if let Err(err) = turn.run(&state.chat, message).await {
        emit_error(&sink, &err, Some(&id));
    }
}

/// Registers a turn for the conversation (refusing a second one) and makes
/// the socket follow the conversation (other tabs' turns from now on).
async fn begin_turn<A: Adapter>(
    state: &AppState,
    who: &SocketUser,
    id: &ConversationId,
    socket: &SocketRef<A>,
    sink: &SocketSink<A>,
) -> Option<TurnGuard> {
    if state.draining.load(Ordering::Relaxed) {
        emit_error(sink, &ApiError::Restarting, Some(id));
        return None;
    }
    let socket_id = socket.id.to_string();
    let Some(guard) = state
        .chat
        .turns
        .begin(&who.user, id, Some(socket_id.clone()))
    else {
        let err =
            ApiError::Busy("A reply is already being generated for this conversation.".into());
        emit_error(sink, &err, Some(id));
        return None;
    };
    let follower: Arc<dyn EventSink> = Arc::new(SocketSink(socket.clone()));
    state
        .chat
        .replies
        .watch(&who.user, id, &socket_id, follower, None)
        .await;
    Some(guard)
}

/// `regenerate {conversation_id?}`: drops the reply to the last user
/// message (everything after it) and answers that message again.
async fn on_regenerate<A: Adapter>(
    socket: SocketRef<A>,
    TryData(data): TryData<Inbound<Regenerate>>,
    Extension(who): Extension<SocketUser>,
    State(state): State<AppState>,
) {
    settled(&socket).await;
    let sink = SocketSink(socket.clone());
    let Inbound(payload) = data.unwrap_or_default();
    if !within_message_limit(&state, &who, &sink).await {
        return;
    }
    let id = match target_conversation(&payload.conversation_id, &who).await {
        Ok(id) => id,
        Err(err) => return emit_error(&sink, &err, None),
    };
    let Some(guard) = begin_turn(&state, &who, &id, &socket, &sink).await else {
        return;
    };
    let result = async {
        let conversation = state.chat.store.load(&who.user, &id).await?;
        let Some(last_user) = conversation
            .messages
            .iter()
            .rposition(|m| m.message.role == Role::User)
        else {
            return Err(ApiError::invalid(
                "There is no message to regenerate a reply for.",
            ));
        };
        let message = conversation.messages[last_user].message.content.to_string();
        // The turn stores the user's message again with its new reply.
        for _ in last_user..conversation.messages.len() {
            state.chat.store.delete_last_message(&who.user, &id).await?;
        }
        let turn = Turn {
            user: &who.user,
            conversation: &id,
            guard: &guard,
            sink: &sink,
            origin_socket: Some(socket.id.to_string()),
        };
        turn.run(&state.chat, message).await
    }
    .await;
    if let Err(err) = result {
        emit_error(&sink, &err, Some(&id));
    }
}

async fn on_stop_generation<A: Adapter>(
    socket: SocketRef<A>,
    TryData(data): TryData<StopGeneration>,
    Extension(who): Extension<SocketUser>,
    State(state): State<AppState>,
) {
    settled(&socket).await;
    // No payload or no id: stop all of this user's replies. An id: only
    // that one. Anything unusable stops nothing (it must not widen to
    // "all") and says so.
    let id = match data.unwrap_or_default() {
        StopGeneration::All => None,
        StopGeneration::One(field) => match field.given().map(|raw| ConversationId::parse(raw)) {
            Some(Ok(id)) => Some(id),
            _ => return emit_error(&SocketSink(socket), &invalid_id(), None),
        },
    };
    let stopped = stop_everywhere(&state.chat, &who.user, id.as_ref()).await;
    tracing::debug!(stopped, "stop_generation");
}

/// `watch_conversation {conversation_id, last_index?}`: follow a
/// conversation, replaying the in-flight reply after `last_index`.
async fn on_watch_conversation<A: Adapter>(
    socket: SocketRef<A>,
    TryData(data): TryData<Inbound<WatchConversation>>,
    ack: AckSender<A>,
    Extension(who): Extension<SocketUser>,
    State(state): State<AppState>,
) {
    settled(&socket).await;
    let sink = SocketSink(socket.clone());
    let Inbound(payload) = data.unwrap_or_default();
    let id = match payload
        .conversation_id
        .given()
        .map(|raw| ConversationId::parse(raw))
    {
        Some(Ok(id)) => id,
        _ => return emit_error(&sink, &invalid_id(), None),
    };
    let last_index = match payload.last_index {
        Field::Absent => -1,
        Field::Given(n) if n >= -1 => n,
        Field::Given(_) | Field::Wrong => {
            let err = ApiError::invalid("last_index must be a whole number from -1 up.");
            return emit_error(&sink, &err, Some(&id));
        }
    };
    if let Err(err) = state.chat.store.meta(&who.user, &id).await {
        return emit_error(&sink, &ApiError::from(err), Some(&id));
    }
    let follower: Arc<dyn EventSink> = Arc::new(SocketSink(socket.clone()));
    let streaming = state
        .chat
        .replies
        .watch(
            &who.user,
            &id,
            &socket.id.to_string(),
            follower,
            Some(last_index),
        )
        .await;
    // The ack is optional: a client that did not ask for one gets nothing.
    let _ = ack.send(&WatchAck {
        ok: true,
        streaming,
    });
}

/// A socket went away. Its replies go on for `DISCONNECT_GRACE_SECONDS`:
/// a reload or a reconnect (to any instance) resumes them. If by then the
/// user has no socket left anywhere, nobody is reading: they are stopped
/// and their partial text stored.
async fn on_disconnect<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    Extension(who): Extension<SocketUser>,
    State(state): State<AppState>,
) {
    let socket_id = socket.id.to_string();
    state
        .chat
        .metrics
        .sockets_connected
        .fetch_sub(1, Ordering::Relaxed);
    state.chat.replies.unwatch(&socket_id);
    let orphans = state.chat.turns.turns_of_socket(&socket_id);
    if orphans.is_empty() {
        return;
    }
    let grace = state.chat.settings.disconnect_grace;
    if grace.is_zero() {
        return orphans.iter().for_each(|turn| turn.cancel());
    }
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let listening = match io.to(user_room(&who.user)).fetch_sockets().await {
            Ok(sockets) => !sockets.is_empty(),
            Err(err) => {
                tracing::debug!(error = %err, "could not count the user's sockets; stopping the reply");
                false
            }
        };
        if !listening {
            orphans.iter().for_each(|turn| turn.cancel());
        }
    });
}

/// [`Notifier`] over a Socket.IO server, set once the server is built.
pub struct SocketNotifier<A: Adapter> {
    io: OnceLock<SocketIo<A>>,
}

impl<A: Adapter> Default for SocketNotifier<A> {
    fn default() -> Self {
        Self {
            io: OnceLock::new(),
        }
    }
}

impl<A: Adapter> SocketNotifier<A> {
    /// Connects the notifier to the server (once).
    pub fn attach(self: &Arc<Self>, io: SocketIo<A>) {
        let _ = self.io.set(io);
    }
}

#[async_trait]
impl<A: Adapter> Notifier for SocketNotifier<A> {
    async fn to_user(&self, user: &UserId, event: ServerEvent<'_>) {
        let Some(io) = self.io.get() else { return };
        let name = event.name();
        if let Err(err) = io.to(user_room(user)).emit(name, &event).await {
            tracing::debug!(event = name, error = %err, "broadcast to user failed");
        }
    }
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
