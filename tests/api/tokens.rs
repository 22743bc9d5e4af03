//! Personal access tokens: made by a signed-in person, shown once, accepted as
//! `Authorization: Bearer` by the REST routes and the Socket.IO handshake, listed without
//! the token, scoped to their owner, and dead once deleted.

use serde_json::json;
use testkit::browser::msg;
use testkit::sio::SioClient;

use crate::helpers::{spawn_app, TestApp, User, TURN_TIMEOUT};

async fn make_token(browser: &User, name: &str) -> (String, String) {
    let response = browser
        .post_json("/api/tokens", json!({"name": name}))
        .await;
    response.assert_status(201);
    (
        response.json["id"].as_str().unwrap().to_owned(),
        response.json["token"].as_str().unwrap().to_owned(),
    )
}

fn bearer(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, format!("{}{path}", app.base_url))
        .bearer_auth(token)
}

#[tokio::test]
async fn a_token_works_for_rest_and_the_socket_and_is_shown_only_once() {
    let app = spawn_app(&[("AUTH_MODE", "local")]).await;
    let browser = account(&app, "ann@example.org").await;
    let id = browser.start_conversation().await;
    let (token_id, token) = make_token(&browser, "my script").await;

    let listed = browser.get("/api/tokens").await;
    let list = bearer(&app, reqwest::Method::GET, "/list_conversations", &token)
        .send()
        .await
        .unwrap();
    let list_status = list.status().as_u16();
    let list_body: serde_json::Value = list.json().await.unwrap();
    let auth = format!("Bearer {token}");
    let mut socket = SioClient::connect_with_headers(app.addr, &[("authorization", &auth)])
        .await
        .expect("the token's socket was refused");
    app.llm.streams(&["from ", "a script"]);
    socket.send_message("hello from a script", Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert!(token.starts_with("lcs_"));
    assert_eq!(listed.json["tokens"][0]["id"], token_id.as_str());
    assert_eq!(listed.json["tokens"][0]["name"], "my script");
    assert!(
        !listed.text.contains(&token),
        "the token was shown again: {}",
        listed.text
    );
    assert_eq!(list_status, 200);
    assert_eq!(
        list_body["conversations"][0]["conversation_id"],
        id.as_str()
    );
    assert_eq!(turn.text(), "from a script");
    assert_eq!(
        browser.history(&id).await,
        vec![
            msg("user", "hello from a script"),
            msg("assistant", "from a script")
        ]
    );
}

#[tokio::test]
async fn a_deleted_or_unknown_token_is_refused_everywhere() {
    let app = spawn_app(&[("AUTH_MODE", "local")]).await;
    let browser = account(&app, "ann@example.org").await;
    let (token_id, token) = make_token(&browser, "short-lived").await;

    let deleted = browser.delete(&format!("/api/tokens/{token_id}")).await;
    let after = bearer(&app, reqwest::Method::GET, "/list_conversations", &token)
        .send()
        .await
        .unwrap();
    let after_status = after.status().as_u16();
    let after_body: serde_json::Value = after.json().await.unwrap();
    let made_up = bearer(
        &app,
        reqwest::Method::GET,
        "/auth/me",
        "lcs_not-a-real-token",
    )
    .send()
    .await
    .unwrap();
    let auth = format!("Bearer {token}");
    let socket = SioClient::connect_with_headers(app.addr, &[("authorization", &auth)]).await;
    let again = browser.delete(&format!("/api/tokens/{token_id}")).await;

    deleted.assert_status(200);
    assert_eq!(deleted.json["message"], "Token deleted.");
    assert_eq!(after_status, 401);
    assert_eq!(after_body["error"], "unauthenticated");
    assert_eq!(made_up.status().as_u16(), 401);
    assert!(socket.is_err(), "a deleted token opened a socket");
    again.assert_error(404, "not_found", "Token not found.");
}

#[tokio::test]
async fn a_token_reaches_only_its_owners_conversations_and_tokens() {
    let app = spawn_app(&[("AUTH_MODE", "local"), ("SIGNUP", "open")]).await;
    let ann = account(&app, "ann@example.org").await;
    let bob = account(&app, "bob@example.org").await;
    let anns_conversation = ann.start_conversation().await;
    let (anns_token_id, _) = make_token(&ann, "ann's").await;
    let (_, bobs_token) = make_token(&bob, "bob's").await;

    let load = bearer(
        &app,
        reqwest::Method::GET,
        &format!("/load_conversation/{anns_conversation}"),
        &bobs_token,
    )
    .send()
    .await
    .unwrap();
    let delete_anns = bob.delete(&format!("/api/tokens/{anns_token_id}")).await;
    let bobs_list = bob.get("/api/tokens").await;
    let anns_list = ann.get("/api/tokens").await;

    assert_eq!(load.status().as_u16(), 404);
    delete_anns.assert_error(404, "not_found", "Token not found.");
    assert_eq!(bobs_list.json["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(anns_list.json["tokens"][0]["id"], anns_token_id.as_str());
}

#[tokio::test]
async fn token_requests_need_an_account_a_name_and_stay_under_the_limit() {
    let app = spawn_app(&[("AUTH_MODE", "local")]).await;
    let stranger = app.new_user_without_page();
    let browser = account(&app, "ann@example.org").await;

    let anonymous = stranger
        .post_json("/api/tokens", json!({"name": "x"}))
        .await;
    let nameless = browser
        .post_json("/api/tokens", json!({"name": "  "}))
        .await;
    let bad_id = browser.delete("/api/tokens/not-a-uuid").await;
    for index in 0..20 {
        make_token(&browser, &format!("token {index}")).await;
    }
    let over = browser
        .post_json("/api/tokens", json!({"name": "one too many"}))
        .await;

    anonymous.assert_error(401, "unauthenticated", "Sign in to continue.");
    nameless.assert_error(
        400,
        "invalid",
        "Give the token a name of 1 to 100 characters.",
    );
    bad_id.assert_error(400, "invalid", "Invalid token id.");
    over.assert_error(
        409,
        "conflict",
        "You have the most tokens allowed (20). Delete one first.",
    );
    let listed = browser.get("/api/tokens").await;
    assert_eq!(listed.json["tokens"].as_array().unwrap().len(), 20);
}

/// A new browser signed up as `email`.
async fn account(app: &TestApp, email: &str) -> User {
    app.signed_up(email).await.0
}
