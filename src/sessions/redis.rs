//! Sessions in Redis (several instances): `RedisSessionStore`, one key per
//! session under the deployment's prefix, expiring with the session.

use std::sync::Arc;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::KeysInterface;
use fred::types::{Expiration, SetOptions};
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

use crate::cluster::{timed, RedisConnections};
use crate::metrics::Histogram;

/// Sessions in Redis under `{prefix}:session:<id>`, expiring with them.
/// (tower-sessions-redis-store keys by bare id, which collides between
/// deployments and test runs sharing a Redis.)
#[derive(Clone)]
pub struct RedisSessionStore {
    client: Client,
    prefix: String,
    latency: Arc<Histogram>,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisSessionStore")
    }
}

impl RedisSessionStore {
    pub fn new(connections: &RedisConnections) -> Self {
        Self {
            client: connections.client.clone(),
            prefix: connections.key("session:"),
            latency: connections.latency.clone(),
        }
    }

    async fn write(
        &self,
        record: &Record,
        options: Option<SetOptions>,
    ) -> session_store::Result<bool> {
        let value = serde_json::to_string(&(&record.data, record.expiry_date.unix_timestamp()))
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        let written: Option<String> = timed(
            &self.latency,
            self.client.set(
                format!("{}{}", self.prefix, record.id),
                value,
                Some(Expiration::EXAT(record.expiry_date.unix_timestamp())),
                options,
                false,
            ),
        )
        .await
        .map_err(|e| session_store::Error::Backend(format!("redis: {e}")))?;
        Ok(written.is_some())
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // NX: a new session never overwrites an existing one.
        for _ in 0..4 {
            if self.write(record, Some(SetOptions::NX)).await? {
                return Ok(());
            }
            record.id = Id::default();
        }
        Err(session_store::Error::Backend(
            "could not allocate a session id".into(),
        ))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.write(record, None).await.map(|_| ())
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let raw: Option<String> = timed(
            &self.latency,
            self.client.get(format!("{}{session_id}", self.prefix)),
        )
        .await
        .map_err(|e| session_store::Error::Backend(format!("redis: {e}")))?;
        let Some(raw) = raw else { return Ok(None) };
        let (data, expires): (std::collections::HashMap<String, serde_json::Value>, i64) =
            serde_json::from_str(&raw).map_err(|e| session_store::Error::Decode(e.to_string()))?;
        Ok(Some(Record {
            id: *session_id,
            data,
            expiry_date: OffsetDateTime::from_unix_timestamp(expires)
                .map_err(|e| session_store::Error::Decode(e.to_string()))?,
        }))
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        timed(
            &self.latency,
            self.client
                .del::<u64, _>(format!("{}{session_id}", self.prefix)),
        )
        .await
        .map_err(|e| session_store::Error::Backend(format!("redis: {e}")))?;
        Ok(())
    }
}
