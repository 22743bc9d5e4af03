//! The Socket.IO contract of `docs/PROTOCOL.md`, as types: every event name
//! beside the payload it carries, in both directions.
//!
//! This is a leaf module (it uses no other module of the crate), so every
//! layer can name an event without pulling in the layers that send it.
//! Outbound payloads borrow what they carry: an event costs no copies of a
//! reply's text. Inbound payloads never fail to parse as long as they are
//! JSON: a field of the wrong type reads as [`Field::Wrong`], so a handler
//! answers it with the same `error` event the protocol names for it.

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;

// ---------------------------------------------------------------- inbound

/// `send_message {message, conversation_id?}`.
pub const SEND_MESSAGE: &str = "send_message";
/// `stop_generation {conversation_id?}` (or a bare id, or nothing).
pub const STOP_GENERATION: &str = "stop_generation";
/// `watch_conversation {conversation_id, last_index?}`, with an optional ack.
pub const WATCH_CONVERSATION: &str = "watch_conversation";
/// `regenerate {conversation_id?}`.
pub const REGENERATE: &str = "regenerate";
/// `edit_message {conversation_id?, index, message}`.
pub const EDIT_MESSAGE: &str = "edit_message";
/// `switch_branch {conversation_id?, index, position}`, with an optional ack.
pub const SWITCH_BRANCH: &str = "switch_branch";

/// One field of an inbound payload, as the client sent it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Field<T> {
    /// Missing, or `null`.
    #[default]
    Absent,
    /// Present with the expected type.
    Given(T),
    /// Present with another type (a number where a string belongs, ...).
    Wrong,
}

impl<T: DeserializeOwned> Field<T> {
    /// Reads a field from its raw JSON value (`None`: missing), taking the
    /// value's strings rather than copying them.
    pub fn from_value(raw: Option<Value>) -> Self {
        match raw {
            None | Some(Value::Null) => Field::Absent,
            Some(value) => T::deserialize(value).map_or(Field::Wrong, Field::Given),
        }
    }

    /// The same from a borrowed value.
    pub fn from_json(raw: Option<&Value>) -> Self {
        Self::from_value(raw.cloned())
    }
}

impl<T> Field<T> {
    /// The value when it was given with the right type.
    pub fn given(&self) -> Option<&T> {
        match self {
            Field::Given(value) => Some(value),
            _ => None,
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Field::from_value(Some(Value::deserialize(deserializer)?)))
    }
}

/// An inbound payload: `T` read from a JSON object. Anything else (no
/// payload, an array, a bare string) reads as `T::default()`, an object
/// without fields, which is how the original app treated it.
#[derive(Debug, Default)]
pub struct Inbound<T>(pub T);

impl<'de, T: DeserializeOwned + Default> Deserialize<'de> for Inbound<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            value @ Value::Object(_) => serde_json::from_value(value)
                .map(Inbound)
                .map_err(D::Error::custom),
            _ => Ok(Inbound(T::default())),
        }
    }
}

/// `send_message`: the user's message for a conversation (absent: the
/// session's current one, read when the message arrives).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SendMessage {
    pub message: Field<String>,
    pub conversation_id: Field<String>,
    /// A model id of the catalogue: the conversation switches to it
    /// (absent: it keeps its own).
    pub model: Field<String>,
}

/// `regenerate`: answer the conversation's last user message again.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Regenerate {
    pub conversation_id: Field<String>,
    /// As `send_message`'s.
    pub model: Field<String>,
}

/// `edit_message`: answer the user's message at history `index` again,
/// with new text, on a new branch.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EditMessage {
    pub conversation_id: Field<String>,
    pub index: Field<u64>,
    pub message: Field<String>,
    /// As `send_message`'s.
    pub model: Field<String>,
}

/// `switch_branch`: show the sibling at `position` (from 1) of the message
/// at history `index`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SwitchBranch {
    pub conversation_id: Field<String>,
    pub index: Field<u64>,
    pub position: Field<u64>,
}

/// `watch_conversation`: follow a conversation, replaying the reply in
/// flight after `last_index` (absent: -1, all of it).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WatchConversation {
    pub conversation_id: Field<String>,
    pub last_index: Field<i64>,
    /// The reply `last_index` is about (from its events' `reply_id`).
    pub reply_id: Field<String>,
}

/// `stop_generation`: which replies to stop.
#[derive(Debug, Default, PartialEq)]
pub enum StopGeneration {
    /// No payload, `null`, or an object without an id: all of the user's.
    #[default]
    All,
    /// `{conversation_id}`, or the id on its own (a bare string).
    One(Field<String>),
}

impl<'de> Deserialize<'de> for StopGeneration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A malformed payload must stop nothing, never widen to "all".
        let field = match Value::deserialize(deserializer)? {
            Value::Null => Field::Absent,
            Value::Object(mut map) => Field::from_value(map.remove("conversation_id")),
            other => Field::from_value(Some(other)),
        };
        Ok(match field {
            Field::Absent => StopGeneration::All,
            field => StopGeneration::One(field),
        })
    }
}

// --------------------------------------------------------------- outbound

/// Every event the server sends, with its payload.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ServerEvent<'a> {
    TokenUsage(TokenUsage<'a>),
    ResponseChunk(ResponseChunk<'a>),
    ResponseEnd(ResponseEnd<'a>),
    ReplyStarted(ReplyStarted<'a>),
    Error(ErrorEvent<'a>),
    ConversationUpdated(ConversationUpdated<'a>),
    UploadProgress(UploadProgress),
    ServerRestarting(ServerRestarting),
}

impl ServerEvent<'_> {
    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            ServerEvent::TokenUsage(_) => "token_usage",
            ServerEvent::ResponseChunk(_) => "response_chunk",
            ServerEvent::ResponseEnd(_) => "response_end",
            ServerEvent::ReplyStarted(_) => "reply_started",
            ServerEvent::Error(_) => "error",
            ServerEvent::ConversationUpdated(_) => "conversation_updated",
            ServerEvent::UploadProgress(_) => "upload_progress",
            ServerEvent::ServerRestarting(_) => "server_restarting",
        }
    }
}

/// What became of an event offered to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for sending.
    Queued,
    /// The socket's send buffer is full (its client reads slower than
    /// events come): nothing was queued; offer it again later.
    Full,
    /// The socket is closed (or the event could not be sent at all).
    Gone,
}

/// Where a socket's events go: the sending socket, a watching tab, or a
/// recorder in unit tests. Failures are the sink's to log.
///
/// A socket buffers a bounded number of packets (socketioxide's 128). A
/// reply streams far more chunks than that, and a replay sends a whole
/// reply at once, so what must arrive whole goes through
/// [`offer`](Self::offer) and is offered again when the buffer is full
/// ([`emit_paced`], the reply watchers' pacing); [`emit`](Self::emit) is for
/// lone events.
pub trait EventSink: Send + Sync {
    /// Queues `event` if the socket has room for it.
    fn offer(&self, event: &ServerEvent<'_>) -> Offer;

    /// Queues `event`, or drops it when the socket has no room.
    fn emit(&self, event: ServerEvent<'_>) {
        let _ = self.offer(&event);
    }

    /// Closes the connection of a socket that stopped reading: its client
    /// reconnects and resumes the reply from the log.
    fn disconnect(&self) {}
}

/// How long a socket may take no event at all before it counts as stuck
/// ([`emit_paced`], and the watchers' pacing).
pub const SLOW_SOCKET_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// The first pause before offering an event again to a full socket; each
/// further one doubles, up to [`PACE_MAX`].
const PACE_FIRST: std::time::Duration = std::time::Duration::from_millis(1);

/// The longest pause between offers to a full socket.
const PACE_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// The pauses between offers to a full socket: [`PACE_FIRST`], doubling
/// up to [`PACE_MAX`], from the socket's last progress.
pub struct Pacing {
    pause: std::time::Duration,
    since: tokio::time::Instant,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            pause: PACE_FIRST,
            since: tokio::time::Instant::now(),
        }
    }
}

impl Pacing {
    /// Waits the next pause; `false` (without waiting) once the socket
    /// took nothing for `patience`.
    pub async fn wait(&mut self, patience: std::time::Duration) -> bool {
        if self.since.elapsed() >= patience {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(PACE_MAX);
        true
    }

    /// The socket took something: the pauses start again from the first.
    pub fn progressed(&mut self) {
        *self = Self::default();
    }
}

/// Offers `event` until the socket takes it, pausing while its buffer is
/// full, so a reply reaches a slow client whole (the turn waits for it).
/// After `patience` without room the socket is disconnected (its client
/// reconnects and resumes from the reply log) and `false` is returned; a
/// closed socket returns `false` at once.
pub async fn emit_paced(
    sink: &dyn EventSink,
    event: &ServerEvent<'_>,
    patience: std::time::Duration,
) -> bool {
    let mut pacing = Pacing::default();
    loop {
        match sink.offer(event) {
            Offer::Queued => return true,
            Offer::Gone => return false,
            Offer::Full => {
                if !pacing.wait(patience).await {
                    sink.disconnect();
                    return false;
                }
            }
        }
    }
}

/// `token_usage`: the prompt's size, sent before the reply streams.
#[derive(Debug, Serialize)]
pub struct TokenUsage<'a> {
    pub total_tokens_used: u32,
    pub max_tokens: u32,
    pub conversation_id: &'a str,
    pub summarised: bool,
}

/// `response_chunk`: one upstream delta (the event sent most).
#[derive(Debug, Serialize)]
pub struct ResponseChunk<'a> {
    pub chunk: &'a str,
    pub index: u64,
    pub conversation_id: &'a str,
    /// The reply this chunk belongs to (unique per reply).
    pub reply_id: &'a str,
}

/// `response_end`: the reply is complete, or was stopped.
#[derive(Debug, Serialize)]
pub struct ResponseEnd<'a> {
    pub conversation_id: &'a str,
    pub stopped: bool,
    pub chunks: u64,
    /// Absent when the turn was stopped before its reply began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_id: Option<&'a str>,
}

/// `reply_started`: to the other tabs, the user's message a reply answers.
#[derive(Debug, Serialize)]
pub struct ReplyStarted<'a> {
    pub conversation_id: &'a str,
    pub message: &'a str,
    pub reply_id: &'a str,
}

/// `error`: what went wrong, as the HTTP error body says it.
#[derive(Debug, Serialize)]
pub struct ErrorEvent<'a> {
    pub message: &'a str,
    pub error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// RFC 3339: when a used-up daily quota starts again (`quota_exceeded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<&'a str>,
    /// The reply that failed, for the tabs watching it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_id: Option<&'a str>,
}

/// `conversation_updated`: to every socket of the user, after a change.
#[derive(Debug, Serialize)]
pub struct ConversationUpdated<'a> {
    pub conversation_id: &'a str,
    pub title: Option<&'a str>,
    /// RFC 3339.
    pub updated_at: String,
    pub message_count: u64,
    /// The history shown changed other than at its end (an edit, a
    /// regenerate, a switch of branch): a tab showing it reads it again.
    /// Absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub branched: bool,
    /// The conversation's settings, after a change of them
    /// (`PATCH /conversation/{id}/settings`). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<SettingsShown>,
}

/// A conversation's settings as clients see them: the model id it uses
/// (its own, else the default), and its system prompt and temperature
/// (`null`: the default).
#[derive(Debug, Clone, Serialize)]
pub struct SettingsShown {
    pub model: String,
    pub system_prompt: Option<String>,
    pub temperature: Option<f32>,
}

/// `upload_progress`: chunks of an upload analysed so far.
#[derive(Debug, Serialize)]
pub struct UploadProgress {
    pub done: usize,
    pub total: usize,
}

/// `server_restarting`: come back after this long, to any instance.
#[derive(Debug, Serialize)]
pub struct ServerRestarting {
    pub reconnect_in_ms: u64,
}

/// The ack of `switch_branch` when it worked (else the `error` body).
#[derive(Debug, Serialize)]
pub struct SwitchAck {
    pub ok: bool,
    pub conversation_id: String,
    pub message_count: u64,
}

/// The ack of `watch_conversation`.
#[derive(Debug, Serialize)]
pub struct WatchAck {
    pub ok: bool,
    pub streaming: bool,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse<T: for<'de> Deserialize<'de>>(value: Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn fields_of_the_wrong_type_read_as_wrong_and_non_objects_as_empty() {
        let Inbound(message): Inbound<SendMessage> =
            parse(json!({"message": 42, "conversation_id": "x"}));
        assert_eq!(message.message, Field::Wrong);
        assert_eq!(message.conversation_id, Field::Given("x".to_string()));

        for payload in [json!(["hi"]), json!("hi"), json!(null), json!(7)] {
            let Inbound(message): Inbound<SendMessage> = parse(payload);
            assert_eq!(message.message, Field::Absent);
        }
        let Inbound(watch): Inbound<WatchConversation> = parse(json!({"last_index": 1.5}));
        assert_eq!(watch.last_index, Field::Wrong);
    }

    #[test]
    fn stop_generation_stops_all_only_when_no_id_was_sent() {
        assert_eq!(parse::<StopGeneration>(json!(null)), StopGeneration::All);
        assert_eq!(parse::<StopGeneration>(json!({})), StopGeneration::All);
        assert_eq!(
            parse::<StopGeneration>(json!("abc")),
            StopGeneration::One(Field::Given("abc".into()))
        );
        assert_eq!(
            parse::<StopGeneration>(json!({"conversation_id": 5})),
            StopGeneration::One(Field::Wrong)
        );
        assert_eq!(
            parse::<StopGeneration>(json!([1])),
            StopGeneration::One(Field::Wrong)
        );
    }

    #[test]
    fn outbound_payloads_serialise_to_the_protocols_shapes() {
        let chunk = ServerEvent::ResponseChunk(ResponseChunk {
            chunk: "hé\"",
            index: 3,
            conversation_id: "c",
            reply_id: "r",
        });
        assert_eq!(chunk.name(), "response_chunk");
        assert_eq!(
            serde_json::to_value(&chunk).unwrap(),
            json!({"chunk": "hé\"", "index": 3, "conversation_id": "c", "reply_id": "r"})
        );
        let error = ServerEvent::Error(ErrorEvent {
            message: "m",
            error: "busy",
            retry_after: None,
            resets_at: None,
            conversation_id: None,
            reply_id: None,
        });
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            json!({"message": "m", "error": "busy"})
        );
    }
}
