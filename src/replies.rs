//! Replies as they stream, for every socket watching a conversation: other
//! tabs (on any instance) see a reply stream live, and a client that reloads
//! or reconnects mid-reply resumes it with every chunk exactly once.
//!
//! Each reply's events are appended to a log (in memory, or a Redis stream
//! when `REDIS_URL` is set), then delivered to this instance's watchers and
//! published to the other instances, which deliver to theirs. A watcher
//! passes events through a filter on the chunk index. A resuming watcher is
//! registered before it reads the log, and the live events that reach it
//! meanwhile are held and filtered after the replay: chunks logged before
//! the replay come from the log, later ones live, none twice, none missed.
//! In memory mode the turn logs and delivers each event in its own call;
//! with Redis a relay task per turn does it, so the turn never waits on
//! Redis.
//!
//! The socket that sent the message gets its events directly from the turn
//! (`chat.rs`), not from here, so a Redis outage never stops a local reply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::interfaces::{EventInterface, KeysInterface, PubsubInterface, StreamsInterface};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::chat::TurnSink;
use crate::domain::{ConversationId, UserId};
use crate::redis::RedisConnections;

/// One event of a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplyEvent {
    /// A turn began; `message` is the user's message.
    Started {
        message: String,
    },
    Chunk {
        index: u64,
        chunk: String,
    },
    End {
        stopped: bool,
        chunks: u64,
    },
    Error {
        message: String,
        error: String,
    },
}

impl ReplyEvent {
    /// The event for a failed turn.
    pub fn error(body: &crate::error::ErrorBody) -> Self {
        ReplyEvent::Error {
            message: body.message.clone(),
            error: body.error.to_string(),
        }
    }

    fn is_final(&self) -> bool {
        matches!(self, ReplyEvent::End { .. } | ReplyEvent::Error { .. })
    }

    /// Sends the Socket.IO event a watcher receives for this event to `sink`.
    fn emit_to(&self, sink: &dyn TurnSink, conversation: &ConversationId) {
        match self {
            ReplyEvent::Started { message } => sink.emit(
                "reply_started",
                json!({"conversation_id": conversation, "message": message}),
            ),
            ReplyEvent::Chunk { index, chunk } => sink.emit_chunk(chunk, *index, conversation),
            ReplyEvent::End { stopped, chunks } => sink.emit(
                "response_end",
                json!({"conversation_id": conversation, "stopped": stopped, "chunks": chunks}),
            ),
            ReplyEvent::Error { message, error } => sink.emit(
                "error",
                json!({"message": message, "error": error, "conversation_id": conversation}),
            ),
        }
    }
}

/// A reply event with where it belongs, as published between instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    instance: Arc<str>,
    user: Arc<str>,
    conversation: Arc<str>,
    origin_socket: Option<Arc<str>>,
    event: ReplyEvent,
}

/// Where reply events are kept (for resuming) and how they reach the
/// other instances.
#[async_trait]
trait ReplyLog: Send + Sync + 'static {
    /// Appends events of one reply, in order (a `Started` event replaces
    /// the previous reply's log), and publishes them to the other instances.
    async fn record(&self, envelopes: &[Envelope]) -> Result<(), String>;
    /// The current reply's events, oldest first.
    async fn read(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Vec<ReplyEvent>, String>;
}

/// A reply's events and, once it ended, when they expire.
type LoggedReply = (Vec<ReplyEvent>, Option<Instant>);

/// In-process log: one instance, no Redis.
struct MemoryLog {
    replies: Mutex<MemoryReplies>,
    ttl: Duration,
}

#[derive(Default)]
struct MemoryReplies {
    replies: HashMap<(Arc<str>, Arc<str>), LoggedReply>,
    /// When expired replies were last dropped: a sweep goes over every
    /// logged reply, so it runs once a second, not on every chunk.
    swept: Option<Instant>,
}

impl MemoryLog {
    /// Appends one event of the reply of `key` (the relay calls this
    /// directly: no task, no await).
    fn append(&self, key: &(Arc<str>, Arc<str>), event: &ReplyEvent) {
        let mut log = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if log
            .swept
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            log.replies
                .retain(|_, (_, expires)| expires.is_none_or(|at| at > now));
            log.swept = Some(now);
        }
        let entry = match log.replies.get_mut(key) {
            Some(entry) => entry,
            None => log.replies.entry(key.clone()).or_default(),
        };
        if matches!(event, ReplyEvent::Started { .. }) {
            *entry = (Vec::new(), None);
        }
        entry.0.push(event.clone());
        if event.is_final() {
            entry.1 = Some(now + self.ttl);
        }
    }
}

#[async_trait]
impl ReplyLog for MemoryLog {
    async fn record(&self, envelopes: &[Envelope]) -> Result<(), String> {
        for envelope in envelopes {
            let key = (envelope.user.clone(), envelope.conversation.clone());
            self.append(&key, &envelope.event);
        }
        Ok(())
    }

    async fn read(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Vec<ReplyEvent>, String> {
        let log = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        Ok(log
            .replies
            .get(&(Arc::from(user.as_ref()), Arc::from(conversation.as_ref())))
            .filter(|(_, expires)| expires.is_none_or(|at| at > now))
            .map(|(events, _)| events.clone())
            .unwrap_or_default())
    }
}

/// Redis log: a stream per reply, published on one channel.
struct RedisLog {
    redis: RedisConnections,
    channel: String,
    ttl: Duration,
}

/// Reply events a relay logs in one batch at most.
const RELAY_BATCH: usize = 64;

/// A reply still streaming after this long is abandoned (its instance died).
const IN_FLIGHT_TTL: Duration = Duration::from_secs(3600);

impl RedisLog {
    fn key(&self, user: &str, conversation: &str) -> String {
        self.redis.key(&format!("reply:{user}:{conversation}"))
    }
}

#[async_trait]
impl ReplyLog for RedisLog {
    async fn record(&self, envelopes: &[Envelope]) -> Result<(), String> {
        let Some(last) = envelopes.last() else {
            return Ok(());
        };
        let key = self.key(&last.user, &last.conversation);
        // One round trip for the events that queued up, in order: each is
        // in the log before anyone can receive it live.
        let pipeline = self.redis.client.pipeline();
        let redis_error = |e: fred::error::Error| format!("redis: {e}");
        for envelope in envelopes {
            let event = serde_json::to_string(&envelope.event).map_err(|e| e.to_string())?;
            if matches!(envelope.event, ReplyEvent::Started { .. }) {
                let _: () = pipeline.del(&key).await.map_err(redis_error)?;
            }
            let _: () = pipeline
                .xadd(&key, false, None, "*", vec![("e", event)])
                .await
                .map_err(redis_error)?;
        }
        let ttl = if last.event.is_final() {
            self.ttl
        } else {
            IN_FLIGHT_TTL
        };
        let _: () = pipeline
            .expire(&key, ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(redis_error)?;
        for envelope in envelopes {
            let message = serde_json::to_string(envelope).map_err(|e| e.to_string())?;
            let _: () = pipeline
                .publish(&self.channel, message)
                .await
                .map_err(redis_error)?;
        }
        self.redis
            .timed(pipeline.all::<fred::types::Value>())
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn read(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Vec<ReplyEvent>, String> {
        let key = self.key(user.as_ref(), conversation.as_ref());
        let entries: Vec<(String, HashMap<String, String>)> = self
            .redis
            .client
            .xrange(&key, "-", "+", None)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        Ok(entries
            .into_iter()
            .filter_map(|(_, fields)| fields.get("e").and_then(|e| serde_json::from_str(e).ok()))
            .collect())
    }
}

/// A socket following a conversation.
struct Watcher {
    socket: String,
    sink: Arc<dyn TurnSink>,
    state: Mutex<WatchState>,
}

#[derive(Debug)]
struct WatchState {
    /// Highest chunk index delivered (-1: none of this reply yet).
    last_index: i64,
    /// The reply's end (or error) was delivered.
    ended: bool,
    /// The turn's user message was delivered.
    started: bool,
    /// While the log is replayed: the live events that came meanwhile, to
    /// pass through the filter after the replay.
    held: Option<Vec<ReplyEvent>>,
}

/// Whether `event` is new to a watcher in `state` (and records it). `live`
/// events come from the turn as it runs (a `Started` one opens a new reply);
/// others are replayed from the log.
fn admit(state: &mut WatchState, event: &ReplyEvent, live: bool) -> bool {
    match event {
        ReplyEvent::Started { .. } if live => {
            state.last_index = -1;
            state.ended = false;
            state.started = true;
            true
        }
        ReplyEvent::Started { .. } => {
            let send = !state.started && state.last_index < 0;
            state.started = true;
            send
        }
        ReplyEvent::Chunk { index, .. } => {
            let fresh = (*index as i64) > state.last_index && !state.ended;
            if fresh {
                state.last_index = *index as i64;
            }
            fresh
        }
        ReplyEvent::End { .. } | ReplyEvent::Error { .. } => {
            !std::mem::replace(&mut state.ended, true)
        }
    }
}

impl Watcher {
    fn emit(&self, conversation: &ConversationId, event: &ReplyEvent) {
        event.emit_to(&*self.sink, conversation);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers a live event unless this watcher already has it (held back
    /// while the watcher's replay runs).
    fn deliver(&self, conversation: &ConversationId, event: &ReplyEvent) {
        let mut state = self.lock();
        if let Some(held) = &mut state.held {
            held.push(event.clone());
        } else if admit(&mut state, event, true) {
            self.emit(conversation, event);
        }
    }

    /// Ends the replay: `logged` (the log as read, oldest first) and then
    /// the live events held meanwhile go through the filter, under one hold
    /// of the lock, so nothing live slips in between.
    fn finish_replay(&self, conversation: &ConversationId, logged: &[ReplyEvent]) {
        let mut state = self.lock();
        for event in logged {
            if admit(&mut state, event, false) {
                self.emit(conversation, event);
            }
        }
        for event in state.held.take().unwrap_or_default() {
            if admit(&mut state, &event, true) {
                self.emit(conversation, &event);
            }
        }
    }
}

/// A followed conversation: its owner and id.
type Followed = (UserId, ConversationId);

/// The reply hub of one instance.
pub struct ReplyHub {
    instance: String,
    log: Arc<dyn ReplyLog>,
    /// The same log when it is the in-memory one (relays write it directly).
    memory: Option<Arc<MemoryLog>>,
    watchers: Mutex<HashMap<Followed, Vec<Arc<Watcher>>>>,
    watching: Mutex<HashMap<String, (UserId, ConversationId)>>,
}

impl ReplyHub {
    /// A hub for one instance, keeping ended replies for `ttl`.
    pub fn in_memory(ttl: Duration) -> Arc<Self> {
        let memory = Arc::new(MemoryLog {
            replies: Mutex::new(MemoryReplies::default()),
            ttl,
        });
        Arc::new(Self {
            memory: Some(memory.clone()),
            ..Self::new(memory)
        })
    }

    /// A hub shared through Redis; call [`ReplyHub::listen`] to receive the
    /// other instances' events.
    pub fn with_redis(redis: &RedisConnections, ttl: Duration) -> Arc<Self> {
        Arc::new(Self::new(Arc::new(RedisLog {
            channel: redis.key("replies"),
            redis: redis.clone(),
            ttl,
        })))
    }

    fn new(log: Arc<dyn ReplyLog>) -> Self {
        Self {
            instance: uuid::Uuid::new_v4().to_string(),
            log,
            memory: None,
            watchers: Mutex::new(HashMap::new()),
            watching: Mutex::new(HashMap::new()),
        }
    }

    /// This instance's id (to ignore our own published events).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The conversation's watchers other than `origin` (none: no copy).
    fn watchers_of(&self, followed: &Followed, origin: Option<&str>) -> Vec<Arc<Watcher>> {
        let watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        match watchers.get(followed) {
            Some(list) if list.iter().any(|w| Some(w.socket.as_str()) != origin) => list
                .iter()
                .filter(|w| Some(w.socket.as_str()) != origin)
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Makes `socket` follow the conversation, replaying the current reply's
    /// chunks after `last_index` (with `replay`), then live ones. Returns
    /// whether a reply is streaming now.
    pub async fn watch(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        socket: &str,
        sink: Arc<dyn TurnSink>,
        replay: Option<i64>,
    ) -> bool {
        self.unwatch(socket);
        let watcher = Arc::new(Watcher {
            socket: socket.to_string(),
            sink,
            state: Mutex::new(WatchState {
                last_index: replay.unwrap_or(i64::MAX),
                ended: replay.is_none(),
                started: replay.is_none_or(|last| last >= 0),
                // Live events are held from before the watcher is
                // registered until the replay is done; the index filter
                // then drops those the replay already sent.
                held: replay.map(|_| Vec::new()),
            }),
        });
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((user.clone(), conversation.clone()))
            .or_default()
            .push(watcher.clone());
        self.watching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(socket.to_string(), (user.clone(), conversation.clone()));
        if replay.is_none() {
            return false;
        }
        let events = match self.log.read(user, conversation).await {
            Ok(events) => events,
            Err(err) => {
                tracing::warn!(error = %err, "could not read the reply log; no replay");
                watcher.finish_replay(conversation, &[]);
                return false;
            }
        };
        watcher.finish_replay(conversation, &events);
        !events.is_empty() && !events.last().is_some_and(ReplyEvent::is_final)
    }

    /// Stops `socket` following its conversation.
    pub fn unwatch(&self, socket: &str) {
        let previous = self
            .watching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(socket);
        if let Some(key) = previous {
            let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(list) = watchers.get_mut(&key) {
                list.retain(|w| w.socket != socket);
                if list.is_empty() {
                    watchers.remove(&key);
                }
            }
        }
    }

    fn deliver_local(&self, followed: &Followed, origin: Option<&str>, event: &ReplyEvent) {
        for watcher in self.watchers_of(followed, origin) {
            watcher.deliver(&followed.1, event);
        }
    }

    /// A relay for one turn. In memory, an event is logged and delivered
    /// to this instance's watchers as it is sent. With Redis, events are
    /// logged, delivered and published in order by a task of their own, so
    /// the turn never waits on Redis.
    pub fn relay(
        self: &Arc<Self>,
        user: &UserId,
        conversation: &ConversationId,
        origin_socket: Option<String>,
    ) -> Relay {
        let followed: Followed = (user.clone(), conversation.clone());
        // Shared by every event of the turn: an event costs no string copies.
        let key: (Arc<str>, Arc<str>) =
            (Arc::from(user.as_ref()), Arc::from(conversation.as_ref()));
        let origin_socket: Option<Arc<str>> = origin_socket.map(Arc::from);
        if let Some(memory) = &self.memory {
            return Relay {
                to: RelayTo::Here {
                    hub: self.clone(),
                    memory: memory.clone(),
                    followed,
                    key,
                    origin_socket,
                },
            };
        }
        let (tx, mut rx) = mpsc::channel::<ReplyEvent>(4096);
        let hub = self.clone();
        let instance: Arc<str> = Arc::from(hub.instance.as_str());
        tokio::spawn(async move {
            let mut log_failed = false;
            let mut events = Vec::new();
            // Events that queued while the last batch was logged go out
            // together: one Redis round trip however many there are, so a
            // busy relay catches up instead of falling further behind.
            while rx.recv_many(&mut events, RELAY_BATCH).await > 0 {
                let envelopes: Vec<Envelope> = events
                    .drain(..)
                    .map(|event| Envelope {
                        instance: instance.clone(),
                        user: key.0.clone(),
                        conversation: key.1.clone(),
                        origin_socket: origin_socket.clone(),
                        event,
                    })
                    .collect();
                if !log_failed {
                    if let Err(err) = hub.log.record(&envelopes).await {
                        // Keep delivering locally; stop trying Redis for
                        // this reply (each try would wait its timeout).
                        tracing::warn!(error = %err, "reply log unavailable; other instances miss this reply");
                        log_failed = true;
                    }
                }
                for envelope in &envelopes {
                    hub.deliver_local(&followed, origin_socket.as_deref(), &envelope.event);
                }
            }
        });
        Relay {
            to: RelayTo::Task(tx),
        }
    }

    /// Receives the other instances' reply events (Redis mode) and delivers
    /// them here. Runs until the subscriber is dropped.
    pub fn deliver_remote(&self, raw: &str) {
        let Ok(envelope) = serde_json::from_str::<Envelope>(raw) else {
            tracing::debug!("ignoring a malformed reply event");
            return;
        };
        if *envelope.instance == *self.instance {
            return;
        }
        let (Ok(conversation), user) = (
            ConversationId::parse(&envelope.conversation),
            UserId::from_stored(envelope.user.to_string()),
        ) else {
            return;
        };
        self.deliver_local(
            &(user, conversation),
            envelope.origin_socket.as_deref(),
            &envelope.event,
        );
    }
}

/// Sends one turn's events to the hub.
pub struct Relay {
    to: RelayTo,
}

enum RelayTo {
    /// In-memory log: logged and delivered in the sender's call.
    Here {
        hub: Arc<ReplyHub>,
        memory: Arc<MemoryLog>,
        followed: Followed,
        key: (Arc<str>, Arc<str>),
        origin_socket: Option<Arc<str>>,
    },
    /// Redis: the relay task logs, publishes and delivers.
    Task(mpsc::Sender<ReplyEvent>),
}

impl Relay {
    pub fn send(&self, event: ReplyEvent) {
        match &self.to {
            RelayTo::Here {
                hub,
                memory,
                followed,
                key,
                origin_socket,
            } => {
                memory.append(key, &event);
                hub.deliver_local(followed, origin_socket.as_deref(), &event);
            }
            RelayTo::Task(tx) => {
                if tx.try_send(event).is_err() {
                    tracing::warn!("reply relay is full; a watcher may miss a chunk");
                }
            }
        }
    }
}

/// Subscribes to the reply and control channels and dispatches their
/// messages (Redis mode).
pub async fn listen(
    redis: RedisConnections,
    hub: Arc<ReplyHub>,
    turns: Arc<crate::chat::TurnRegistry>,
) {
    let replies = redis.key("replies");
    let control = redis.key("control");
    let mut messages = redis.control_subscriber.message_rx();
    if let Err(err) = redis
        .control_subscriber
        .subscribe(vec![
            replies.clone(),
            control.clone(),
            redis.instance_channel.clone(),
        ])
        .await
    {
        tracing::error!(error = %err, "could not subscribe to the reply and control channels");
    }
    loop {
        let message = match messages.recv().await {
            Ok(message) => message,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "reply events came faster than delivered");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(raw) = message.value.as_string() else {
            continue;
        };
        if *message.channel == *replies {
            hub.deliver_remote(&raw);
        } else if *message.channel == *control {
            crate::chat::apply_remote_stop(&turns, &raw, hub.instance());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, Value)>>);

    impl TurnSink for Recorder {
        fn emit(&self, event: &'static str, payload: Value) {
            self.0.lock().unwrap().push((event.to_string(), payload));
        }
    }

    impl Recorder {
        fn chunks(&self) -> Vec<u64> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter(|(e, _)| e == "response_chunk")
                .map(|(_, p)| p["index"].as_u64().unwrap())
                .collect()
        }
        fn names(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|(e, _)| e.clone())
                .collect()
        }
    }

    async fn flush() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_resuming_watcher_gets_every_chunk_once_in_order() {
        let hub = ReplyHub::in_memory(Duration::from_secs(60));
        let (user, id) = (UserId::new(), ConversationId::new());
        let relay = hub.relay(&user, &id, Some("origin".into()));
        relay.send(ReplyEvent::Started {
            message: "hi".into(),
        });
        for index in 0..5 {
            relay.send(ReplyEvent::Chunk {
                index,
                chunk: format!("c{index}"),
            });
        }
        flush().await;

        let resumed = Arc::new(Recorder::default());
        let streaming = hub.watch(&user, &id, "tab", resumed.clone(), Some(2)).await;
        for index in 5..8 {
            relay.send(ReplyEvent::Chunk {
                index,
                chunk: format!("c{index}"),
            });
        }
        relay.send(ReplyEvent::End {
            stopped: false,
            chunks: 8,
        });
        flush().await;

        assert!(streaming);
        assert_eq!(resumed.chunks(), vec![3, 4, 5, 6, 7]);
        assert_eq!(
            resumed.names().last().map(String::as_str),
            Some("response_end")
        );
        assert!(!resumed.names().contains(&"reply_started".to_string()));
    }

    #[test]
    fn live_events_during_a_replay_are_held_then_filtered_so_each_chunk_comes_once() {
        let recorder = Arc::new(Recorder::default());
        let watcher = Watcher {
            socket: "tab".into(),
            sink: recorder.clone(),
            state: Mutex::new(WatchState {
                last_index: 1,
                ended: false,
                started: true,
                held: Some(Vec::new()),
            }),
        };
        let id = ConversationId::new();
        let chunk = |index: u64| ReplyEvent::Chunk {
            index,
            chunk: format!("c{index}"),
        };
        // Chunks 3 and 4 arrive live while the log (chunks 0..=3) is read.
        watcher.deliver(&id, &chunk(3));
        watcher.deliver(&id, &chunk(4));
        assert!(recorder.names().is_empty(), "emitted during the replay");

        let logged: Vec<ReplyEvent> = (0..=3).map(chunk).collect();
        watcher.finish_replay(&id, &logged);
        watcher.deliver(&id, &chunk(5));
        watcher.deliver(
            &id,
            &ReplyEvent::End {
                stopped: false,
                chunks: 6,
            },
        );

        assert_eq!(recorder.chunks(), vec![2, 3, 4, 5]);
        assert_eq!(
            recorder.0.lock().unwrap()[0].1["chunk"],
            serde_json::json!("c2")
        );
        assert_eq!(
            recorder.names().last().map(String::as_str),
            Some("response_end")
        );
    }

    #[tokio::test]
    async fn a_new_watcher_gets_the_whole_reply_and_the_origin_gets_nothing_from_the_hub() {
        let hub = ReplyHub::in_memory(Duration::from_secs(60));
        let (user, id) = (UserId::new(), ConversationId::new());
        let origin = Arc::new(Recorder::default());
        hub.watch(&user, &id, "origin", origin.clone(), None).await;
        let relay = hub.relay(&user, &id, Some("origin".into()));
        relay.send(ReplyEvent::Started {
            message: "hi".into(),
        });
        relay.send(ReplyEvent::Chunk {
            index: 0,
            chunk: "a".into(),
        });
        flush().await;

        let other = Arc::new(Recorder::default());
        hub.watch(&user, &id, "other", other.clone(), Some(-1))
            .await;
        relay.send(ReplyEvent::Chunk {
            index: 1,
            chunk: "b".into(),
        });
        relay.send(ReplyEvent::End {
            stopped: false,
            chunks: 2,
        });
        flush().await;

        assert_eq!(
            other.names(),
            [
                "reply_started",
                "response_chunk",
                "response_chunk",
                "response_end"
            ]
        );
        assert!(origin.names().is_empty());
        let stranger = Arc::new(Recorder::default());
        assert!(
            !hub.watch(&UserId::new(), &id, "x", stranger.clone(), Some(-1))
                .await
        );
        assert!(stranger.names().is_empty());
    }
}
