//! `stop_generation`, disconnects mid-reply and overlapping messages.

use std::time::Duration;

use serde_json::json;
use testkit::browser::msg;
use testkit::eventually;

use crate::helpers::{spawn_app, EVENT_TIMEOUT, TURN_TIMEOUT};

const SLOW_PIECES: [&str; 16] = [
    "One",
    " two",
    " three",
    " four",
    " five",
    " six",
    " seven",
    " eight",
    " nine",
    " ten",
    " eleven",
    " twelve",
    " thirteen",
    " fourteen",
    " fifteen",
    " sixteen.",
];
const SLOW_DELAY: Duration = Duration::from_millis(250);

fn full_slow_reply() -> String {
    SLOW_PIECES.concat()
}

#[tokio::test]
async fn stop_mid_stream_ends_the_turn_as_stopped_and_stores_the_partial_reply() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm.slow_stream(&SLOW_PIECES, SLOW_DELAY);

    socket.send_message("Count slowly", None);
    let first = socket.wait_for("response_chunk", TURN_TIMEOUT).await;
    let second = socket.wait_for("response_chunk", EVENT_TIMEOUT).await;
    socket.emit("stop_generation", json!({"conversation_id": id}));
    let rest = socket.collect_turn(TURN_TIMEOUT).await;

    let end = rest.expect_end();
    assert_eq!(end["stopped"], json!(true), "{end}");
    assert_eq!(end["conversation_id"], json!(id), "{end}");
    let seen = format!(
        "{}{}{}",
        first["chunk"].as_str().unwrap(),
        second["chunk"].as_str().unwrap(),
        rest.text()
    );
    assert_eq!(end["chunks"], json!(2 + rest.chunks.len()), "{end}");
    let history = user.history(&id).await;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0], msg("user", "Count slowly"));
    assert_eq!(history[1].0, "assistant");
    let partial = &history[1].1;
    assert!(
        full_slow_reply().starts_with(partial.as_str()),
        "stored {partial:?} is not a prefix of the reply"
    );
    assert!(
        partial.starts_with("One two"),
        "stored {partial:?} lacks the chunks sent before the stop"
    );
    assert!(
        partial.len() < full_slow_reply().len(),
        "the whole reply was stored: not stopped"
    );
    assert!(
        seen.starts_with(partial.as_str()) || partial.starts_with(seen.as_str()),
        "sent {seen:?} vs stored {partial:?}"
    );
}

#[tokio::test]
async fn stop_without_a_payload_stops_the_users_reply() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm.slow_stream(&SLOW_PIECES, SLOW_DELAY);

    socket.send_message("Count slowly", None);
    socket.wait_for("response_chunk", TURN_TIMEOUT).await;
    socket.emit_raw(r#"42["stop_generation"]"#);
    let rest = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(rest.expect_end()["stopped"], json!(true));
    let history = user.history(&id).await;
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(history[1].1.len() < full_slow_reply().len());
}

#[tokio::test]
async fn stop_from_another_tab_of_the_same_user_stops_the_reply() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut sender = user.socket().await;
    let other_tab = user.socket().await;
    app.llm.slow_stream(&SLOW_PIECES, SLOW_DELAY);

    sender.send_message("Count slowly", None);
    sender.wait_for("response_chunk", TURN_TIMEOUT).await;
    other_tab.emit("stop_generation", json!({"conversation_id": id}));
    let rest = sender.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(rest.expect_end()["stopped"], json!(true));
}

#[tokio::test]
async fn another_user_cannot_stop_the_reply() {
    let app = spawn_app(&[]).await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    let id = alice.start_conversation().await;
    let mut alices_socket = alice.socket().await;
    let bobs_socket = bob.socket().await;
    let pieces = ["Not", " stopped", " by", " Bob", "."];
    app.llm.slow_stream(&pieces, Duration::from_millis(200));

    alices_socket.send_message("Keep going", None);
    alices_socket.wait_for("response_chunk", TURN_TIMEOUT).await;
    bobs_socket.emit("stop_generation", json!({"conversation_id": id}));
    bobs_socket.emit_raw(r#"42["stop_generation"]"#);
    let rest = alices_socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(rest.expect_end()["stopped"], json!(false));
    assert_eq!(
        alice.history(&id).await,
        vec![
            msg("user", "Keep going"),
            msg("assistant", "Not stopped by Bob.")
        ]
    );
}

#[tokio::test]
async fn disconnect_mid_reply_stores_the_partial_reply() {
    // Nobody reconnects within the grace period: the reply is stopped.
    let app = spawn_app(&[("DISCONNECT_GRACE_SECONDS", "0.3")]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm.slow_stream(&SLOW_PIECES, SLOW_DELAY);

    socket.send_message("Count slowly", None);
    socket.wait_for("response_chunk", TURN_TIMEOUT).await;
    socket.disconnect().await;

    let history = eventually(
        Duration::from_secs(15),
        "the partial reply to be stored",
        || {
            let user = user.clone();
            let id = id.clone();
            async move {
                let history = user.history(&id).await;
                (history.len() == 2).then_some(history)
            }
        },
    )
    .await;
    assert_eq!(history[0], msg("user", "Count slowly"));
    let partial = &history[1].1;
    assert_eq!(history[1].0, "assistant");
    assert!(partial.starts_with("One"), "{partial:?}");
    assert!(
        full_slow_reply().starts_with(partial.as_str()),
        "{partial:?}"
    );
    assert!(
        partial.len() < full_slow_reply().len(),
        "the whole reply was stored after the disconnect: {partial:?}"
    );
}

#[tokio::test]
async fn second_message_while_a_reply_is_generated_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    // Long enough that the second message surely arrives while the first reply streams.
    let pieces = ["Slow", " but", " complete", ".", "..", "...", "...."];
    app.llm.slow_stream(&pieces, Duration::from_millis(400));

    socket.send_message("First message", None);
    socket.wait_for("response_chunk", TURN_TIMEOUT).await;
    socket.send_message("Second message too soon", Some(&id));
    let error = socket.wait_for("error", TURN_TIMEOUT).await;
    let first_turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(
        error["message"],
        json!("A reply is already being generated for this conversation."),
        "{error}"
    );
    assert_eq!(first_turn.expect_end()["stopped"], json!(false));
    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "First message"),
            msg("assistant", "Slow but complete..........")
        ]
    );
    assert_eq!(app.llm.call_count(), 1);
}
