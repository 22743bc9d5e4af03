//! `GET /`, `/get_config`, `/healthz`, `/readyz`, `/metrics`, and the session cookie.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn page_is_served_as_html() {
    let app = spawn_app(&[]).await;
    let user = app.new_user_without_page();

    let page = user.get("/").await;

    assert_eq!(page.status, 200);
    let content_type = page.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/html"),
        "content-type {content_type:?}"
    );
    assert!(
        page.text.to_ascii_lowercase().contains("<html"),
        "not an HTML page: {}",
        &page.text[..page.text.len().min(300)]
    );
}

#[tokio::test]
async fn first_request_gets_an_httponly_samesite_lax_session_cookie() {
    let app = spawn_app(&[]).await;
    let user = app.new_user_without_page();

    let page = user.get("/").await;

    let cookies: Vec<String> = page
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect();
    let session = cookies
        .iter()
        .find(|cookie| cookie.starts_with("chat_session="))
        .unwrap_or_else(|| {
            panic!("no chat_session cookie on the first response; set-cookie: {cookies:?}")
        });
    let attributes = attributes_of(session);
    assert!(attributes.contains(&"httponly".to_owned()), "{session}");
    assert!(attributes.contains(&"samesite=lax".to_owned()), "{session}");
    assert!(attributes.contains(&"path=/".to_owned()), "{session}");
    assert!(
        !attributes.iter().any(|a| a.starts_with("domain")),
        "{session}"
    );
    assert!(
        !attributes.contains(&"secure".to_owned()),
        "Secure without COOKIE_SECURE: {session}"
    );
    assert!(
        !cookies.iter().any(|cookie| cookie.starts_with("__Host-")),
        "{cookies:?}"
    );
    assert!(user.session_cookie().is_some());
}

/// A `Set-Cookie` value's attributes (after the name and value), lowercased and trimmed.
fn attributes_of(cookie: &str) -> Vec<String> {
    cookie
        .split(';')
        .skip(1)
        .map(|attribute| attribute.trim().to_ascii_lowercase())
        .collect()
}

/// A `Secure` cookie is named `__Host-chat_session`: browsers then take it only from a
/// secure origin with `Path=/` and no `Domain`, so a sibling subdomain cannot plant one.
#[tokio::test]
async fn session_cookie_is_secure_and_host_prefixed_when_cookie_secure_is_set() {
    let app = spawn_app(&[("COOKIE_SECURE", "true")]).await;
    let user = app.new_user_without_page();

    let page = user.get("/").await;

    let cookies: Vec<String> = page
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect();
    let session = cookies
        .iter()
        .find(|cookie| cookie.starts_with("__Host-chat_session="))
        .unwrap_or_else(|| panic!("no __Host-chat_session cookie; set-cookie: {cookies:?}"));
    let attributes = attributes_of(session);
    for required in ["secure", "path=/", "httponly", "samesite=lax"] {
        assert!(attributes.contains(&required.to_owned()), "{session}");
    }
    assert!(
        !attributes.iter().any(|a| a.starts_with("domain")),
        "{session}"
    );
    assert!(
        !cookies
            .iter()
            .any(|cookie| cookie.starts_with("chat_session=")),
        "{cookies:?}"
    );

    // The session it names is the browser's: sent back, it is the same user.
    let value = &session["__Host-chat_session=".len()..session.find(';').unwrap()];
    let user = app.new_user_without_page();
    let started = user
        .send(
            reqwest::Client::new()
                .post(user.url("/start_conversation"))
                .header("cookie", format!("__Host-chat_session={value}")),
        )
        .await;
    assert_eq!(started.status, 200, "{}", started.text);
    let listed = user
        .send(
            reqwest::Client::new()
                .get(user.url("/list_conversations"))
                .header("cookie", format!("__Host-chat_session={value}")),
        )
        .await;
    assert_eq!(
        listed.json["conversations"][0]["conversation_id"], started.json["conversation_id"],
        "{}",
        listed.text
    );
}

#[tokio::test]
async fn get_config_reports_the_default_limits_and_provider() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let config = user.get("/get_config").await;

    assert_eq!(config.status, 200, "{}", config.text);
    assert_eq!(config.json["max_tokens"], json!(128000));
    assert_eq!(config.json["reply_tokens"], json!(800));
    assert_eq!(config.json["demo_mode"], json!(false));
    assert_eq!(config.json["provider"], json!("openai"));
    assert_eq!(config.json["model"], json!("fake-model"));
    assert_eq!(
        config.json["max_file_size_mb"].as_f64(),
        Some(5.0),
        "{}",
        config.text
    );
    assert_eq!(
        config.json["allowed_extensions"],
        json!(["txt", "md", "json"])
    );
    assert_eq!(config.json["max_message_chars"], json!(32000));
}

#[tokio::test]
async fn get_config_reflects_the_environment() {
    let app = spawn_app(&[
        ("MAX_TOKENS", "4096"),
        ("REPLY_TOKENS", "512"),
        ("MAX_FILE_SIZE_MB", "2"),
        ("ALLOWED_EXTENSIONS", "txt,csv"),
        ("MAX_MESSAGE_CHARS", "1000"),
        ("LLM_MODEL", "other-model"),
    ])
    .await;
    let user = app.new_user().await;

    let config = user.get("/get_config").await;

    assert_eq!(config.status, 200, "{}", config.text);
    assert_eq!(config.json["max_tokens"], json!(4096));
    assert_eq!(config.json["reply_tokens"], json!(512));
    assert_eq!(
        config.json["max_file_size_mb"].as_f64(),
        Some(2.0),
        "{}",
        config.text
    );
    assert_eq!(config.json["allowed_extensions"], json!(["txt", "csv"]));
    assert_eq!(config.json["max_message_chars"], json!(1000));
    assert_eq!(config.json["model"], json!("other-model"));
}

#[tokio::test]
async fn healthz_says_ok() {
    let app = spawn_app(&[]).await;
    let user = app.new_user_without_page();

    let health = user.get("/healthz").await;

    assert_eq!(health.status, 200);
    assert_eq!(health.json, json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_reports_the_store_up_and_the_llm_configured() {
    let app = spawn_app(&[]).await;
    let user = app.new_user_without_page();

    let ready = user.get("/readyz").await;

    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json["status"], json!("ready"));
    assert_eq!(ready.json["checks"]["store"], json!("up"));
    assert_eq!(ready.json["checks"]["llm"], json!("configured"));
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.get("/healthz").await;

    let metrics = user.get("/metrics").await;

    assert_eq!(metrics.status, 200);
    let content_type = metrics.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );
    assert!(
        metrics.text.contains("# TYPE "),
        "no Prometheus TYPE line: {}",
        metrics.text
    );
    let samples = metrics
        .text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .count();
    assert!(samples > 0, "no samples: {}", metrics.text);
}

/// The value of an unlabelled sample line `name value`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_turns_tokens_latencies_and_upstream_statuses() {
    let app = crate::helpers::spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    socket.send_message("count me", Some(&id));
    socket
        .collect_turn(crate::helpers::TURN_TIMEOUT)
        .await
        .expect_end();
    app.llm.fails_with(500).fails_with(500).fails_with(500);
    socket.send_message("this one fails", Some(&id));
    socket
        .collect_turn(crate::helpers::TURN_TIMEOUT)
        .await
        .expect_error();

    let text = user.get("/metrics").await.text;

    assert_eq!(sample(&text, "chat_turns_started_total"), 2.0);
    assert_eq!(sample(&text, "chat_turns_completed_total"), 1.0);
    assert_eq!(sample(&text, "chat_turns_failed_total"), 1.0);
    assert_eq!(sample(&text, "chat_reply_chunks_total"), 4.0);
    assert!(sample(&text, "chat_tokens_in_total") > 0.0);
    assert!(sample(&text, "chat_tokens_out_total") > 0.0);
    assert_eq!(sample(&text, "chat_llm_retries_total"), 2.0);
    assert!(
        text.contains("chat_llm_responses_total{status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("chat_llm_responses_total{status=\"500\"} 3"),
        "{text}"
    );
    assert_eq!(sample(&text, "chat_first_chunk_seconds_count"), 1.0);
    assert_eq!(sample(&text, "chat_turn_duration_seconds_count"), 2.0);
    assert_eq!(sample(&text, "chat_store_seconds_count"), 4.0);
    assert_eq!(sample(&text, "chat_sockets_connected"), 1.0);
}

#[tokio::test]
async fn json_logs_have_a_line_per_request_and_turn_and_no_message_text() {
    let app = crate::helpers::spawn_app(&[("LOG_FORMAT", "json"), ("RUST_LOG", "info")]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    socket.send_message("PRIVATE-TEXT-4711 do not log me", Some(&id));
    socket
        .collect_turn(crate::helpers::TURN_TIMEOUT)
        .await
        .expect_end();

    let listed = user.get("/list_conversations").await;
    let request_id = listed.header("x-request-id").expect("x-request-id echoed");
    let output = testkit::eventually(
        std::time::Duration::from_secs(5),
        "the turn line in the log",
        || {
            let output = app.server_output();
            async move { output.contains("\"turn\"").then_some(output) }
        },
    )
    .await;

    let lines: Vec<serde_json::Value> = output
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["request_id"] == request_id.as_str()
                && l["span"]["path"] == "/list_conversations"),
        "no request line with id {request_id}:\n{output}"
    );
    let turn = lines
        .iter()
        .find(|l| l["fields"]["message"] == "turn")
        .unwrap_or_else(|| panic!("no turn line:\n{output}"));
    assert_eq!(turn["fields"]["outcome"], "finished");
    assert_eq!(turn["fields"]["chunks"], 4);
    assert!(
        !output.contains("PRIVATE-TEXT-4711"),
        "message text in the log"
    );
}
