//! The Redis connections of one instance (commands, the Socket.IO
//! adapter's subscriber, our control subscriber) and the readiness checks. The session store kept in Redis is
//! `sessions::redis`.
//!
//! Every key and channel starts with `REDIS_PREFIX`, so several deployments
//! (or test runs) can share one Redis. Clients reconnect by themselves with
//! backoff and re-subscribe; commands time out instead of queueing forever
//! while Redis is away, so local clients keep working.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::config::ServerConfig;
use fred::types::RespVersion;

use super::subscriptions::{confirmed, keep_subscribed, Kind};
use crate::config::redis_url::{check, without_tls_scheme, RedisTls};
use crate::metrics::Histogram;
use crate::redact;

/// How long one Redis command may take before it fails (during an outage,
/// commands fail after this instead of waiting for the reconnection).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis deployment as one instance sees it (`/readyz`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Topology {
    /// `single`, `cluster` or `sentinel`.
    pub mode: &'static str,
    /// `host:port` of each server connected to now.
    pub nodes: Vec<String>,
}

/// The Redis connections of one instance.
#[derive(Clone)]
pub struct RedisConnections {
    /// Commands: sessions, reply logs, rate limits, publishing.
    pub client: Client,
    /// Handed to the Socket.IO adapter (not started here, as it wants).
    pub adapter_subscriber: SubscriberClient,
    /// Our own channels (stop requests, reply events).
    pub control_subscriber: SubscriberClient,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// A channel only this instance subscribes to, so Redis can tell
    /// whether this instance's control subscription is in place.
    pub instance_channel: String,
    /// Where command round trips are timed (`/metrics`).
    pub latency: Arc<Histogram>,
}

impl std::fmt::Debug for RedisConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnections")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Pub/sub messages buffered per client before the oldest are dropped
/// (unless `REDIS_PUBSUB_BUFFER` says otherwise).
pub const PUBSUB_BUFFER: usize = 8192;

fn builder(config: &Config, pubsub_buffer: usize) -> Builder {
    let mut builder = Builder::from_config(config.clone());
    builder
        // Forever, 100 ms doubling to 5 s: an outage ends by itself.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(3);
            c.internal_command_timeout = Duration::from_secs(3);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
            // Pub/sub messages wait here until `cluster::listen` takes them.
            // fred's default of 32 overflowed at 100 streaming conversations
            // (every instance receives every reply event), and a lagging
            // receiver loses messages (`listen` then has the reply logs
            // read again, which costs a read per followed conversation).
            p.broadcast_channel_capacity = pubsub_buffer;
        });
    builder
}

/// What a failed connection under `config` (TLS) says about TLS, in a sentence; for
/// Sentinel, whose client names no sentinel's error, found by a handshake with each
/// sentinel in turn.
async fn tls_failure(config: &Config, details: &str) -> Option<String> {
    if let Some(sentence) = super::tls::explain_failure(details) {
        return Some(sentence);
    }
    let (ServerConfig::Sentinel { hosts, .. }, Some(tls)) = (&config.server, &config.tls) else {
        return None;
    };
    for sentinel in hosts {
        if let Some(sentence) = super::tls::probe(tls, &sentinel.host, sentinel.port).await {
            return Some(sentence);
        }
    }
    None
}

impl RedisConnections {
    /// Connects, retrying for about five seconds; the error names `REDIS_URL`.
    /// A TLS `url` trusts the system's CA certificates only.
    pub async fn connect(url: &str, prefix: &str, latency: Arc<Histogram>) -> anyhow::Result<Self> {
        Self::connect_buffered(url, &RedisTls::default(), prefix, latency, PUBSUB_BUFFER).await
    }

    /// [`connect`](Self::connect), buffering `pubsub_buffer` messages of
    /// the reply and control channels (the Socket.IO adapter keeps its own
    /// buffer of [`PUBSUB_BUFFER`]), with `tls`'s files for a TLS `url`.
    pub async fn connect_buffered(
        url: &str,
        tls: &RedisTls,
        prefix: &str,
        latency: Arc<Histogram>,
        pubsub_buffer: usize,
    ) -> anyhow::Result<Self> {
        let uses_tls = check(url).is_ok_and(|target| target.tls);
        // The client is given our TLS configuration rather than building its own from the
        // scheme (which would not read REDIS_TLS_CA_FILE).
        let mut config = Config::from_url(&without_tls_scheme(url)).map_err(|e| {
            anyhow!(
                "REDIS_URL={} is not a usable Redis URL: {e}",
                redact::url(url)
            )
        })?;
        if uses_tls {
            config.tls = Some(super::tls::client_config(tls).map_err(|e| anyhow!(e))?);
        }
        // The adapter needs RESP3 (sharded pub/sub, Redis 7+); fred does not
        // read `?protocol=` from the URL.
        config.version = RespVersion::RESP3;
        let client = builder(&config, PUBSUB_BUFFER)
            .build()
            .context("building the Redis client")?;
        let mut last_error = None;
        for attempt in 0..10 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            match client.init().await {
                Ok(_) => {
                    last_error = None;
                    break;
                }
                Err(err) => {
                    let details = err.to_string();
                    let tls_failure = if uses_tls {
                        tls_failure(&config, &details).await
                    } else {
                        None
                    };
                    // A refused certificate is refused again: no point waiting.
                    let refused = tls_failure.is_some();
                    last_error = Some((details, tls_failure));
                    if refused {
                        break;
                    }
                }
            }
        }
        if let Some((details, tls_failure)) = last_error {
            if let Some(tls_failure) = tls_failure {
                return Err(anyhow!(
                    "could not connect to Redis at REDIS_URL={}: {tls_failure} ({details})",
                    redact::url(url)
                ));
            }
            return Err(anyhow!(
                "could not reach Redis at REDIS_URL={} after 5 s: {details}",
                redact::url(url)
            ));
        }
        let version: String = client
            .info::<String>(Some(fred::types::InfoKind::Server))
            .await
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:").map(str::to_string))
            .unwrap_or_default();
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major != 0 && major < 7 {
            return Err(anyhow!(
                "Redis at REDIS_URL={} is version {version}; version 7 or later is needed (sharded pub/sub)",
                redact::url(url)
            ));
        }
        let adapter_subscriber = builder(&config, PUBSUB_BUFFER)
            .build_subscriber_client()
            .context("building the Redis subscriber")?;
        let control_subscriber = builder(&config, pubsub_buffer)
            .build_subscriber_client()
            .context("building the Redis subscriber")?;
        control_subscriber
            .init()
            .await
            .map_err(|e| anyhow!("could not subscribe on REDIS_URL={}: {e}", redact::url(url)))?;
        keep_subscribed(control_subscriber.clone(), Kind::Plain);
        Ok(Self {
            client,
            adapter_subscriber,
            control_subscriber,
            prefix: prefix.to_string(),
            instance_channel: format!("{prefix}:instance:{}", uuid::Uuid::new_v4()),
            latency,
        })
    }

    /// Runs one Redis call, timing it into the latency histogram.
    pub async fn timed<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        timed(&self.latency, call).await
    }

    /// `{prefix}:{rest}`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// The Socket.IO adapter's channel prefix.
    pub fn adapter_prefix(&self) -> String {
        format!("{}-socket.io", self.prefix)
    }

    /// How this instance sees Redis now: the deployment and the servers it is connected to
    /// (a cluster's masters; Sentinel's current master).
    pub fn topology(&self) -> Topology {
        let mode = if self.client.is_clustered() {
            "cluster"
        } else if self.client.uses_sentinels() {
            "sentinel"
        } else {
            "single"
        };
        let mut nodes: Vec<String> = self
            .client
            .active_connections()
            .iter()
            .map(|server| format!("{}:{}", server.host, server.port))
            .collect();
        nodes.sort();
        nodes.dedup();
        Topology { mode, nodes }
    }

    /// Whether Redis answers a PING now.
    pub async fn ping(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.client.ping::<String>(None))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether Redis itself holds every one of this instance's adapter
    /// subscriptions (a "deaf" instance, connected but not subscribed, must
    /// leave the balancer).
    pub async fn adapter_subscribed(&self) -> bool {
        let channels = self.adapter_subscriber.tracked_shard_channels();
        if channels.is_empty() {
            return false;
        }
        let check = confirmed(&self.client, &channels);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), check).await,
            Ok(true)
        )
    }

    /// Whether Redis holds this instance's subscription to the reply and
    /// control channels (checked on the channel only this instance uses).
    pub async fn control_subscribed(&self) -> bool {
        // A Redis Cluster counts plain subscribers per node (while it
        // delivers plain messages to every node): there, ask each master.
        let nodes = if self.client.is_clustered() {
            self.client.active_connections()
        } else {
            vec![]
        };
        let ask = |node: Option<fred::types::config::Server>| {
            let options = fred::types::config::Options {
                cluster_node: node,
                ..Default::default()
            };
            let client = self.client.with_options(&options);
            let channel = self.instance_channel.clone();
            async move {
                client
                    .pubsub_numsub::<(String, u64), _>(channel)
                    .await
                    .is_ok_and(|(_, count)| count >= 1)
            }
        };
        let asked = async {
            if nodes.is_empty() {
                ask(None).await
            } else {
                futures_util::future::join_all(nodes.into_iter().map(|n| ask(Some(n))))
                    .await
                    .into_iter()
                    .any(|subscribed| subscribed)
            }
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), asked).await,
            Ok(true)
        )
    }

    /// Re-subscribes the adapter's channels after every reconnection (call
    /// once the adapter has subscribed).
    pub fn keep_adapter_subscribed(&self) {
        keep_subscribed(self.adapter_subscriber.clone(), Kind::Sharded);
    }
}

/// Awaits `call`, recording how long it took.
pub async fn timed<T>(latency: &Histogram, call: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let result = call.await;
    latency.observe(started.elapsed());
    result
}
