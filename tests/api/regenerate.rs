//! `regenerate`: the last reply is replaced by a new one to the same message.

use serde_json::json;
use testkit::browser::msg;

use crate::helpers::{spawn_app, EVENT_TIMEOUT, TURN_TIMEOUT};

#[tokio::test]
async fn regenerate_replaces_the_last_reply_and_keeps_earlier_turns() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm.streams(&["First", " answer"]);
    socket.send_message("Earlier question", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    app.llm.streams(&["Weak", " answer"]);
    socket.send_message("Which is best?", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    app.llm.streams(&["Better", " answer"]);

    socket.emit("regenerate", json!({"conversation_id": id}));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(turn.text(), "Better answer");
    assert!(turn.token_usage.is_some());
    assert_eq!(
        user.history(&id).await,
        [
            msg("user", "Earlier question"),
            msg("assistant", "First answer"),
            msg("user", "Which is best?"),
            msg("assistant", "Better answer"),
        ]
    );
    let prompt = app.llm.requests().last().unwrap().messages();
    assert_eq!(prompt.last().unwrap()["content"], "Which is best?");
    assert!(
        !prompt.iter().any(|m| m["content"] == "Weak answer"),
        "the replaced reply must not be in the prompt"
    );
}

#[tokio::test]
async fn regenerate_in_an_empty_conversation_says_there_is_nothing_to_regenerate() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;

    socket.emit("regenerate", json!({"conversation_id": id}));
    let error = socket.wait_for("error", EVENT_TIMEOUT).await;

    assert_eq!(
        error["message"],
        "There is no message to regenerate a reply for."
    );
    assert_eq!(app.llm.call_count(), 0);
}
