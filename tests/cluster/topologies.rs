//! The two-instance behaviour on the Redis deployments teams run in production (issue 16): a
//! Redis Cluster of three masters and a Sentinel set, each started for real on loopback
//! (`topology.rs`). The scenarios are the ones `main.rs` and `signout.rs` run on one
//! redis-server: a cookie from A works on B, a tab on B watches A's reply, stop from B, resume
//! on B, sign out everywhere. The Sentinel failover test kills the master mid-run.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::browser::msg;
use testkit::fake_llm::{Behaviour, Gate};
use testkit::sio::{is_end, Turn};

use crate::harness::{redis_ping, Cluster, RedisSetup, EVENT_TIMEOUT, TURN_TIMEOUT};
use crate::tls::{refused_start, ServerTls, TestCa};
use crate::topology::{RedisCluster, RedisSentinel};

/// Waits until `/readyz` answers 200 on both instances and returns its body on A.
async fn wait_ready(cluster: &Cluster, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (a, body) = cluster.readyz(&cluster.a).await;
        let (b, other) = cluster.readyz(&cluster.b).await;
        if a == 200 && b == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer 200 on both instances within {within:?}: A {a} {body}, B {b} {other}; \
             shard channels: {}",
            cluster.redis.shard_channels()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The scenarios of one redis-server, in turn, on this deployment.
async fn two_instances_act_as_one(cluster: &Cluster) {
    crate::cookie_from_a_works_on_b(cluster).await;
    crate::tab_on_b_watches_reply_on_a(cluster).await;
    crate::stop_from_b_ends_reply_on_a(cluster).await;
    crate::resume_on_b_exactly_once(cluster).await;
}

/// Two instances on `redis`, trusting its CA when it speaks TLS.
async fn start(redis: RedisSetup) -> Cluster {
    let ca_file = redis.tls().map(ServerTls::ca_file);
    let overrides: Vec<(&str, &str)> = ca_file
        .iter()
        .map(|file| ("REDIS_TLS_CA_FILE", file.as_str()))
        .collect();
    Cluster::start_on(redis, &overrides, false).await
}

/// Asserts that no server on `ports` answers in plain text: the instances can only have
/// used TLS.
fn assert_tls_only(ports: &[u16]) {
    for &port in ports {
        assert!(
            !redis_ping(None, port),
            "127.0.0.1:{port} answers PING in plain text"
        );
    }
}

/// Asserts that an instance stops at start on the TLS deployment `url` (its hosts
/// 127.0.0.1, which the certificates name) when it trusts only the system's CA
/// certificates, and when it trusts the CA (`ca_file`) but reaches the deployment as
/// `localhost`, saying which, at once.
async fn refused_when_untrusted_or_misnamed(url: &str, ca_file: &str) {
    let cases = [
        (
            url.to_owned(),
            vec![],
            "TLS certificate is not signed by a trusted CA (set REDIS_TLS_CA_FILE",
        ),
        (
            url.replace("127.0.0.1", "localhost"),
            vec![("REDIS_TLS_CA_FILE", ca_file.to_owned())],
            "TLS certificate does not name the host",
        ),
    ];
    for (url, extra, sentence) in cases {
        let started = Instant::now();
        let (code, output) = refused_start(&url, &extra).await;
        assert_eq!(code, Some(1), "{url}: output:\n{output}");
        assert!(
            output.contains(sentence),
            "{url}: the error does not say {sentence:?}:\n{output}"
        );
        // Not after the retries meant for a Redis still starting.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{url}: took {:?}",
            started.elapsed()
        );
    }
}

/// Two instances on `redis`: readiness names its three masters, the one-server scenarios
/// pass, and the keys were spread over several masters.
async fn two_instances_on(redis: RedisCluster) {
    let ports = redis.ports.clone();
    let cluster = start(RedisSetup::Cluster(redis)).await;
    let ready = wait_ready(&cluster, Duration::from_secs(20)).await;
    assert_eq!(ready["checks"]["redis"], "up", "{ready}");
    assert_eq!(ready["redis"]["mode"], "cluster", "{ready}");
    let mut nodes: Vec<String> = ready["redis"]["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    let mut masters: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    masters.sort();
    assert_eq!(
        nodes, masters,
        "/readyz names the cluster's three masters: {ready}"
    );

    two_instances_act_as_one(&cluster).await;

    // The keys (sessions, reply logs, rate limits) really were spread over the masters.
    let RedisSetup::Cluster(redis) = &cluster.redis else {
        unreachable!()
    };
    let holding: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&port| redis.keys_on(port) > 0)
        .collect();
    assert!(
        holding.len() >= 2,
        "keys on one master only ({holding:?}): the test did not exercise the cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_redis_cluster_act_as_one() {
    two_instances_on(RedisCluster::start()).await;
}

/// `rediss-cluster://`: the seed nodes, the nodes CLUSTER SLOTS announces (by IP), the
/// subscribers' connections to each shard channel's owner, all over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_tls_only_redis_cluster_act_as_one() {
    let redis = RedisCluster::start_tls(&TestCa::new("chat test CA"));
    assert!(
        redis.url().starts_with("rediss-cluster://"),
        "{}",
        redis.url()
    );
    assert_tls_only(&redis.ports);
    let ca_file = redis
        .tls
        .as_ref()
        .map(ServerTls::ca_file)
        .unwrap_or_default();
    refused_when_untrusted_or_misnamed(&redis.url(), &ca_file).await;
    two_instances_on(redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_everywhere_works_on_a_redis_cluster() {
    let redis = RedisSetup::Cluster(RedisCluster::start());
    let cluster =
        Cluster::start_on(redis, &[("AUTH_MODE", "local"), ("SIGNUP", "open")], false).await;
    crate::signout::sign_out_everywhere_reaches_b(&cluster).await;
}

/// Two instances on `redis`: readiness names the master the sentinels give, and the
/// one-server scenarios pass.
async fn two_instances_on_sentinel(redis: RedisSentinel) {
    let master = redis.master_port;
    let cluster = start(RedisSetup::Sentinel(redis)).await;
    let ready = wait_ready(&cluster, Duration::from_secs(20)).await;
    assert_eq!(ready["redis"]["mode"], "sentinel", "{ready}");
    assert_eq!(
        ready["redis"]["nodes"],
        json!([format!("127.0.0.1:{master}")]),
        "/readyz names the master the sentinels gave: {ready}"
    );
    two_instances_act_as_one(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_sentinel_act_as_one() {
    two_instances_on_sentinel(RedisSentinel::start()).await;
}

/// `rediss-sentinel://`: the sentinels and the master they name, over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_tls_only_sentinel_set_act_as_one() {
    let redis = RedisSentinel::start_tls(&TestCa::new("chat test CA"));
    assert!(
        redis.url().starts_with("rediss-sentinel://"),
        "{}",
        redis.url()
    );
    let mut ports = vec![redis.master_port, redis.replica_port];
    ports.extend(&redis.sentinel_ports);
    assert_tls_only(&ports);
    let ca_file = redis
        .tls
        .as_ref()
        .map(ServerTls::ca_file)
        .unwrap_or_default();
    refused_when_untrusted_or_misnamed(&redis.url(), &ca_file).await;
    two_instances_on_sentinel(redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_everywhere_works_on_sentinel() {
    let redis = RedisSetup::Sentinel(RedisSentinel::start());
    let cluster =
        Cluster::start_on(redis, &[("AUTH_MODE", "local"), ("SIGNUP", "open")], false).await;
    crate::signout::sign_out_everywhere_reaches_b(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_sentinel_master_dies_the_instances_follow_the_new_one() {
    follow_the_new_master(RedisSentinel::start()).await;
}

/// The same over TLS: the instances reconnect to the promoted replica's TLS port, checking
/// its certificate against the address the sentinels now give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_tls_sentinel_master_dies_the_instances_follow_the_new_one() {
    follow_the_new_master(RedisSentinel::start_tls(&TestCa::new("chat test CA"))).await;
}

/// Two instances on `redis` while its master is SIGKILLed during a reply.
async fn follow_the_new_master(redis: RedisSentinel) {
    let replica = redis.replica_port;
    let mut cluster = start(RedisSetup::Sentinel(redis)).await;
    wait_ready(&cluster, Duration::from_secs(20)).await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    let mut sender = user.socket(&cluster.a).await;

    // A reply in flight on A when the master dies goes on for A's own socket.
    let parts = ["Through", " the", " failover"];
    let gate = Gate::new();
    cluster.llm.push(Behaviour::held(&parts, 1, &gate));
    sender.send_message("before the failover", Some(&conversation));
    let mut events = sender.events_until_chunk(0, EVENT_TIMEOUT).await;
    let RedisSetup::Sentinel(redis) = &mut cluster.redis else {
        unreachable!()
    };
    redis.kill_master_and_wait_for_failover();
    gate.release();
    events.extend(sender.reply_events_until(TURN_TIMEOUT, is_end).await);
    let in_flight = Turn::from_events(events);
    assert_eq!(
        in_flight.text(),
        parts.concat(),
        "{:?}",
        in_flight.summary()
    );
    assert_eq!(in_flight.expect_end()["stopped"], false);

    // Without a restart, both instances find the new master (readiness says so)...
    let ready = wait_ready(&cluster, Duration::from_secs(40)).await;
    assert_eq!(
        ready["redis"]["nodes"],
        json!([format!("127.0.0.1:{replica}")]),
        "/readyz names the promoted replica: {ready}"
    );
    // ...the session written before the failover is still this browser's on both...
    assert_eq!(
        user.listed_ids(&cluster.b).await,
        vec![conversation.clone()]
    );
    // ...and a reply started afterwards streams across instances again.
    let mut watcher = user.socket(&cluster.b).await;
    watcher.watch(&conversation, None).await;
    let mut sender = user.socket(&cluster.a).await;
    sender.send_message("after the failover", Some(&conversation));
    let sent = sender.collect_reply(TURN_TIMEOUT).await;
    assert_eq!(
        sent.text(),
        "You said: after the failover",
        "{:?}",
        sent.summary()
    );
    let mut watched = watcher.collect_reply(TURN_TIMEOUT).await;
    // The first reply's events that Redis refused during the failover are logged and
    // published once it is back: a tab that watches meanwhile may get that reply late,
    // but then whole (every chunk once, with its end), never a stale beginning.
    if watched.text() != "You said: after the failover" {
        assert_eq!(watched.text(), parts.concat(), "{:?}", watched.summary());
        assert_eq!(watched.indexes(), vec![0, 1, 2], "{:?}", watched.summary());
        watched = watcher.collect_reply(TURN_TIMEOUT).await;
    }
    assert_eq!(
        watched.text(),
        "You said: after the failover",
        "{:?}",
        watched.summary()
    );
    assert_eq!(watched.expect_end()["stopped"], false);

    // Nothing stored twice, nothing lost.
    assert_eq!(
        user.history(&cluster.b, &conversation).await,
        vec![
            msg("user", "before the failover"),
            msg("assistant", &parts.concat()),
            msg("user", "after the failover"),
            msg("assistant", "You said: after the failover"),
        ]
    );
}
