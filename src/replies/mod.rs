//! Replies as they stream, for every socket watching a conversation: other
//! tabs (on any instance) see a reply stream live, and a client that reloads
//! or reconnects mid-reply resumes it with every chunk exactly once.
//!
//! Each reply has its own id. Its events are appended to a log (in memory,
//! or a Redis stream when `REDIS_URL` is set), then delivered to this
//! instance's watchers and published to the other instances, which deliver
//! to theirs. A watcher passes events through a filter on (reply id, chunk
//! index). A resuming watcher is registered before it reads the log, and
//! the live events that reach it meanwhile are held and filtered after the
//! replay: chunks logged before the replay come from the log, later ones
//! live, none twice, none missed, and a reply that starts during the replay
//! is the same reply whether it comes from the log or live. When the
//! listener falls behind (`cluster::listen` reports lost messages) or a
//! watcher sees a gap in a reply, the log is read again to fill it.
//! In memory mode the turn logs and delivers each event in its own call;
//! with Redis a relay task per turn does it, so the turn never waits on
//! Redis, and renews the reply's lease (`redis.rs`, `lease.rs`).
//!
//! The socket that sent the message gets its events directly from the turn
//! (`turn/`), not from here, so a Redis outage never stops a local reply.

mod event;
mod lease;
mod log;
mod memory;
mod redis;
#[cfg(test)]
mod tests;
mod watcher;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use event::{new_reply_id, Logged};
pub use event::{BranchPoint, ReplyEvent, INTERRUPTED};
pub use lease::LapsedReply;
use log::{Envelope, ReplyLog};
use memory::{MemoryLog, MemoryReplies};
use redis::{RedisLog, RELAY_BATCH};

/// How long a relay whose reply has ended keeps trying to log the events
/// Redis refused.
const BACKLOG_PATIENCE: Duration = Duration::from_secs(600);
use watcher::{Resume, WatchState, Watcher};

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
    /// The same log when it is the Redis one (leases).
    redis: Option<Arc<RedisLog>>,
    /// How long a Redis relay waits for more events of its reply before
    /// logging what it has (0: not at all), so a fast reply's events share
    /// a round trip; a reply's last event goes at once.
    linger: Duration,
    /// Who follows what, both ways under one lock: registering a socket
    /// (dropping what it followed before) and forgetting it are each one
    /// step, so concurrent calls for a socket cannot leave a stray watcher.
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    watchers: HashMap<Followed, Vec<Arc<Watcher>>>,
    watching: HashMap<String, Followed>,
    /// Sockets whose disconnect was handled, and when: a watch that
    /// registers after it (its handler ran late) is refused, so no watcher
    /// outlives its socket whatever order the two handlers run in.
    closed: HashMap<String, std::time::Instant>,
}

/// How long a closed socket's id is remembered (a watch handler running
/// later than this after the disconnect is not expected).
const CLOSED_MEMORY: Duration = Duration::from_secs(60);

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

/// Reads of the log one repair makes at most (each further one is asked
/// for by events lost while the previous read ran).
const REPAIR_READS: usize = 10;

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
    /// other instances' events (`deliver_remote`). A reply whose instance
    /// stops renewing its lease for `lease` is ended by another instance.
    /// A relay waits up to `linger` for more events of its reply before it
    /// logs and publishes them (see [`ReplyHub::relay`]).
    pub fn with_redis(
        redis: &RedisConnections,
        ttl: Duration,
        lease: Duration,
        linger: Duration,
    ) -> Arc<Self> {
        let log = Arc::new(RedisLog {
            channel: redis.key("replies"),
            redis: redis.clone(),
            ttl,
            lease,
            lapsed_since: Default::default(),
        });
        Arc::new(Self {
            redis: Some(log.clone()),
            linger,
            ..Self::new(log)
        })
    }

    fn new(log: Arc<dyn ReplyLog>) -> Self {
        Self {
            instance: uuid::Uuid::new_v4().to_string(),
            log,
            memory: None,
            redis: None,
            linger: Duration::ZERO,
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

    /// Makes `socket` follow the conversation and, with `replay` (the last
    /// chunk index the socket has, and of which reply when it says),
    /// replays the current reply's chunks after it, then live ones.
    /// Without `replay`, only replies that start from now on. Returns
    /// whether a reply is streaming now.
    pub async fn watch(
        self: &Arc<Self>,
        user: &UserId,
        conversation: &ConversationId,
        socket: &str,
        sink: Arc<dyn EventSink>,
        replay: Option<(i64, Option<String>)>,
    ) -> bool {
        let state = match replay {
            // Live events are held from before the watcher is registered
            // until the replay is done; the filter then drops those the
            // replay already sent.
            Some(_) => WatchState {
                held: Some(Vec::new()),
                ..WatchState::default()
            },
            // Not the reply in flight (if any): only the next ones.
            None => WatchState {
                ended: true,
                started: true,
                ..WatchState::default()
            },
        };
        let watcher = Arc::new(Watcher::new(socket, sink, state));
        let followed: Followed = (user.clone(), conversation.clone());
        {
            let mut registry = self.registry();
            registry.remove(socket);
            if registry.closed.contains_key(socket) {
                return false;
            }
            registry
                .watchers
                .entry(followed.clone())
                .or_default()
                .push(watcher.clone());
            registry
                .watching
                .insert(socket.to_string(), followed.clone());
        }
        let Some((last_index, reply)) = replay else {
            return false;
        };
        let resume = Resume {
            reply: reply.map(Arc::from),
            last_index,
        };
        let logged = match self.log.read(user, conversation).await {
            Ok(logged) => logged,
            Err(err) => {
                tracing::warn!(error = %err, "could not read the reply log; no replay");
                Vec::new()
            }
        };
        if watcher.finish_replay(conversation, &logged, resume) {
            self.repair(followed, vec![watcher]);
        }
        !logged.is_empty() && !logged.last().is_some_and(|l| l.event.is_final())
    }

    /// Stops `socket` following its conversation.
    pub fn unwatch(&self, socket: &str) {
        self.registry().remove(socket);
    }

    /// `socket` disconnected: it follows nothing now, and a watch of it
    /// that registers later (its handler ran after this) is refused.
    pub fn forget_socket(&self, socket: &str) {
        let mut registry = self.registry();
        registry.remove(socket);
        let now = std::time::Instant::now();
        if registry.closed.len() >= 1024 {
            registry
                .closed
                .retain(|_, at| now.duration_since(*at) < CLOSED_MEMORY);
        }
        registry.closed.insert(socket.to_string(), now);
    }

    fn deliver_local(self: &Arc<Self>, followed: &Followed, origin: Option<&str>, item: &Logged) {
        let gaps: Vec<Arc<Watcher>> = self
            .watchers_of(followed, origin)
            .into_iter()
            .filter(|watcher| watcher.deliver(&followed.1, item))
            .collect();
        if !gaps.is_empty() {
            self.repair(followed.clone(), gaps);
        }
    }

    /// Reads the conversation's reply log again for `watchers` (which hold
    /// their live events meanwhile) and gives each what it missed.
    fn repair(self: &Arc<Self>, followed: Followed, mut watchers: Vec<Arc<Watcher>>) {
        let hub = self.clone();
        tokio::spawn(async move {
            let (user, conversation) = &followed;
            for read in 1..=REPAIR_READS {
                let logged = match hub.log.read(user, conversation).await {
                    Ok(logged) => logged,
                    Err(err) => {
                        tracing::warn!(error = %err, "could not read the reply log; a watcher may miss a chunk");
                        Vec::new()
                    }
                };
                // After the last read the watchers go on live whatever
                // the log lacked.
                let last = read == REPAIR_READS;
                watchers.retain(|w| w.finish_repair(conversation, &logged, last));
                if watchers.is_empty() {
                    break;
                }
            }
        });
    }

    /// The listener lost messages (it fell behind): every conversation
    /// followed here has its log read again, and each watcher gets what it
    /// missed of the reply it follows or of a later one.
    pub fn repair_all(self: &Arc<Self>) {
        let followed: Vec<(Followed, Vec<Arc<Watcher>>)> = self
            .registry()
            .watchers
            .iter()
            .map(|(followed, list)| (followed.clone(), list.clone()))
            .collect();
        for (followed, list) in followed {
            let repairing: Vec<Arc<Watcher>> =
                list.into_iter().filter(|w| w.begin_repair()).collect();
            if !repairing.is_empty() {
                self.repair(followed, repairing);
            }
        }
    }

    /// A relay for one turn, with a new reply id. In memory, an event is
    /// logged and delivered to this instance's watchers as it is sent.
    /// With Redis, events are logged, delivered and published in order by
    /// a task of their own, so the turn never waits on Redis; the task also
    /// renews the reply's lease until its last event. The task gathers the
    /// events that come within the hub's linger of the first one into one
    /// Redis round trip (one pipeline, one published message), and sends
    /// a batch holding the reply's last event (`response_end`, `error`) at
    /// once, so a turn's end is never delayed.
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
        let reply = new_reply_id();
        if let Some(memory) = &self.memory {
            return Relay {
                reply,
                to: RelayTo::Here {
                    hub: self.clone(),
                    memory: memory.clone(),
                    followed,
                    key,
                    origin_socket,
                },
            };
        }
        let (tx, rx) = mpsc::channel::<ReplyEvent>(4096);
        tokio::spawn(
            self.clone()
                .run_relay(rx, followed, key, origin_socket, reply.clone()),
        );
        Relay {
            reply,
            to: RelayTo::Task(tx, self.clone()),
        }
    }

    async fn run_relay(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<ReplyEvent>,
        followed: Followed,
        key: (Arc<str>, Arc<str>),
        origin_socket: Option<Arc<str>>,
        reply: Arc<str>,
    ) {
        let instance: Arc<str> = Arc::from(self.instance.as_str());
        let lease = self
            .redis
            .as_ref()
            .map_or(Duration::from_secs(5), |r| r.lease);
        let mut renew = tokio::time::interval((lease / 3).max(Duration::from_millis(500)));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        let mut ended = false;
        // Events Redis refused (an outage, a failover): delivered here at
        // once, and logged and published, in order, once Redis is back, so
        // the log ends the way the reply did and no later watcher replays
        // it as still streaming.
        let mut backlog: Vec<Envelope> = Vec::new();
        // Set when the turn has sent its last event while a backlog remains.
        let mut give_up_at: Option<tokio::time::Instant> = None;
        let mut events = Vec::new();
        loop {
            // Events that queued while the last batch was logged go out
            // together: one Redis round trip however many there are, so a
            // busy relay catches up instead of falling further behind.
            let received = tokio::select! {
                received = rx.recv_many(&mut events, RELAY_BATCH), if give_up_at.is_none() => received,
                // Renewed even after a failed write: a reply that goes on
                // here must not be taken for a dead one once Redis is back.
                _ = renew.tick() => {
                    if !ended {
                        if let Err(err) = self.log.renew(&reply).await {
                            tracing::debug!(error = %err, "could not renew a reply's lease");
                        }
                    }
                    if !backlog.is_empty() && self.log.available() {
                        match self.log.record(&backlog).await {
                            Ok(()) => {
                                tracing::info!(events = backlog.len(), "reply log caught up after Redis came back");
                                backlog.clear();
                            }
                            Err(err) => tracing::debug!(error = %err, "reply log still unavailable"),
                        }
                    }
                    match give_up_at {
                        Some(_) if backlog.is_empty() => break,
                        Some(at) if tokio::time::Instant::now() >= at => {
                            tracing::warn!(events = backlog.len(), "reply log unavailable for 10 minutes; other instances miss the end of this reply");
                            break;
                        }
                        _ => continue,
                    }
                }
            };
            if received == 0 {
                if backlog.is_empty() {
                    break;
                }
                give_up_at = Some(tokio::time::Instant::now() + BACKLOG_PATIENCE);
                continue;
            }
            self.linger_for_more(&mut rx, &mut events).await;
            let envelopes: Vec<Envelope> = events
                .drain(..)
                .map(|event| Envelope {
                    instance: instance.clone(),
                    user: key.0.clone(),
                    conversation: key.1.clone(),
                    logged: Logged {
                        reply: reply.clone(),
                        origin: origin_socket.clone(),
                        event,
                    },
                })
                .collect();
            ended |= envelopes.iter().any(|e| e.logged.event.is_final());
            let logged = backlog.is_empty()
                && {
                    match self.log.record(&envelopes).await {
                        Ok(()) => true,
                        Err(err) => {
                            // Keep delivering locally; retry Redis with the
                            // lease's rhythm, not on every event (each try
                            // would wait its timeout).
                            tracing::warn!(error = %err, "reply log unavailable; other instances get this reply when Redis is back");
                            false
                        }
                    }
                };
            if logged {
                renew.reset();
            }
            for envelope in &envelopes {
                self.deliver_local(&followed, origin_socket.as_deref(), &envelope.logged);
            }
            if !logged {
                backlog.extend(envelopes);
            }
        }
    }

    /// Waits up to the hub's linger for more events after `events` (a
    /// batch just received), so they share one round trip: stops at a
    /// reply's last event, at [`RELAY_BATCH`] events, or when the turn is
    /// gone. Order is the channel's; a `recv_many` cut short by the
    /// deadline loses nothing (it is cancel safe).
    async fn linger_for_more(
        &self,
        rx: &mut mpsc::Receiver<ReplyEvent>,
        events: &mut Vec<ReplyEvent>,
    ) {
        if self.linger.is_zero() {
            return;
        }
        let until = tokio::time::Instant::now() + self.linger;
        while events.len() < RELAY_BATCH && !events.last().is_some_and(ReplyEvent::is_final) {
            let more =
                tokio::time::timeout_at(until, rx.recv_many(events, RELAY_BATCH - events.len()));
            match more.await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Receives the other instances' reply events (Redis mode) and delivers
    /// them here. Runs until the subscriber is dropped.
    pub fn deliver_remote(self: &Arc<Self>, raw: &str) {
        let Some(envelopes) = log::received_batch(&self.instance, raw) else {
            return; // ours, or malformed
        };
        for envelope in envelopes {
            let Ok(conversation) = ConversationId::parse(&envelope.conversation) else {
                tracing::debug!("ignoring a reply event for a malformed conversation id");
                continue;
            };
            let user = UserId::from_stored(envelope.user.to_string());
            self.deliver_local(
                &(user, conversation),
                envelope.logged.origin.as_deref(),
                &envelope.logged,
            );
        }
    }
}

/// Sends one turn's events to the hub.
pub struct Relay {
    reply: Arc<str>,
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
    Task(mpsc::Sender<ReplyEvent>, Arc<ReplyHub>),
}

impl Relay {
    /// The id of this reply (in its events to every tab).
    pub fn reply_id(&self) -> &str {
        &self.reply
    }

    /// Whether this turn stores its user's message: false when another
    /// instance already did, having taken the reply for a dead one (its
    /// lease lapsed while this instance was cut off from Redis). Claims the
    /// reply so that no instance does so later.
    pub async fn stores_user_message(&self) -> bool {
        match &self.to {
            RelayTo::Task(_, hub) => match &hub.redis {
                Some(redis) => redis.claim(&self.reply, &hub.instance).await,
                None => true,
            },
            RelayTo::Here { .. } => true,
        }
    }

    pub fn send(&self, event: ReplyEvent) {
        match &self.to {
            RelayTo::Here {
                hub,
                memory,
                followed,
                key,
                origin_socket,
            } => {
                let logged = Logged {
                    reply: self.reply.clone(),
                    origin: origin_socket.clone(),
                    event,
                };
                memory.append(key, &logged);
                hub.deliver_local(followed, origin_socket.as_deref(), &logged);
            }
            RelayTo::Task(tx, _) => {
                if tx.try_send(event).is_err() {
                    tracing::warn!("reply relay is full; a watcher may miss a chunk");
                }
            }
        }
    }
}
