//! Socket.IO session handling: the current conversation is read per message, updates fan
//! out to every socket of the same user only, and cross-site origins are refused.

use serde_json::json;
use testkit::browser::msg;
use testkit::sio::{Event, SioClient};

use crate::helpers::{spawn_app, EVENT_TIMEOUT, TURN_TIMEOUT};

#[tokio::test]
async fn conversation_started_after_connecting_receives_the_message() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let mut socket = user.socket().await;
    let id = user.start_conversation().await;
    app.llm.streams(&["Fresh", " reply"]);

    socket.send_message("Hello new conversation", None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(turn.expect_end()["conversation_id"], json!(id));
    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "Hello new conversation"),
            msg("assistant", "Fresh reply")
        ]
    );
}

#[tokio::test]
async fn message_sent_right_after_connecting_is_handled() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.start_conversation().await;
    let unknown = uuid::Uuid::new_v4().to_string();

    // A page emits as soon as its socket is connected (socket.io-client even flushes
    // emits buffered before the connection), so the server must handle an event sent
    // immediately after the namespace connect. Several tries to catch a race.
    for attempt in 0..10 {
        let mut socket = user.socket().await;
        socket.send_message("right away", Some(&unknown));
        let error = socket.wait_for("error", EVENT_TIMEOUT).await;

        assert_eq!(
            error["message"],
            json!("Conversation not found."),
            "attempt {attempt}: {error}"
        );
    }
}

#[tokio::test]
async fn conversation_loaded_after_connecting_receives_the_message() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let first = user.start_conversation().await;
    let mut socket = user.socket().await;
    let second = user.start_conversation().await;
    user.get(&format!("/load_conversation/{first}")).await;
    app.llm.streams(&["Back", " to the first"]);

    socket.send_message("Which one am I in?", None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(turn.expect_end()["conversation_id"], json!(first));
    assert_eq!(
        user.history(&first).await,
        vec![
            msg("user", "Which one am I in?"),
            msg("assistant", "Back to the first")
        ]
    );
    assert!(user.history(&second).await.is_empty());
}

#[tokio::test]
async fn conversation_updated_reaches_the_users_other_socket_but_not_another_user() {
    let app = spawn_app(&[]).await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    let alices = alice.start_conversation().await;
    let bobs = bob.start_conversation().await;
    let mut alice_tab_one = alice.socket().await;
    let mut alice_tab_two = alice.socket().await;
    let mut bob_tab = bob.socket().await;

    alice_tab_one.send_message("Alice speaks", None);
    alice_tab_one.collect_turn(TURN_TIMEOUT).await.expect_end();
    let seen_by_other_tab = alice_tab_two
        .wait_for_matching("conversation_updated", EVENT_TIMEOUT, |data| {
            data["message_count"] == json!(2)
        })
        .await;
    // Bob's own turn gives his socket events to wait for; Alice's update was emitted before
    // it started, so it would be queued ahead of them if Bob's socket had received it.
    bob_tab.send_message("Bob speaks", None);
    let bobs_turn = bob_tab.collect_turn(TURN_TIMEOUT).await;
    bob_tab
        .wait_for_matching("conversation_updated", EVENT_TIMEOUT, |data| {
            data["conversation_id"] == json!(bobs)
        })
        .await;

    assert_eq!(seen_by_other_tab["conversation_id"], json!(alices));
    bobs_turn.expect_end();
    let bob_events: Vec<_> = bobs_turn
        .events
        .iter()
        .cloned()
        .chain(bob_tab.drain(std::time::Duration::from_millis(300)).await)
        .collect();
    assert!(
        bob_events
            .iter()
            .all(|Event { data, .. }| data.get("conversation_id") != Some(&json!(alices))),
        "Bob's socket received an event about Alice's conversation: {bob_events:?}"
    );
    assert!(
        alice_tab_two
            .drain(std::time::Duration::from_millis(300))
            .await
            .iter()
            .all(|Event { name, .. }| name != "response_chunk"),
        "turn events must go to the sending socket only"
    );
}

#[tokio::test]
async fn few_shot_example_sends_conversation_updated_to_the_users_sockets() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;

    user.add_example("Example question", "Example answer").await;
    let update = socket
        .wait_for_matching("conversation_updated", EVENT_TIMEOUT, |data| {
            data["message_count"] == json!(2)
        })
        .await;

    assert_eq!(update["conversation_id"], json!(id), "{update}");
}

#[tokio::test]
async fn cross_site_origin_is_refused_at_the_handshake() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let attempt = SioClient::connect(
        app.addr,
        user.cookie_header().as_deref(),
        Some("http://evil.example"),
    )
    .await;

    assert!(
        attempt.is_err(),
        "a socket from http://evil.example was accepted"
    );
}

#[tokio::test]
async fn same_origin_socket_is_accepted() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.start_conversation().await;

    let mut socket = SioClient::connect(
        app.addr,
        user.cookie_header().as_deref(),
        Some(&app.base_url),
    )
    .await
    .expect("same-origin socket is accepted");
    socket.send_message("same origin works", None);

    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
}

#[tokio::test]
async fn origin_listed_in_cors_allowed_origins_is_accepted() {
    let app = spawn_app(&[(
        "CORS_ALLOWED_ORIGINS",
        "http://allowed.example,http://other.example",
    )])
    .await;
    let user = app.new_user().await;

    let allowed = SioClient::connect(
        app.addr,
        user.cookie_header().as_deref(),
        Some("http://allowed.example"),
    )
    .await;
    let refused = SioClient::connect(
        app.addr,
        user.cookie_header().as_deref(),
        Some("http://evil.example"),
    )
    .await;

    assert!(
        allowed.is_ok(),
        "listed origin refused: {:?}",
        allowed.err()
    );
    assert!(refused.is_err(), "unlisted origin accepted");
}
