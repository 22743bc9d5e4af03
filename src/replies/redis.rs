//! The Redis reply log: a stream per reply (`{prefix}:reply:<user>:<conversation>`),
//! and every event published on one channel for the other instances.
//!
//! A reply in flight also has a lease, `{prefix}:lease:<reply id>`, set at
//! its start and renewed by its instance every third of the lease until its
//! last event, and a member in the set `{prefix}:replies-in-flight`.
//! When an instance dies mid-reply its leases lapse; another instance
//! claims the reply (`{prefix}:claim:<reply id>`, SET NX: only one does)
//! and ends it (`ReplyHub::lapsed_replies`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::{
    ClientLike, KeysInterface, PubsubInterface, SetsInterface, StreamsInterface,
};
use fred::types::{Expiration, SetOptions};
use serde::{Deserialize, Serialize};

use super::event::{Logged, ReplyEvent};
use super::log::{publish_batch, Envelope, Renewal, ReplyLog};
use crate::cluster::RedisConnections;
use crate::domain::{ConversationId, UserId};

/// Redis log: a stream per reply, published on one channel.
pub(super) struct RedisLog {
    pub(super) redis: RedisConnections,
    pub(super) channel: String,
    pub(super) ttl: Duration,
    /// How long a reply's lease lasts unless renewed.
    pub(super) lease: Duration,
    /// In-flight members seen without a lease, since when (by this
    /// instance): a reply is claimed only once its lease has been gone for
    /// a whole lease period, which leaves an instance that was only cut
    /// off from Redis that long to renew it or log its end.
    pub(super) lapsed_since: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

/// A reply's log is kept this long after its start (or after the renewal
/// that last set it again) while it streams: the log of a reply whose
/// instance died goes by itself.
pub(super) const IN_FLIGHT_TTL: Duration = Duration::from_secs(3600);

/// How long a claim on a reply is kept: far longer than any sweep that may
/// race it takes, so one key per reply does not pile up for an hour.
const CLAIM_TTL: Duration = Duration::from_secs(900);

/// A reply in flight somewhere, as listed in `{prefix}:replies-in-flight`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct InFlight {
    pub(super) reply: String,
    pub(super) user: String,
    pub(super) conversation: String,
}

/// A duration in whole seconds for EX and EXPIRE (at least 1).
fn seconds(duration: Duration) -> i64 {
    duration.as_secs().max(1) as i64
}

fn redis_error(e: fred::error::Error) -> String {
    format!("redis: {e}")
}

impl RedisLog {
    fn key(&self, user: &str, conversation: &str) -> String {
        self.redis.key(&format!("reply:{user}:{conversation}"))
    }

    fn lease_key(&self, reply: &str) -> String {
        self.redis.key(&format!("lease:{reply}"))
    }

    fn in_flight_key(&self) -> String {
        self.redis.key("replies-in-flight")
    }

    fn lease_seconds(&self) -> i64 {
        seconds(self.lease)
    }

    /// The member of `{prefix}:replies-in-flight` for `envelope`'s reply.
    fn in_flight_member(&self, envelope: &Envelope) -> Result<String, String> {
        serde_json::to_string(&InFlight {
            reply: envelope.logged.reply.to_string(),
            user: envelope.user.to_string(),
            conversation: envelope.conversation.to_string(),
        })
        .map_err(|e| e.to_string())
    }

    /// The replies in flight whose lease lapsed and that this instance
    /// claimed (`instance` is the claimer's id); each one only once, and
    /// by one instance.
    pub(super) async fn claim_lapsed(&self, instance: &str) -> Result<Vec<InFlight>, String> {
        let members: Vec<String> = self
            .redis
            .timed(self.redis.client.smembers(self.in_flight_key()))
            .await
            .map_err(redis_error)?;
        let mut listed = Vec::new();
        for member in members {
            match serde_json::from_str::<InFlight>(&member) {
                Ok(in_flight) => listed.push((member, in_flight)),
                Err(_) => self.forget(&member).await,
            }
        }
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        // Every lease in one round trip, however many replies are in flight.
        let pipeline = self.redis.client.pipeline();
        for (_, in_flight) in &listed {
            let _: () = pipeline
                .exists(self.lease_key(&in_flight.reply))
                .await
                .map_err(redis_error)?;
        }
        let alive: Vec<u64> = self
            .redis
            .timed(pipeline.all())
            .await
            .map_err(redis_error)?;
        let now = std::time::Instant::now();
        let due: Vec<bool> = {
            let mut since = self.lapsed_since.lock().unwrap_or_else(|p| p.into_inner());
            let lapsed: HashMap<String, std::time::Instant> = listed
                .iter()
                .zip(&alive)
                .filter(|(_, alive)| **alive == 0)
                .map(|((member, _), _)| {
                    let first = since.get(member).copied().unwrap_or(now);
                    (member.clone(), first)
                })
                .collect();
            *since = lapsed;
            listed
                .iter()
                .map(|(member, _)| {
                    since
                        .get(member)
                        .is_some_and(|first| now.duration_since(*first) >= self.lease)
                })
                .collect()
        };
        let mut claimed = Vec::new();
        for ((member, in_flight), due) in listed.into_iter().zip(due) {
            if !due {
                continue;
            }
            // Whoever claims it ends it; the others only drop the member.
            let won = self.try_claim(&in_flight.reply, instance).await?;
            self.forget(&member).await;
            if won {
                claimed.push(in_flight);
            }
        }
        Ok(claimed)
    }

    /// Claims reply `reply` for `instance`: whether no other instance had.
    async fn try_claim(&self, reply: &str, instance: &str) -> Result<bool, String> {
        let won: Option<String> = self
            .redis
            .timed(self.redis.client.set(
                self.redis.key(&format!("claim:{reply}")),
                instance,
                Some(Expiration::EX(CLAIM_TTL.as_secs() as i64)),
                Some(SetOptions::NX),
                false,
            ))
            .await
            .map_err(redis_error)?;
        Ok(won.is_some())
    }

    /// [`try_claim`](Self::try_claim) for the instance producing the reply:
    /// a Redis failure counts as claimed (nobody else could claim it either).
    pub(super) async fn claim(&self, reply: &str, instance: &str) -> bool {
        self.try_claim(reply, instance).await.unwrap_or_else(|err| {
            tracing::debug!(error = %err, "could not claim a reply; storing it");
            true
        })
    }

    async fn forget(&self, member: &str) {
        let removed: Result<u64, _> = self.redis.client.srem(self.in_flight_key(), member).await;
        if let Err(err) = removed {
            tracing::debug!(error = %err, "could not drop a lapsed reply from the in-flight set");
        }
    }
}

#[async_trait]
impl ReplyLog for RedisLog {
    async fn record(&self, envelopes: &[Envelope], renewals: &[Renewal]) -> Result<(), String> {
        if envelopes.is_empty() && renewals.is_empty() {
            return Ok(());
        }
        // One round trip for the whole round: each event is in the log
        // before anyone can receive it live. fred sends each command of
        // the pipeline to the node of its key in a Redis Cluster, and the
        // reply channel is a plain one (a PUBLISH reaches every node).
        let pipeline = self.redis.client.pipeline();
        let lease = || Some(Expiration::EX(self.lease_seconds()));
        // Renewals first: a reply that ends in this round drops its lease
        // after them.
        for renewal in renewals {
            let _: () = pipeline
                .set(self.lease_key(&renewal.reply), 1, lease(), None, false)
                .await
                .map_err(redis_error)?;
            if renewal.rearm {
                let _: () = pipeline
                    .expire(
                        self.key(&renewal.user, &renewal.conversation),
                        seconds(IN_FLIGHT_TTL),
                        None,
                    )
                    .await
                    .map_err(redis_error)?;
            }
        }
        // A reply that starts and ends in the same round needs neither a
        // lease nor a member in the in-flight set.
        let started: HashSet<&str> = envelopes
            .iter()
            .filter(|e| matches!(e.logged.event, ReplyEvent::Started { .. }))
            .map(|e| &*e.logged.reply)
            .collect();
        let ended: HashSet<&str> = envelopes
            .iter()
            .filter(|e| e.logged.event.is_final())
            .map(|e| &*e.logged.reply)
            .collect();
        for envelope in envelopes {
            let reply = &*envelope.logged.reply;
            let key = self.key(&envelope.user, &envelope.conversation);
            let event = serde_json::to_string(&envelope.logged).map_err(|e| e.to_string())?;
            let starts = matches!(envelope.logged.event, ReplyEvent::Started { .. });
            if starts {
                let _: () = pipeline.del(&key).await.map_err(redis_error)?;
            }
            let _: () = pipeline
                .xadd(&key, false, None, "*", vec![("e", event)])
                .await
                .map_err(redis_error)?;
            // A log's expiry changes at its reply's start and end only (an
            // XADD keeps it).
            if starts {
                let _: () = pipeline
                    .expire(&key, seconds(IN_FLIGHT_TTL), None)
                    .await
                    .map_err(redis_error)?;
                if !ended.contains(reply) {
                    // The lease before the set's member: a sweeper never
                    // sees a member without its lease.
                    let _: () = pipeline
                        .set(self.lease_key(reply), 1, lease(), None, false)
                        .await
                        .map_err(redis_error)?;
                    let _: () = pipeline
                        .sadd(self.in_flight_key(), self.in_flight_member(envelope)?)
                        .await
                        .map_err(redis_error)?;
                }
            } else if envelope.logged.event.is_final() {
                let _: () = pipeline
                    .expire(&key, seconds(self.ttl), None)
                    .await
                    .map_err(redis_error)?;
                if !started.contains(reply) {
                    // Out of the set before the lease goes, for the same
                    // reason.
                    let _: () = pipeline
                        .srem(self.in_flight_key(), self.in_flight_member(envelope)?)
                        .await
                        .map_err(redis_error)?;
                    let _: () = pipeline
                        .del(self.lease_key(reply))
                        .await
                        .map_err(redis_error)?;
                }
            }
        }
        if let Some(first) = envelopes.first() {
            // One message for the round: the other instances parse it
            // once, and skip their own rounds by the prefix without parsing.
            let message = publish_batch(&first.instance, envelopes)?;
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
    ) -> Result<Vec<Logged>, String> {
        let key = self.key(user.as_ref(), conversation.as_ref());
        let entries: Vec<(String, HashMap<String, String>)> = self
            .redis
            .client
            .xrange(&key, "-", "+", None)
            .await
            .map_err(redis_error)?;
        Ok(entries
            .into_iter()
            .filter_map(|(_, fields)| fields.get("e").and_then(|e| serde_json::from_str(e).ok()))
            .collect())
    }

    fn available(&self) -> bool {
        self.redis.client.is_connected()
    }
}
