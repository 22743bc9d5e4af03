//! The OpenAI-compatible API (`/v1`): models and chat completions for holders of a personal
//! access token, streamed and not, with the page's rate limit, quota and metering; errors in
//! OpenAI's shape for bad JSON, bad messages, huge bodies, unknown models and bad tokens;
//! `X-Keep-Conversation` storing the exchange; a client that leaves mid-reply ends it.

use std::time::Duration;

use llm_chat_server::config::Tokenizer;
use llm_chat_server::context::TokenCounter;
use serde_json::{json, Value};
use testkit::fake_llm::{pieces, Usage, UPSTREAM_SECRET};

use crate::helpers::{spawn_app, TestApp, User, TURN_TIMEOUT};

fn count_tokens(text: &str) -> u64 {
    u64::from(TokenCounter::new(Tokenizer::Cl100kBase).count(text))
}

/// A signed-up person and one of their access tokens.
async fn token_holder(app: &TestApp, email: &str) -> (User, String) {
    let (browser, _) = app.signed_up(email).await;
    let made = browser
        .post_json("/api/tokens", json!({"name": "sdk"}))
        .await;
    made.assert_status(201);
    let token = made.json["token"].as_str().unwrap().to_owned();
    (browser, token)
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

async fn call(request: reqwest::RequestBuilder) -> Answer {
    let response = request.timeout(TURN_TIMEOUT).send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        text,
        json,
    }
}

fn post(app: &TestApp, token: &str, body: &Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", app.base_url))
        .bearer_auth(token)
        .json(body)
}

fn get(app: &TestApp, path: &str, token: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .get(format!("{}{path}", app.base_url))
        .bearer_auth(token)
}

fn hello(stream: bool) -> Value {
    json!({
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ],
        "stream": stream,
    })
}

/// Asserts an OpenAI error object with this status and code; returns its message.
fn assert_openai_error(answer: &Answer, status: u16, code: &str) -> String {
    assert_eq!(answer.status, status, "{}", answer.text);
    let error = &answer.json["error"];
    assert_eq!(error["code"], code, "{}", answer.text);
    assert!(error["type"].is_string(), "{}", answer.text);
    let mut keys: Vec<&str> = error
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {}", answer.text))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "message", "param", "type"],
        "{}",
        answer.text
    );
    assert_eq!(answer.json.as_object().unwrap().len(), 1, "{}", answer.text);
    error["message"].as_str().unwrap().to_owned()
}

/// The `data:` payloads of an event stream, in order.
fn events(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: ").or(line.strip_prefix("data:")))
        .map(|data| data.trim().to_owned())
        .collect()
}

/// (prompt_tokens, completion_tokens) of `GET /usage` for the token's owner.
async fn used(app: &TestApp, token: &str) -> (u64, u64) {
    let usage = call(get(app, "/usage", token)).await;
    assert_eq!(usage.status, 200, "{}", usage.text);
    (
        usage.json["prompt_tokens"].as_u64().unwrap(),
        usage.json["completion_tokens"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn models_lists_the_configured_model_for_a_token_holder() {
    let app = spawn_app(&[("AUTH_MODE", "local"), ("MAX_TOKENS", "8000")]).await;
    let (_, token) = token_holder(&app, "ann@example.org").await;

    let list = call(get(&app, "/v1/models", &token)).await;
    let one = call(get(&app, "/v1/models/fake-model", &token)).await;
    let unknown = call(get(&app, "/v1/models/gpt-9", &token)).await;
    let anonymous = call(reqwest::Client::new().get(format!("{}/v1/models", app.base_url))).await;

    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.json["object"], "list");
    let data = list.json["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{}", list.text);
    assert_eq!(data[0]["id"], "fake-model");
    assert_eq!(data[0]["object"], "model");
    assert_eq!(data[0]["owned_by"], "openai");
    assert_eq!(data[0]["context_window"], 8000);
    assert_eq!(one.status, 200);
    assert_eq!(one.json, data[0]);
    let message = assert_openai_error(&unknown, 404, "model_not_found");
    assert!(message.contains("gpt-9"), "{message}");
    assert_openai_error(&anonymous, 401, "invalid_api_key");
}

#[tokio::test]
async fn a_completion_answers_the_messages_and_meters_the_tokens() {
    let app = spawn_app(&[
        ("AUTH_MODE", "local"),
        ("REPLY_TOKENS", "300"),
        ("LLM_TEMPERATURE", "0.5"),
    ])
    .await;
    let (_, token) = token_holder(&app, "ann@example.org").await;
    app.llm.streams(&["Hello ", "there!"]);
    let mut body = json!({
        "model": "fake-model",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello"}]},
            {"role": "assistant", "content": "Say what?"},
            {"role": "user", "content": "Hello!"},
        ],
        "max_tokens": 5000,
        "temperature": 1.5,
        "user": "someone",
    });

    let answer = call(post(&app, &token, &body)).await;
    let sent = app.llm.requests().pop().unwrap();
    body["max_tokens"] = json!(40);
    body["temperature"] = json!(0.2);
    app.llm.streams(&["Hi"]);
    // A token, not a cookie, authorises it: a browser tool on another origin may call.
    let lower = call(
        post(&app, &token, &body)
            .header("Origin", "https://tool.example")
            .header("Sec-Fetch-Site", "cross-site"),
    )
    .await;
    let lower_sent = app.llm.requests().pop().unwrap();

    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json["object"], "chat.completion");
    assert!(answer.json["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(answer.json["model"], "fake-model");
    assert_eq!(answer.json["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        answer.json["choices"][0]["message"]["content"],
        "Hello there!"
    );
    assert_eq!(answer.json["choices"][0]["finish_reason"], "stop");
    let roles: Vec<String> = sent
        .messages()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(
        sent.contents(),
        ["Be brief.", "Say\nhello", "Say what?", "Hello!"]
    );
    assert!(!sent.is_streaming());
    // Capped by REPLY_TOKENS and LLM_TEMPERATURE; lower values pass.
    assert_eq!(sent.body["max_tokens"], 300);
    assert_eq!(sent.body["temperature"], 0.5);
    assert_eq!(lower.status, 200, "{}", lower.text);
    assert_eq!(lower_sent.body["max_tokens"], 40);
    assert!((lower_sent.body["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    // No upstream usage: the server's tokenizer counted it, as for the page.
    let usage = &answer.json["usage"];
    assert_eq!(usage["completion_tokens"], count_tokens("Hello there!"));
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert!(
        prompt > count_tokens("Be brief. Say hello Say what? Hello!"),
        "{usage}"
    );
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        prompt + count_tokens("Hello there!")
    );
    let lower_usage = &lower.json["usage"];
    assert_eq!(
        used(&app, &token).await,
        (
            prompt + lower_usage["prompt_tokens"].as_u64().unwrap(),
            count_tokens("Hello there!") + count_tokens("Hi")
        )
    );
}

#[tokio::test]
async fn a_streamed_completion_sends_chunks_usage_and_done() {
    let app = spawn_app(&[("AUTH_MODE", "local")]).await;
    let (_, token) = token_holder(&app, "ann@example.org").await;
    app.llm.reports_usage(Some(Usage::new(11, 3)));
    app.llm.streams(&["Hel", "lo ", "you"]);
    let mut body = hello(true);
    body["stream_options"] = json!({"include_usage": true});

    let answer = call(post(&app, &token, &body)).await;

    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(answer.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let data = events(&answer.text);
    assert_eq!(data.last().unwrap(), "[DONE]", "{}", answer.text);
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello you");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14})
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(app.llm.requests()[0].is_streaming());
    // The upstream's own count is what is metered.
    assert_eq!(used(&app, &token).await, (11, 3));
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_never_reach_the_model() {
    let app = spawn_app(&[("AUTH_MODE", "local"), ("MAX_TOKENS", "2000")]).await;
    let (_, token) = token_holder(&app, "ann@example.org").await;
    let raw = |body: &str| {
        reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", app.base_url))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let with_messages = |messages: Value| json!({"model": "fake-model", "messages": messages});

    let bad_json = call(raw("{\"model\": ")).await;
    let not_object = call(raw("[1, 2]")).await;
    let no_messages = call(post(&app, &token, &json!({"model": "fake-model"}))).await;
    let no_model = call(post(
        &app,
        &token,
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    ))
    .await;
    let empty = call(post(&app, &token, &with_messages(json!([])))).await;
    let tool_role = call(post(
        &app,
        &token,
        &with_messages(json!([{"role": "tool", "content": "42", "tool_call_id": "x"}])),
    ))
    .await;
    let odd_role = call(post(
        &app,
        &token,
        &with_messages(json!([{"role": "wizard", "content": "hi"}])),
    ))
    .await;
    let image = call(post(
        &app,
        &token,
        &with_messages(json!([{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}
        ]}])),
    ))
    .await;
    let no_content = call(post(
        &app,
        &token,
        &with_messages(json!([{"role": "user"}])),
    ))
    .await;
    let unknown_model = call(post(
        &app,
        &token,
        &json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}),
    ))
    .await;
    let huge_text = "x".repeat(2 * 1024 * 1024);
    let huge = call(post(
        &app,
        &token,
        &with_messages(json!([{"role": "user", "content": huge_text}])),
    ))
    .await;
    let hot = call(post(
        &app,
        &token,
        &json!({"model": "fake-model", "temperature": 7, "messages": [{"role": "user", "content": "hi"}]}),
    ))
    .await;
    let tools = call(post(
        &app,
        &token,
        &json!({"model": "fake-model", "tools": [{"type": "function"}], "messages": [{"role": "user", "content": "hi"}]}),
    ))
    .await;
    let too_long = call(post(
        &app,
        &token,
        &with_messages(json!([{"role": "user", "content": "word ".repeat(3000)}])),
    ))
    .await;
    let unknown_route = call(get(&app, "/v1/embeddings", &token)).await;
    let wrong_method = call(get(&app, "/v1/chat/completions", &token)).await;

    assert_openai_error(&bad_json, 400, "invalid_json");
    assert_openai_error(&not_object, 400, "invalid_json");
    assert_openai_error(&no_messages, 400, "missing_required_parameter");
    assert_eq!(no_messages.json["error"]["param"], "messages");
    assert_eq!(no_model.json["error"]["param"], "model");
    assert_openai_error(&empty, 400, "invalid_value");
    let message = assert_openai_error(&tool_role, 400, "unsupported_role");
    assert!(message.contains("'tool'"), "{message}");
    assert_eq!(tool_role.json["error"]["param"], "messages[0].role");
    assert_openai_error(&odd_role, 400, "invalid_value");
    let message = assert_openai_error(&image, 400, "unsupported_content");
    assert!(message.contains("image_url"), "{message}");
    assert_eq!(image.json["error"]["param"], "messages[0].content[1].type");
    assert_eq!(no_content.json["error"]["param"], "messages[0].content");
    assert_openai_error(&unknown_model, 404, "model_not_found");
    assert_openai_error(&huge, 413, "request_too_large");
    assert_eq!(hot.json["error"]["param"], "temperature");
    assert_openai_error(&tools, 400, "unsupported_parameter");
    assert_openai_error(&too_long, 400, "context_length_exceeded");
    assert_openai_error(&unknown_route, 404, "unknown_url");
    assert_openai_error(&wrong_method, 405, "method_not_allowed");
    assert_eq!(app.llm.call_count(), 0);
}

#[tokio::test]
async fn bad_tokens_and_servers_without_accounts_get_401() {
    let app = spawn_app(&[("AUTH_MODE", "local")]).await;
    let (browser, token) = token_holder(&app, "ann@example.org").await;
    let without_accounts = spawn_app(&[]).await;

    let wrong = call(post(&app, "lcs_not-a-real-token", &hello(false))).await;
    let missing = call(
        reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", app.base_url))
            .json(&hello(false)),
    )
    .await;
    // The page's cookie is not a token.
    let cookie = browser
        .send(
            reqwest::Client::new()
                .post(browser.url("/v1/chat/completions"))
                .json(&hello(false)),
        )
        .await;
    let none_mode = call(post(&without_accounts, &token, &hello(false))).await;

    assert_openai_error(&wrong, 401, "invalid_api_key");
    assert_openai_error(&missing, 401, "invalid_api_key");
    assert_eq!(cookie.status, 401, "{}", cookie.text);
    assert_eq!(cookie.json["error"]["code"], "invalid_api_key");
    assert_openai_error(&none_mode, 401, "invalid_api_key");
    assert_eq!(app.llm.call_count() + without_accounts.llm.call_count(), 0);
}

#[tokio::test]
async fn the_keep_header_stores_the_exchange_as_a_conversation_of_the_token_owner() {
    let app = spawn_app(&[("AUTH_MODE", "local"), ("SIGNUP", "open")]).await;
    let (browser, token) = token_holder(&app, "ann@example.org").await;
    let (_, other_token) = token_holder(&app, "bob@example.org").await;
    app.llm.streams(&["Hello ", "Ann"]);
    app.llm.streams(&["Streamed ", "too"]);
    app.llm.streams(&["Not kept"]);
    let body = json!({
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi, I am Ann"},
            {"role": "assistant", "content": "Hi Ann"},
            {"role": "user", "content": "Greet me"},
        ],
    });

    let kept = call(post(&app, &token, &body).header("X-Keep-Conversation", "true")).await;
    let mut streamed_body = body.clone();
    streamed_body["stream"] = json!(true);
    let streamed =
        call(post(&app, &token, &streamed_body).header("X-Keep-Conversation", "true")).await;
    let not_kept = call(post(&app, &token, &body)).await;
    let bad_header = call(post(&app, &token, &body).header("X-Keep-Conversation", "maybe")).await;

    assert_eq!(kept.status, 200, "{}", kept.text);
    assert_eq!(streamed.status, 200, "{}", streamed.text);
    assert_eq!(not_kept.status, 200, "{}", not_kept.text);
    assert!(not_kept.headers.get("x-conversation-id").is_none());
    assert_openai_error(&bad_header, 400, "invalid_header");
    let id = kept.headers["x-conversation-id"].to_str().unwrap();
    let streamed_id = streamed.headers["x-conversation-id"].to_str().unwrap();
    let loaded = call(get(&app, &format!("/load_conversation/{id}"), &token)).await;
    assert_eq!(loaded.status, 200, "{}", loaded.text);
    assert_eq!(
        loaded.json["conversation"],
        json!([
            {"role": "user", "content": "Hi, I am Ann"},
            {"role": "assistant", "content": "Hi Ann"},
            {"role": "user", "content": "Greet me"},
            {"role": "assistant", "content": "Hello Ann"},
        ])
    );
    let history = browser.history(streamed_id).await;
    assert_eq!(
        history.last().unwrap(),
        &("assistant".to_owned(), "Streamed too".to_owned())
    );
    let listed = call(get(&app, "/list_conversations", &token)).await;
    let ids: Vec<&str> = listed.json["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conversation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{}", listed.text);
    assert!(ids.contains(&id) && ids.contains(&streamed_id));
    // Another person's token cannot read it.
    let other = call(get(&app, &format!("/load_conversation/{id}"), &other_token)).await;
    assert_eq!(other.status, 404, "{}", other.text);
}

#[tokio::test]
async fn the_page_rate_limit_applies_to_the_api() {
    let app = spawn_app(&[
        ("AUTH_MODE", "local"),
        ("RATE_LIMIT_MESSAGES_PER_MINUTE", "2"),
    ])
    .await;
    let (_, token) = token_holder(&app, "ann@example.org").await;
    app.llm
        .set_default(testkit::fake_llm::Behaviour::Stream(pieces(&["ok"])));

    let first = call(post(&app, &token, &hello(false))).await;
    let second = call(post(&app, &token, &hello(true))).await;
    let third = call(post(&app, &token, &hello(false))).await;

    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(second.status, 200, "{}", second.text);
    assert_openai_error(&third, 429, "rate_limit_exceeded");
    assert_eq!(third.json["error"]["type"], "rate_limit_error");
    let wait: u64 = third.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(app.llm.call_count(), 2);
}

#[tokio::test]
async fn over_the_daily_quota_the_api_answers_429_insufficient_quota() {
    let app = spawn_app(&[("AUTH_MODE", "local"), ("QUOTA_TOKENS_PER_DAY", "20")]).await;
    let (_, token) = token_holder(&app, "ann@example.org").await;
    app.llm.reports_usage(Some(Usage::new(15, 10)));
    app.llm
        .streams(&["the turn that crosses the quota finishes"]);

    let crossing = call(post(&app, &token, &hello(false))).await;
    let refused = call(post(&app, &token, &hello(true))).await;

    assert_eq!(crossing.status, 200, "{}", crossing.text);
    let message = assert_openai_error(&refused, 429, "insufficient_quota");
    assert!(message.contains("20 tokens"), "{message}");
    assert_eq!(refused.json["error"]["type"], "insufficient_quota");
    assert_eq!(refused.headers["x-should-retry"], "false");
    assert_eq!(app.llm.call_count(), 1);
}

#[tokio::test]
async fn upstream_failures_are_openai_errors_without_the_upstreams_words() {
    let app = spawn_app(&[("AUTH_MODE", "local")]).await;
    let (_, token) = token_holder(&app, "ann@example.org").await;
    app.llm.fails_with(400);
    app.llm.fails_with(400);
    app.llm.stream_then_cut(&["half a "]);

    let whole = call(post(&app, &token, &hello(false))).await;
    let before_stream = call(post(&app, &token, &hello(true))).await;
    let cut = call(post(&app, &token, &hello(true))).await;

    assert_openai_error(&whole, 502, "upstream_error");
    assert_openai_error(&before_stream, 502, "upstream_error");
    assert_eq!(cut.status, 200, "{}", cut.text);
    let data = events(&cut.text);
    let error: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "upstream_error", "{}", cut.text);
    assert!(!data.contains(&"[DONE]".to_owned()), "{}", cut.text);
    for text in [&whole.text, &before_stream.text, &cut.text] {
        assert!(!text.contains(UPSTREAM_SECRET), "{text}");
    }
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_ends_the_reply_and_keeps_what_arrived() {
    let app = spawn_app(&[("AUTH_MODE", "local")]).await;
    let (browser, token) = token_holder(&app, "ann@example.org").await;
    let words: Vec<String> = (0..40).map(|n| format!("w{n} ")).collect();
    let parts: Vec<&str> = words.iter().map(String::as_str).collect();
    app.llm.slow_stream(&parts, Duration::from_millis(150));

    let mut response = post(&app, &token, &hello(true))
        .header("X-Keep-Conversation", "true")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-conversation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut seen = String::new();
    while !seen.contains("w2 ") {
        let chunk = tokio::time::timeout(TURN_TIMEOUT, response.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);

    // Kept once the reply ended: well before the upstream's 6 s.
    let mut history = Vec::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if browser.listed_ids().await.contains(&id) {
            history = browser.history(&id).await;
            break;
        }
    }
    assert_eq!(history.len(), 2, "the exchange was not kept in time");
    let reply = &history[1].1;
    assert!(reply.starts_with("w0 w1 w2 "), "{reply}");
    assert!(!reply.contains("w39"), "the reply ran on: {reply}");
    let (_, completion) = used(&app, &token).await;
    assert_eq!(completion, count_tokens(reply));
}
