//! Branches across instances: a tab on B follows an edit made on A as it
//! streams, and hears of a switch made on A (`conversation_updated`), after
//! which B reads the path A chose. An edit or a regenerate whose instance dies
//! mid-reply is stored as its failure would be, once.

use std::time::Duration;

use serde_json::{json, Value};
use testkit::browser::{msg, Browser};
use testkit::fake_llm::{echo_pieces, Behaviour, Gate};
use testkit::sio::{is_end, SioClient, Turn};

use crate::harness::{Cluster, EVENT_TIMEOUT, TURN_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_on_b_follows_an_edit_and_a_switch_made_on_a() {
    let cluster = Cluster::start().await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    let mut on_a = user.socket(&cluster.a).await;
    on_a.send_message("first words", Some(&conversation));
    on_a.collect_reply(TURN_TIMEOUT).await.expect_end();
    let mut on_b = user.socket(&cluster.b).await;
    let ack = on_b.watch(&conversation, None).await;
    assert_eq!(ack["ok"], true);
    // The watch replays the reply that just ended first.
    let replayed = on_b.collect_reply(TURN_TIMEOUT).await;
    assert_eq!(replayed.text(), echo_pieces("first words").concat());

    on_a.emit(
        "edit_message",
        json!({"conversation_id": conversation, "index": 0, "message": "better words"}),
    );

    let sent = on_a.collect_reply(TURN_TIMEOUT).await;
    assert_eq!(sent.text(), echo_pieces("better words").concat());
    let seen = on_b.reply_events_until(TURN_TIMEOUT, is_end).await;
    assert_eq!(seen[0].name, "reply_started");
    assert_eq!(seen[0].data["message"], "better words");
    let updated = on_b
        .wait_for_matching("conversation_updated", EVENT_TIMEOUT, |d| {
            d["conversation_id"] == conversation.as_str()
        })
        .await;
    assert_eq!(updated.data["message_count"], 2);
    let edited = vec![
        msg("user", "better words"),
        msg("assistant", "You said: better words"),
    ];
    assert_eq!(user.history(&cluster.b, &conversation).await, edited);
    let loaded = user
        .get(&cluster.b, &format!("/load_conversation/{conversation}"))
        .await;
    assert_eq!(
        loaded.json["branches"],
        json!([{"index": 0, "position": 2, "count": 2}])
    );

    let ack = on_a
        .emit_with_ack(
            "switch_branch",
            json!({"conversation_id": conversation, "index": 0, "position": 1}),
            EVENT_TIMEOUT,
        )
        .await;

    assert_eq!(ack["ok"], true, "{ack}");
    on_b.wait_for_matching("conversation_updated", EVENT_TIMEOUT, |d| {
        d["conversation_id"] == conversation.as_str()
    })
    .await;
    assert_eq!(
        user.history(&cluster.b, &conversation).await,
        [
            msg("user", "first words"),
            msg("assistant", "You said: first words"),
        ]
    );
    // B goes on from the path A chose.
    on_b.send_message("more words", Some(&conversation));
    on_b.collect_reply(TURN_TIMEOUT).await.expect_end();
    let prompt = cluster.llm.requests().last().unwrap().contents();
    assert_eq!(
        prompt,
        ["first words", "You said: first words", "more words"]
    );
}

/// Bound on noticing a dead instance's reply (its lease is 2 s here).
const LAPSE_TIMEOUT: Duration = Duration::from_secs(30);

/// `branches` of `GET /load_conversation/{id}` on B.
async fn branches_on_b(cluster: &Cluster, user: &Browser, conversation: &str) -> Value {
    let loaded = user
        .get(&cluster.b, &format!("/load_conversation/{conversation}"))
        .await;
    loaded.json.get("branches").cloned().unwrap_or(json!([]))
}

/// A conversation made on A with one turn answered (the echo reply).
async fn answered(cluster: &Cluster, user: &Browser, on_a: &mut SioClient, words: &str) -> String {
    let conversation = user.start_conversation(&cluster.a).await;
    on_a.send_message(words, Some(&conversation));
    on_a.collect_reply(TURN_TIMEOUT).await.expect_end();
    conversation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_and_a_regenerate_whose_instance_is_killed_are_stored_as_their_failures_would_be() {
    let mut cluster = Cluster::start_with(&[("REPLY_LEASE_SECONDS", "2")], false).await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let mut on_a = user.socket(&cluster.a).await;
    let edited = answered(&cluster, &user, &mut on_a, "first words").await;
    let regenerated = answered(&cluster, &user, &mut on_a, "which is best?").await;
    let mut edit_watcher = user.socket(&cluster.b).await;
    let mut regenerate_watcher = user.socket(&cluster.b).await;
    for (watcher, conversation) in [
        (&mut edit_watcher, &edited),
        (&mut regenerate_watcher, &regenerated),
    ] {
        assert_eq!(watcher.watch(conversation, None).await["ok"], true);
        // The watch replays the reply that ended first.
        watcher.collect_reply(TURN_TIMEOUT).await.expect_end();
    }
    let gate = Gate::new(); // never released: A dies before its replies end
    for _ in 0..2 {
        cluster
            .llm
            .push(Behaviour::held(&["Half", " a", " reply"], 2, &gate));
    }
    on_a.emit(
        "edit_message",
        json!({"conversation_id": edited, "index": 0, "message": "better words"}),
    );
    on_a.emit("regenerate", json!({"conversation_id": regenerated}));
    edit_watcher.events_until_chunk(1, EVENT_TIMEOUT).await;
    regenerate_watcher
        .events_until_chunk(1, EVENT_TIMEOUT)
        .await;

    cluster.a.kill().await;
    for watcher in [&mut edit_watcher, &mut regenerate_watcher] {
        let ended = Turn::from_events(watcher.reply_events_until(LAPSE_TIMEOUT, is_end).await);
        assert_eq!(ended.expect_error()["error"], "interrupted");
    }

    // The edit: its new message on a new branch, the old pair its sibling.
    assert_eq!(
        user.history(&cluster.b, &edited).await,
        vec![msg("user", "better words")]
    );
    assert_eq!(
        branches_on_b(&cluster, &user, &edited).await,
        json!([{"index": 0, "position": 2, "count": 2}])
    );
    // The regenerate: nothing new to store, the old reply stays shown.
    assert_eq!(
        user.history(&cluster.b, &regenerated).await,
        vec![
            msg("user", "which is best?"),
            msg("assistant", &echo_pieces("which is best?").concat()),
        ]
    );
    assert_eq!(
        branches_on_b(&cluster, &user, &regenerated).await,
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_taken_for_dead_while_its_instance_was_frozen_stores_its_message_once() {
    let cluster = Cluster::start_with(&[("REPLY_LEASE_SECONDS", "2")], false).await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let mut sender = user.socket(&cluster.a).await;
    let conversation = answered(&cluster, &user, &mut sender, "first words").await;
    let mut watcher = user.socket(&cluster.b).await;
    assert_eq!(watcher.watch(&conversation, None).await["ok"], true);
    watcher.collect_reply(TURN_TIMEOUT).await.expect_end();

    let parts = ["Slow", " but", " alive"];
    let gate = Gate::new();
    cluster.llm.push(Behaviour::held(&parts, 1, &gate));
    sender.emit(
        "edit_message",
        json!({"conversation_id": conversation, "index": 0, "message": "better words"}),
    );
    let mut events = sender.events_until_chunk(0, EVENT_TIMEOUT).await;
    watcher.events_until_chunk(0, EVENT_TIMEOUT).await;

    // A freezes long enough for its lease to lapse: B ends the reply and
    // stores the edit's message on its new branch.
    cluster.a.signal("STOP");
    let ended = Turn::from_events(watcher.reply_events_until(LAPSE_TIMEOUT, is_end).await);
    cluster.a.signal("CONT");
    assert_eq!(ended.expect_error()["error"], "interrupted");

    // A wakes up and finishes: its reply goes after that message, which is
    // not stored a second time (nor set aside as a sibling of itself).
    gate.release();
    events.extend(sender.reply_events_until(TURN_TIMEOUT, is_end).await);
    let sent = Turn::from_events(events);
    assert_eq!(sent.text(), parts.concat(), "{:?}", sent.summary());
    assert_eq!(
        user.history(&cluster.b, &conversation).await,
        vec![
            msg("user", "better words"),
            msg("assistant", &parts.concat()),
        ]
    );
    assert_eq!(
        branches_on_b(&cluster, &user, &conversation).await,
        json!([{"index": 0, "position": 2, "count": 2}])
    );
    // The sibling is the conversation as it was before the edit, nothing more.
    let ack = sender
        .emit_with_ack(
            "switch_branch",
            json!({"conversation_id": conversation, "index": 0, "position": 1}),
            EVENT_TIMEOUT,
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        user.history(&cluster.b, &conversation).await,
        vec![
            msg("user", "first words"),
            msg("assistant", &echo_pieces("first words").concat()),
        ]
    );
}
