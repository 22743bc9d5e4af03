//! Two users (two cookie jars) never see or touch each other's conversations.

use serde_json::json;
use testkit::browser::msg;
use testkit::sio::SioClient;

use crate::helpers::{spawn_app, TestApp, User, TURN_TIMEOUT};

/// Alice with one conversation holding one example; returns (alice, her conversation id).
async fn alice_with_a_conversation(app: &TestApp) -> (User, String) {
    let alice = app.new_user().await;
    let id = alice.start_conversation().await;
    alice
        .add_example("Alice's private question", "Alice's private answer")
        .await;
    (alice, id)
}

fn alices_history() -> Vec<(String, String)> {
    vec![
        msg("user", "Alice's private question"),
        msg("assistant", "Alice's private answer"),
    ]
}

#[tokio::test]
async fn another_users_list_is_empty() {
    let app = spawn_app(&[]).await;
    let (_alice, _) = alice_with_a_conversation(&app).await;
    let bob = app.new_user().await;

    let list = bob.list().await;

    assert!(list.is_empty(), "Bob sees {list:?}");
}

#[tokio::test]
async fn another_user_cannot_load_the_conversation() {
    let app = spawn_app(&[]).await;
    let (_alice, id) = alice_with_a_conversation(&app).await;
    let bob = app.new_user().await;

    let response = bob.get(&format!("/load_conversation/{id}")).await;

    response.assert_error(404, "not_found", "Conversation not found.");
    assert!(!response.text.contains("private"), "{}", response.text);
}

#[tokio::test]
async fn another_user_cannot_delete_the_conversation() {
    let app = spawn_app(&[]).await;
    let (alice, id) = alice_with_a_conversation(&app).await;
    let bob = app.new_user().await;

    let response = bob.delete(&format!("/conversation/{id}")).await;

    response.assert_error(404, "not_found", "Conversation not found.");
    assert_eq!(alice.listed_ids().await, vec![id.clone()]);
    assert_eq!(alice.history(&id).await, alices_history());
}

#[tokio::test]
async fn failed_load_does_not_let_another_user_reset_save_or_extend_it() {
    let app = spawn_app(&[]).await;
    let (alice, id) = alice_with_a_conversation(&app).await;
    let bob = app.new_user().await;

    bob.get(&format!("/load_conversation/{id}"))
        .await
        .assert_error(404, "not_found", "Conversation not found.");
    let reset = bob.post("/reset_conversation").await;
    let save = bob.post("/save_history").await;
    let example = bob
        .post_json(
            "/add_few_shot_example",
            json!({"user_prompt": "Bob was here", "assistant_response": "indeed"}),
        )
        .await;

    reset.assert_error(400, "no_conversation", "No active conversation to reset.");
    save.assert_error(400, "no_conversation", "No active conversation to save.");
    example.assert_error(
        400,
        "no_conversation",
        "No active conversation. Please start a new conversation.",
    );
    assert_eq!(alice.history(&id).await, alices_history());
}

#[tokio::test]
async fn failed_load_leaves_the_other_users_own_conversation_current() {
    let app = spawn_app(&[]).await;
    let (alice, alices) = alice_with_a_conversation(&app).await;
    let bob = app.new_user().await;
    let bobs = bob.start_conversation().await;

    bob.get(&format!("/load_conversation/{alices}"))
        .await
        .assert_error(404, "not_found", "Conversation not found.");
    bob.add_example("Bob's question", "Bob's answer").await;
    let saved = bob.post("/save_history").await;
    bob.post("/reset_conversation")
        .await
        .assert_ok_message("Conversation has been reset successfully!");

    assert!(
        saved.str_field("file_name").contains(&bobs),
        "Bob saved {}",
        saved.text
    );
    assert!(bob.history(&bobs).await.is_empty());
    assert_eq!(alice.history(&alices).await, alices_history());
}

#[tokio::test]
async fn another_users_socket_cannot_send_to_the_conversation() {
    let app = spawn_app(&[]).await;
    let (alice, id) = alice_with_a_conversation(&app).await;
    let bob = app.new_user().await;
    let mut socket = bob.socket().await;

    socket.send_message("Bob writes into Alice's conversation", Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    let error = turn.expect_error();
    assert_eq!(
        error["message"],
        json!("Conversation not found."),
        "{error}"
    );
    assert_eq!(error["error"], json!("not_found"), "{error}");
    assert!(turn.chunks.is_empty());
    assert_eq!(app.llm.call_count(), 0);
    assert_eq!(alice.history(&id).await, alices_history());
}

#[tokio::test]
async fn socket_without_a_session_cannot_send_to_a_users_conversation() {
    let app = spawn_app(&[]).await;
    let (alice, id) = alice_with_a_conversation(&app).await;
    let mut socket = SioClient::connect(app.addr, None, None)
        .await
        .expect("cookie-less socket connects");

    socket.send_message("anonymous writes into Alice's conversation", Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(
        turn.expect_error()["message"],
        json!("Conversation not found.")
    );
    assert_eq!(app.llm.call_count(), 0);
    assert_eq!(alice.history(&id).await, alices_history());
}

#[tokio::test]
async fn socket_without_a_session_has_no_current_conversation() {
    let app = spawn_app(&[]).await;
    let (_alice, _) = alice_with_a_conversation(&app).await;
    let mut socket = SioClient::connect(app.addr, None, None)
        .await
        .expect("cookie-less socket connects");

    socket.send_message("hello?", None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    let error = turn.expect_error();
    assert_eq!(
        error["message"],
        json!("No active conversation. Please start a new conversation."),
        "{error}"
    );
    assert_eq!(error["error"], json!("no_conversation"), "{error}");
    assert_eq!(app.llm.call_count(), 0);
}
