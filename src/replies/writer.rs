//! The Redis mode's reply writer: one per hub (per instance), for every
//! reply in flight here ("group commit").
//!
//! Each turn's relay queues its events here. The writer takes everything
//! that queued, of every reply, and records it in one round: one Redis
//! round trip ([`ReplyLog::record`]: one pipeline, one published message),
//! then delivers the events to this instance's watchers, in order. While a
//! round is in flight the next events queue, and the next round takes them
//! all: there is no timer, so a lone event (a reply's last one too) goes at
//! once, and under load the rounds grow rather than the queue. The rounds
//! also renew the leases of the replies in flight here, every third of the
//! lease, until each reply's last event (or until its relay is dropped
//! without one: the reply is then taken for a dead one and ended by an
//! instance).
//!
//! When Redis refuses a round, its events are delivered here at once, and
//! so is every later event while any remain unlogged (the backlog: one
//! queue for every reply, so a conversation's next reply is never logged
//! before the end of the one before it). The backlog is retried, in order,
//! as soon as Redis is connected again (and with the lease's rhythm), then
//! round after round until it is logged, so the log ends the way each reply
//! did and no later watcher replays it as still streaming. A reply's unlogged events are given up once its relay has
//! been gone for [`BACKLOG_PATIENCE`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::event::{Logged, ReplyEvent};
use super::log::{Envelope, Renewal, ReplyLog};
use super::redis::IN_FLIGHT_TTL;
use super::{Followed, ReplyHub};
use crate::events::SLOW_SOCKET_PATIENCE;

/// Events one round records at most (the rest go in the next round). A
/// round is delivered to the watchers without a pause, here and on every
/// other instance (one published message), and a socket buffers 128
/// packets (socketioxide's default) before it drops events: a round of
/// one fast reply must stay well under that.
pub(super) const ROUND_LIMIT: usize = 64;

/// How long the writer keeps trying to log the events Redis refused of a
/// reply whose relay is gone.
pub(super) const BACKLOG_PATIENCE: Duration = Duration::from_secs(600);

/// How often the writer looks whether Redis is back while it holds events
/// Redis refused (a cheap check of the connection, no command).
const BACKLOG_POLL: Duration = Duration::from_millis(50);

/// How long after its last setting a streaming reply's log expiry is set
/// again (by a renewal).
const REARM_AFTER: Duration = Duration::from_secs(IN_FLIGHT_TTL.as_secs() / 4);

/// The writer's rhythm.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// How often the leases of the replies in flight are renewed (and the
    /// backlog retried).
    pub(super) renew_every: Duration,
    /// [`BACKLOG_PATIENCE`] (shorter in tests).
    pub(super) backlog_patience: Duration,
    /// How long a watcher's socket may take no event before it is
    /// disconnected ([`SLOW_SOCKET_PATIENCE`], shorter in tests).
    pub(super) slow_socket_patience: Duration,
}

impl Timing {
    /// Renewals every third of `lease` (at most twice a second).
    pub(super) fn for_lease(lease: Duration) -> Self {
        Self {
            renew_every: (lease / 3).max(Duration::from_millis(500)),
            backlog_patience: BACKLOG_PATIENCE,
            slow_socket_patience: SLOW_SOCKET_PATIENCE,
        }
    }
}

/// One reply's fixed facts, shared by its relay and every event it queues.
pub(super) struct ReplyContext {
    pub(super) followed: Followed,
    pub(super) instance: Arc<str>,
    pub(super) user: Arc<str>,
    pub(super) conversation: Arc<str>,
    pub(super) reply: Arc<str>,
    /// The socket that sent the message (it gets the reply from its turn).
    pub(super) origin: Option<Arc<str>>,
}

/// What a relay queues for the writer.
pub(super) enum Queued {
    Event(Arc<ReplyContext>, ReplyEvent),
    /// The relay of this reply is gone (its turn is over): its lease is no
    /// longer renewed.
    Gone(Arc<str>),
}

/// Events in order, each with its reply's context.
#[derive(Default)]
struct Events {
    contexts: Vec<Arc<ReplyContext>>,
    envelopes: Vec<Envelope>,
}

impl Events {
    fn push(&mut self, context: Arc<ReplyContext>, event: ReplyEvent) {
        self.envelopes.push(Envelope {
            instance: context.instance.clone(),
            user: context.user.clone(),
            conversation: context.conversation.clone(),
            logged: Logged {
                reply: context.reply.clone(),
                origin: context.origin.clone(),
                event,
            },
        });
        self.contexts.push(context);
    }

    fn is_empty(&self) -> bool {
        self.envelopes.is_empty()
    }

    fn len(&self) -> usize {
        self.envelopes.len()
    }

    fn append(&mut self, mut other: Events) {
        self.contexts.append(&mut other.contexts);
        self.envelopes.append(&mut other.envelopes);
    }

    fn drop_front(&mut self, count: usize) {
        self.contexts.drain(..count);
        self.envelopes.drain(..count);
    }

    /// Drops the events of `replies`; returns how many.
    fn drop_replies(&mut self, replies: &HashSet<Arc<str>>) -> usize {
        let before = self.len();
        let events = std::mem::take(self);
        let (contexts, envelopes) = events
            .contexts
            .into_iter()
            .zip(events.envelopes)
            .filter(|(context, _)| !replies.contains(&context.reply))
            .unzip();
        *self = Events {
            contexts,
            envelopes,
        };
        before - self.len()
    }
}

/// A reply in flight on this instance.
struct Flight {
    context: Arc<ReplyContext>,
    /// When its log's expiry was last set.
    armed: Instant,
}

struct Writer {
    hub: Weak<ReplyHub>,
    log: Arc<dyn ReplyLog>,
    timing: Timing,
    /// The replies whose leases the rounds renew.
    in_flight: HashMap<Arc<str>, Flight>,
    /// Events delivered here but not logged yet (Redis refused them), in
    /// order; while it holds any, later events join it.
    backlog: Events,
    /// A round of the backlog was logged: the next one goes at once.
    catching_up: bool,
    /// A round failed since the last renewal tick: until the next one,
    /// Redis being connected is no reason to try again (each try may wait
    /// a command timeout).
    refused: bool,
    /// When the backlogged events of a reply whose relay is gone are given up.
    give_up: HashMap<Arc<str>, Instant>,
}

/// Records the queued events of every reply in rounds until the hub and
/// every relay are gone (see the module's description).
pub(super) async fn write_rounds(
    hub: Weak<ReplyHub>,
    log: Arc<dyn ReplyLog>,
    timing: Timing,
    mut queue: mpsc::UnboundedReceiver<Queued>,
) {
    let mut writer = Writer {
        hub,
        log,
        timing,
        in_flight: HashMap::new(),
        backlog: Events::default(),
        catching_up: false,
        refused: false,
        give_up: HashMap::new(),
    };
    let mut renew = tokio::time::interval(timing.renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    let mut poll = tokio::time::interval(BACKLOG_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut queued = Vec::new();
    loop {
        let (tick, back) = if writer.catching_up {
            // No waiting; a long catch-up still renews the leases.
            (renew.tick().now_or_never().is_some(), false)
        } else {
            tokio::select! {
                received = queue.recv_many(&mut queued, ROUND_LIMIT) => {
                    if received == 0 {
                        return; // the hub and every relay are gone
                    }
                    (false, false)
                }
                _ = renew.tick() => (true, false),
                _ = poll.tick(), if !writer.backlog.is_empty() => {
                    (false, writer.log.available())
                }
            }
        };
        // Whatever else queued meanwhile joins this round.
        while queued.len() < ROUND_LIMIT {
            match queue.try_recv() {
                Ok(item) => queued.push(item),
                Err(_) => break,
            }
        }
        writer.round(&mut queued, tick, back).await;
    }
}

impl Writer {
    /// One round: `queued`'s events, the renewals on a `tick`, and the
    /// backlog's first events when Redis may take them (`back`: it is
    /// connected again).
    async fn round(&mut self, queued: &mut Vec<Queued>, tick: bool, back: bool) {
        // The replies in flight before this round's events (a reply that
        // starts in this round sets its lease with its start).
        let renewals = if tick && self.log.available() {
            self.renewals()
        } else {
            Vec::new()
        };
        let mut fresh = Events::default();
        let mut gone = Vec::new();
        for item in queued.drain(..) {
            match item {
                Queued::Event(context, event) => {
                    self.follow(&context, &event);
                    fresh.push(context, event);
                }
                Queued::Gone(reply) => gone.push(reply),
            }
        }
        if self.backlog.is_empty() {
            if !fresh.is_empty() || !renewals.is_empty() {
                match self.log.record(&fresh.envelopes, &renewals).await {
                    Ok(()) => self.deliver(&fresh),
                    Err(err) if fresh.is_empty() => {
                        tracing::debug!(error = %err, "could not renew the leases of replies");
                    }
                    Err(err) => {
                        // Keep delivering here; retry Redis once it is
                        // connected again or with the lease's rhythm, not on
                        // every event (each try may wait its timeout).
                        tracing::warn!(error = %err, "reply log unavailable; other instances get these replies when Redis is back");
                        self.deliver(&fresh);
                        self.backlog = fresh;
                        self.refused = true;
                    }
                }
            }
            self.forget(gone);
            return;
        }
        self.deliver(&fresh);
        self.backlog.append(fresh);
        self.forget(gone);
        if tick {
            self.give_up_expired();
            self.refused = false;
        }
        let retry = (back && !self.refused) || ((self.catching_up || tick) && self.log.available());
        if !retry || self.backlog.is_empty() {
            self.catching_up = false;
            return;
        }
        let count = self.backlog.len().min(ROUND_LIMIT);
        match self
            .log
            .record(&self.backlog.envelopes[..count], &renewals)
            .await
        {
            Ok(()) => {
                self.backlog.drop_front(count);
                self.catching_up = !self.backlog.is_empty();
                if self.backlog.is_empty() {
                    tracing::info!("reply log caught up after Redis came back");
                    self.give_up.clear();
                }
            }
            Err(err) => {
                self.catching_up = false;
                self.refused = true;
                tracing::debug!(error = %err, "reply log still unavailable");
            }
        }
    }

    /// Keeps track of the replies in flight: from their first event to
    /// their last.
    fn follow(&mut self, context: &Arc<ReplyContext>, event: &ReplyEvent) {
        if event.is_final() {
            self.in_flight.remove(&context.reply);
        } else if !self.in_flight.contains_key(&context.reply) {
            self.in_flight.insert(
                context.reply.clone(),
                Flight {
                    context: context.clone(),
                    armed: Instant::now(),
                },
            );
        }
    }

    /// The relays of `replies` are gone: their leases are no longer
    /// renewed, and their unlogged events are given up after a while.
    fn forget(&mut self, replies: Vec<Arc<str>>) {
        let give_up_at = Instant::now() + self.timing.backlog_patience;
        for reply in replies {
            self.in_flight.remove(&reply);
            if !self.backlog.is_empty() {
                self.give_up.entry(reply).or_insert(give_up_at);
            }
        }
    }

    fn renewals(&mut self) -> Vec<Renewal> {
        let now = Instant::now();
        self.in_flight
            .values_mut()
            .map(|flight| {
                let rearm = now.duration_since(flight.armed) >= REARM_AFTER;
                if rearm {
                    flight.armed = now;
                }
                Renewal {
                    reply: flight.context.reply.clone(),
                    user: flight.context.user.clone(),
                    conversation: flight.context.conversation.clone(),
                    rearm,
                }
            })
            .collect()
    }

    fn give_up_expired(&mut self) {
        let now = Instant::now();
        let expired: HashSet<Arc<str>> = self
            .give_up
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(reply, _)| reply.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        self.give_up.retain(|reply, _| !expired.contains(reply));
        let dropped = self.backlog.drop_replies(&expired);
        tracing::warn!(
            events = dropped,
            replies = expired.len(),
            "reply log unavailable for too long; other instances miss the end of these replies"
        );
    }

    /// Delivers `events` to this instance's watchers, in order.
    fn deliver(&self, events: &Events) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        for (context, envelope) in events.contexts.iter().zip(&events.envelopes) {
            hub.deliver_local(
                &context.followed,
                context.origin.as_deref(),
                &envelope.logged,
            );
        }
    }
}
