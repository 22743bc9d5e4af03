//! Rate limits (per user, per email, per client address) in fixed windows: in-process for one instance,
//! shared through Redis for several. Limits are generous (a person typing
//! never meets them); they stop scripts and runaway clients.
//!
//! When Redis cannot be reached the limiter lets requests through (and logs
//! it): an outage must not lock everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fred::interfaces::KeysInterface;

use crate::cluster::RedisConnections;

/// What is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Messages,
    Uploads,
    /// `POST /save_history` calls (each writes a file).
    Saves,
    /// `GET /search_conversations` calls (each reads through an index).
    Searches,
    /// Sign-in attempts for one email.
    LoginAccount,
    /// Sign-in attempts from one client address.
    LoginAddress,
    /// Accounts created from one client address.
    Signups,
    /// Anonymous sessions first stored for one client address.
    NewSessions,
    /// Anonymous users' messages from one client address.
    AddressMessages,
    /// Anonymous users' uploads from one client address.
    AddressUploads,
}

impl Bucket {
    fn name(self) -> &'static str {
        match self {
            Bucket::Messages => "messages",
            Bucket::Uploads => "uploads",
            Bucket::Saves => "saves",
            Bucket::Searches => "searches",
            Bucket::LoginAccount => "login-account",
            Bucket::LoginAddress => "login-address",
            Bucket::Signups => "signups",
            Bucket::NewSessions => "new-sessions",
            Bucket::AddressMessages => "address-messages",
            Bucket::AddressUploads => "address-uploads",
        }
    }
}

/// A limit: `count` per `window`; a count of 0 is no limit.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub count: u32,
    pub window: Duration,
}

/// Counts requests; `Err(seconds)` says when to try again.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one request of `key` (a user id, an email, a client address)
    /// in `bucket`.
    async fn check(&self, bucket: Bucket, key: &str, limit: Limit) -> Result<(), u64>;
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The current window's number and the seconds left in it.
fn window(limit: Limit) -> (u64, u64) {
    let length = limit.window.as_secs().max(1);
    let now = now_secs();
    (now / length, length - now % length)
}

/// One instance's counters.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    counts: Mutex<HashMap<(Bucket, String), (u64, u32)>>,
}

#[async_trait]
impl RateLimiter for MemoryLimiter {
    async fn check(&self, bucket: Bucket, key: &str, limit: Limit) -> Result<(), u64> {
        if limit.count == 0 {
            return Ok(());
        }
        let (current, left) = window(limit);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() > 100_000 {
            counts.retain(|_, (w, _)| *w == current);
        }
        let entry = counts
            .entry((bucket, key.to_string()))
            .or_insert((current, 0));
        if entry.0 != current {
            *entry = (current, 0);
        }
        if entry.1 >= limit.count {
            return Err(left);
        }
        entry.1 += 1;
        Ok(())
    }
}

/// Counters shared by every instance: `{prefix}:rl:<bucket>:<key>:<window>`.
pub struct RedisLimiter {
    redis: RedisConnections,
}

impl RedisLimiter {
    pub fn new(redis: &RedisConnections) -> Self {
        Self {
            redis: redis.clone(),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn check(&self, bucket: Bucket, key: &str, limit: Limit) -> Result<(), u64> {
        if limit.count == 0 {
            return Ok(());
        }
        let (current, left) = window(limit);
        let key = self
            .redis
            .key(&format!("rl:{}:{key}:{current}", bucket.name()));
        let pipeline = self.redis.client.pipeline();
        let counted: Result<(u64, i64), fred::error::Error> = self
            .redis
            .timed(async {
                let _: () = pipeline.incr(&key).await?;
                let _: () = pipeline.expire(&key, (left + 1) as i64, None).await?;
                pipeline.all().await
            })
            .await;
        match counted {
            Ok((count, _)) if count > limit.count as u64 => Err(left),
            Ok(_) => Ok(()),
            Err(err) => {
                tracing::warn!(error = %err, "rate limit not checked: Redis unavailable");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;

    #[tokio::test]
    async fn the_limit_holds_per_user_and_bucket_and_zero_is_off() {
        let limiter = MemoryLimiter::default();
        let (alice, bob) = (UserId::new().to_string(), UserId::new().to_string());
        let limit = Limit {
            count: 2,
            window: Duration::from_secs(3600),
        };

        assert!(limiter.check(Bucket::Messages, &alice, limit).await.is_ok());
        assert!(limiter.check(Bucket::Messages, &alice, limit).await.is_ok());
        let retry = limiter
            .check(Bucket::Messages, &alice, limit)
            .await
            .unwrap_err();

        assert!((1..=3600).contains(&retry));
        assert!(limiter.check(Bucket::Messages, &bob, limit).await.is_ok());
        assert!(limiter.check(Bucket::Uploads, &alice, limit).await.is_ok());
        let off = Limit {
            count: 0,
            window: Duration::from_secs(60),
        };
        for _ in 0..10 {
            assert!(limiter.check(Bucket::Messages, &alice, off).await.is_ok());
        }
    }
}
