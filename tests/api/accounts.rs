//! Local accounts (`AUTH_MODE=local`): sign-up (the first account is the admin, then
//! sign-up closes), sign-in with one answer for a wrong email or password, throttling,
//! session rotation, sign-out, a new password, one person on two devices, anonymous
//! conversations claimed at sign-in, and the socket refused without an account.

use serde_json::{json, Value};
use testkit::browser::msg;
use testkit::sio::SioClient;

use crate::helpers::{spawn_app, TestApp, User, TURN_TIMEOUT};

const PASSWORD: &str = "correct horse battery";

async fn local_app(extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("AUTH_MODE", "local")];
    env.extend_from_slice(extra);
    spawn_app(&env).await
}

async fn sign_up(user: &User, email: &str) -> Value {
    let response = user
        .post_json(
            "/auth/signup",
            json!({"email": email, "password": PASSWORD, "name": "Ann"}),
        )
        .await;
    response.assert_status(201);
    response.json
}

async fn sign_in(user: &User, email: &str, password: &str) -> testkit::browser::ApiResponse {
    user.post_json("/auth/login", json!({"email": email, "password": password}))
        .await
}

#[tokio::test]
async fn the_first_account_is_the_admin_and_then_sign_up_closes() {
    let app = local_app(&[]).await;
    let first = app.new_user_without_page();
    let second = app.new_user_without_page();

    let created = sign_up(&first, "Ann@Example.org").await;
    let refused = second
        .post_json(
            "/auth/signup",
            json!({"email": "bob@example.org", "password": PASSWORD}),
        )
        .await;
    let me = first.get("/auth/me").await;
    let config = second.get("/get_config").await;

    assert_eq!(created["email"], "ann@example.org");
    assert_eq!(created["name"], "Ann");
    assert_eq!(created["is_admin"], true);
    assert_eq!(created["auth"], "local");
    refused.assert_error(
        403,
        "signup_closed",
        "Sign-up is closed. Ask an administrator for an account.",
    );
    me.assert_status(200);
    assert_eq!(me.json["user_id"], created["user_id"]);
    assert_eq!(
        config.json["auth"],
        json!({"mode": "local", "signup_open": false, "anonymous": false})
    );
}

#[tokio::test]
async fn with_open_sign_up_later_accounts_are_not_admins_and_an_email_is_taken_once() {
    let app = local_app(&[("SIGNUP", "open")]).await;
    sign_up(&app.new_user_without_page(), "ann@example.org").await;

    let bob = sign_up(&app.new_user_without_page(), "bob@example.org").await;
    let again = app
        .new_user_without_page()
        .post_json(
            "/auth/signup",
            json!({"email": "BOB@example.org", "password": PASSWORD}),
        )
        .await;

    assert_eq!(bob["is_admin"], false);
    again.assert_error(
        409,
        "conflict",
        "An account with this email already exists.",
    );
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_the_same_answer() {
    let app = local_app(&[]).await;
    sign_up(&app.new_user_without_page(), "ann@example.org").await;
    let browser = app.new_user_without_page();

    let wrong_password = sign_in(&browser, "ann@example.org", "not the password").await;
    let unknown = sign_in(&browser, "nobody@example.org", PASSWORD).await;
    let right = sign_in(&browser, " ANN@example.org", PASSWORD).await;

    wrong_password.assert_error(401, "invalid_credentials", "Wrong email or password.");
    unknown.assert_error(401, "invalid_credentials", "Wrong email or password.");
    right.assert_status(200);
    assert_eq!(right.json["email"], "ann@example.org");
}

#[tokio::test]
async fn sign_in_gives_a_new_session_id_and_sign_out_ends_it() {
    let app = local_app(&[("ALLOW_ANONYMOUS", "true")]).await;
    sign_up(&app.new_user_without_page(), "ann@example.org").await;
    let browser = app.new_user().await;
    let before = browser.session_cookie();

    sign_in(&browser, "ann@example.org", PASSWORD)
        .await
        .assert_status(200);
    let signed_in = browser.session_cookie();
    let id = browser.start_conversation().await;
    let out = browser.post("/auth/logout").await;
    let me_after = browser.get("/auth/me").await;
    let listed_after = browser.listed_ids().await;

    assert!(before.is_some() && signed_in.is_some());
    assert_ne!(
        before, signed_in,
        "the session id was not rotated at sign-in"
    );
    out.assert_status(200);
    assert_eq!(out.json["message"], "Signed out.");
    me_after.assert_error(401, "unauthenticated", "Sign in to continue.");
    assert!(
        !listed_after.contains(&id),
        "the account's conversation is still listed after signing out"
    );
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_account() {
    let app = local_app(&[]).await;
    sign_up(&app.new_user_without_page(), "ann@example.org").await;
    let browser = app.new_user_without_page();

    for _ in 0..10 {
        sign_in(&browser, "ann@example.org", "guess guess")
            .await
            .assert_status(401);
    }
    let throttled = sign_in(&browser, "ann@example.org", PASSWORD).await;

    throttled.assert_status(429);
    assert_eq!(throttled.json["error"], "rate_limited");
    assert!(throttled.header("retry-after").is_some());
}

#[tokio::test]
async fn without_an_account_nothing_is_served_and_the_socket_is_refused() {
    let app = local_app(&[]).await;
    let stranger = app.new_user().await;

    let start = stranger.post("/start_conversation").await;
    let list = stranger.get("/list_conversations").await;
    let socket = SioClient::connect(app.addr, stranger.cookie_header().as_deref(), None).await;

    start.assert_error(401, "unauthenticated", "Sign in to continue.");
    list.assert_error(401, "unauthenticated", "Sign in to continue.");
    assert!(socket.is_err(), "a socket without an account was accepted");
}

#[tokio::test]
async fn one_person_on_two_devices_sees_the_same_conversations_and_chats_from_both() {
    let app = local_app(&[]).await;
    let laptop = app.new_user_without_page();
    sign_up(&laptop, "ann@example.org").await;
    let phone = app.new_user_without_page();
    sign_in(&phone, "ann@example.org", PASSWORD)
        .await
        .assert_status(200);

    let id = laptop.start_conversation().await;
    let mut socket = phone.socket().await;
    app.llm.streams(&["Hello ", "Ann"]);
    socket.send_message("Hi from the phone", Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(turn.text(), "Hello Ann");
    assert_eq!(phone.listed_ids().await, vec![id.clone()]);
    assert_eq!(
        laptop.history(&id).await,
        vec![
            msg("user", "Hi from the phone"),
            msg("assistant", "Hello Ann")
        ]
    );
}

#[tokio::test]
async fn conversations_of_an_anonymous_browser_move_to_the_account_at_sign_in() {
    let app = local_app(&[("ALLOW_ANONYMOUS", "true"), ("SIGNUP", "open")]).await;
    sign_up(&app.new_user_without_page(), "ann@example.org").await;
    let browser = app.new_user().await;
    let id = browser.start_conversation().await;
    browser.add_example("kept", "across sign-in").await;
    let other_device = app.new_user_without_page();

    sign_in(&browser, "ann@example.org", PASSWORD)
        .await
        .assert_status(200);
    sign_in(&other_device, "ann@example.org", PASSWORD)
        .await
        .assert_status(200);

    assert_eq!(browser.listed_ids().await, vec![id.clone()]);
    assert_eq!(other_device.listed_ids().await, vec![id.clone()]);
    assert_eq!(
        other_device.history(&id).await,
        vec![msg("user", "kept"), msg("assistant", "across sign-in")]
    );
}

#[tokio::test]
async fn a_new_password_replaces_the_old_one() {
    let app = local_app(&[]).await;
    let browser = app.new_user_without_page();
    sign_up(&browser, "ann@example.org").await;

    let wrong_current = browser
        .post_json(
            "/auth/password",
            json!({"current": "not it at all", "new": "a brand new one"}),
        )
        .await;
    let too_short = browser
        .post_json(
            "/auth/password",
            json!({"current": PASSWORD, "new": "short"}),
        )
        .await;
    let changed = browser
        .post_json(
            "/auth/password",
            json!({"current": PASSWORD, "new": "a brand new one"}),
        )
        .await;
    let other = app.new_user_without_page();

    wrong_current.assert_error(401, "invalid_credentials", "The current password is wrong.");
    too_short.assert_error(400, "invalid", "The password needs at least 8 characters.");
    changed.assert_status(200);
    sign_in(&other, "ann@example.org", PASSWORD)
        .await
        .assert_status(401);
    sign_in(&other, "ann@example.org", "a brand new one")
        .await
        .assert_status(200);
}

#[tokio::test]
async fn hostile_sign_up_input_gets_a_clear_error_and_stores_no_account() {
    let app = local_app(&[]).await;
    let browser = app.new_user_without_page();

    let cases = [
        (
            json!({"email": "not an email", "password": PASSWORD}),
            400,
            "Enter a valid email address.",
        ),
        (
            json!({"email": "ann@example.org", "password": "short"}),
            400,
            "The password needs at least 8 characters.",
        ),
        (
            json!({"email": 42, "password": PASSWORD}),
            400,
            "Enter a valid email address.",
        ),
        (
            json!({"email": "ann@example.org", "password": "x".repeat(2000)}),
            400,
            "The password may have at most 1024 characters.",
        ),
        (
            json!({"email": "ann@example.org", "password": PASSWORD, "name": "n".repeat(101)}),
            400,
            "The name may have at most 100 characters.",
        ),
        (
            json!(["ann@example.org", PASSWORD]),
            400,
            "Enter a valid email address.",
        ),
    ];
    for (body, status, message) in cases {
        let response = browser.post_json("/auth/signup", body.clone()).await;
        assert_eq!(response.status, status, "{body}: {}", response.text);
        assert_eq!(response.json["message"], message, "{body}");
    }
    let not_json = browser
        .post_raw("/auth/signup", "application/json", "{not json")
        .await;
    let config = browser.get("/get_config").await;

    not_json.assert_error(400, "invalid", "The request body is not valid JSON.");
    assert_eq!(
        config.json["auth"]["signup_open"], true,
        "an account was stored"
    );
}

#[tokio::test]
async fn with_the_default_auth_mode_the_account_routes_do_not_exist() {
    let app = spawn_app(&[]).await;
    let browser = app.new_user().await;

    let signup = browser
        .post_json(
            "/auth/signup",
            json!({"email": "ann@example.org", "password": PASSWORD}),
        )
        .await;
    let me = browser.get("/auth/me").await;
    let config = browser.get("/get_config").await;

    signup.assert_error(404, "not_found", "Accounts are not enabled on this server.");
    me.assert_error(401, "unauthenticated", "Sign in to continue.");
    assert_eq!(
        config.json["auth"],
        json!({"mode": "none", "signup_open": false, "anonymous": true})
    );
}
