//! The Redis reply log: a stream per reply (`{prefix}:reply:<user>:<conversation>`),
//! and every event published on one channel for the other instances.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::{KeysInterface, PubsubInterface, StreamsInterface};

use super::event::ReplyEvent;
use super::log::{Envelope, ReplyLog};
use crate::cluster::RedisConnections;
use crate::domain::{ConversationId, UserId};

/// Redis log: a stream per reply, published on one channel.
pub(super) struct RedisLog {
    pub(super) redis: RedisConnections,
    pub(super) channel: String,
    pub(super) ttl: Duration,
}

/// Reply events a relay logs in one batch at most.
pub(super) const RELAY_BATCH: usize = 64;

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
