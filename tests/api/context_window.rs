//! Context window: over budget, older turns are summarised by the LLM into the prompt;
//! the stored history is never cut.

use serde_json::json;
use testkit::browser::msg;
use testkit::fake_llm::{pieces, Behaviour, RecordedRequest};

use crate::helpers::{spawn_app, TestApp, User, TURN_TIMEOUT};

const SMALL_WINDOW: [(&str, &str); 3] = [
    ("MAX_TOKENS", "300"),
    ("REPLY_TOKENS", "100"),
    ("SUMMARY_TOKENS", "50"),
];
const PROMPT_BUDGET: u64 = 200;
const FINAL_MARKER: &str = "FINAL-QUESTION";
const SUMMARY: &str = "SUMMARY-TEXT: cats and dogs sat in the sun.";
const EXAMPLE_MARKERS: [&str; 4] = [
    "EXAMPLE-ONE",
    "EXAMPLE-TWO",
    "EXAMPLE-THREE",
    "EXAMPLE-FOUR",
];

/// Roughly 95 tokens of short common words.
fn long_text(marker: &str, side: &str) -> String {
    format!(
        "{marker} {side}: {}",
        "the cat sat on the mat and the dog ran in the sun "
            .repeat(7)
            .trim_end()
    )
}

fn is_chat_request(request: &RecordedRequest) -> bool {
    request.last_message_content().contains(FINAL_MARKER)
}

/// A conversation with four long examples (far over a 200-token budget); returns its id
/// and the expected stored history.
async fn long_conversation(user: &User) -> (String, Vec<(String, String)>) {
    let id = user.start_conversation().await;
    let mut expected = Vec::new();
    for marker in EXAMPLE_MARKERS {
        let (question, answer) = (long_text(marker, "question"), long_text(marker, "answer"));
        user.add_example(&question, &answer).await;
        expected.push(msg("user", &question));
        expected.push(msg("assistant", &answer));
    }
    (id, expected)
}

fn final_question() -> String {
    format!("{FINAL_MARKER} what is the capital of France?")
}

async fn app_with_small_window() -> TestApp {
    spawn_app(&SMALL_WINDOW).await
}

#[tokio::test]
async fn over_budget_history_is_summarised_into_a_prompt_within_the_budget() {
    let app = app_with_small_window().await;
    app.llm.set_default_fn(|request| {
        if is_chat_request(request) {
            Behaviour::Stream(pieces(&["Paris", " it is."]))
        } else {
            Behaviour::Stream(pieces(&[SUMMARY]))
        }
    });
    let user = app.new_user().await;
    let (id, mut expected) = long_conversation(&user).await;
    let full_history_chars: usize = expected.iter().map(|(_, content)| content.len()).sum();
    let mut socket = user.socket().await;

    socket.send_message(&final_question(), None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(turn.text(), "Paris it is.", "{:?}", turn.events);
    let usage = turn.token_usage.as_ref().expect("token_usage");
    let used = usage["total_tokens_used"]
        .as_u64()
        .expect("total_tokens_used");
    assert!(
        used > 0 && used <= PROMPT_BUDGET,
        "prompt of {used} tokens exceeds the {PROMPT_BUDGET}-token budget"
    );
    assert_eq!(usage["summarised"], json!(true), "{usage}");
    assert_eq!(usage["max_tokens"], json!(300), "{usage}");

    let requests = app.llm.requests();
    let chats: Vec<_> = requests
        .iter()
        .filter(|request| is_chat_request(request))
        .collect();
    let summaries: Vec<_> = requests
        .iter()
        .filter(|request| !is_chat_request(request))
        .collect();
    assert_eq!(chats.len(), 1, "{requests:?}");
    assert!(!summaries.is_empty(), "no summarisation request was made");
    assert!(
        summaries
            .iter()
            .any(|request| request.prompt_text().to_lowercase().contains("summar")),
        "no request asked for a summary: {summaries:?}"
    );
    assert!(
        summaries
            .iter()
            .all(|request| request.body["max_tokens"] == json!(50)),
        "SUMMARY_TOKENS not used: {summaries:?}"
    );
    assert!(
        summaries
            .iter()
            .any(|request| request.prompt_text().contains("EXAMPLE-ONE")),
        "the oldest turn was not given to the summariser"
    );
    let chat = chats[0];
    assert_eq!(chat.body["stream"], json!(true));
    assert_eq!(chat.body["max_tokens"], json!(100));
    let prompt = chat.prompt_text();
    assert!(
        prompt.contains("SUMMARY-TEXT"),
        "the summary is not in the prompt: {prompt}"
    );
    assert!(
        prompt.len() < 1000,
        "a 200-token prompt of short words should be under 1000 chars, got {}: {prompt}",
        prompt.len()
    );
    assert!(
        full_history_chars > 2500,
        "test setup: history should be far over budget"
    );
    assert!(
        !prompt.contains("EXAMPLE-ONE"),
        "the oldest turn was sent verbatim: {prompt}"
    );

    expected.push(msg("user", &final_question()));
    expected.push(msg("assistant", "Paris it is."));
    assert_eq!(
        user.history(&id).await,
        expected,
        "the stored history must keep every message"
    );
}

#[tokio::test]
async fn when_summarising_fails_the_oldest_turns_are_left_out_of_the_prompt() {
    let app = app_with_small_window().await;
    app.llm.set_default_fn(|request| {
        if is_chat_request(request) {
            Behaviour::Stream(pieces(&["Still", " answered."]))
        } else {
            Behaviour::Fail(500)
        }
    });
    let user = app.new_user().await;
    let (id, mut expected) = long_conversation(&user).await;
    let mut socket = user.socket().await;

    socket.send_message(&final_question(), None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(turn.text(), "Still answered.", "{:?}", turn.events);
    let used = turn.token_usage.as_ref().unwrap()["total_tokens_used"]
        .as_u64()
        .unwrap();
    assert!(
        used <= PROMPT_BUDGET,
        "prompt of {used} tokens exceeds the budget"
    );
    let chat = app
        .llm
        .requests()
        .into_iter()
        .find(is_chat_request)
        .expect("chat request");
    let prompt = chat.prompt_text();
    assert!(
        !prompt.contains("EXAMPLE-ONE"),
        "the oldest turn was not left out: {prompt}"
    );
    assert!(prompt.contains(FINAL_MARKER));
    expected.push(msg("user", &final_question()));
    expected.push(msg("assistant", "Still answered."));
    assert_eq!(user.history(&id).await, expected);
}

#[tokio::test]
async fn within_budget_nothing_is_summarised() {
    let app = app_with_small_window().await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    user.add_example("Short question", "Short answer").await;
    let mut socket = user.socket().await;

    socket.send_message("Another short one", None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    turn.expect_end();
    assert_eq!(
        turn.token_usage.as_ref().unwrap()["summarised"],
        json!(false)
    );
    assert_eq!(
        app.llm.call_count(),
        1,
        "no summarisation call within budget"
    );
    assert_eq!(user.history(&id).await.len(), 4);
}

#[tokio::test]
async fn stop_while_older_turns_are_summarised_keeps_the_users_message() {
    let app = spawn_app(&[
        ("MAX_TOKENS", "300"),
        ("REPLY_TOKENS", "100"),
        ("SUMMARY_TOKENS", "50"),
        ("LLM_FIRST_BYTE_TIMEOUT_SECONDS", "30"),
    ])
    .await;
    let user = app.new_user().await;
    let (id, mut expected) = long_conversation(&user).await;
    let mut socket = user.socket().await;
    app.llm.hangs();

    socket.send_message(&final_question(), Some(&id));
    testkit::eventually(
        std::time::Duration::from_secs(10),
        "the summary request to reach the LLM",
        || {
            let llm = app.llm.clone();
            async move { (llm.call_count() == 1).then_some(()) }
        },
    )
    .await;
    socket.emit("stop_generation", json!({"conversation_id": id}));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(turn.expect_end()["stopped"], true);
    assert!(turn.chunks.is_empty());
    assert!(
        !app.llm.requests()[0].is_streaming(),
        "the hung request was the summary"
    );
    expected.push(msg("user", &final_question()));
    assert_eq!(user.history(&id).await, expected);
}
