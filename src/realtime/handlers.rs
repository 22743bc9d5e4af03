//! One handler per client event, each taking the typed payload of
//! `events.rs`; the turn itself is `turn::Turn::run`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};
use socketioxide::SocketIo;

use super::sink::SocketSink;
use super::socket::{settled, SocketUser};
use crate::domain::{ConversationId, Role};
use crate::error::ApiError;
use crate::events::{
    EditMessage, EventSink, Field, Inbound, Regenerate, SendMessage, StopGeneration, SwitchAck,
    SwitchBranch, WatchAck, WatchConversation,
};
use crate::metrics::Metrics;
use crate::notify::{conversation_branched, user_room};
use crate::ratelimit::{Bucket, Limit};
use crate::sessions;
use crate::state::AppState;
use crate::store::{Conversation, ConversationMeta};
use crate::turn::{check_message, stop_everywhere, Branching, Model, Turn, TurnGuard};

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

/// The model an event asks for: `None` when absent (or empty), the
/// catalogue's model, or `unknown_model`.
fn requested_model(state: &AppState, raw: &Field<String>) -> Result<Option<Arc<Model>>, ApiError> {
    match raw {
        Field::Absent => Ok(None),
        Field::Given(id) if id.is_empty() => Ok(None),
        Field::Given(id) => Ok(state.chat.models.check(Some(id))?.cloned()),
        Field::Wrong => Err(ApiError::invalid("model must be a model id (a string).")),
    }
}

/// Refuses the event when the user has used up today's token quota
/// (nothing is stored, no upstream call is made).
async fn within_quota(state: &AppState, who: &SocketUser, sink: &dyn EventSink) -> bool {
    match state.chat.check_quota(&who.user, who.account).await {
        Ok(()) => true,
        Err(err) => {
            if matches!(err, ApiError::QuotaExceeded { .. }) {
                Metrics::inc(&state.chat.metrics.turns_refused_quota);
            }
            emit_error(sink, &err, None);
            false
        }
    }
}

/// Whether the socket's user may still act. A socket of an account that
/// has been disabled since it connected (its sessions ended, its sockets
/// disconnected, and this one somehow missed it) gets `error`
/// `unauthenticated` and is disconnected.
async fn still_allowed<A: Adapter>(
    state: &AppState,
    who: &SocketUser,
    socket: &SocketRef<A>,
) -> bool {
    if !who.account {
        return true;
    }
    match state.require_active(&who.user).await {
        Ok(()) => true,
        Err(err) => {
            emit_error(&SocketSink::new(socket.clone()), &err, None);
            if matches!(err, ApiError::Unauthenticated) {
                tracing::info!(socket = %socket.id, "socket of a disabled account disconnected");
                if let Err(err) = socket.clone().disconnect() {
                    tracing::debug!(socket = %socket.id, error = %err, "could not disconnect");
                }
            }
            false
        }
    }
}

/// Refuses the event when the user (or, for anonymous users, the client
/// address) is over the message rate limit.
async fn within_message_limit(state: &AppState, who: &SocketUser, sink: &dyn EventSink) -> bool {
    let settings = &state.chat.settings;
    let minute = Duration::from_secs(60);
    let per_user = Limit {
        count: settings.rate_limit_messages_per_minute,
        window: minute,
    };
    let mut checked = state
        .limiter
        .check(Bucket::Messages, who.user.as_ref(), per_user)
        .await;
    if let (Ok(()), true, Some(client)) = (checked, who.anonymous, who.client) {
        let per_address = Limit {
            count: settings.rate_limit_messages_per_ip_per_minute,
            window: minute,
        };
        checked = state
            .limiter
            .check(Bucket::AddressMessages, &client.to_string(), per_address)
            .await;
    }
    match checked {
        Ok(()) => true,
        Err(retry_after) => {
            emit_error(sink, &ApiError::RateLimited(retry_after), None);
            false
        }
    }
}

/// What every event that answers a message first checks: the socket's
/// connect handler has settled, the account may still act, and the
/// per-minute message limit. `None` (the refusal already told) stops it.
async fn admitted<A: Adapter>(
    state: &AppState,
    who: &SocketUser,
    socket: &SocketRef<A>,
) -> Option<SocketSink<A>> {
    settled(socket).await;
    if !still_allowed(state, who, socket).await {
        return None;
    }
    let sink = SocketSink::new(socket.clone());
    within_message_limit(state, who, &sink)
        .await
        .then_some(sink)
}

/// The model an event asked for (checked against the catalogue), once the
/// user's quota allows a turn; `None` when either refused (told as `error`).
async fn model_within_quota(
    state: &AppState,
    who: &SocketUser,
    sink: &dyn EventSink,
    raw: &Field<String>,
) -> Option<Option<Arc<Model>>> {
    let model = match requested_model(state, raw) {
        Ok(model) => model,
        Err(err) => {
            emit_error(sink, &err, None);
            return None;
        }
    };
    within_quota(state, who, sink).await.then_some(model)
}

pub(super) async fn on_send_message<A: Adapter>(
    socket: SocketRef<A>,
    TryData(data): TryData<Inbound<SendMessage>>,
    Extension(who): Extension<SocketUser>,
    State(state): State<AppState>,
) {
    let Some(sink) = admitted(&state, &who, &socket).await else {
        return;
    };
    let Inbound(payload) = data.unwrap_or_default();
    let message = match check_message(payload.message, state.chat.settings.max_message_chars) {
        Ok(message) => message,
        Err(err) => return emit_error(&sink, &err, None),
    };
    // Before anything is stored or sent: a refused event changes nothing.
    let Some(model) = model_within_quota(&state, &who, &sink, &payload.model).await else {
        return;
    };
    let Some((id, guard)) = begin_turn(&state, &who, &payload.conversation_id, &socket).await
    else {
        return;
    };
    let result = socket_turn(&who, &id, &guard, &sink, model.as_deref())
        .run(&state.chat, message)
        .await;
    if let Err(err) = result {
        emit_error(&sink, &err, Some(&id));
    }
}

/// The turn of an event from `sink`'s socket, its events to that socket;
/// it appends unless run on a branch (`Turn::run_branch`). `switch_model`:
/// the model the event asked for, already checked.
fn socket_turn<'a, A: Adapter>(
    who: &'a SocketUser,
    id: &'a ConversationId,
    guard: &'a TurnGuard,
    sink: &'a SocketSink<A>,
    switch_model: Option<&'a Model>,
) -> Turn<'a> {
    Turn {
        user: &who.user,
        conversation: id,
        guard,
        sink,
        origin_socket: Some(sink.socket.id.to_string()),
        branching: None,
        switch_model,
    }
}

/// Finds the conversation the event is for, registers a turn for it
/// (refusing a second one) and makes the socket follow it (other tabs'
/// turns from now on). Every refusal is sent as `error`.
async fn begin_turn<A: Adapter>(
    state: &AppState,
    who: &SocketUser,
    conversation_id: &Field<String>,
    socket: &SocketRef<A>,
) -> Option<(ConversationId, TurnGuard)> {
    let sink = &SocketSink::new(socket.clone());
    let id = match target_conversation(conversation_id, who).await {
        Ok(id) => id,
        Err(err) => {
            emit_error(sink, &err, None);
            return None;
        }
    };
    let id = &id;
    if state.draining.load(Ordering::Relaxed) {
        emit_error(sink, &ApiError::Restarting, Some(id));
        return None;
    }
    let Some(guard) = state
        .chat
        .turns
        .begin(&who.user, id, Some(socket.id.to_string()))
    else {
        let err =
            ApiError::Busy("A reply is already being generated for this conversation.".into());
        emit_error(sink, &err, Some(id));
        return None;
    };
    follow(state, who, id, socket, None).await;
    Some((id.clone(), guard))
}

/// Makes `socket` follow the conversation (`ReplyHub::watch`, replaying
/// after `replay`); returns whether a reply is streaming. A socket that
/// closed meanwhile is forgotten at once: its disconnect handler may have
/// unwatched it before this registered, and nothing would remove it later.
/// Socket.IO marks a socket closed before it calls that handler, so either
/// the handler's `unwatch` comes after the registration, or the check here
/// sees the socket closed.
async fn follow<A: Adapter>(
    state: &AppState,
    who: &SocketUser,
    id: &ConversationId,
    socket: &SocketRef<A>,
    replay: Option<(i64, Option<String>)>,
) -> bool {
    let socket_id = socket.id.to_string();
    let follower: Arc<dyn EventSink> = Arc::new(SocketSink::new(socket.clone()));
    let streaming = state
        .chat
        .replies
        .watch(&who.user, id, &socket_id, follower, replay)
        .await;
    if !socket.connected() {
        state.chat.replies.unwatch(&socket_id);
        return false;
    }
    streaming
}

/// `regenerate {conversation_id?}`: answers the last user message again;
/// the old reply (everything after that message) is kept as a branch.
pub(super) async fn on_regenerate<A: Adapter>(
    socket: SocketRef<A>,
    TryData(data): TryData<Inbound<Regenerate>>,
    Extension(who): Extension<SocketUser>,
    State(state): State<AppState>,
) {
    let Some(sink) = admitted(&state, &who, &socket).await else {
        return;
    };
    let Inbound(payload) = data.unwrap_or_default();
    // Before anything is stored or sent: a refused event changes nothing.
    let Some(model) = model_within_quota(&state, &who, &sink, &payload.model).await else {
        return;
    };
    let Some((id, guard)) = begin_turn(&state, &who, &payload.conversation_id, &socket).await
    else {
        return;
    };
    run_branch_turn(
        &state,
        &who,
        id,
        guard,
        &sink,
        model.as_deref(),
        |conversation| {
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
            let branching = Branching {
                prefix: last_user,
                user_stored: true,
            };
            Ok((message, branching))
        },
    )
    .await;
}

/// `edit_message {conversation_id?, index, message}`: answers `message` in
/// place of the user's message at history `index`; that message and what
/// followed it are kept as a branch. The same events as `send_message`.
pub(super) async fn on_edit_message<A: Adapter>(
    socket: SocketRef<A>,
    TryData(data): TryData<Inbound<EditMessage>>,
    Extension(who): Extension<SocketUser>,
    State(state): State<AppState>,
) {
    let Some(sink) = admitted(&state, &who, &socket).await else {
        return;
    };
    let Inbound(payload) = data.unwrap_or_default();
    let message = match check_message(payload.message, state.chat.settings.max_message_chars) {
        Ok(message) => message,
        Err(err) => return emit_error(&sink, &err, None),
    };
    let Field::Given(index) = payload.index else {
        let err = ApiError::invalid("index must be the history index of one of your messages.");
        return emit_error(&sink, &err, None);
    };
    // Before anything is stored or sent: a refused event changes nothing.
    let Some(model) = model_within_quota(&state, &who, &sink, &payload.model).await else {
        return;
    };
    let Some((id, guard)) = begin_turn(&state, &who, &payload.conversation_id, &socket).await
    else {
        return;
    };
    run_branch_turn(
        &state,
        &who,
        id,
        guard,
        &sink,
        model.as_deref(),
        |conversation| {
            let is_users = usize::try_from(index)
                .ok()
                .and_then(|i| conversation.messages.get(i))
                .is_some_and(|m| m.message.role == Role::User);
            if !is_users {
                return Err(ApiError::invalid(
                    "index must be the history index of one of your messages.",
                ));
            }
            let branching = Branching {
                prefix: index as usize,
                user_stored: false,
            };
            Ok((message, branching))
        },
    )
    .await;
}

/// The rest of a `regenerate` or an `edit_message` once its conversation is
/// claimed: `pick` reads the stored conversation for the message to answer
/// and where its branch starts (or refuses), the turn runs on that read
/// (`Turn::run_branch`), and the conversation is freed before a refusal or
/// failure is told to the client (its next event may be for the same
/// conversation).
async fn run_branch_turn<A: Adapter>(
    state: &AppState,
    who: &SocketUser,
    id: ConversationId,
    guard: TurnGuard,
    sink: &SocketSink<A>,
    model: Option<&Model>,
    pick: impl FnOnce(&Conversation) -> Result<(String, Branching), ApiError>,
) {
    let result = socket_turn(who, &id, &guard, sink, model)
        .run_branch(&state.chat, pick)
        .await;
    guard.release();
    if let Err(err) = result {
        emit_error(sink, &err, Some(&id));
    }
}

/// `switch_branch {conversation_id?, index, position}`: shows the sibling
/// at `position` of the message at `index` (and below it the branch's
/// messages shown last). Refused while a reply is being generated for the
/// conversation. Every tab of the user gets `conversation_updated`; the ack,
/// if asked for, is `{ok, conversation_id, message_count}` or the error body
/// (a refusal is told only there).
pub(super) async fn on_switch_branch<A: Adapter>(
    socket: SocketRef<A>,
    TryData(data): TryData<Inbound<SwitchBranch>>,
    ack: AckSender<A>,
    Extension(who): Extension<SocketUser>,
    State(state): State<AppState>,
) {
    settled(&socket).await;
    if !still_allowed(&state, &who, &socket).await {
        return;
    }
    let Inbound(payload) = data.unwrap_or_default();
    let result = switch_branch(&state, &who, payload).await;
    match result {
        Ok((id, meta)) => {
            state
                .chat
                .notifier
                .to_user(&who.user, conversation_branched(&meta))
                .await;
            let _ = ack.send(&SwitchAck {
                ok: true,
                conversation_id: id.to_string(),
                message_count: meta.message_count,
            });
        }
        // Only in the ack: an `error` event would read, to a page with a
        // reply streaming, as the end of that reply.
        Err((err, id)) => {
            tracing::debug!(conversation = ?id.map(|id| id.to_string()), error = %err, "switch_branch refused");
            let _ = ack.send(&err.body());
        }
    }
}

/// The switch itself, for [`on_switch_branch`].
async fn switch_branch(
    state: &AppState,
    who: &SocketUser,
    payload: SwitchBranch,
) -> Result<(ConversationId, ConversationMeta), (ApiError, Option<ConversationId>)> {
    let (Field::Given(index), Field::Given(position)) = (payload.index, payload.position) else {
        let err = ApiError::invalid("index and position must be whole numbers (position from 1).");
        return Err((err, None));
    };
    let id = target_conversation(&payload.conversation_id, who)
        .await
        .map_err(|err| (err, None))?;
    // Not under a reply being written: it would be stored on the wrong path.
    let Some(guard) = state.chat.turns.begin(&who.user, &id, None) else {
        let err =
            ApiError::Busy("A reply is already being generated for this conversation.".into());
        return Err((err, Some(id)));
    };
    let switched = state
        .chat
        .store
        .switch_branch(&who.user, &id, index, position)
        .await;
    guard.release();
    match switched {
        Ok(meta) => Ok((id, meta)),
        Err(err) => Err((ApiError::from(err), Some(id))),
    }
}

pub(super) async fn on_stop_generation<A: Adapter>(
    socket: SocketRef<A>,
    TryData(data): TryData<StopGeneration>,
    Extension(who): Extension<SocketUser>,
    State(state): State<AppState>,
) {
    settled(&socket).await;
    if !still_allowed(&state, &who, &socket).await {
        return;
    }
    // No payload or no id: stop all of this user's replies. An id: only
    // that one. Anything unusable stops nothing (it must not widen to
    // "all") and says so.
    let id = match data.unwrap_or_default() {
        StopGeneration::All => None,
        StopGeneration::One(field) => match field.given().map(|raw| ConversationId::parse(raw)) {
            Some(Ok(id)) => Some(id),
            _ => return emit_error(&SocketSink::new(socket), &invalid_id(), None),
        },
    };
    let stopped = stop_everywhere(&state.chat, &who.user, id.as_ref()).await;
    tracing::debug!(stopped, "stop_generation");
}

/// `watch_conversation {conversation_id, last_index?}`: follow a
/// conversation, replaying the in-flight reply after `last_index`.
pub(super) async fn on_watch_conversation<A: Adapter>(
    socket: SocketRef<A>,
    TryData(data): TryData<Inbound<WatchConversation>>,
    ack: AckSender<A>,
    Extension(who): Extension<SocketUser>,
    State(state): State<AppState>,
) {
    settled(&socket).await;
    if !still_allowed(&state, &who, &socket).await {
        return;
    }
    let sink = SocketSink::new(socket.clone());
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
    // A reply id is 32 hex digits; anything else names no reply we know.
    let reply_id = match payload.reply_id {
        Field::Absent => None,
        Field::Given(reply)
            if reply.len() <= 64 && reply.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            Some(reply)
        }
        Field::Given(_) | Field::Wrong => {
            let err =
                ApiError::invalid("reply_id must be a reply id from this conversation's events.");
            return emit_error(&sink, &err, Some(&id));
        }
    };
    if let Err(err) = state.chat.store.meta(&who.user, &id).await {
        return emit_error(&sink, &ApiError::from(err), Some(&id));
    }
    let streaming = follow(&state, &who, &id, &socket, Some((last_index, reply_id))).await;
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
pub(super) async fn on_disconnect<A: Adapter>(
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
    state.chat.replies.forget_socket(&socket_id);
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
