//! Bad input over HTTP and Socket.IO gets a 4xx JSON error or an `error` event, never a
//! 500 or a crash, and the server keeps serving afterwards.

use serde_json::{json, Value};
use testkit::browser::{msg, ApiResponse};

use crate::helpers::{spawn_app, TURN_TIMEOUT};

#[track_caller]
fn assert_invalid_with_a_sentence(response: &ApiResponse) {
    assert_eq!(response.status, 400, "{}", response.text);
    assert_eq!(
        response.json["error"],
        json!("invalid"),
        "{}",
        response.text
    );
    let message = response.json["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "no message: {}", response.text);
}

#[tokio::test]
async fn body_that_is_not_json_is_rejected_with_a_json_error() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;

    let response = user
        .post_raw(
            "/add_few_shot_example",
            "application/json",
            "{not json at all",
        )
        .await;

    assert_invalid_with_a_sentence(&response);
    assert!(user.history(&id).await.is_empty());
}

#[tokio::test]
async fn fields_of_the_wrong_type_are_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;

    let response = user
        .post_json(
            "/add_few_shot_example",
            json!({"user_prompt": 5, "assistant_response": true}),
        )
        .await;

    assert_invalid_with_a_sentence(&response);
    assert!(user.history(&id).await.is_empty());
}

#[tokio::test]
async fn json_array_body_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.start_conversation().await;

    let response = user
        .post_json(
            "/add_few_shot_example",
            json!(["user_prompt", "assistant_response"]),
        )
        .await;

    assert_invalid_with_a_sentence(&response);
}

#[tokio::test]
async fn body_over_one_mebibyte_is_too_large() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.start_conversation().await;
    let huge = json!({"user_prompt": "x".repeat(1_200_000), "assistant_response": "y"});

    let response = user.post_json("/add_few_shot_example", huge).await;

    assert_eq!(
        response.status,
        413,
        "{}",
        &response.text[..response.text.len().min(300)]
    );
    assert_eq!(
        response.json["error"],
        json!("too_large"),
        "{}",
        response.text
    );
}

#[tokio::test]
async fn path_traversal_id_is_a_json_client_error() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.start_conversation().await;

    for path in [
        "/load_conversation/..%2F..%2Fetc%2Fpasswd",
        "/conversation/..%2F..%2Fetc%2Fpasswd",
    ] {
        let response = if path.starts_with("/load") {
            user.get(path).await
        } else {
            user.delete(path).await
        };

        assert!(
            response.status == 400 || response.status == 404,
            "{path}: {} {}",
            response.status,
            response.text
        );
        assert!(
            response.json["message"].is_string(),
            "{path}: not a JSON error: {}",
            response.text
        );
        assert!(
            !response.text.contains("root:"),
            "{path}: {}",
            response.text
        );
    }
}

#[tokio::test]
async fn malformed_ids_never_cause_a_server_error() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.start_conversation().await;

    for id in [
        "not-a-uuid",
        "%27%20OR%201%3D1%20--",
        "00000000-0000-0000-0000-00000000000g",
        "%00",
        "a%22b",
    ] {
        let response = user.get(&format!("/load_conversation/{id}")).await;

        assert_eq!(response.status, 400, "{id}: {}", response.text);
        assert_eq!(
            response.json["error"],
            json!("invalid"),
            "{id}: {}",
            response.text
        );
    }
}

/// Sends `packet` on a fresh turn and returns the `error` event's message; the LLM is not called.
async fn error_for(socket: &mut testkit::sio::SioClient, packet: &str) -> Value {
    socket.emit_raw(packet);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;
    assert!(turn.chunks.is_empty(), "{packet}: {:?}", turn.events);
    turn.expect_error()["message"].clone()
}

#[tokio::test]
async fn bad_send_message_payloads_get_error_events_and_the_server_keeps_serving() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    let no_message = json!("No message received from user.");

    let number = error_for(&mut socket, r#"42["send_message",{"message":42}]"#).await;
    let no_payload = error_for(&mut socket, r#"42["send_message"]"#).await;
    let null_message = error_for(&mut socket, r#"42["send_message",{"message":null}]"#).await;
    let empty = error_for(&mut socket, r#"42["send_message",{"message":""}]"#).await;
    let missing = error_for(&mut socket, r#"42["send_message",{"text":"wrong field"}]"#).await;
    let bare_string = error_for(&mut socket, r#"42["send_message","just a string"]"#).await;
    let too_long = error_for(
        &mut socket,
        &format!(
            "42{}",
            json!(["send_message", {"message": "x".repeat(100_000)}])
        ),
    )
    .await;
    let bad_id = error_for(
        &mut socket,
        r#"42["send_message",{"message":"hi","conversation_id":"not-a-uuid"}]"#,
    )
    .await;
    let numeric_id = error_for(
        &mut socket,
        r#"42["send_message",{"message":"hi","conversation_id":7}]"#,
    )
    .await;

    assert_eq!(number, no_message);
    assert_eq!(no_payload, no_message);
    assert_eq!(null_message, no_message);
    assert_eq!(empty, no_message);
    assert_eq!(missing, no_message);
    assert_eq!(bare_string, no_message);
    assert_eq!(too_long, json!("Message too long (max 32000 characters)."));
    assert!(bad_id.is_string() && bad_id != json!(""), "{bad_id}");
    assert!(
        numeric_id.is_string() && numeric_id != json!(""),
        "{numeric_id}"
    );
    assert_eq!(app.llm.call_count(), 0, "bad input must not reach the LLM");
    assert!(
        user.history(&id).await.is_empty(),
        "bad input must not be stored"
    );

    socket.send_message("A proper question", None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;
    turn.expect_end();
    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "A proper question"),
            msg("assistant", &turn.text())
        ]
    );
}

#[tokio::test]
async fn message_at_the_configured_limit_is_accepted_and_one_over_is_not() {
    let app = spawn_app(&[("MAX_MESSAGE_CHARS", "50")]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;

    socket.send_message(&"é".repeat(51), None);
    let over = socket.collect_turn(TURN_TIMEOUT).await;
    socket.send_message(&"é".repeat(50), None);
    let at_limit = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(
        over.expect_error()["message"],
        json!("Message too long (max 50 characters).")
    );
    at_limit.expect_end();
    assert_eq!(user.history(&id).await[0], msg("user", &"é".repeat(50)));
}

#[tokio::test]
async fn unknown_event_and_garbage_packets_do_not_break_the_socket() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.start_conversation().await;
    let mut socket = user.socket().await;

    socket.emit("no_such_event", json!({"x": 1}));
    socket.emit_raw(r#"42["stop_generation",{"conversation_id":"not-a-uuid"}]"#);
    socket.emit_raw(r#"42["stop_generation",{"conversation_id":17}]"#);
    socket.emit_raw(r#"42["stop_generation","nonsense"]"#);
    // A stop with an unusable id stops nothing and says so.
    for _ in 0..3 {
        let error = socket.wait_for("error", TURN_TIMEOUT).await;
        assert_eq!(error["message"], "Invalid conversation id.");
    }
    socket.send_message("Still there?", None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(
        turn.expect_end()["stopped"],
        json!(false),
        "{:?}",
        turn.events
    );
    assert_eq!(turn.text(), testkit::fake_llm::DEFAULT_PIECES.concat());
    assert_eq!(user.get("/healthz").await.status, 200);
}
