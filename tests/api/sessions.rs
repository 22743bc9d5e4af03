//! Sessions are kept in the database: a restart keeps users' identities and current
//! conversations; an unknown cookie is a new session, never an error.

use testkit::browser::msg;

use crate::helpers::spawn_app;

#[tokio::test]
async fn conversation_is_still_listed_after_a_restart_with_the_same_cookie() {
    let mut app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    user.add_example("Remember the number 42", "I will remember 42")
        .await;
    let cookie_before = user.session_cookie();

    app.restart().await;

    assert!(cookie_before.is_some());
    assert_eq!(user.listed_ids().await, vec![id.clone()]);
    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "Remember the number 42"),
            msg("assistant", "I will remember 42")
        ]
    );
}

#[tokio::test]
async fn current_conversation_survives_a_restart() {
    let mut app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;

    app.restart().await;
    user.add_example("after the restart", "still current").await;

    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "after the restart"),
            msg("assistant", "still current")
        ]
    );
}

#[tokio::test]
async fn new_browser_after_a_restart_sees_no_conversations() {
    let mut app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.start_conversation().await;

    app.restart().await;
    let stranger = app.new_user().await;

    assert!(stranger.list().await.is_empty());
}

#[tokio::test]
async fn unknown_session_cookie_is_treated_as_a_new_user() {
    let app = spawn_app(&[]).await;
    let owner = app.new_user().await;
    owner.start_conversation().await;
    let stranger = app.new_user_without_page();

    let response = stranger
        .send(
            reqwest::Client::new()
                .get(stranger.url("/list_conversations"))
                .header("cookie", "chat_session=forged-value-123"),
        )
        .await;

    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.json["conversations"], serde_json::json!([]));
}
