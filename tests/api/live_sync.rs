//! Other tabs following a conversation (`watch_conversation`), resuming a
//! reply after a reconnect, and rate limits, on one instance. The
//! multi-instance versions of these are in `tests/cluster/`.

use std::time::Duration;

use serde_json::json;
use testkit::browser::msg;
use testkit::eventually;

use crate::helpers::{spawn_app, EVENT_TIMEOUT, TURN_TIMEOUT};

const PIECES: [&str; 12] = [
    "Alpha", " beta", " gamma", " delta", " epsilon", " zeta", " eta", " theta", " iota", " kappa",
    " lambda", " mu.",
];
const DELAY: Duration = Duration::from_millis(120);

#[tokio::test]
async fn a_second_tab_watching_the_conversation_sees_the_reply_stream_in() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut sender = user.socket().await;
    let mut watcher = user.socket().await;
    app.llm.slow_stream(&PIECES, Duration::from_millis(20));
    // Whichever the server handles first, the watch (replaying the current
    // reply from its start) or the message, the watcher sees the whole turn.
    watcher.emit("watch_conversation", json!({"conversation_id": id}));
    sender.send_message("Greek letters please", Some(&id));

    let sent = sender.collect_turn(TURN_TIMEOUT).await;
    let started = watcher.wait_for("reply_started", TURN_TIMEOUT).await;
    let seen = watcher.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(sent.text(), PIECES.concat());
    assert_eq!(started["message"], "Greek letters please");
    assert_eq!(started["conversation_id"], id.as_str());
    assert_eq!(seen.text(), PIECES.concat());
    let indexes: Vec<u64> = seen
        .chunks
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, (0..PIECES.len() as u64).collect::<Vec<_>>());
    assert_eq!(seen.expect_end()["stopped"], false);
    assert!(
        seen.token_usage.is_none(),
        "token_usage is for the sender only"
    );
}

#[tokio::test]
async fn a_client_that_reconnects_mid_reply_resumes_every_chunk_exactly_once() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut first = user.socket().await;
    app.llm.slow_stream(&PIECES, DELAY);
    first.send_message("Resume me", Some(&id));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let chunk = first.wait_for("response_chunk", TURN_TIMEOUT).await;
        seen.push(chunk);
    }
    first.disconnect().await;

    let mut second = user.socket().await;
    let last = seen.last().unwrap()["index"].as_i64().unwrap();
    second.emit(
        "watch_conversation",
        json!({"conversation_id": id, "last_index": last}),
    );
    let rest = second.collect_turn(TURN_TIMEOUT).await;

    let indexes: Vec<i64> = seen
        .iter()
        .chain(rest.chunks.iter())
        .map(|c| c["index"].as_i64().unwrap())
        .collect();
    assert_eq!(
        indexes,
        (0..PIECES.len() as i64).collect::<Vec<_>>(),
        "gap or duplicate"
    );
    let text: String = seen
        .iter()
        .chain(rest.chunks.iter())
        .map(|c| c["chunk"].as_str().unwrap())
        .collect();
    assert_eq!(text, PIECES.concat());
    assert_eq!(rest.expect_end()["stopped"], false);
    let history = eventually(Duration::from_secs(10), "the reply to be stored", || {
        let (user, id) = (user.clone(), id.clone());
        async move {
            let history = user.history(&id).await;
            (history.len() == 2).then_some(history)
        }
    })
    .await;
    assert_eq!(history[1], msg("assistant", &PIECES.concat()));
}

#[tokio::test]
async fn watching_after_the_reply_ended_replays_it_and_someone_elses_conversation_is_refused() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let stranger = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    socket.send_message("Hello", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();

    let mut later = user.socket().await;
    later.emit(
        "watch_conversation",
        json!({"conversation_id": id, "last_index": 1}),
    );
    let replay = later.collect_turn(TURN_TIMEOUT).await;
    let mut intruder = stranger.socket().await;
    intruder.emit("watch_conversation", json!({"conversation_id": id}));
    let refused = intruder.wait_for("error", EVENT_TIMEOUT).await;

    let indexes: Vec<u64> = replay
        .chunks
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        indexes,
        [2, 3],
        "chunks after last_index 1 of the 4-piece default reply"
    );
    replay.expect_end();
    assert_eq!(refused["message"], "Conversation not found.");
    assert!(intruder.drain(Duration::from_millis(300)).await.is_empty());
}

#[tokio::test]
async fn messages_over_the_rate_limit_get_an_error_with_the_retry_time() {
    let app = spawn_app(&[("RATE_LIMIT_MESSAGES_PER_MINUTE", "2")]).await;
    let user = app.new_user().await;
    let other = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;

    for _ in 0..2 {
        socket.send_message("within the limit", Some(&id));
        socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    }
    socket.send_message("one too many", Some(&id));
    let refused = socket.collect_turn(TURN_TIMEOUT).await;
    let other_id = other.start_conversation().await;
    let mut other_socket = other.socket().await;
    other_socket.send_message("someone else", Some(&other_id));

    let error = refused.expect_error();
    assert_eq!(error["error"], "rate_limited");
    let retry = error["retry_after"].as_u64().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .starts_with("Too many requests. Try again in"));
    other_socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    assert_eq!(
        user.history(&id).await.len(),
        4,
        "the refused message is not stored"
    );
}

#[tokio::test]
async fn uploads_over_the_rate_limit_get_429_with_retry_after() {
    let app = spawn_app(&[("RATE_LIMIT_UPLOADS_PER_HOUR", "1")]).await;
    let user = app.new_user().await;

    let first = user.upload("notes.txt", b"a short note").await;
    let second = user.upload("notes.txt", b"a short note").await;

    assert_eq!(first.status, 200, "{:?}", first.json);
    assert_eq!(second.status, 429);
    assert_eq!(second.json["error"], "rate_limited");
    let retry: u64 = second.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(second.json["retry_after"], json!(retry));
    assert!((1..=3600).contains(&retry));
}

/// `chat_reply_watchers` from `/metrics`.
async fn reply_watchers(user: &crate::helpers::User) -> u64 {
    let metrics = user.get("/metrics").await;
    metrics
        .text
        .lines()
        .find_map(|line| line.strip_prefix("chat_reply_watchers "))
        .unwrap_or_else(|| panic!("no chat_reply_watchers in /metrics: {}", metrics.text))
        .trim()
        .parse()
        .expect("a whole number")
}

#[tokio::test]
async fn sockets_that_close_while_their_watch_registers_leave_no_watcher_behind() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    // The gauge counts a watcher that is there, and drops it on a clean close.
    let mut kept = user.socket().await;
    assert_eq!(kept.watch(&id, None).await["ok"], json!(true));
    assert_eq!(reply_watchers(&user).await, 1);
    kept.disconnect().await;
    eventually(Duration::from_secs(10), "the watcher to be dropped", || {
        let user = user.clone();
        async move { (reply_watchers(&user).await == 0).then_some(()) }
    })
    .await;

    // Each socket closes right after asking to watch: its disconnect is
    // handled while the watch is still being registered (the conversation
    // is read from the store first).
    for _ in 0..20 {
        let sockets = futures_util::future::join_all((0..10).map(|_| user.socket())).await;
        for socket in sockets {
            socket.emit("watch_conversation", json!({"conversation_id": id}));
            socket.disconnect().await;
        }
    }

    eventually(
        Duration::from_secs(10),
        "every watcher of a closed socket to be gone",
        || {
            let user = user.clone();
            async move { (reply_watchers(&user).await == 0).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_resume_naming_its_reply_gets_the_rest_of_it_and_a_newer_reply_whole() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    socket.send_message("First", Some(&id));
    let first = socket.collect_turn(TURN_TIMEOUT).await;
    let first_id = first.chunks[0]["reply_id"].as_str().unwrap().to_string();
    assert_eq!(first.expect_end()["reply_id"], first_id.as_str());
    assert!(first
        .chunks
        .iter()
        .all(|c| c["reply_id"] == first_id.as_str()));

    // A tab that saw chunk 0 of the first reply gets the rest of it.
    let mut same = user.socket().await;
    same.emit(
        "watch_conversation",
        json!({"conversation_id": id, "last_index": 0, "reply_id": first_id}),
    );
    let rest = same.collect_turn(TURN_TIMEOUT).await;
    assert_eq!(
        rest.text(),
        first
            .chunks
            .iter()
            .skip(1)
            .map(|c| c["chunk"].as_str().unwrap())
            .collect::<String>()
    );

    // After a second reply, the same index about the first reply means nothing for the
    // second: it comes whole, from its start.
    socket.send_message("Second", Some(&id));
    let second = socket.collect_turn(TURN_TIMEOUT).await;
    let second_id = second.chunks[0]["reply_id"].as_str().unwrap();
    assert_ne!(second_id, first_id);
    let mut stale = user.socket().await;
    stale.emit(
        "watch_conversation",
        json!({"conversation_id": id, "last_index": 0, "reply_id": first_id}),
    );
    let started = stale.wait_for("reply_started", EVENT_TIMEOUT).await;
    assert_eq!(started["message"], "Second");
    assert_eq!(started["reply_id"], second_id);
    let whole = stale.collect_turn(TURN_TIMEOUT).await;
    assert_eq!(whole.text(), second.text());

    // A reply id that is not one is refused.
    stale.emit(
        "watch_conversation",
        json!({"conversation_id": id, "last_index": 0, "reply_id": "../x"}),
    );
    let refused = stale.wait_for("error", EVENT_TIMEOUT).await;
    assert_eq!(
        refused["message"],
        "reply_id must be a reply id from this conversation's events."
    );
    assert_eq!(refused["error"], "invalid");
}

/// The chunk indexes of `turn` are exactly `expected`, in order (a short message naming the
/// first difference rather than thousands of indexes).
fn assert_indexes(turn: &testkit::sio::Turn, expected: std::ops::Range<u64>, what: &str) {
    let got: Vec<u64> = turn
        .chunks
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = expected.collect();
    if let Some(at) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        panic!(
            "{what}: {} chunks, expected {}; first difference at position {at}: got {:?}, expected {:?}",
            got.len(),
            want.len(),
            got.get(at),
            want.get(at)
        );
    }
}

/// A reply far longer than a socket's send buffer (socketioxide queues 128 packets per
/// socket and dropped what did not fit): its sender, a tab resuming it from its start while
/// it streams, and a tab that opens after it ended each get every chunk, in order, once.
#[tokio::test]
async fn a_reply_longer_than_a_sockets_buffer_reaches_every_tab_whole() {
    use testkit::fake_llm::{Behaviour, Gate};
    const LONG: u64 = 3000;
    const BEFORE_HOLD: u64 = 2000;
    // The stream pauses while the resuming tab catches up: no idle timeout meanwhile.
    let app = spawn_app(&[("LLM_IDLE_TIMEOUT_SECONDS", "60")]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut sender = user.socket().await;
    let parts: Vec<String> = (0..LONG).map(|i| format!("w{i} ")).collect();
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let gate = Gate::new();
    app.llm
        .push(Behaviour::held(&refs, BEFORE_HOLD as usize, &gate));
    sender.send_message("a very long answer please", Some(&id));
    // The first 2000 chunks come from the fake at once, then it holds.
    let first = testkit::sio::Turn::from_events(
        sender
            .events_until_chunk(BEFORE_HOLD as i64 - 1, TURN_TIMEOUT)
            .await,
    );
    assert_indexes(&first, 0..BEFORE_HOLD, "the sender before the hold");

    // A tab resuming from the start gets 2000 chunks at once from the log, then the rest live.
    let mut resuming = user.socket().await;
    resuming.emit(
        "watch_conversation",
        json!({"conversation_id": id, "last_index": -1}),
    );
    let replayed = testkit::sio::Turn::from_events(
        resuming
            .events_until_chunk(BEFORE_HOLD as i64 - 1, TURN_TIMEOUT)
            .await,
    );
    assert_indexes(&replayed, 0..BEFORE_HOLD, "the resuming tab's replay");
    gate.release();

    let rest = sender.collect_turn(TURN_TIMEOUT).await;
    assert_indexes(&rest, BEFORE_HOLD..LONG, "the sender after the hold");
    assert_eq!(rest.expect_end()["chunks"], LONG);
    let live = resuming.collect_reply(TURN_TIMEOUT).await;
    assert_indexes(&live, BEFORE_HOLD..LONG, "the resuming tab after the hold");
    assert_eq!(live.expect_end()["stopped"], false);

    // After the end, a new tab replays the whole reply.
    let mut later = user.socket().await;
    later.emit(
        "watch_conversation",
        json!({"conversation_id": id, "last_index": -1}),
    );
    let whole = later.collect_reply(TURN_TIMEOUT).await;
    assert_indexes(&whole, 0..LONG, "a tab opened after the end");
    assert_eq!(whole.text(), parts.concat());
    whole.expect_end();
}
