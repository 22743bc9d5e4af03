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
//! with Redis the turn queues it for the instance's one writer, so the turn
//! never waits on Redis: the writer logs and publishes every reply's queued
//! events in one Redis round trip, then delivers them, and renews the
//! leases of the replies in flight (`writer.rs`, `redis.rs`, `lease.rs`).
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
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;

use event::{new_reply_id, Logged};
pub use event::{BranchPoint, ReplyEvent, INTERRUPTED};
pub use lease::LapsedReply;
use log::ReplyLog;
use memory::{MemoryLog, MemoryReplies};
use redis::RedisLog;
use watcher::{Next, Resume, WatchState, Watcher};
use writer::{Queued, ReplyContext, Timing};

use crate::cluster::RedisConnections;
use crate::domain::{ConversationId, UserId};
use crate::events::{EventSink, Pacing};

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
    /// The queue of the writer that logs and delivers the relays' events
    /// (Redis mode), started with the first relay.
    writer: OnceLock<mpsc::UnboundedSender<Queued>>,
    /// The writer's lease renewals and patience.
    timing: Timing,
    /// Who follows what, both ways under one lock: registering a socket
    /// (dropping what it followed before) and forgetting it are each one
    /// step, so concurrent calls for a socket cannot leave a stray watcher.
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    /// Looked up on every event: a fast hasher (seeded per process).
    watchers: HashMap<Followed, Vec<Arc<Watcher>>, foldhash::fast::RandomState>,
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
    pub fn with_redis(redis: &RedisConnections, ttl: Duration, lease: Duration) -> Arc<Self> {
        let log = Arc::new(RedisLog {
            channel: redis.key("replies"),
            redis: redis.clone(),
            ttl,
            lease,
            lapsed_since: Default::default(),
        });
        Arc::new(Self {
            redis: Some(log.clone()),
            timing: Timing::for_lease(lease),
            ..Self::new(log)
        })
    }

    fn new(log: Arc<dyn ReplyLog>) -> Self {
        Self {
            instance: uuid::Uuid::new_v4().to_string(),
            log,
            memory: None,
            redis: None,
            writer: OnceLock::new(),
            timing: Timing::for_lease(Duration::from_secs(5)),
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
                quiet: true,
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
        match watcher.finish_replay(conversation, &logged, resume) {
            Next::Done => {}
            Next::Read => self.repair(followed, vec![watcher]),
            Next::Wait => self.pace(followed, watcher),
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
        if let (ReplyEvent::Started { .. }, Some(origin)) = (&item.event, origin) {
            self.own_reply_started(followed, origin, &item.reply);
        }
        let mut gaps = Vec::new();
        for watcher in self.watchers_of(followed, origin) {
            match watcher.deliver(&followed.1, item) {
                Next::Done => {}
                Next::Read => gaps.push(watcher),
                Next::Wait => self.pace(followed.clone(), watcher),
            }
        }
        if !gaps.is_empty() {
            self.repair(followed.clone(), gaps);
        }
    }

    /// Tells the watcher of the socket whose turn started `reply` (if it
    /// follows the conversation here) that its own reply is logged.
    fn own_reply_started(&self, followed: &Followed, socket: &str, reply: &Arc<str>) {
        let own = self
            .registry()
            .watchers
            .get(followed)
            .and_then(|list| list.iter().find(|w| w.socket == socket).cloned());
        if let Some(watcher) = own {
            watcher.own_reply_started(reply);
        }
    }

    /// Offers a watcher's held events again after a pause, for as long as
    /// its socket has no room; a socket that takes nothing for
    /// `Timing::slow_socket_patience` is disconnected (its client resumes
    /// from the log when it reconnects).
    fn pace(self: &Arc<Self>, followed: Followed, watcher: Arc<Watcher>) {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut pacing = Pacing::default();
            let mut queued = watcher.queued();
            loop {
                if !pacing.wait(hub.timing.slow_socket_patience).await {
                    return watcher.give_up();
                }
                match watcher.finish_repair(&followed.1, &[], false) {
                    Next::Done => return,
                    Next::Read => return hub.repair(followed, vec![watcher]),
                    Next::Wait => {}
                }
                let now = watcher.queued();
                if now != queued {
                    queued = now;
                    pacing.progressed();
                }
            }
        });
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
                watchers.retain(|w| match w.finish_repair(conversation, &logged, last) {
                    Next::Done => false,
                    Next::Read => true,
                    Next::Wait => {
                        hub.pace(followed.clone(), w.clone());
                        false
                    }
                });
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
    /// With Redis, events are queued for the hub's writer (`writer.rs`),
    /// so the turn never waits on Redis: it logs, publishes and delivers
    /// each reply's events in order, every reply's queued events in one
    /// Redis round trip, a lone event (a reply's last one too) at once, and
    /// renews the reply's lease until its last event (or until the relay
    /// is dropped).
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
        let context = Arc::new(ReplyContext {
            followed,
            instance: Arc::from(self.instance.as_str()),
            user: key.0,
            conversation: key.1,
            reply: reply.clone(),
            origin: origin_socket,
        });
        Relay {
            reply,
            to: RelayTo::Writer {
                queue: self.writer().clone(),
                hub: self.clone(),
                context,
            },
        }
    }

    /// The writer's queue; the first call starts the writer. It holds the
    /// hub weakly: it stops once the hub and every relay are gone.
    fn writer(self: &Arc<Self>) -> &mpsc::UnboundedSender<Queued> {
        self.writer.get_or_init(|| {
            let (queue, queued) = mpsc::unbounded_channel();
            tokio::spawn(writer::write_rounds(
                Arc::downgrade(self),
                self.log.clone(),
                self.timing,
                queued,
            ));
            queue
        })
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
    /// Redis: the hub's writer logs, publishes and delivers. The queue is
    /// unbounded: the writer takes all of it every round, so it holds what
    /// comes during one round trip (and nothing is dropped).
    Writer {
        queue: mpsc::UnboundedSender<Queued>,
        hub: Arc<ReplyHub>,
        context: Arc<ReplyContext>,
    },
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
            RelayTo::Writer { hub, .. } => match &hub.redis {
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
            RelayTo::Writer { queue, context, .. } => {
                if queue.send(Queued::Event(context.clone(), event)).is_err() {
                    tracing::warn!("the reply writer is gone; a watcher may miss a chunk");
                }
            }
        }
    }
}

impl Drop for Relay {
    /// The turn is over: the writer stops renewing the reply's lease (a
    /// reply without its last event is then ended by an instance).
    fn drop(&mut self) {
        if let RelayTo::Writer { queue, context, .. } = &self.to {
            // Fails only when the writer is gone, and its leases with it.
            let _ = queue.send(Queued::Gone(context.reply.clone()));
        }
    }
}
