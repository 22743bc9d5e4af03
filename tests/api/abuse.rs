//! Abuse without accounts: requests without a cookie store no session until it is given
//! data; new anonymous sessions, anonymous messages and uploads are limited per client
//! address (the TCP peer, or `X-Forwarded-For` from a `TRUSTED_PROXIES` peer).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use testkit::sio::SioClient;

use crate::helpers::{spawn_app, TestApp, User, TURN_TIMEOUT};

/// Sessions the server has stored (SQLite file, or MongoDB's `sessions` collection).
async fn stored_sessions(app: &TestApp) -> u64 {
    if let Some(uri) = app.env.get("MONGODB_URI") {
        let client = mongodb::Client::with_uri_str(uri).await.expect("mongodb");
        client
            .database(&app.env["MONGODB_DB"])
            .collection::<mongodb::bson::Document>("sessions")
            .count_documents(mongodb::bson::doc! {})
            .await
            .expect("count sessions")
    } else {
        let db = rusqlite::Connection::open(&app.env["DATABASE_PATH"]).expect("open the database");
        let count: i64 = db
            .query_row("SELECT COUNT(*) FROM sessions", [], |row| row.get(0))
            .expect("count sessions");
        count as u64
    }
}

/// Waits, if needed, until at least `room` seconds are left in the current fixed
/// `window` (the limiter counts per window), so a test's requests fall in one window.
async fn early_in_window(window: u64, room: u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let left = window - now.as_secs() % window;
    if left < room {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

/// `POST /start_conversation` from this browser, as if forwarded for `client`.
async fn start_from(app: &TestApp, user: &User, client: &str) -> testkit::browser::ApiResponse {
    user.send(
        reqwest::Client::new()
            .post(format!("{}/start_conversation", app.base_url))
            .header("x-forwarded-for", client),
    )
    .await
}

#[track_caller]
fn assert_rate_limited(response: &testkit::browser::ApiResponse, max_wait: u64) {
    assert_eq!(response.status, 429, "{}", response.text);
    assert_eq!(
        response.json["error"],
        json!("rate_limited"),
        "{}",
        response.text
    );
    let wait = response.json["retry_after"].as_u64().expect("retry_after");
    assert!((1..=max_wait).contains(&wait), "{}", response.text);
    assert_eq!(
        response.json["message"],
        json!(format!("Too many requests. Try again in {wait} seconds.")),
    );
    assert_eq!(response.header("retry-after"), Some(wait.to_string()));
}

#[tokio::test]
async fn pages_and_reads_without_a_cookie_store_no_session_until_a_conversation_starts() {
    let app = spawn_app(&[]).await;
    let stray = uuid::Uuid::new_v4();
    let mut visitors = Vec::new();
    for _ in 0..30 {
        let visitor = app.new_user_without_page();
        let page = visitor.get("/").await;
        assert_eq!(page.status, 200);
        assert!(
            visitor.session_cookie().is_some(),
            "the page gave no cookie"
        );
        let listed = visitor.get("/list_conversations").await;
        assert_eq!(listed.json, json!({"conversations": []}), "{}", listed.text);
        visitor
            .get("/search_conversations?q=hello")
            .await
            .assert_status(200);
        visitor
            .delete(&format!("/conversation/{stray}"))
            .await
            .assert_error(404, "not_found", "Conversation not found.");
        visitor.post("/reset_conversation").await.assert_status(400);
        visitors.push(visitor);
    }
    for _ in 0..30 {
        let bare = app.new_user_without_page();
        bare.get("/list_conversations").await.assert_status(200);
        assert!(bare.session_cookie().is_none(), "a read set a cookie");
    }

    assert_eq!(stored_sessions(&app).await, 0, "reads stored sessions");

    // The page's user is the one whose first conversation is stored, and its
    // socket (opened before) is that same user.
    let visitor = &visitors[0];
    let cookie = visitor.session_cookie();
    let mut socket = visitor.socket().await;
    let id = visitor.start_conversation().await;
    app.llm.streams(&["Stored", " now"]);
    socket.send_message("first words", None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(turn.expect_end()["conversation_id"], json!(id));
    assert_eq!(stored_sessions(&app).await, 1);
    assert_eq!(
        visitor.session_cookie(),
        cookie,
        "the page's session id changed"
    );
    assert_eq!(visitor.listed_ids().await, vec![id.clone()]);
    assert_eq!(visitors[1].list().await, Vec::<serde_json::Value>::new());
}

#[tokio::test]
async fn new_anonymous_sessions_are_limited_per_client_address() {
    early_in_window(3600, 60).await;
    let app = spawn_app(&[("RATE_LIMIT_NEW_SESSIONS_PER_IP_PER_HOUR", "3")]).await;
    let mut first = None;
    for _ in 0..3 {
        let user = app.new_user().await;
        user.start_conversation().await;
        first.get_or_insert(user);
    }

    let fourth = app.new_user().await;
    let refused = fourth.post("/start_conversation").await;
    let cookieless = app
        .new_user_without_page()
        .post("/start_conversation")
        .await;
    let again = first.unwrap().post("/start_conversation").await;
    let elsewhere = app.new_user_from("127.0.0.2".parse().unwrap());
    let other_address = elsewhere.post("/start_conversation").await;

    assert_rate_limited(&refused, 3600);
    assert_rate_limited(&cookieless, 3600);
    assert_eq!(fourth.list().await, Vec::<serde_json::Value>::new());
    again.assert_status(200);
    other_address.assert_status(200);
    assert_eq!(stored_sessions(&app).await, 4);
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    early_in_window(3600, 60).await;
    let limited = [("RATE_LIMIT_NEW_SESSIONS_PER_IP_PER_HOUR", "1")];
    let behind_proxy = spawn_app(&[limited[0], ("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let direct = spawn_app(&limited).await;

    let one = start_from(&behind_proxy, &behind_proxy.new_user().await, "203.0.113.5").await;
    let same = start_from(&behind_proxy, &behind_proxy.new_user().await, "203.0.113.5").await;
    let other = start_from(&behind_proxy, &behind_proxy.new_user().await, "203.0.113.6").await;
    let spoofed_one = start_from(&direct, &direct.new_user().await, "203.0.113.7").await;
    let spoofed_two = start_from(&direct, &direct.new_user().await, "203.0.113.8").await;

    one.assert_status(200);
    assert_rate_limited(&same, 3600);
    other.assert_status(200);
    spoofed_one.assert_status(200);
    assert_rate_limited(&spoofed_two, 3600);
}

#[tokio::test]
async fn anonymous_messages_are_limited_per_client_address() {
    early_in_window(60, 25).await;
    let app = spawn_app(&[("RATE_LIMIT_MESSAGES_PER_IP_PER_MINUTE", "2")]).await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let user = app.new_user().await;
        let id = user.start_conversation().await;
        sockets.push((user.socket().await, id));
    }
    for (socket, id) in &mut sockets[..2] {
        app.llm.streams(&["fine"]);
        socket.send_message("hello", Some(id));
        socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    }
    let (third, id) = &mut sockets[2];
    third.send_message("hello", Some(id));
    let refused = third.wait_for("error", TURN_TIMEOUT).await;

    assert_eq!(
        refused.data["error"],
        json!("rate_limited"),
        "{:?}",
        refused
    );
    let wait = refused.data["retry_after"].as_u64().expect("retry_after");
    assert!((1..=60).contains(&wait), "{:?}", refused);
    let asked = app.llm.requests();
    let hellos = asked.iter().filter(|r| r.last_user_message() == "hello");
    assert_eq!(hellos.count(), 2, "the refused message reached the LLM");
}

#[tokio::test]
async fn anonymous_uploads_are_limited_per_client_address() {
    early_in_window(3600, 60).await;
    let app = spawn_app(&[("RATE_LIMIT_UPLOADS_PER_IP_PER_HOUR", "1")]).await;
    app.llm
        .set_default(testkit::fake_llm::Behaviour::Stream(vec![
            "noted".to_owned()
        ]));
    let one = app.new_user().await;
    let two = app.new_user().await;

    let first = one.upload("notes.txt", b"a few words").await;
    let second = two.upload("notes.txt", b"a few words").await;

    assert_eq!(first.status, 200, "{}", first.text);
    assert_rate_limited(&second, 3600);
}

#[tokio::test]
async fn a_token_user_is_not_limited_per_address() {
    early_in_window(60, 25).await;
    let app = spawn_app(&[
        ("AUTH_MODE", "local"),
        ("RATE_LIMIT_MESSAGES_PER_IP_PER_MINUTE", "1"),
    ])
    .await;
    let browser = app.new_user_without_page();
    browser
        .post_json(
            "/auth/signup",
            json!({"email": "ann@example.org", "password": "correct horse battery"}),
        )
        .await
        .assert_status(201);
    let id = browser.start_conversation().await;
    let token = browser
        .post_json("/api/tokens", json!({"name": "script"}))
        .await
        .json["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {token}");
    let mut socket = SioClient::connect_with_headers(app.addr, &[("authorization", &bearer)])
        .await
        .expect("socket with a token");

    for text in ["one", "two"] {
        app.llm.streams(&["ok"]);
        socket.send_message(text, Some(&id));
        let turn = socket.collect_turn(TURN_TIMEOUT).await;
        turn.expect_end();
    }
}

#[tokio::test]
async fn a_socket_behind_a_trusted_proxy_is_counted_for_its_forwarded_address() {
    early_in_window(60, 25).await;
    let app = spawn_app(&[
        ("RATE_LIMIT_MESSAGES_PER_IP_PER_MINUTE", "1"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let mut sockets = Vec::new();
    for client in ["203.0.113.9", "203.0.113.10", "203.0.113.9"] {
        let user = app.new_user().await;
        let id = user.start_conversation().await;
        let cookie = user.cookie_header().expect("a session cookie");
        let socket = SioClient::connect_with_headers(
            app.addr,
            &[("cookie", &cookie), ("x-forwarded-for", client)],
        )
        .await
        .expect("socket");
        sockets.push((socket, id));
    }

    for (socket, id) in &mut sockets[..2] {
        app.llm.streams(&["fine"]);
        socket.send_message("hello", Some(id));
        socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    }
    let (third, id) = &mut sockets[2];
    third.send_message("hello", Some(id));
    let refused = third.wait_for("error", TURN_TIMEOUT).await;

    assert_eq!(
        refused.data["error"],
        json!("rate_limited"),
        "{:?}",
        refused
    );
}

#[tokio::test]
async fn an_import_without_a_cookie_keeps_its_session_counted_as_a_new_one() {
    early_in_window(3600, 60).await;
    let app = spawn_app(&[("RATE_LIMIT_NEW_SESSIONS_PER_IP_PER_HOUR", "1")]).await;
    let message = |role: &str, text: &str| json!({"author": {"role": role}, "content": {"content_type": "text", "parts": [text]}});
    let export = json!([{
        "conversation_id": "chatgpt-kept",
        "title": "Kept",
        "create_time": 1_700_000_000.25,
        "update_time": 1_700_000_100.75,
        "current_node": "a",
        "mapping": {
            "q": {"id": "q", "parent": null, "children": ["a"], "message": message("user", "Hi")},
            "a": {"id": "a", "parent": "q", "children": [], "message": message("assistant", "Hello")}
        }
    }])
    .to_string();

    let visitor = app.new_user_without_page();
    let done = visitor
        .post_raw("/import/chatgpt", "application/json", export.clone())
        .await;
    done.assert_status(200);
    assert_eq!(done.json["imported"], json!(1), "{}", done.text);
    assert!(
        visitor.session_cookie().is_some(),
        "the import gave no session"
    );
    assert_eq!(stored_sessions(&app).await, 1);
    let listed = visitor.list().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["title"], json!("Kept"));

    // Another import without a cookie is another new session: over the limit.
    let second = app.new_user_without_page();
    let refused = second
        .post_raw("/import/chatgpt", "application/json", export)
        .await;
    assert_rate_limited(&refused, 3600);
    assert_eq!(stored_sessions(&app).await, 1);
}
