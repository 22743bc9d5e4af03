//! Hostile input against the running binary, each part bounded in count and
//! time: the server answers clearly or closes that one connection, and keeps
//! serving everyone else.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::sio::Event;
use tokio::io::AsyncWriteExt;

use crate::helpers::{spawn_app, TestApp, TURN_TIMEOUT};

/// POSTs a body the server refuses before reading it, over a raw socket:
/// the server answers 413 and closes while the body is still being sent, and
/// an HTTP client may then lose the answer (a write error), so the writer
/// here ignores write errors and the answer is read on its own.
async fn post_raw_oversized(
    app: &TestApp,
    cookie: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    use tokio::io::AsyncReadExt;
    let stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /add_few_shot_example HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        app.addr,
        body.len()
    );
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&body).await;
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
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// The server still answers quickly and a fresh user can chat.
async fn still_serving(app: &TestApp) {
    let started = Instant::now();
    let user = app.new_user().await;
    assert_eq!(user.get("/healthz").await.status, 200);
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    socket.send_message("still there?", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn oversized_nested_and_non_utf8_bodies_get_json_errors() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.start_conversation().await;
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        user.send(
            http.post(user.url("/add_few_shot_example"))
                .header("content-type", "application/json")
                .body(body),
        )
    };

    let huge = post_raw_oversized(
        &app,
        &user.cookie_header().unwrap_or_default(),
        format!(
            r#"{{"user_prompt":"{}","assistant_response":"x"}}"#,
            "a".repeat(2 << 20)
        )
        .into_bytes(),
    )
    .await;
    let nested = post("[".repeat(100_000).into_bytes()).await;
    let not_utf8 =
        post(b"{\"user_prompt\":\"\xff\xfe\",\"assistant_response\":\"x\"}".to_vec()).await;
    let bad_path = user.get("/load_conversation/%FF%FE").await;

    assert_eq!(huge.0, 413, "{}", huge.1);
    assert_eq!(huge.1["error"], "too_large");
    assert_eq!(huge.1["message"], "The request body is too large.");
    nested.assert_error(400, "invalid", "The request body is not valid JSON.");
    not_utf8.assert_error(400, "invalid", "The request body is not valid JSON.");
    bad_path.assert_error(400, "invalid", "Invalid conversation id.");
    still_serving(&app).await;
}

#[tokio::test]
async fn ten_thousand_tiny_socket_messages_are_refused_and_the_server_keeps_serving() {
    let app = spawn_app(&[("RATE_LIMIT_MESSAGES_PER_MINUTE", "20")]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut flood = user.socket().await;

    for n in 0..10_000 {
        flood.emit(
            "send_message",
            json!({"message": format!("m{n}"), "conversation_id": id}),
        );
    }
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused < 100 && Instant::now() < deadline {
        match flood.next_event(Duration::from_secs(5)).await {
            Some(Event {
                name,
                data: payload,
                ..
            }) if name == "error" => {
                let code = payload["error"].as_str().unwrap_or_default().to_string();
                assert!(code == "rate_limited" || code == "busy", "{payload}");
                refused += 1;
            }
            Some(_) => {}
            None => break,
        }
    }

    assert!(refused >= 100, "only {refused} refusals seen");
    still_serving(&app).await;
    let stored = user.history(&id).await.len();
    assert!(stored <= 40, "the limit let {stored} messages through");
}

#[tokio::test]
async fn a_socket_frame_over_the_limit_closes_only_that_socket() {
    let app = spawn_app(&[("MAX_MESSAGE_CHARS", "1000")]).await;
    let user = app.new_user().await;
    let mut socket = user.socket().await;

    let frame = format!(
        r#"42["send_message",{{"message":"{}"}}]"#,
        "x".repeat(300_000)
    );
    socket.emit_raw(&frame);
    let closed = socket.wait_closed(Duration::from_secs(10)).await;

    assert!(closed, "the server kept a socket that sent a 300 KB frame");
    still_serving(&app).await;
}

#[tokio::test]
async fn slow_loris_connections_do_not_starve_other_clients() {
    let app = spawn_app(&[]).await;
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        stream
            .write_all(
                b"POST /start_conversation HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nX-Slow: ",
            )
            .await
            .expect("partial request");
        held.push(stream);
    }

    still_serving(&app).await;
    drop(held);
}
