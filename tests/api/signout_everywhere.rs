//! Signing out everywhere and administrators disabling people (issue 13): `POST /auth/logout
//! {everywhere: true}` ends every session of the account and disconnects its sockets;
//! `GET /admin/users` and `PATCH /admin/users/{id}` (administrators only) disable, enable,
//! promote and demote accounts, a disabled account's sessions, sockets and access tokens stop
//! at once, and an administrator cannot lock themself out. Every case runs on the store the
//! suite runs on (SQLite, or MongoDB with `TEST_MONGODB_URI`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::browser::ApiResponse;
use testkit::sio::SioClient;

use crate::helpers::{spawn_app, TestApp, User, EVENT_TIMEOUT, TURN_TIMEOUT};

const PASSWORD: &str = "correct horse battery";

/// A server with local accounts where anyone may sign up (the first account is the admin).
async fn open_app() -> TestApp {
    spawn_app(&[("AUTH_MODE", "local"), ("SIGNUP", "open")]).await
}

/// A new browser signed up as `email`; its `/auth/signup` answer.
async fn sign_up(app: &TestApp, email: &str) -> (User, Value) {
    let browser = app.new_user_without_page();
    let response = browser
        .post_json(
            "/auth/signup",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    response.assert_status(201);
    (browser, response.json)
}

/// A new browser signed in as `email`.
async fn sign_in(app: &TestApp, email: &str) -> User {
    let browser = app.new_user_without_page();
    login(&browser, email).await.assert_status(200);
    browser
}

async fn login(browser: &User, email: &str) -> ApiResponse {
    browser
        .post_json("/auth/login", json!({"email": email, "password": PASSWORD}))
        .await
}

async fn make_token(browser: &User) -> String {
    let response = browser
        .post_json("/api/tokens", json!({"name": "script"}))
        .await;
    response.assert_status(201);
    response.json["token"].as_str().unwrap().to_owned()
}

/// `GET path` with only this bearer token.
async fn with_token(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn token_socket(app: &TestApp, token: &str) -> SioClient {
    let auth = format!("Bearer {token}");
    SioClient::connect_with_headers(app.addr, &[("authorization", &auth)])
        .await
        .expect("the token's socket was refused")
}

/// The socket still acts for its user: a `watch_conversation` of an unknown conversation is
/// answered (with `error` "Conversation not found.").
async fn assert_socket_alive(socket: &mut SioClient) {
    socket.emit(
        "watch_conversation",
        json!({"conversation_id": uuid::Uuid::new_v4().to_string()}),
    );
    let error = socket.wait_for("error", EVENT_TIMEOUT).await;
    assert_eq!(error["message"], "Conversation not found.", "{error}");
}

/// `method path` with a JSON body over 1 MiB on its own connection, with this browser's cookie
/// (the server answers before reading such a body and closes the connection, which a pooled
/// client would trip over): the status and JSON answer.
async fn oversized(app: &TestApp, browser: &User, method: &str, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!(
        r#"{{"everywhere": true, "disabled": true, "pad": "{}"}}"#,
        "x".repeat(2 << 20)
    );
    let stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        app.addr,
        browser.cookie_header().unwrap_or_default(),
        body.len()
    );
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(body.as_bytes()).await;
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer)).await;
    writing.abort();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body.trim()).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

async fn logout_everywhere(browser: &User) -> ApiResponse {
    browser
        .post_json("/auth/logout", json!({"everywhere": true}))
        .await
}

async fn users(admin: &User) -> Vec<Value> {
    let response = admin.get("/admin/users").await;
    response.assert_status(200);
    response.json["users"].as_array().unwrap().clone()
}

fn user_path(id: &Value) -> String {
    format!("/admin/users/{}", id.as_str().unwrap())
}

/// The account store the server uses, opened beside it (another connection to the same SQLite
/// file or MongoDB database), to change an account behind the server's back.
async fn store_of(app: &TestApp) -> Arc<dyn llm_chat_server::store::accounts::AccountStore> {
    use llm_chat_server::store::mongo::MongoStore;
    use llm_chat_server::store::sqlite::{SqliteDb, SqliteStore};
    match (app.env.get("MONGODB_URI"), app.env.get("MONGODB_DB")) {
        (Some(uri), Some(database)) => Arc::new(
            MongoStore::connect(uri, database)
                .await
                .expect("MongoDB beside the server"),
        ),
        _ => Arc::new(SqliteStore::new(
            SqliteDb::open(&app.dir.path().join("chat.db")).expect("SQLite beside the server"),
        )),
    }
}

// ------------------------------------------------------------------ sign out everywhere

#[tokio::test]
async fn signing_out_everywhere_ends_every_session_and_socket_of_the_person_only() {
    let app = open_app().await;
    let (laptop, _) = sign_up(&app, "ann@example.org").await;
    let phone = sign_in(&app, "ann@example.org").await;
    let (bob, _) = sign_up(&app, "bob@example.org").await;
    let mut laptop_socket = laptop.socket().await;
    let mut phone_socket = phone.socket().await;
    let mut bob_socket = bob.socket().await;

    let out = logout_everywhere(&phone).await;

    out.assert_status(200);
    assert_eq!(out.json["message"], "Signed out everywhere.");
    for (browser, socket) in [(&laptop, &mut laptop_socket), (&phone, &mut phone_socket)] {
        assert!(
            socket.wait_closed(EVENT_TIMEOUT).await,
            "a socket of the person stayed connected"
        );
        browser
            .get("/auth/me")
            .await
            .assert_error(401, "unauthenticated", "Sign in to continue.");
        browser.get("/list_conversations").await.assert_error(
            401,
            "unauthenticated",
            "Sign in to continue.",
        );
        assert!(
            SioClient::connect(app.addr, browser.cookie_header().as_deref(), None)
                .await
                .is_err(),
            "a signed-out browser opened a socket"
        );
    }
    // Another person is untouched.
    bob.get("/auth/me").await.assert_status(200);
    assert_socket_alive(&mut bob_socket).await;
    // And the person can sign in again.
    login(&laptop, "ann@example.org").await.assert_status(200);
    laptop.get("/auth/me").await.assert_status(200);
}

#[tokio::test]
async fn a_plain_sign_out_still_ends_only_this_session() {
    let app = open_app().await;
    let (laptop, _) = sign_up(&app, "ann@example.org").await;
    let phone = sign_in(&app, "ann@example.org").await;
    let mut laptop_socket = laptop.socket().await;

    let out = phone.post("/auth/logout").await;
    let out_with_false = laptop
        .post_json("/auth/logout", json!({"everywhere": false}))
        .await;

    out.assert_status(200);
    assert_eq!(out.json["message"], "Signed out.");
    phone.get("/auth/me").await.assert_status(401);
    out_with_false.assert_status(200);
    assert_eq!(out_with_false.json["message"], "Signed out.");
    laptop.get("/auth/me").await.assert_status(401);
    // A plain sign-out leaves the sockets alone (as before).
    assert_socket_alive(&mut laptop_socket).await;
}

#[tokio::test]
async fn signing_out_everywhere_needs_an_account_and_leaves_access_tokens_working() {
    let app = open_app().await;
    let (laptop, _) = sign_up(&app, "ann@example.org").await;
    let token = make_token(&laptop).await;
    let stranger = app.new_user_without_page();

    let refused = logout_everywhere(&stranger).await;
    let by_token = reqwest::Client::new()
        .post(format!("{}/auth/logout", app.base_url))
        .bearer_auth(&token)
        .json(&json!({"everywhere": true}))
        .send()
        .await
        .unwrap();

    refused.assert_error(401, "unauthenticated", "Sign in to continue.");
    assert_eq!(by_token.status().as_u16(), 200);
    laptop.get("/auth/me").await.assert_status(401);
    let (status, me) = with_token(&app, "/auth/me", &token).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["email"], "ann@example.org");
}

#[tokio::test]
async fn hostile_sign_out_bodies_get_a_clear_error_and_sign_nobody_out() {
    let app = open_app().await;
    let (laptop, _) = sign_up(&app, "ann@example.org").await;
    let phone = sign_in(&app, "ann@example.org").await;

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "application/json",
            br#"{"everywhere": "yes"}"#.to_vec(),
            400,
            "'everywhere' must be true or false.",
        ),
        (
            "application/json",
            br#"{"everywhere": 1}"#.to_vec(),
            400,
            "'everywhere' must be true or false.",
        ),
        (
            "application/json",
            b"[true]".to_vec(),
            400,
            "The request body must be a JSON object, such as {\"everywhere\": true}.",
        ),
        (
            "application/json",
            b"{not json".to_vec(),
            400,
            "The request body is not valid JSON.",
        ),
        (
            "text/plain",
            br#"{"everywhere": true}"#.to_vec(),
            400,
            "Send a JSON body with Content-Type: application/json.",
        ),
    ];
    for (content_type, body, status, message) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let response = phone.post_raw("/auth/logout", content_type, body).await;
        assert_eq!(response.status, status, "{shown}: {}", response.text);
        assert_eq!(response.json["message"], message, "{shown}");
    }
    let (status, huge) = oversized(&app, &phone, "POST", "/auth/logout").await;
    assert_eq!(status, 413, "{huge}");
    assert_eq!(huge["message"], "The request body is too large.");

    laptop.get("/auth/me").await.assert_status(200);
    phone.get("/auth/me").await.assert_status(200);
}

// ------------------------------------------------------------------ administrators

#[tokio::test]
async fn a_disabled_person_is_signed_out_everywhere_and_their_token_stops_until_enabled() {
    let app = open_app().await;
    let (admin, _) = sign_up(&app, "root@example.org").await;
    let (laptop, bob) = sign_up(&app, "bob@example.org").await;
    let phone = sign_in(&app, "bob@example.org").await;
    let id = laptop.start_conversation().await;
    let token = make_token(&laptop).await;
    let mut laptop_socket = laptop.socket().await;
    let mut token_socket = token_socket(&app, &token).await;
    let mut admin_socket = admin.socket().await;

    let disabled = admin
        .patch_json(&user_path(&bob["user_id"]), json!({"disabled": true}))
        .await;

    disabled.assert_status(200);
    assert_eq!(disabled.json["user_id"], bob["user_id"]);
    assert_eq!(disabled.json["email"], "bob@example.org");
    assert_eq!(disabled.json["disabled"], true);
    assert_eq!(disabled.json["is_admin"], false);
    assert!(disabled.json.get("password_hash").is_none());
    for socket in [&mut laptop_socket, &mut token_socket] {
        assert!(
            socket.wait_closed(EVENT_TIMEOUT).await,
            "a socket of the disabled person stayed connected"
        );
    }
    for browser in [&laptop, &phone] {
        browser
            .get("/auth/me")
            .await
            .assert_error(401, "unauthenticated", "Sign in to continue.");
    }
    let (status, body) = with_token(&app, "/list_conversations", &token).await;
    assert_eq!((status, &body["error"]), (401, &json!("unauthenticated")));
    let auth = format!("Bearer {token}");
    assert!(
        SioClient::connect_with_headers(app.addr, &[("authorization", &auth)])
            .await
            .is_err(),
        "the disabled person's token opened a socket"
    );
    login(&laptop, "bob@example.org").await.assert_error(
        403,
        "disabled",
        "This account is disabled.",
    );
    let listed = users(&admin).await;
    let bob_listed = listed
        .iter()
        .find(|u| u["user_id"] == bob["user_id"])
        .unwrap();
    assert_eq!(bob_listed["disabled"], true);
    assert_socket_alive(&mut admin_socket).await;

    // Enabled again: signing in and the token work again, and nothing was lost.
    let enabled = admin
        .patch_json(&user_path(&bob["user_id"]), json!({"disabled": false}))
        .await;
    enabled.assert_status(200);
    assert_eq!(enabled.json["disabled"], false);
    login(&laptop, "bob@example.org").await.assert_status(200);
    assert_eq!(laptop.listed_ids().await, vec![id]);
    let (status, _) = with_token(&app, "/auth/me", &token).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_admin_list_shows_every_account_oldest_first_in_pages() {
    let app = open_app().await;
    let (admin, root) = sign_up(&app, "root@example.org").await;
    let (_, bob) = sign_up(&app, "bob@example.org").await;
    let (_, cy) = sign_up(&app, "cy@example.org").await;

    let all = users(&admin).await;
    let second_page = admin.get("/admin/users?limit=2&offset=2").await;
    let first_page = admin.get("/admin/users?limit=2").await;

    let ids: Vec<&Value> = all.iter().map(|u| &u["user_id"]).collect();
    assert_eq!(ids, vec![&root["user_id"], &bob["user_id"], &cy["user_id"]]);
    assert_eq!(
        all[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        vec![
            "user_id",
            "email",
            "name",
            "is_admin",
            "disabled",
            "created_at",
            "prompt_tokens",
            "completion_tokens",
            "quota_tokens_per_day",
            "own_quota"
        ]
    );
    // Nobody spent tokens yet, and no quota is set (QUOTA_TOKENS_PER_DAY=0).
    for user in &all {
        assert_eq!(user["prompt_tokens"], 0, "{user}");
        assert_eq!(user["completion_tokens"], 0, "{user}");
        assert_eq!(user["quota_tokens_per_day"], 0, "{user}");
        assert_eq!(user["own_quota"], false, "{user}");
    }
    assert_eq!(all[0]["is_admin"], true);
    assert_eq!(all[1]["is_admin"], false);
    assert_eq!(all[1]["email"], "bob@example.org");
    assert_eq!(all[1]["name"], "bob");
    assert_eq!(all[1]["disabled"], false);
    crate::helpers::timestamp(&all[1]["created_at"]);
    assert_eq!(first_page.json["users"], json!(all[..2]));
    assert_eq!(second_page.json["users"], json!(all[2..]));
}

#[tokio::test]
async fn an_admin_makes_another_admin_who_can_then_administer_and_be_demoted() {
    let app = open_app().await;
    let (admin, _) = sign_up(&app, "root@example.org").await;
    let (bob_browser, bob) = sign_up(&app, "bob@example.org").await;
    bob_browser.get("/admin/users").await.assert_error(
        403,
        "forbidden",
        "Only administrators may do this.",
    );

    let promoted = admin
        .patch_json(&user_path(&bob["user_id"]), json!({"is_admin": true}))
        .await;
    let bob_lists = bob_browser.get("/admin/users").await;
    let me = bob_browser.get("/auth/me").await;
    let demoted = admin
        .patch_json(&user_path(&bob["user_id"]), json!({"is_admin": false}))
        .await;
    let bob_after = bob_browser.get("/admin/users").await;

    promoted.assert_status(200);
    assert_eq!(promoted.json["is_admin"], true);
    bob_lists.assert_status(200);
    assert_eq!(me.json["is_admin"], true);
    demoted.assert_status(200);
    assert_eq!(demoted.json["is_admin"], false);
    bob_after.assert_error(403, "forbidden", "Only administrators may do this.");
    // Demoting does not sign anyone out.
    bob_browser.get("/auth/me").await.assert_status(200);
}

#[tokio::test]
async fn an_admin_cannot_disable_or_demote_themself() {
    let app = open_app().await;
    let (admin, root) = sign_up(&app, "root@example.org").await;
    let path = user_path(&root["user_id"]);

    let disable = admin.patch_json(&path, json!({"disabled": true})).await;
    let demote = admin.patch_json(&path, json!({"is_admin": false})).await;
    let both = admin
        .patch_json(&path, json!({"is_admin": true, "disabled": true}))
        .await;
    let harmless = admin
        .patch_json(&path, json!({"is_admin": true, "disabled": false}))
        .await;

    disable.assert_error(400, "invalid", "You cannot disable your own account.");
    demote.assert_error(
        400,
        "invalid",
        "You cannot take away your own administrator rights.",
    );
    both.assert_error(400, "invalid", "You cannot disable your own account.");
    harmless.assert_status(200);
    let me = admin.get("/auth/me").await;
    me.assert_status(200);
    assert_eq!(me.json["is_admin"], true);
}

#[tokio::test]
async fn admin_routes_need_an_admin_and_do_not_exist_without_accounts() {
    let app = open_app().await;
    let (_, root) = sign_up(&app, "root@example.org").await;
    let (bob_browser, _) = sign_up(&app, "bob@example.org").await;
    let bob_token = make_token(&bob_browser).await;
    let stranger = app.new_user_without_page();
    let plain = spawn_app(&[]).await;
    let anonymous = plain.new_user().await;
    let path = user_path(&root["user_id"]);

    bob_browser.get("/admin/users").await.assert_error(
        403,
        "forbidden",
        "Only administrators may do this.",
    );
    bob_browser
        .patch_json(&path, json!({"disabled": true}))
        .await
        .assert_error(403, "forbidden", "Only administrators may do this.");
    let (status, body) = with_token(&app, "/admin/users", &bob_token).await;
    assert_eq!((status, &body["error"]), (403, &json!("forbidden")));
    stranger
        .get("/admin/users")
        .await
        .assert_error(401, "unauthenticated", "Sign in to continue.");
    stranger
        .patch_json(&path, json!({"disabled": true}))
        .await
        .assert_error(401, "unauthenticated", "Sign in to continue.");
    for response in [
        anonymous.get("/admin/users").await,
        anonymous.patch_json(&path, json!({"disabled": true})).await,
    ] {
        response.assert_error(404, "not_found", "Accounts are not enabled on this server.");
    }
    // Nothing changed.
    let root_again = sign_in(&app, "root@example.org").await;
    let me = root_again.get("/auth/me").await;
    assert_eq!(me.json["is_admin"], true);
}

#[tokio::test]
async fn hostile_admin_input_gets_a_clear_error_and_changes_nothing() {
    let app = open_app().await;
    let (admin, _) = sign_up(&app, "root@example.org").await;
    let (bob_browser, bob) = sign_up(&app, "bob@example.org").await;
    let bob_path = user_path(&bob["user_id"]);
    let before = users(&admin).await;

    for bad_id in [
        "not-a-uuid",
        "..%2F..%2Fetc%2Fpasswd",
        "%7B%22%24ne%22%3Anull%7D",
        &"f".repeat(300),
    ] {
        let response = admin
            .patch_json(&format!("/admin/users/{bad_id}"), json!({"disabled": true}))
            .await;
        response.assert_error(400, "invalid", "Invalid user id.");
    }
    let unknown = admin
        .patch_json(
            &format!("/admin/users/{}", uuid::Uuid::new_v4()),
            json!({"disabled": true}),
        )
        .await;
    unknown.assert_error(404, "not_found", "User not found.");
    let bodies = [
        (
            json!({"disabled": "true"}),
            "'disabled' must be true or false.",
        ),
        (json!({"disabled": 1}), "'disabled' must be true or false."),
        (
            json!({"disabled": true, "is_admin": "yes"}),
            "'is_admin' must be true or false.",
        ),
        (
            json!({}),
            "Nothing to change: give 'disabled' or 'is_admin' (true or false).",
        ),
        (
            json!({"disable": true}),
            "Nothing to change: give 'disabled' or 'is_admin' (true or false).",
        ),
        (
            json!([{"disabled": true}]),
            "The request body must be a JSON object such as {\"disabled\": true}.",
        ),
        (
            json!("disabled"),
            "The request body must be a JSON object such as {\"disabled\": true}.",
        ),
    ];
    for (body, message) in bodies {
        let response = admin.patch_json(&bob_path, body.clone()).await;
        assert_eq!(response.status, 400, "{body}: {}", response.text);
        assert_eq!(response.json["message"], message, "{body}");
    }
    admin
        .patch_raw(&bob_path, "application/json", "{\"disabled\": tru")
        .await
        .assert_error(400, "invalid", "The request body is not valid JSON.");
    admin
        .patch_raw(&bob_path, "text/plain", "{\"disabled\": true}")
        .await
        .assert_error(
            400,
            "invalid",
            "Send a JSON body with Content-Type: application/json.",
        );
    let (status, huge) = oversized(&app, &admin, "PATCH", &bob_path).await;
    assert_eq!(status, 413, "{huge}");
    assert_eq!(huge["error"], "too_large");
    assert_eq!(huge["message"], "The request body is too large.");
    let cross_site = admin
        .send(
            reqwest::Client::new()
                .patch(admin.url(&bob_path))
                .header("origin", "https://evil.example")
                .json(&json!({"disabled": true})),
        )
        .await;
    cross_site.assert_error(403, "forbidden", "Cross-site request refused.");
    for query in ["limit=abc", "limit=5000", "offset=-1", "limit=1.5"] {
        let response = admin.get(&format!("/admin/users?{query}")).await;
        assert_eq!(response.status, 400, "{query}: {}", response.text);
        assert_eq!(response.json["error"], "invalid", "{query}");
    }

    assert_eq!(users(&admin).await, before, "an account changed");
    bob_browser.get("/auth/me").await.assert_status(200);
}

// ------------------------------------------------------------------ belt and braces

/// Disabling through the store alone (as another instance's half-finished request, or an
/// operator's edit, could leave it): the account's session and socket still stop at their
/// next request or event, without any session being ended first.
#[tokio::test]
async fn a_session_and_socket_of_an_account_disabled_behind_the_servers_back_stop() {
    let app = open_app().await;
    let (_admin, _) = sign_up(&app, "root@example.org").await;
    let (laptop, bob) = sign_up(&app, "bob@example.org").await;
    let id = laptop.start_conversation().await;
    let mut socket = laptop.socket().await;
    assert_socket_alive(&mut socket).await;
    let store = store_of(&app).await;
    let user = llm_chat_server::domain::UserId::parse(bob["user_id"].as_str().unwrap()).unwrap();

    store.set_disabled(&user, true).await.unwrap();
    // The server believes an account active for at most a second without asking.
    tokio::time::sleep(llm_chat_server::store::accounts::ACTIVE_FOR + Duration::from_millis(100))
        .await;
    socket.send_message("hello?", Some(&id));
    let error = socket.wait_for("error", TURN_TIMEOUT).await;
    let list = laptop.get("/list_conversations").await;

    assert_eq!(error["error"], "unauthenticated", "{error}");
    assert!(
        socket.wait_closed(EVENT_TIMEOUT).await,
        "the disabled account's socket stayed connected"
    );
    list.assert_error(401, "unauthenticated", "Sign in to continue.");
    // The session was ended, not just refused: enabling the account does not revive it.
    store.set_disabled(&user, false).await.unwrap();
    laptop.get("/auth/me").await.assert_status(401);
    assert!(
        app.llm.requests().is_empty(),
        "the disabled account's message reached the model"
    );
}

#[tokio::test]
async fn the_admin_page_is_for_administrators_and_lists_usage_and_quotas() {
    let app = spawn_app(&[
        ("AUTH_MODE", "local"),
        ("SIGNUP", "open"),
        ("QUOTA_TOKENS_PER_DAY", "9000"),
    ])
    .await;
    let (admin, _) = sign_up(&app, "root@example.org").await;
    let (bob_browser, bob) = sign_up(&app, "bob@example.org").await;

    let page = admin.get("/admin").await;
    page.assert_status(200);
    assert!(page.text.contains("<title>Administration"), "{}", page.text);
    assert!(page.text.contains("/static/admin.js?v="), "{}", page.text);
    bob_browser.get("/admin").await.assert_error(
        403,
        "forbidden",
        "Only administrators may do this.",
    );
    let nobody = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.new_user_without_page().url("/admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(nobody.status(), 303);
    assert_eq!(nobody.headers()["location"], "/");

    // Bob's own quota shows in the list beside the default of everyone else.
    let path = format!("/admin/users/{}/quota", bob["user_id"].as_str().unwrap());
    let request = reqwest::Client::new()
        .put(admin.url(&path))
        .json(&json!({"quota_tokens_per_day": 1234}));
    admin.send(request).await.assert_status(200);
    let listing = admin.get("/admin/users").await;
    listing.assert_status(200);
    assert_eq!(listing.json["default_quota_tokens_per_day"], 9000);
    crate::helpers::timestamp(&json!(format!(
        "{}T00:00:00Z",
        listing.json["date"].as_str().unwrap()
    )));
    let users = listing.json["users"].as_array().unwrap();
    assert_eq!(users[0]["quota_tokens_per_day"], 9000);
    assert_eq!(users[0]["own_quota"], false);
    assert_eq!(users[1]["user_id"], bob["user_id"]);
    assert_eq!(users[1]["quota_tokens_per_day"], 1234);
    assert_eq!(users[1]["own_quota"], true);
}
