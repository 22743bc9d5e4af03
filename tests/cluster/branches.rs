//! Branches across instances: a tab on B follows an edit made on A as it
//! streams, and hears of a switch made on A (`conversation_updated`), after
//! which B reads the path A chose.

use serde_json::json;
use testkit::browser::msg;
use testkit::fake_llm::echo_pieces;
use testkit::sio::is_end;

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
