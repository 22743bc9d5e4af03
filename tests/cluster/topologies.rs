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

use crate::harness::{Cluster, RedisSetup, EVENT_TIMEOUT, TURN_TIMEOUT};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_redis_cluster_act_as_one() {
    let redis = RedisCluster::start();
    let ports = redis.ports.clone();
    let cluster = Cluster::start_on(RedisSetup::Cluster(redis), &[], false).await;
    let ready = wait_ready(&cluster, Duration::from_secs(20)).await;
    assert_eq!(ready["checks"]["redis"], "up", "{ready}");
    assert_eq!(ready["redis"]["mode"], "cluster", "{ready}");
    assert_eq!(
        ready["redis"]["nodes"].as_array().map(Vec::len),
        Some(3),
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
async fn signing_out_everywhere_works_on_a_redis_cluster() {
    let redis = RedisSetup::Cluster(RedisCluster::start());
    let cluster =
        Cluster::start_on(redis, &[("AUTH_MODE", "local"), ("SIGNUP", "open")], false).await;
    crate::signout::sign_out_everywhere_reaches_b(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_sentinel_act_as_one() {
    let redis = RedisSentinel::start();
    let master = redis.master_port;
    let cluster = Cluster::start_on(RedisSetup::Sentinel(redis), &[], false).await;
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
async fn signing_out_everywhere_works_on_sentinel() {
    let redis = RedisSetup::Sentinel(RedisSentinel::start());
    let cluster =
        Cluster::start_on(redis, &[("AUTH_MODE", "local"), ("SIGNUP", "open")], false).await;
    crate::signout::sign_out_everywhere_reaches_b(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_sentinel_master_dies_the_instances_follow_the_new_one() {
    let redis = RedisSentinel::start();
    let replica = redis.replica_port;
    let mut cluster = Cluster::start_on(RedisSetup::Sentinel(redis), &[], false).await;
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
