//! Sessions are kept in the database: a restart keeps users' identities and current
//! conversations; an unknown cookie is a new session, never an error; a session in use
//! outlives its lifetime, an unused one ends after it.

use std::time::{Duration, Instant};

use testkit::browser::msg;

use crate::helpers::{spawn_app, TestApp};

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

/// `SESSION_TTL_DAYS` for a six-second session lifetime (fractions of a day are allowed).
const SIX_SECONDS: &str = "0.0000694445";

/// `GET /list_conversations` with exactly this session cookie (from a browser without one).
async fn list_with_cookie(app: &TestApp, cookie: &str) -> serde_json::Value {
    let user = app.new_user_without_page();
    let response = user
        .send(
            reqwest::Client::new()
                .get(user.url("/list_conversations"))
                .header("cookie", format!("chat_session={cookie}")),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    response.json["conversations"].clone()
}

#[tokio::test]
async fn a_session_in_use_outlives_its_lifetime_and_an_unused_one_ends() {
    let app = spawn_app(&[("SESSION_TTL_DAYS", SIX_SECONDS)]).await;
    let (user, idle) = (app.new_user().await, app.new_user().await);
    let id = user.start_conversation().await;
    idle.start_conversation().await;
    let (cookie, idle_cookie) = (
        user.session_cookie().unwrap(),
        idle.session_cookie().unwrap(),
    );

    // Read every second for two and a half lifetimes, never changing the session.
    let until = Instant::now() + Duration::from_secs(15);
    let mut cookie_refreshes = 0;
    while Instant::now() < until {
        let listed = user.get("/list_conversations").await;
        assert_eq!(listed.status, 200, "{}", listed.text);
        assert_eq!(
            listed.json["conversations"][0]["conversation_id"], id,
            "the session in use ended: {}",
            listed.text
        );
        // The browser's cookie is sent again with its lifetime when the expiry moves on.
        let sent_again = listed
            .headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .filter(|value| value.starts_with(&format!("chat_session={cookie};")))
            .inspect(|value| assert!(value.contains("Max-Age=6"), "{value}"))
            .count();
        cookie_refreshes += sent_again;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        cookie_refreshes >= 2,
        "the cookie was sent again {cookie_refreshes} times"
    );
    assert_eq!(
        user.session_cookie().unwrap(),
        cookie,
        "the session id changed"
    );
    assert_eq!(
        list_with_cookie(&app, &idle_cookie).await,
        serde_json::json!([]),
        "a session unused for more than its lifetime still works"
    );

    // Unused from now on: it ends with its lifetime.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        list_with_cookie(&app, &cookie).await,
        serde_json::json!([]),
        "a session unused for more than its lifetime still works"
    );
}
