//! `POST /add_few_shot_example`.

use serde_json::json;
use testkit::browser::msg;

use crate::helpers::spawn_app;

const BOTH_REQUIRED: &str = "Both 'user_prompt' and 'assistant_response' are required.";

#[tokio::test]
async fn example_appends_a_user_then_an_assistant_message() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;

    let response = user
        .post_json(
            "/add_few_shot_example",
            json!({"user_prompt": "Translate 'cat'", "assistant_response": "chat"}),
        )
        .await;
    user.add_example("Translate 'dog'", "chien").await;

    response.assert_ok_message("Few-shot example added successfully!");
    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "Translate 'cat'"),
            msg("assistant", "chat"),
            msg("user", "Translate 'dog'"),
            msg("assistant", "chien"),
        ]
    );
    assert_eq!(
        app.llm.call_count(),
        0,
        "adding examples must not call the LLM"
    );
}

#[tokio::test]
async fn example_without_a_conversation_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user
        .post_json(
            "/add_few_shot_example",
            json!({"user_prompt": "hi", "assistant_response": "hello"}),
        )
        .await;

    response.assert_error(
        400,
        "no_conversation",
        "No active conversation. Please start a new conversation.",
    );
}

#[tokio::test]
async fn example_missing_the_assistant_response_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;

    let response = user
        .post_json("/add_few_shot_example", json!({"user_prompt": "only half"}))
        .await;

    response.assert_error(400, "invalid", BOTH_REQUIRED);
    assert!(user.history(&id).await.is_empty());
}

#[tokio::test]
async fn example_with_an_empty_user_prompt_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;

    let response = user
        .post_json(
            "/add_few_shot_example",
            json!({"user_prompt": "", "assistant_response": "an answer"}),
        )
        .await;

    response.assert_error(400, "invalid", BOTH_REQUIRED);
    assert!(user.history(&id).await.is_empty());
}

#[tokio::test]
async fn example_longer_than_max_message_chars_is_rejected() {
    let app = spawn_app(&[("MAX_MESSAGE_CHARS", "100")]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;

    let response = user
        .post_json(
            "/add_few_shot_example",
            json!({"user_prompt": "x".repeat(101), "assistant_response": "fine"}),
        )
        .await;

    // The contract names no status for an over-long field: a 400 `invalid` or a 413
    // `too_large`, with a sentence, are both a clear refusal.
    let refusal = (
        response.status,
        response.json["error"].as_str().unwrap_or_default(),
    );
    assert!(
        matches!(refusal, (400, "invalid") | (413, "too_large")),
        "{}: {}",
        response.status,
        response.text
    );
    assert!(
        response.json["message"]
            .as_str()
            .is_some_and(|message| message.contains("100")),
        "{}",
        response.text
    );
    assert!(user.history(&id).await.is_empty());
}
