//! The forms of `REDIS_URL` this server supports, checked at start so a typo is a clear
//! error instead of a connection that tries the wrong thing:
//!
//! - `redis://[:password@]host[:port][/db]`: one server (or a proxy in front of several);
//! - `redis-cluster://[:password@]host:port?node=host:port&node=host:port`: a Redis Cluster,
//!   one or more seed nodes (the rest is discovered);
//! - `redis-sentinel://[:password@]host:port[/db]?sentinelServiceName=NAME&node=host:port`:
//!   Sentinel, the sentinels' addresses and the monitored master's name.
//!
//! `valkey://`, `valkey-cluster://` and `valkey-sentinel://` are the same. `rediss://`,
//! `rediss-cluster://` and `rediss-sentinel://` (or `valkeys...`) are the same over TLS: every
//! connection (to the server, each cluster node, the sentinels and the master they name) is
//! TLS, the server's certificate checked against the system's CA certificates and
//! `REDIS_TLS_CA_FILE`, and its name against the host it is reached by.

use std::path::PathBuf;

use reqwest::Url;

/// How Redis is deployed, from the URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    Single,
    Cluster,
    Sentinel,
}

impl RedisMode {
    /// `single`, `cluster` or `sentinel`, as `/readyz` says it.
    pub fn name(self) -> &'static str {
        match self {
            RedisMode::Single => "single",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

const FORMS: &str = "redis://host:port/db, redis-cluster://host:port?node=host:port, or \
                     redis-sentinel://host:port/db?sentinelServiceName=NAME&node=host:port; \
                     rediss:// for TLS";

/// What a valid `REDIS_URL` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisTarget {
    pub mode: RedisMode,
    /// `rediss://` and the like: every connection is TLS.
    pub tls: bool,
}

/// The files TLS to Redis uses besides the system's CA certificates (all PEM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// `REDIS_TLS_CA_FILE`: more CA certificates to trust (a private CA).
    pub ca_file: Option<PathBuf>,
    /// `REDIS_TLS_CERT_FILE` and `REDIS_TLS_KEY_FILE`: a client certificate (chain) and its
    /// key, for a Redis that asks for one (`tls-auth-clients yes`).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Checks `raw` (never echoed: it may hold a password); what it asks for, or a sentence
/// naming `REDIS_URL` and what is wrong.
pub fn check(raw: &str) -> Result<RedisTarget, String> {
    let bad = |why: &str| Err(format!("REDIS_URL is not usable: {why} (use {FORMS})"));
    let Ok(url) = Url::parse(raw.trim()) else {
        return bad("it is not a URL");
    };
    let scheme = url.scheme();
    let (tls, mode) = match scheme {
        "redis" | "valkey" => (false, RedisMode::Single),
        "redis-cluster" | "valkey-cluster" => (false, RedisMode::Cluster),
        "redis-sentinel" | "valkey-sentinel" => (false, RedisMode::Sentinel),
        "rediss" | "valkeys" => (true, RedisMode::Single),
        "rediss-cluster" | "valkeys-cluster" => (true, RedisMode::Cluster),
        "rediss-sentinel" | "valkeys-sentinel" => (true, RedisMode::Sentinel),
        other => return bad(&format!("the scheme {other:?} is not a Redis one")),
    };
    if url.host_str().is_none_or(str::is_empty) {
        return bad("it names no host");
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u8>().is_err() {
        return bad(&format!("the database {db:?} is not a number"));
    }
    if mode == RedisMode::Cluster && !db.is_empty() && db != "0" {
        return bad("a Redis Cluster has only database 0");
    }
    let mut service = None;
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "node" => {
                if mode == RedisMode::Single {
                    return bad("node= is for redis-cluster:// and redis-sentinel://");
                }
                let valid = value
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !valid {
                    return bad(&format!("node={value:?} is not host:port"));
                }
            }
            "sentinelServiceName" if mode == RedisMode::Sentinel => {
                service = Some(value.into_owned());
            }
            other => {
                return bad(&format!(
                    "the parameter {other:?} is not one this server reads"
                ))
            }
        }
    }
    if mode == RedisMode::Sentinel && service.as_deref().is_none_or(str::is_empty) {
        return bad("a Sentinel URL needs sentinelServiceName=<the master's name>");
    }
    Ok(RedisTarget { mode, tls })
}

/// `REDIS_URL` with its TLS scheme made the plain one (`rediss-cluster://` →
/// `redis-cluster://`): the Redis client then parses it without building a TLS
/// configuration of its own, and is given ours.
pub fn without_tls_scheme(raw: &str) -> String {
    let raw = raw.trim();
    for (tls, plain) in [("rediss", "redis"), ("valkeys", "valkey")] {
        if let Some(rest) = raw.strip_prefix(tls) {
            if rest.starts_with("://") || rest.starts_with('-') {
                return format!("{plain}{rest}");
            }
        }
    }
    raw.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_deployments_are_recognised() {
        let mode = |url| check(url).map(|target| target.mode);
        assert_eq!(mode("redis://127.0.0.1:6379/0"), Ok(RedisMode::Single));
        assert_eq!(
            mode("redis://:p%40ss@redis.internal/3"),
            Ok(RedisMode::Single)
        );
        assert_eq!(
            mode("redis-cluster://10.0.0.1:7000?node=10.0.0.2:7000&node=10.0.0.3:7000"),
            Ok(RedisMode::Cluster)
        );
        assert_eq!(
            mode("redis-sentinel://10.0.0.1:26379/0?sentinelServiceName=mymaster&node=10.0.0.2:26379"),
            Ok(RedisMode::Sentinel)
        );
        assert_eq!(mode("valkey://localhost"), Ok(RedisMode::Single));
    }

    #[test]
    fn mistakes_are_named_without_echoing_the_url() {
        let cases = [
            ("http://127.0.0.1:6379", "scheme \"http\""),
            ("127.0.0.1:6379", "not a URL"),
            ("redis-sentinel://127.0.0.1:26379/0", "sentinelServiceName"),
            (
                "redis-sentinel://127.0.0.1:26379/0?sentinelservicename=m",
                "\"sentinelservicename\"",
            ),
            ("redis-cluster://127.0.0.1:7000/2", "only database 0"),
            (
                "redis-cluster://127.0.0.1:7000?node=10.0.0.2",
                "not host:port",
            ),
            ("redis://127.0.0.1:6379?node=10.0.0.2:7000", "node= is for"),
            ("redis://127.0.0.1:6379/zero", "not a number"),
        ];
        for (url, expected) in cases {
            let error = check(url).unwrap_err();
            assert!(error.contains("REDIS_URL"), "{url}: {error}");
            assert!(error.contains(expected), "{url}: {error}");
        }
        let error = check("redis-cluster://:hunter22@127.0.0.1:7000?node=x").unwrap_err();
        assert!(!error.contains("hunter22"), "{error}");
    }

    #[test]
    fn tls_schemes_are_the_same_deployments_over_tls() {
        let single = RedisTarget {
            mode: RedisMode::Single,
            tls: false,
        };
        assert_eq!(check("redis://127.0.0.1:6379/0"), Ok(single));
        for (url, mode) in [
            ("rediss://:secret@redis.example:6380/0", RedisMode::Single),
            ("valkeys://redis.example", RedisMode::Single),
            (
                "rediss-cluster://10.0.0.1:7000?node=10.0.0.2:7000",
                RedisMode::Cluster,
            ),
            (
                "rediss-sentinel://10.0.0.1:26379/0?sentinelServiceName=m&node=10.0.0.2:26379",
                RedisMode::Sentinel,
            ),
        ] {
            assert_eq!(check(url), Ok(RedisTarget { mode, tls: true }), "{url}");
        }
        // The same checks as in plain text.
        let error = check("rediss-cluster://:secret@127.0.0.1:7000?node=10.0.0.2").unwrap_err();
        assert!(error.contains("not host:port"), "{error}");
        assert!(!error.contains("secret"), "{error}");
        assert!(check("rediss-sentinel://127.0.0.1:26379/0")
            .unwrap_err()
            .contains("sentinelServiceName"));
    }

    #[test]
    fn the_client_parses_the_plain_form_of_a_tls_url() {
        for (tls, plain) in [
            ("rediss://:p@h:6380/0", "redis://:p@h:6380/0"),
            (
                "rediss-cluster://h:7000?node=g:7000",
                "redis-cluster://h:7000?node=g:7000",
            ),
            (
                "valkeys-sentinel://h:26379/0?sentinelServiceName=m",
                "valkey-sentinel://h:26379/0?sentinelServiceName=m",
            ),
            ("redis://h:6379", "redis://h:6379"),
            ("redis-cluster://h:7000", "redis-cluster://h:7000"),
        ] {
            assert_eq!(without_tls_scheme(tls), plain);
        }
    }
}
