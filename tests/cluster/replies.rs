//! Replies between instances when things go wrong (issue 14, items 10-12): a listener that
//! falls behind, and an instance killed mid-reply.

use std::time::Duration;

use serde_json::json;
use testkit::browser::msg;
use testkit::fake_llm::{echo_pieces, Behaviour, Gate};
use testkit::sio::{is_end, Turn};

use crate::harness::{Cluster, EVENT_TIMEOUT, TURN_TIMEOUT};
use crate::{assert_full_reply, assert_sender_turn};

/// Bound on noticing a dead instance's reply (its lease is 2 s here).
const LAPSE_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_whose_listener_falls_behind_still_gets_every_chunk_once() {
    // A pub/sub buffer of one message: bursts of reply events from several conversations
    // on both instances at once overrun B's listener (each instance publishes one message
    // per round of its replies' events, and B receives its own rounds too, which it skips).
    let cluster = Cluster::start_with(&[("REDIS_PUBSUB_BUFFER", "1")], false).await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    let mut sender = user.socket(&cluster.a).await;
    let mut watcher = user.socket(&cluster.b).await;
    assert_eq!(watcher.watch(&conversation, None).await["ok"], true);
    // Other people's replies streaming on A and on B at the same time, in the same bursts.
    let mut others = Vec::new();
    for at in [&cluster.a, &cluster.b, &cluster.a, &cluster.b] {
        let other = cluster.new_user();
        other.get(at, "/").await.assert_status(200);
        let id = other.start_conversation(at).await;
        let socket = other.socket(at).await;
        others.push((other, id, socket));
    }

    let pieces: Vec<String> = (0..300).map(|i| format!("w{i} ")).collect();
    for _ in 0..2 {
        for _ in 0..=others.len() {
            cluster.llm.push(Behaviour::Stream(pieces.clone()));
        }
        sender.send_message("a long burst", Some(&conversation));
        for (_, id, socket) in &others {
            socket.emit(
                "send_message",
                json!({"message": "noise", "conversation_id": id}),
            );
        }
        let watched = watcher.collect_reply(TURN_TIMEOUT).await;
        assert_eq!(
            watched
                .names()
                .iter()
                .filter(|n| **n == "reply_started")
                .count(),
            1,
            "{:?}",
            watched.names()
        );
        assert_full_reply(&watched, &conversation, &pieces);
        let reply_id = watched.chunks[0].data["reply_id"].clone();
        assert!(reply_id.is_string(), "{:?}", watched.chunks[0].data);
        assert!(watched
            .chunks
            .iter()
            .all(|c| c.data["reply_id"] == reply_id));
        let sent = sender.collect_reply(TURN_TIMEOUT).await;
        assert_full_reply(&sent, &conversation, &pieces);
        assert_eq!(sent.chunks[0].data["reply_id"], reply_id);
        // Each of the others' replies ends before its next message is sent.
        for (_, _, socket) in &mut others {
            socket.collect_reply(TURN_TIMEOUT).await.expect_end();
        }
    }
    // The test is only worth something if B's listener did fall behind.
    let metrics = crate::harness::plain_get(&cluster.b, "/metrics", None).await;
    let lagged: u64 = metrics
        .text
        .lines()
        .find_map(|l| l.strip_prefix("chat_reply_listener_lagged_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no chat_reply_listener_lagged_total in {}", metrics.text));
    assert!(
        lagged > 0,
        "B's listener never fell behind: the bursts were too small"
    );
    let late: Vec<_> = watcher
        .drain(Duration::from_millis(500))
        .await
        .into_iter()
        .filter(|e| e.name == "response_chunk" || e.name == "response_end")
        .map(|e| e.data)
        .collect();
    assert!(late.is_empty(), "events after the replies: {late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_whose_instance_is_killed_ends_with_error_and_the_tab_can_send_again() {
    let mut cluster = Cluster::start_with(&[("REPLY_LEASE_SECONDS", "2")], false).await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    let sender = user.socket(&cluster.a).await;
    let mut watcher = user.socket(&cluster.b).await;
    assert_eq!(watcher.watch(&conversation, None).await["ok"], true);

    let gate = Gate::new(); // never released: A dies before its reply ends
    cluster.llm.push(Behaviour::held(
        &["Half", " a", " reply", " never", " finished"],
        2,
        &gate,
    ));
    sender.send_message("who finishes me?", Some(&conversation));
    let mut events = watcher.events_until_chunk(1, EVENT_TIMEOUT).await;
    let started = events[0].data.clone();
    assert_eq!(events[0].name, "reply_started", "{started}");
    let reply_id = started["reply_id"].clone();
    assert!(reply_id.is_string(), "{started}");

    cluster.a.kill().await;
    events.extend(watcher.reply_events_until(LAPSE_TIMEOUT, is_end).await);
    let watched = Turn::from_events(events);
    assert_eq!(watched.text(), "Half a", "{:?}", watched.summary());
    let error = watched.expect_error();
    assert_eq!(
        error,
        &json!({
            "message": "The reply was interrupted. Please try again.",
            "error": "interrupted",
            "conversation_id": conversation,
            "reply_id": reply_id,
        })
    );
    // The user's message is stored, once (as for any failed reply).
    assert_eq!(
        user.history(&cluster.b, &conversation).await,
        vec![msg("user", "who finishes me?")]
    );

    // The tab sends again, on B, and gets a whole reply.
    watcher.send_message("again", Some(&conversation));
    let turn = watcher.collect_turn(TURN_TIMEOUT).await;
    assert_sender_turn(&turn, &conversation, &echo_pieces("again"));
    assert_ne!(turn.chunks[0].data["reply_id"], reply_id);
    assert_eq!(
        user.history(&cluster.b, &conversation).await,
        vec![
            msg("user", "who finishes me?"),
            msg("user", "again"),
            msg("assistant", &echo_pieces("again").concat()),
        ]
    );
    let late: Vec<_> = watcher
        .drain(Duration::from_millis(1500))
        .await
        .into_iter()
        .filter(|e| e.name == "error" || e.name == "response_end")
        .map(|e| e.data)
        .collect();
    assert!(late.is_empty(), "events after the new reply: {late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_taken_for_dead_while_its_instance_was_frozen_stores_the_message_once() {
    let cluster = Cluster::start_with(&[("REPLY_LEASE_SECONDS", "2")], false).await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    let mut sender = user.socket(&cluster.a).await;
    let mut watcher = user.socket(&cluster.b).await;
    assert_eq!(watcher.watch(&conversation, None).await["ok"], true);

    let parts = ["Slow", " but", " alive"];
    let gate = Gate::new();
    cluster.llm.push(Behaviour::held(&parts, 1, &gate));
    sender.send_message("am I stored twice?", Some(&conversation));
    let mut events = sender.events_until_chunk(0, EVENT_TIMEOUT).await;
    watcher.events_until_chunk(0, EVENT_TIMEOUT).await;

    // A freezes (as if cut off) long enough for its lease to lapse: B ends the reply.
    cluster.a.signal("STOP");
    let ended = watcher.reply_events_until(LAPSE_TIMEOUT, is_end).await;
    cluster.a.signal("CONT");
    let error = Turn::from_events(ended);
    assert_eq!(
        error.expect_error()["error"],
        "interrupted",
        "{:?}",
        error.summary()
    );

    // A wakes up and finishes its reply: the message B stored is not stored again.
    gate.release();
    events.extend(sender.reply_events_until(TURN_TIMEOUT, is_end).await);
    let sent = Turn::from_events(events);
    assert_eq!(sent.text(), parts.concat(), "{:?}", sent.summary());
    assert_eq!(sent.expect_end()["stopped"], false);
    assert_eq!(
        user.history(&cluster.b, &conversation).await,
        vec![
            msg("user", "am I stored twice?"),
            msg("assistant", &parts.concat()),
        ]
    );
    let late: Vec<_> = watcher
        .drain(Duration::from_millis(500))
        .await
        .into_iter()
        .filter(|e| e.name == "response_chunk" || e.name == "response_end")
        .map(|e| e.data)
        .collect();
    assert!(
        late.is_empty(),
        "the ended reply went on for the watcher: {late:?}"
    );
}
