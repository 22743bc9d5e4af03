//! `LLM_MAX_CONCURRENCY`: over the cap a message is refused at once with a clear error
//! (nothing stored, nothing sent upstream) instead of queueing; a slot frees when a reply ends.

use testkit::browser::msg;
use testkit::fake_llm::{Behaviour, Gate};

use crate::helpers::{spawn_app, EVENT_TIMEOUT, TURN_TIMEOUT};

#[tokio::test]
async fn a_message_over_the_reply_cap_is_refused_until_a_slot_frees() {
    let app = spawn_app(&[("LLM_MAX_CONCURRENCY", "1")]).await;
    let (ann, bob) = (app.new_user().await, app.new_user().await);
    let (ann_id, bob_id) = (
        ann.start_conversation().await,
        bob.start_conversation().await,
    );
    let (mut ann_socket, mut bob_socket) = (ann.socket().await, bob.socket().await);
    let gate = Gate::new();
    app.llm
        .push(Behaviour::held(&["first ", "reply"], 1, &gate));

    ann_socket.send_message("hold the slot", Some(&ann_id));
    ann_socket.wait_for("response_chunk", EVENT_TIMEOUT).await;
    bob_socket.send_message("over the cap", Some(&bob_id));
    let refused = bob_socket.wait_for("error", EVENT_TIMEOUT).await;
    let calls_while_full = app.llm.call_count();
    gate.release();
    let ann_turn = ann_socket.collect_turn(TURN_TIMEOUT).await;
    app.llm.streams(&["now ", "it fits"]);
    bob_socket.send_message("after the slot freed", Some(&bob_id));
    let bob_turn = bob_socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(refused["error"], "busy");
    assert_eq!(
        refused["message"],
        "The server is busy. Please try again in a moment."
    );
    assert_eq!(refused["conversation_id"], bob_id.as_str());
    assert_eq!(calls_while_full, 1, "the refused message reached the model");
    assert_eq!(ann_turn.text(), "reply");
    assert_eq!(bob_turn.text(), "now it fits");
    assert_eq!(
        bob.history(&bob_id).await,
        vec![
            msg("user", "after the slot freed"),
            msg("assistant", "now it fits")
        ],
        "the refused message was stored"
    );
    let metrics = ann.get("/metrics").await;
    assert!(
        metrics.text.contains("chat_turns_refused_busy_total 1"),
        "{}",
        metrics.text
    );
}
