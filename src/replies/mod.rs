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
//! (`turn/`), not from here, so a Redis outage never stops a local reply.

mod event;
mod log;
mod memory;
mod redis;
mod watcher;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

pub use event::ReplyEvent;
use log::{Envelope, ReplyLog};
use memory::{MemoryLog, MemoryReplies};
use redis::{RedisLog, RELAY_BATCH};
use watcher::{WatchState, Watcher};

use crate::cluster::RedisConnections;
use crate::domain::{ConversationId, UserId};
use crate::events::EventSink;

/// A followed conversation: its owner and id.
type Followed = (UserId, ConversationId);

/// The reply hub of one instance.
pub struct ReplyHub {
    instance: String,
    log: Arc<dyn ReplyLog>,
    /// The same log when it is the in-memory one (relays write it directly).
    memory: Option<Arc<MemoryLog>>,
    /// Who follows what, both ways under one lock: registering a socket
    /// (dropping what it followed before) and forgetting it are each one
    /// step, so concurrent calls for a socket cannot leave a stray watcher.
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    watchers: HashMap<Followed, Vec<Arc<Watcher>>>,
    watching: HashMap<String, Followed>,
}

impl Registry {
    /// Forgets `socket`'s watcher, if any.
    fn remove(&mut self, socket: &str) {
        if let Some(key) = self.watching.remove(socket) {
            if let Some(list) = self.watchers.get_mut(&key) {
                list.retain(|w| w.socket != socket);
                if list.is_empty() {
                    self.watchers.remove(&key);
                }
            }
        }
    }
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

    /// A hub shared through Redis; `cluster::listen` hands it the
    /// other instances' events (`deliver_remote`).
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
            registry: Mutex::new(Registry::default()),
        }
    }

    /// This instance's id (to ignore our own published events).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sockets follow a conversation on this instance now.
    pub fn watcher_count(&self) -> usize {
        self.registry().watching.len()
    }

    /// The conversation's watchers other than `origin` (none: no copy).
    fn watchers_of(&self, followed: &Followed, origin: Option<&str>) -> Vec<Arc<Watcher>> {
        let registry = self.registry();
        match registry.watchers.get(followed) {
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
        sink: Arc<dyn EventSink>,
        replay: Option<i64>,
    ) -> bool {
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
        {
            let mut registry = self.registry();
            registry.remove(socket);
            let followed: Followed = (user.clone(), conversation.clone());
            registry
                .watchers
                .entry(followed.clone())
                .or_default()
                .push(watcher.clone());
            registry.watching.insert(socket.to_string(), followed);
        }
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
        self.registry().remove(socket);
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::watcher::{WatchState, Watcher};
    use super::*;
    use crate::events::ServerEvent;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, Value)>>);

    impl EventSink for Recorder {
        fn emit(&self, event: ServerEvent<'_>) {
            let payload = serde_json::to_value(&event).unwrap();
            self.0
                .lock()
                .unwrap()
                .push((event.name().to_string(), payload));
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
