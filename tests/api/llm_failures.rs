//! Upstream failures: retries, timeouts, broken streams. The client gets one generic error,
//! never upstream text; the stored conversation keeps only the user message.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::browser::msg;
use testkit::fake_llm::{Behaviour, DEFAULT_PIECES, UPSTREAM_SECRET};
use testkit::sio::{SioClient, Turn};

use crate::helpers::{spawn_app, TestApp, User, TURN_TIMEOUT};

const UNAVAILABLE: &str = "The language model is unavailable right now. Please try again.";

/// A hang on every try costs up to 3 x 2 s plus backoff; leave room.
const FAILURE_TIMEOUT: Duration = Duration::from_secs(45);

async fn user_in_conversation(app: &TestApp) -> (User, String, SioClient) {
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let socket = user.socket().await;
    (user, id, socket)
}

#[track_caller]
fn assert_generic_failure(turn: &Turn) {
    let error = turn.expect_error();
    assert_eq!(error["message"], json!(UNAVAILABLE), "{error}");
    assert_eq!(error["error"], json!("llm_unavailable"), "{error}");
    let all_events = format!("{:?}", turn.events);
    assert!(
        !all_events.contains(UPSTREAM_SECRET),
        "upstream text reached the client: {all_events}"
    );
}

/// After a failure, a normal turn on the same socket still works and is stored.
async fn assert_a_normal_turn_works(app: &TestApp, socket: &mut SioClient, user: &User, id: &str) {
    app.llm.set_default(Behaviour::Stream(vec![
        "Back".into(),
        " to".into(),
        " normal".into(),
    ]));
    socket.send_message("Are you back?", Some(id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;
    turn.expect_end();
    assert_eq!(turn.text(), "Back to normal");
    let history = user.history(id).await;
    assert_eq!(
        history.last(),
        Some(&msg("assistant", "Back to normal")),
        "{history:?}"
    );
}

#[tokio::test]
async fn upstream_500_on_every_try_gives_the_generic_error_after_three_calls() {
    let app = spawn_app(&[]).await;
    let (user, id, mut socket) = user_in_conversation(&app).await;
    app.llm.set_default(Behaviour::Fail(500));

    socket.send_message("Will this fail?", None);
    let turn = socket.collect_turn(FAILURE_TIMEOUT).await;

    assert_generic_failure(&turn);
    assert!(turn.chunks.is_empty());
    assert_eq!(app.llm.call_count(), 3, "LLM_MAX_ATTEMPTS defaults to 3");
    assert_eq!(
        user.history(&id).await,
        vec![msg("user", "Will this fail?")]
    );
}

#[tokio::test]
async fn llm_max_attempts_bounds_the_tries() {
    let app = spawn_app(&[("LLM_MAX_ATTEMPTS", "2")]).await;
    let (_user, _id, mut socket) = user_in_conversation(&app).await;
    app.llm.set_default(Behaviour::Fail(503));

    socket.send_message("Will this fail?", None);
    let turn = socket.collect_turn(FAILURE_TIMEOUT).await;

    assert_generic_failure(&turn);
    assert_eq!(app.llm.call_count(), 2);
}

#[tokio::test]
async fn upstream_client_error_is_not_retried() {
    let app = spawn_app(&[]).await;
    let (user, id, mut socket) = user_in_conversation(&app).await;
    app.llm.set_default(Behaviour::Fail(400));

    socket.send_message("Bad request upstream", None);
    let turn = socket.collect_turn(FAILURE_TIMEOUT).await;

    assert_generic_failure(&turn);
    assert_eq!(app.llm.call_count(), 1, "a 400 is not worth retrying");
    assert_eq!(
        user.history(&id).await,
        vec![msg("user", "Bad request upstream")]
    );
}

#[tokio::test]
async fn server_keeps_serving_after_upstream_failures() {
    let app = spawn_app(&[]).await;
    let (user, id, mut socket) = user_in_conversation(&app).await;
    app.llm.set_default(Behaviour::Fail(500));
    socket.send_message("Will this fail?", None);
    assert_generic_failure(&socket.collect_turn(FAILURE_TIMEOUT).await);

    assert_a_normal_turn_works(&app, &mut socket, &user, &id).await;

    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "Will this fail?"),
            msg("user", "Are you back?"),
            msg("assistant", "Back to normal")
        ]
    );
    assert_eq!(user.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn rate_limit_with_retry_after_is_waited_out_then_the_reply_arrives() {
    let app = spawn_app(&[]).await;
    let (user, id, mut socket) = user_in_conversation(&app).await;
    app.llm.rate_limited(1);

    socket.send_message("Busy?", None);
    let turn = socket.collect_turn(FAILURE_TIMEOUT).await;

    turn.expect_end();
    assert_eq!(turn.text(), DEFAULT_PIECES.concat());
    let requests = app.llm.requests();
    assert_eq!(requests.len(), 2, "one 429 then one success");
    let waited = requests[1]
        .received_at
        .duration_since(requests[0].received_at);
    assert!(
        waited >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured (retried after {waited:?})"
    );
    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "Busy?"),
            msg("assistant", &DEFAULT_PIECES.concat())
        ]
    );
}

#[tokio::test]
async fn one_upstream_503_is_retried_and_the_reply_arrives() {
    let app = spawn_app(&[]).await;
    let (_user, _id, mut socket) = user_in_conversation(&app).await;
    app.llm.fails_with(503);

    socket.send_message("Flaky?", None);
    let turn = socket.collect_turn(FAILURE_TIMEOUT).await;

    assert_eq!(turn.text(), DEFAULT_PIECES.concat(), "{:?}", turn.events);
    assert_eq!(app.llm.call_count(), 2);
}

#[tokio::test]
async fn upstream_that_never_answers_times_out_with_the_generic_error() {
    let app = spawn_app(&[]).await;
    let (user, id, mut socket) = user_in_conversation(&app).await;
    app.llm.set_default(Behaviour::Hang);
    let started = Instant::now();

    socket.send_message("Hello, anyone?", None);
    let turn = socket.collect_turn(FAILURE_TIMEOUT).await;

    assert_generic_failure(&turn);
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "gave up before the 2 s first-byte timeout"
    );
    assert_eq!(user.history(&id).await, vec![msg("user", "Hello, anyone?")]);
    assert_a_normal_turn_works(&app, &mut socket, &user, &id).await;
}

#[tokio::test]
async fn stream_that_stalls_mid_reply_gives_an_error_and_stores_no_half_reply() {
    let app = spawn_app(&[]).await;
    let (user, id, mut socket) = user_in_conversation(&app).await;
    app.llm.stream_then_hang(&["Half", " of an"]);
    app.llm.set_default(Behaviour::Hang);

    socket.send_message("Tell me everything", None);
    let turn = socket.collect_turn(FAILURE_TIMEOUT).await;

    assert_generic_failure(&turn);
    assert_eq!(
        turn.text(),
        "Half of an",
        "the pieces before the stall are still streamed: {:?}",
        turn.events
    );
    assert_eq!(app.llm.call_count(), 1, "no retry once text arrived");
    assert_eq!(
        user.history(&id).await,
        vec![msg("user", "Tell me everything")]
    );
    assert_a_normal_turn_works(&app, &mut socket, &user, &id).await;
}

#[tokio::test]
async fn stream_cut_mid_reply_gives_an_error_and_stores_no_half_reply() {
    let app = spawn_app(&[]).await;
    let (user, id, mut socket) = user_in_conversation(&app).await;
    app.llm.stream_then_cut(&["Cut", " off"]);
    app.llm.set_default(Behaviour::Hang);

    socket.send_message("Tell me everything", None);
    let turn = socket.collect_turn(FAILURE_TIMEOUT).await;

    assert_generic_failure(&turn);
    assert_eq!(
        turn.text(),
        "Cut off",
        "the pieces before the cut are still streamed: {:?}",
        turn.events
    );
    assert_eq!(app.llm.call_count(), 1, "no retry once text arrived");
    assert_eq!(
        user.history(&id).await,
        vec![msg("user", "Tell me everything")]
    );
    assert_a_normal_turn_works(&app, &mut socket, &user, &id).await;
}

#[tokio::test]
async fn malformed_upstream_body_gives_the_generic_error() {
    let app = spawn_app(&[]).await;
    let (user, id, mut socket) = user_in_conversation(&app).await;
    app.llm.set_default(Behaviour::Malformed);

    socket.send_message("Garbage in?", None);
    let turn = socket.collect_turn(FAILURE_TIMEOUT).await;

    assert_generic_failure(&turn);
    assert!(
        !format!("{:?}", turn.events).contains("this is {{"),
        "upstream body echoed"
    );
    assert_eq!(user.history(&id).await, vec![msg("user", "Garbage in?")]);
    assert_a_normal_turn_works(&app, &mut socket, &user, &id).await;
}

const EMPTY_REPLY: &str = "The language model returned an empty reply. Please try again.";

/// The `error` of a reply that ended without text: an upstream failure (the page keeps the
/// user's message, which is stored), not a `response_end` with nothing in it.
#[track_caller]
fn assert_empty_reply_failure(turn: &Turn) {
    assert!(
        !turn.names().contains(&"response_end"),
        "an empty reply ended normally: {:?}",
        turn.names()
    );
    let error = turn.expect_error();
    assert_eq!(error["message"], json!(EMPTY_REPLY), "{error}");
    assert_eq!(error["error"], json!("llm_unavailable"), "{error}");
}

#[tokio::test]
async fn an_empty_reply_is_an_upstream_failure_and_only_the_message_is_stored() {
    let app = spawn_app(&[]).await;
    let (user, id, mut socket) = user_in_conversation(&app).await;
    app.llm.replies_empty();

    socket.send_message("Say nothing?", Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_empty_reply_failure(&turn);
    assert!(turn.chunks.is_empty());
    assert_eq!(app.llm.call_count(), 1, "an empty reply is not retried");
    assert_eq!(user.history(&id).await, vec![msg("user", "Say nothing?")]);
    assert_a_normal_turn_works(&app, &mut socket, &user, &id).await;
}

#[tokio::test]
async fn a_reply_of_whitespace_only_counts_as_empty() {
    let app = spawn_app(&[]).await;
    let (user, id, mut socket) = user_in_conversation(&app).await;
    app.llm.streams(&["  ", "\n\n", "\t"]);

    socket.send_message("Only spaces?", Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_empty_reply_failure(&turn);
    assert_eq!(user.history(&id).await, vec![msg("user", "Only spaces?")]);
}

#[tokio::test]
async fn an_empty_regenerated_reply_is_an_upstream_failure_and_keeps_the_old_reply() {
    let app = spawn_app(&[]).await;
    let (user, id, mut socket) = user_in_conversation(&app).await;
    app.llm.streams(&["First", " answer"]);
    socket.send_message("Try again later", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    app.llm.replies_empty();

    socket.emit("regenerate", json!({"conversation_id": id}));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_empty_reply_failure(&turn);
    // Nothing new to keep: the old reply stays shown.
    assert_eq!(
        user.history(&id).await,
        vec![
            msg("user", "Try again later"),
            msg("assistant", "First answer")
        ]
    );
}

#[tokio::test]
async fn an_upstream_redirect_is_not_followed_so_the_key_stays_home() {
    let app = spawn_app(&[]).await;
    let elsewhere = testkit::fake_llm::FakeLlm::start().await;
    elsewhere.set_default(Behaviour::Stream(vec!["Stolen".into()]));
    let (user, id, mut socket) = user_in_conversation(&app).await;
    for status in [307, 302] {
        app.llm.redirects(
            status,
            &format!("{}/chat/completions", elsewhere.base_url()),
        );

        socket.send_message("Where does my key go?", Some(&id));
        let turn = socket.collect_turn(FAILURE_TIMEOUT).await;

        assert_generic_failure(&turn);
    }

    let reached: Vec<_> = elsewhere
        .requests()
        .iter()
        .map(|r| (r.path.clone(), r.header("authorization")))
        .collect();
    assert!(reached.is_empty(), "the redirect was followed: {reached:?}");
    assert_eq!(app.llm.call_count(), 2, "a redirect is not retried");
    let history = user.history(&id).await;
    assert!(
        !history.iter().any(|(role, _)| role == "assistant"),
        "{history:?}"
    );
}
