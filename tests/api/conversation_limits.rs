//! Hostile input: conversations have a cap (`MAX_CONVERSATION_MESSAGES`,
//! `MAX_CONVERSATION_BYTES`) in every store, refused with one sentence over
//! HTTP and the socket, before the LLM is asked; loading pages through a
//! long history; summaries in bounded pieces, and not retried on every turn
//! after a failure.

use serde_json::json;
use testkit::browser::msg;
use testkit::fake_llm::{pieces, Behaviour, RecordedRequest};

use crate::helpers::{spawn_app, TURN_TIMEOUT};

fn full(messages: u64, text: &str) -> String {
    format!(
        "This conversation is full (at most {messages} messages / {text} of text). Start a new conversation."
    )
}

#[tokio::test]
async fn a_conversation_at_its_message_cap_is_refused_the_same_way_over_http_and_the_socket() {
    let app = spawn_app(&[("MAX_CONVERSATION_MESSAGES", "4")]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    user.add_example("first question", "first answer").await;
    user.add_example("second question", "second answer").await;
    let sentence = full(4, "6 MB");

    let refused = user
        .post_json(
            "/add_few_shot_example",
            json!({"user_prompt": "third", "assistant_response": "answer"}),
        )
        .await;
    let mut socket = user.socket().await;
    socket.send_message("one more question", Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    refused.assert_error(413, "too_large", &sentence);
    let error = turn.expect_error();
    assert_eq!(error["message"], json!(sentence), "{error}");
    assert_eq!(error["error"], json!("too_large"), "{error}");
    assert_eq!(error["conversation_id"], json!(id), "{error}");
    assert_eq!(
        app.llm.call_count(),
        0,
        "no tokens may be spent on a turn that cannot be stored"
    );
    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "first question"),
            msg("assistant", "first answer"),
            msg("user", "second question"),
            msg("assistant", "second answer"),
        ]
    );
}

#[tokio::test]
async fn a_conversation_at_its_size_cap_is_refused_before_the_llm_is_asked() {
    let app = spawn_app(&[("MAX_CONVERSATION_BYTES", "2000")]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let (question, answer) = ("q".repeat(900), "a".repeat(900));
    user.add_example(&question, &answer).await;
    let sentence = full(10000, "2000 bytes");

    let refused = user
        .post_json(
            "/add_few_shot_example",
            json!({"user_prompt": "x".repeat(150), "assistant_response": "y".repeat(150)}),
        )
        .await;
    let mut socket = user.socket().await;
    socket.send_message(&"z".repeat(250), Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    refused.assert_error(413, "too_large", &sentence);
    assert_eq!(turn.expect_error()["message"], json!(sentence));
    assert_eq!(app.llm.call_count(), 0);
    assert_eq!(
        user.history(&id).await,
        vec![msg("user", &question), msg("assistant", &answer)]
    );
}

#[tokio::test]
async fn a_reply_longer_than_the_room_left_is_stored_cut_not_lost() {
    let app = spawn_app(&[("MAX_CONVERSATION_BYTES", "1000")]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    user.add_example(&"q".repeat(400), &"a".repeat(400)).await;
    let long_reply = "word ".repeat(100);
    app.llm.streams(&[&long_reply[..250], &long_reply[250..]]);
    let mut socket = user.socket().await;

    socket.send_message("tell me more", Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    turn.expect_end();
    assert_eq!(turn.text(), long_reply);
    let history = user.history(&id).await;
    assert_eq!(history.len(), 4, "{history:?}");
    assert_eq!(history[2], msg("user", "tell me more"));
    let room = 1000 - 800 - "tell me more".len();
    assert_eq!(history[3], msg("assistant", &long_reply[..room]));
}

/// Adds `n` numbered examples (`Q{i}` / `A{i}`) to the current conversation.
async fn numbered_examples(user: &crate::helpers::User, n: usize) -> Vec<(String, String)> {
    let mut expected = Vec::new();
    for i in 0..n {
        let (q, a) = (format!("Q{i}"), format!("A{i}"));
        user.add_example(&q, &a).await;
        expected.push(msg("user", &q));
        expected.push(msg("assistant", &a));
    }
    expected
}

#[tokio::test]
async fn load_conversation_pages_backwards_and_stays_whole_without_parameters() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let expected = numbered_examples(&user, 5).await;

    let whole = user.get(&format!("/load_conversation/{id}")).await;
    let last = user.get(&format!("/load_conversation/{id}?limit=4")).await;
    let before = user
        .get(&format!("/load_conversation/{id}?limit=4&before=6"))
        .await;
    let start = user
        .get(&format!("/load_conversation/{id}?limit=4&before=2"))
        .await;

    whole.assert_status(200);
    let keys: Vec<&String> = whole.json.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["conversation", "conversation_id", "title"],
        "the plain answer keeps the original's shape: {}",
        whole.text
    );
    assert_eq!(
        testkit::browser::messages(&whole.json["conversation"]),
        expected
    );
    last.assert_status(200);
    assert_eq!(
        testkit::browser::messages(&last.json["conversation"]),
        expected[6..10]
    );
    assert_eq!(
        (last.json["total"].clone(), last.json["first"].clone()),
        (json!(10), json!(6))
    );
    assert_eq!(
        testkit::browser::messages(&before.json["conversation"]),
        expected[2..6]
    );
    assert_eq!(before.json["first"], json!(2));
    assert_eq!(
        testkit::browser::messages(&start.json["conversation"]),
        expected[0..2]
    );
    assert_eq!(start.json["first"], json!(0));
    assert_eq!(start.json["title"], json!("Q0"));
}

#[tokio::test]
async fn load_conversation_refuses_bad_page_parameters_and_other_users_pages() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    numbered_examples(&user, 1).await;
    let other = app.new_user().await;

    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
    ] {
        user.get(&format!("/load_conversation/{id}?{query}"))
            .await
            .assert_error(
                400,
                "invalid",
                "limit must be a whole number from 1 to 1000.",
            );
    }
    user.get(&format!("/load_conversation/{id}?before=-3"))
        .await
        .assert_error(
            400,
            "invalid",
            "before must be a whole number from 0 to 4294967295.",
        );
    other
        .get(&format!("/load_conversation/{id}?limit=1"))
        .await
        .assert_error(404, "not_found", "Conversation not found.");
}

const SUMMARISED_WINDOW: [(&str, &str); 3] = [
    ("MAX_TOKENS", "1000"),
    ("REPLY_TOKENS", "100"),
    ("SUMMARY_TOKENS", "50"),
];

/// About 95 tokens of common words, marked.
fn long_text(marker: &str) -> String {
    format!(
        "{marker}: {}",
        "the cat sat on the mat and the dog ran in the sun "
            .repeat(7)
            .trim_end()
    )
}

fn is_summary(request: &RecordedRequest) -> bool {
    !request.is_streaming()
}

#[tokio::test]
async fn a_long_history_is_summarised_in_bounded_pieces() {
    let app = spawn_app(&SUMMARISED_WINDOW).await;
    app.llm.set_default_fn(|request| {
        if is_summary(request) {
            Behaviour::Stream(pieces(&["SUMMARY-TEXT"]))
        } else {
            Behaviour::Stream(pieces(&["Answered."]))
        }
    });
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    for i in 0..12 {
        user.add_example(
            &long_text(&format!("EX{i:02}-Q")),
            &long_text(&format!("EX{i:02}-A")),
        )
        .await;
    }
    let mut socket = user.socket().await;

    for question in ["first question", "second question"] {
        socket.send_message(question, Some(&id));
        socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    }

    let summaries: Vec<String> = app
        .llm
        .requests()
        .iter()
        .filter(|r| is_summary(r))
        .map(|r| r.prompt_text())
        .collect();
    assert_eq!(
        summaries.len(),
        2,
        "one bounded piece per turn: {summaries:?}"
    );
    // 50 summary tokens: at most 200 tokens of messages (about two) per request.
    for prompt in &summaries {
        let folded = prompt.matches(": the cat sat").count();
        assert!(
            (1..=2).contains(&folded),
            "a summary request folded {folded} messages: {prompt}"
        );
    }
    assert!(summaries[0].contains("EX00-Q"), "{}", summaries[0]);
    assert!(!summaries[0].contains("EX05"), "{}", summaries[0]);
    assert!(
        summaries[1].contains("Summary so far: SUMMARY-TEXT") && !summaries[1].contains("EX00-Q"),
        "the second piece goes on from the first: {}",
        summaries[1]
    );
    assert_eq!(
        user.history(&id).await.len(),
        28,
        "the history is never cut"
    );
}

#[tokio::test]
async fn after_a_failed_summary_the_next_turn_does_not_ask_again() {
    let app = spawn_app(&SUMMARISED_WINDOW).await;
    app.llm.set_default_fn(|request| {
        if is_summary(request) {
            Behaviour::Fail(500)
        } else {
            Behaviour::Stream(pieces(&["Still answered."]))
        }
    });
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    for i in 0..12 {
        user.add_example(
            &long_text(&format!("EX{i:02}-Q")),
            &long_text(&format!("EX{i:02}-A")),
        )
        .await;
    }
    let mut socket = user.socket().await;
    let count_summaries = || app.llm.requests().iter().filter(|r| is_summary(r)).count();

    socket.send_message("first question", Some(&id));
    let first = socket.collect_turn(TURN_TIMEOUT).await;
    let after_first = count_summaries();
    socket.send_message("second question", Some(&id));
    let second = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(first.text(), "Still answered.", "{:?}", first.events);
    assert_eq!(second.text(), "Still answered.", "{:?}", second.events);
    assert!(
        after_first >= 1,
        "the first turn should have tried to summarise"
    );
    assert_eq!(
        count_summaries(),
        after_first,
        "the second turn asked for a summary again right after a failure"
    );
    let chats: Vec<_> = app
        .llm
        .requests()
        .into_iter()
        .filter(|r| !is_summary(r))
        .collect();
    assert_eq!(chats.len(), 2);
    assert!(
        !chats[1].prompt_text().contains("EX00-Q"),
        "older turns are left out instead"
    );
}
