//! One chat turn over Socket.IO: events in order, what is stored, what is sent upstream.

use serde_json::json;
use testkit::browser::msg;

use crate::helpers::{spawn_app, EVENT_TIMEOUT, TURN_TIMEOUT};

#[tokio::test]
async fn turn_sends_token_usage_then_chunks_in_order_then_response_end() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm.streams(&["Hel", "lo", " there", "!"]);

    socket.send_message("Hi model", None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(
        turn.names(),
        vec![
            "token_usage",
            "response_chunk",
            "response_chunk",
            "response_chunk",
            "response_chunk",
            "response_end"
        ]
    );
    assert_eq!(turn.text(), "Hello there!");
    for (index, chunk) in turn.chunks.iter().enumerate() {
        assert_eq!(chunk["index"], json!(index), "{chunk}");
        assert_eq!(chunk["conversation_id"], json!(id), "{chunk}");
    }
    let usage = turn.token_usage.as_ref().unwrap();
    assert!(
        usage["total_tokens_used"]
            .as_u64()
            .expect("total_tokens_used")
            > 0,
        "{usage}"
    );
    assert_eq!(usage["max_tokens"], json!(128000), "{usage}");
    assert_eq!(usage["conversation_id"], json!(id), "{usage}");
    assert_eq!(usage["summarised"], json!(false), "{usage}");
    let end = turn.expect_end();
    assert_eq!(end["conversation_id"], json!(id), "{end}");
    assert_eq!(end["stopped"], json!(false), "{end}");
    assert_eq!(end["chunks"], json!(4), "{end}");
}

#[tokio::test]
async fn turn_stores_exactly_the_user_message_and_the_full_reply() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm.streams(&["Paris", " is the", " capital."]);

    socket.send_message("What is the capital of France?", None);
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();

    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "What is the capital of France?"),
            msg("assistant", "Paris is the capital.")
        ]
    );
}

#[tokio::test]
async fn upstream_request_streams_with_the_configured_model_key_and_reply_tokens() {
    let app = spawn_app(&[("REPLY_TOKENS", "321")]).await;
    let user = app.new_user().await;
    user.start_conversation().await;
    let mut socket = user.socket().await;

    socket.send_message("Hi model", None);
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();

    let requests = app.llm.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(
        request.header("authorization").as_deref(),
        Some("Bearer test-key")
    );
    assert_eq!(request.body["stream"], json!(true), "{}", request.body);
    assert_eq!(request.body["max_tokens"], json!(321), "{}", request.body);
    assert_eq!(
        request.body["model"],
        json!("fake-model"),
        "{}",
        request.body
    );
    let temperature = request.body["temperature"].as_f64().expect("temperature");
    let top_p = request.body["top_p"].as_f64().expect("top_p");
    assert!((temperature - 0.7).abs() < 1e-6, "{temperature}");
    assert!((top_p - 0.95).abs() < 1e-6, "{top_p}");
    let last = request.messages().last().cloned().expect("messages");
    assert_eq!(last, json!({"role": "user", "content": "Hi model"}));
}

#[tokio::test]
async fn second_turn_sends_the_earlier_turn_upstream_in_order() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm
        .streams(&["First", " answer"])
        .streams(&["Second", " answer"]);

    socket.send_message("First question", None);
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    socket.send_message("Second question", None);
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();

    let requests = app.llm.requests();
    assert_eq!(requests.len(), 2);
    let conversation: Vec<_> = requests[1]
        .messages()
        .into_iter()
        .filter(|message| message["role"] == "user" || message["role"] == "assistant")
        .collect();
    assert_eq!(
        conversation,
        vec![
            json!({"role": "user", "content": "First question"}),
            json!({"role": "assistant", "content": "First answer"}),
            json!({"role": "user", "content": "Second question"}),
        ]
    );
    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "First question"),
            msg("assistant", "First answer"),
            msg("user", "Second question"),
            msg("assistant", "Second answer"),
        ]
    );
}

#[tokio::test]
async fn few_shot_examples_are_sent_upstream_before_the_message() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.start_conversation().await;
    user.add_example("Say hi in French", "Bonjour").await;
    let mut socket = user.socket().await;

    socket.send_message("Say bye in French", None);
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();

    let messages: Vec<_> = app.llm.requests()[0]
        .messages()
        .into_iter()
        .filter(|message| message["role"] == "user" || message["role"] == "assistant")
        .collect();
    assert_eq!(
        messages,
        vec![
            json!({"role": "user", "content": "Say hi in French"}),
            json!({"role": "assistant", "content": "Bonjour"}),
            json!({"role": "user", "content": "Say bye in French"}),
        ]
    );
}

#[tokio::test]
async fn message_with_a_conversation_id_goes_to_that_conversation() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let older = user.start_conversation().await;
    let current = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm.streams(&["Into", " the older one"]);

    socket.send_message("Write to the older conversation", Some(&older));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(turn.expect_end()["conversation_id"], json!(older));
    assert_eq!(
        user.history(&older).await,
        vec![
            msg("user", "Write to the older conversation"),
            msg("assistant", "Into the older one")
        ]
    );
    assert!(user.history(&current).await.is_empty());
}

#[tokio::test]
async fn message_to_an_unknown_conversation_is_not_found() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.start_conversation().await;
    let mut socket = user.socket().await;

    socket.send_message("anyone there?", Some(&uuid::Uuid::new_v4().to_string()));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    let error = turn.expect_error();
    assert_eq!(
        error["message"],
        json!("Conversation not found."),
        "{error}"
    );
    assert_eq!(error["error"], json!("not_found"), "{error}");
    assert_eq!(app.llm.call_count(), 0);
}

#[tokio::test]
async fn message_without_a_current_conversation_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let mut socket = user.socket().await;

    socket.send_message("hello?", None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    let error = turn.expect_error();
    assert_eq!(
        error["message"],
        json!("No active conversation. Please start a new conversation."),
        "{error}"
    );
    assert_eq!(error["error"], json!("no_conversation"), "{error}");
    assert_eq!(app.llm.call_count(), 0);
}

#[tokio::test]
async fn non_streaming_json_answer_arrives_as_one_chunk() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm.replies("A whole answer in one JSON body.");

    socket.send_message("Answer without streaming", None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(
        turn.names(),
        vec!["token_usage", "response_chunk", "response_end"]
    );
    assert_eq!(turn.text(), "A whole answer in one JSON body.");
    assert_eq!(turn.expect_end()["chunks"], json!(1));
    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "Answer without streaming"),
            msg("assistant", "A whole answer in one JSON body.")
        ]
    );
}

#[tokio::test]
async fn first_message_gives_the_conversation_its_title() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;

    socket.send_message("Tell me about otters", None);
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();

    let list = user.list().await;
    assert_eq!(list[0]["conversation_id"], json!(id));
    let title = list[0]["title"]
        .as_str()
        .unwrap_or_else(|| panic!("no title: {}", list[0]));
    assert!(title.contains("otters"), "title {title:?}");
    assert_eq!(list[0]["message_count"], json!(2));
    assert_eq!(
        app.llm.call_count(),
        1,
        "titles must not cost an LLM call by default"
    );
}

#[tokio::test]
async fn sender_gets_conversation_updated_after_the_turn_is_stored() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;

    socket.send_message("Tell me about otters", None);
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    let update = socket
        .wait_for_matching("conversation_updated", EVENT_TIMEOUT, |data| {
            data["message_count"] == json!(2)
        })
        .await;

    assert_eq!(update["conversation_id"], json!(id), "{update}");
    assert!(
        update["title"]
            .as_str()
            .unwrap_or_default()
            .contains("otters"),
        "{update}"
    );
    crate::helpers::timestamp(&update["updated_at"]);
}
