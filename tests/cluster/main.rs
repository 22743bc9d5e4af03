//! Several instances behaving as one server (issue 3): a real cluster on loopback for each
//! test, i.e. its own `redis-server`, two instances of the binary sharing it (own key prefix)
//! and one SQLite file, a fake OpenAI-compatible LLM, and for the proxy tests Debian's nginx
//! with `deploy/nginx.conf`. Clients are real: reqwest with a cookie jar per browser, and a
//! Socket.IO v4 client over WebSocket or long-polling.
//!
//! Needs `/usr/bin/redis-server` and `/usr/sbin/nginx` (Debian packages `redis-server`,
//! `nginx`). `TEST_LOG=1` prints the instances' output as it comes.

mod branches;
mod harness;
mod proxy_auth;
mod replies;
mod signout;
mod tls;
mod topologies;
mod topology;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::browser::{msg, Endpoint};
use testkit::fake_llm::{echo_pieces, Behaviour, Gate, Usage};
use testkit::sio::{is_end, Transport, Turn};

use harness::{Cluster, EVENT_TIMEOUT, TURN_TIMEOUT};

/// How long `/readyz` may take to notice Redis is gone, and to recover once it is back.
const READYZ_DEADLINE: Duration = Duration::from_secs(25);

fn texts(parts: &[&str]) -> String {
    parts.concat()
}

/// Asserts a complete, successful reply with exactly these pieces, indexes 0..n in order.
#[track_caller]
fn assert_full_reply(turn: &Turn, conversation_id: &str, pieces: &[String]) {
    let end = turn.expect_end();
    let expected_indexes: Vec<i64> = (0..pieces.len() as i64).collect();
    assert_eq!(
        turn.indexes(),
        expected_indexes,
        "chunk indexes; events: {:?}",
        turn.summary()
    );
    assert_eq!(turn.text(), pieces.concat(), "events: {:?}", turn.summary());
    for chunk in &turn.chunks {
        assert_eq!(chunk.data["conversation_id"], conversation_id);
    }
    assert_eq!(
        end["conversation_id"], conversation_id,
        "response_end: {end}"
    );
    assert_eq!(end["stopped"], false, "response_end: {end}");
    assert_eq!(end["chunks"], pieces.len(), "response_end: {end}");
}

/// A sending socket's turn: `token_usage` first, then the full reply.
#[track_caller]
fn assert_sender_turn(turn: &Turn, conversation_id: &str, pieces: &[String]) {
    assert_eq!(
        turn.names().first(),
        Some(&"token_usage"),
        "the sender's first event; events: {:?}",
        turn.summary()
    );
    let usage = turn.token_usage.as_ref().unwrap();
    assert_eq!(
        usage["conversation_id"], conversation_id,
        "token_usage: {usage}"
    );
    assert!(
        usage["total_tokens_used"].as_u64().unwrap_or(0) > 0,
        "token_usage: {usage}"
    );
    assert_full_reply(turn, conversation_id, pieces);
}

/// Polls `GET /readyz` on `at` until `accept(status, body)` or the deadline; returns how long
/// it took. The failure names the last answer and the shard channels Redis holds.
async fn poll_readyz(
    cluster: &Cluster,
    at: &impl Endpoint,
    what: &str,
    accept: impl Fn(u16, &Value) -> bool,
) -> Duration {
    let started = Instant::now();
    let mut last = (0, Value::Null);
    while started.elapsed() < READYZ_DEADLINE {
        last = cluster.readyz(at).await;
        if accept(last.0, &last.1) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "/readyz on {} did not become {what} within {READYZ_DEADLINE:?}; last answer: {} {}; \
         shard channels subscribed in Redis now: [{}]",
        at.addr(),
        last.0,
        last.1,
        cluster.redis.shard_channels()
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

// ------------------------------------------------------------------ sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_from_instance_a_works_on_instance_b() {
    cookie_from_a_works_on_b(&Cluster::start().await).await;
}

/// Also run on a Redis Cluster and on Sentinel (`topologies.rs`).
pub(crate) async fn cookie_from_a_works_on_b(cluster: &Cluster) {
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    assert!(
        user.cookie_header()
            .is_some_and(|c| c.contains("chat_session=")),
        "A set no chat_session cookie"
    );
    let first = user.start_conversation(&cluster.a).await;
    let second = user.start_conversation(&cluster.a).await;

    // B knows this browser: it lists what A created, newest first, and loads it.
    assert_eq!(
        user.listed_ids(&cluster.b).await,
        vec![second.clone(), first.clone()]
    );
    let loaded = user
        .get(&cluster.b, &format!("/load_conversation/{first}"))
        .await;
    loaded.assert_status(200);
    assert_eq!(loaded.json["conversation_id"], first.as_str());

    // The current conversation set on B (by loading) is what A sees next: a few-shot example
    // posted to A lands in `first`.
    let added = user
        .post_json(
            &cluster.a,
            "/add_few_shot_example",
            json!({"user_prompt": "q?", "assistant_response": "a!"}),
        )
        .await;
    added.assert_status(200);
    assert_eq!(
        user.history(&cluster.b, &first).await,
        vec![msg("user", "q?"), msg("assistant", "a!")]
    );

    // Those session reads and writes went to Redis, timed in /metrics.
    let metrics = harness::plain_get(&cluster.a, "/metrics", None).await;
    let redis_calls: f64 = metrics
        .text
        .lines()
        .find_map(|l| l.strip_prefix("chat_redis_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no chat_redis_seconds_count in {}", metrics.text));
    assert!(redis_calls >= 3.0, "only {redis_calls} Redis calls timed");

    // Another browser on B sees none of it.
    let stranger = cluster.new_user();
    assert!(stranger.listed_ids(&cluster.b).await.is_empty());
    stranger
        .get(&cluster.b, &format!("/load_conversation/{first}"))
        .await
        .assert_status(404);

    // A tampered cookie is not this user's session on either instance (it is signed).
    let cookie = user.cookie_header().unwrap();
    let tampered = {
        let mut chars: Vec<char> = cookie.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    for instance in [&cluster.a, &cluster.b] {
        let response = harness::plain_get(instance, "/list_conversations", Some(&tampered)).await;
        response.assert_status(200);
        assert_eq!(
            response.json["conversations"],
            json!([]),
            "a tampered cookie on {} must not reach the session",
            instance.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_started_on_a_continues_on_b() {
    let cluster = Cluster::start().await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;

    let mut on_a = user.socket(&cluster.a).await;
    on_a.send_message("first on A", Some(&conversation));
    let turn = on_a.collect_reply(TURN_TIMEOUT).await;
    assert_sender_turn(&turn, &conversation, &echo_pieces("first on A"));

    // On B, without naming the conversation: the session's current one (set on A) is used.
    let mut on_b = user.socket(&cluster.b).await;
    on_b.emit("send_message", json!({"message": "second on B"}));
    let turn = on_b.collect_reply(TURN_TIMEOUT).await;
    assert_sender_turn(&turn, &conversation, &echo_pieces("second on B"));

    // B's upstream prompt carried A's turn.
    let requests = cluster.llm.requests();
    let last = requests.last().expect("requests");
    let contents = last.contents();
    assert!(
        contents.contains(&"first on A".to_owned())
            && contents.contains(&"You said: first on A".to_owned()),
        "B's prompt lacks A's turn: {contents:?}"
    );

    let expected = vec![
        msg("user", "first on A"),
        msg("assistant", "You said: first on A"),
        msg("user", "second on B"),
        msg("assistant", "You said: second on B"),
    ];
    assert_eq!(user.history(&cluster.a, &conversation).await, expected);
    assert_eq!(user.history(&cluster.b, &conversation).await, expected);
}

/// Each instance keeps the conversations it served in memory (SQLite with Redis), checked
/// against the stored revision before use: what B writes (a turn, new settings, a delete)
/// is what A's next turn and reads see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_b_writes_is_seen_by_a_which_served_the_conversation_before() {
    let cluster = Cluster::start().await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    // One socket at a time: a tab open on A would also get B's reply live.
    let mut on_a = user.socket(&cluster.a).await;
    on_a.send_message("first on A", Some(&conversation));
    on_a.collect_reply(TURN_TIMEOUT).await;
    drop(on_a);
    // A has it in memory now (it wrote that turn); B writes twice.
    let mut on_b = user.socket(&cluster.b).await;
    on_b.send_message("second on B", Some(&conversation));
    on_b.collect_reply(TURN_TIMEOUT).await;
    drop(on_b);
    user.patch_json(
        &cluster.b,
        &format!("/conversation/{conversation}/settings"),
        json!({"system_prompt": "Answer as B set it."}),
    )
    .await
    .assert_status(200);

    let mut on_a = user.socket(&cluster.a).await;
    on_a.send_message("third on A", Some(&conversation));
    let turn = on_a.collect_reply(TURN_TIMEOUT).await;
    assert_sender_turn(&turn, &conversation, &echo_pieces("third on A"));

    let sent = cluster.llm.requests().last().expect("requests").contents();
    assert_eq!(
        sent,
        [
            "Answer as B set it.",
            "first on A",
            "You said: first on A",
            "second on B",
            "You said: second on B",
            "third on A",
        ],
        "A's prompt is the stored conversation, B's writes included"
    );
    let expected = vec![
        msg("user", "first on A"),
        msg("assistant", "You said: first on A"),
        msg("user", "second on B"),
        msg("assistant", "You said: second on B"),
        msg("user", "third on A"),
        msg("assistant", "You said: third on A"),
    ];
    assert_eq!(user.history(&cluster.b, &conversation).await, expected);
    assert_eq!(user.history(&cluster.a, &conversation).await, expected);

    user.delete(&cluster.b, &format!("/conversation/{conversation}"))
        .await
        .assert_status(200);
    user.get(&cluster.a, &format!("/load_conversation/{conversation}"))
        .await
        .assert_status(404);
}

// ------------------------------------------------------------------ live sync

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_on_b_watching_sees_a_reply_produced_on_a_stream_live() {
    tab_on_b_watches_reply_on_a(&Cluster::start().await).await;
}

/// Also run on a Redis Cluster and on Sentinel (`topologies.rs`).
pub(crate) async fn tab_on_b_watches_reply_on_a(cluster: &Cluster) {
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    let mut sender = user.socket(&cluster.a).await;
    let mut watcher = user.socket(&cluster.b).await;
    let ack = watcher.watch(&conversation, None).await;
    assert_eq!(ack, json!({"ok": true, "streaming": false}));

    let parts = ["Alpha", " beta", " gamma", " delta", " epsilon"];
    let pieces: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
    let gate = Gate::new();
    cluster.llm.push(Behaviour::held(&parts, 2, &gate));
    sender.send_message("hello live", Some(&conversation));

    // While the reply is held upstream after two pieces, B already has them: it is live.
    let mut seen = watcher.events_until_chunk(1, EVENT_TIMEOUT).await;
    let reply_id = seen[1].data["reply_id"].clone();
    assert!(reply_id.is_string(), "{:?}", seen[1].data);
    assert_eq!(
        seen.first().map(|e| (e.name.as_str(), e.data.clone())),
        Some((
            "reply_started",
            json!({"conversation_id": conversation, "message": "hello live", "reply_id": reply_id})
        )),
        "the watcher's first event"
    );
    gate.release();
    seen.extend(watcher.reply_events_until(TURN_TIMEOUT, is_end).await);
    let watched = Turn::from_events(seen);
    assert_eq!(
        watched
            .names()
            .iter()
            .filter(|n| **n == "reply_started")
            .count(),
        1
    );
    assert_full_reply(&watched, &conversation, &pieces);

    let sent = sender.collect_reply(TURN_TIMEOUT).await;
    assert_sender_turn(&sent, &conversation, &pieces);
    assert!(
        watched.token_usage.is_none(),
        "token_usage is for the sending socket"
    );

    // Both tabs hear that the turn was stored.
    for socket in [&mut watcher, &mut sender] {
        let updated = socket
            .wait_for_matching("conversation_updated", EVENT_TIMEOUT, |d| {
                d["message_count"] == 2
            })
            .await;
        assert_eq!(updated.data["conversation_id"], conversation.as_str());
    }
}

/// `chat_reply_watchers` of one instance.
async fn reply_watchers(at: &impl Endpoint) -> u64 {
    let metrics = harness::plain_get(at, "/metrics", None).await;
    metrics
        .text
        .lines()
        .find_map(|line| line.strip_prefix("chat_reply_watchers "))
        .unwrap_or_else(|| panic!("no chat_reply_watchers in {}", metrics.text))
        .trim()
        .parse()
        .expect("a whole number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_closing_while_their_watch_registers_leave_no_watcher_on_either_instance() {
    let cluster = Cluster::start().await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;

    // Each socket asks to watch and closes at once (a bounded loop, half on each instance).
    for round in 0..10 {
        let at = if round % 2 == 0 {
            &cluster.a
        } else {
            &cluster.b
        };
        let sockets = futures_util::future::join_all((0..10).map(|_| user.socket(at))).await;
        for socket in sockets {
            socket.emit(
                "watch_conversation",
                json!({"conversation_id": conversation}),
            );
            socket.disconnect().await;
        }
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = (
            reply_watchers(&cluster.a).await,
            reply_watchers(&cluster.b).await,
        );
        if left == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watchers of closed sockets left (a, b): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_reply_resumes_on_the_other_instance_exactly_once() {
    resume_on_b_exactly_once(&Cluster::start().await).await;
}

/// Also run on a Redis Cluster and on Sentinel (`topologies.rs`).
pub(crate) async fn resume_on_b_exactly_once(cluster: &Cluster) {
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    let mut first_tab = user.socket(&cluster.a).await;

    let parts = ["One", " two", " three", " four", " five", " six"];
    let gate = Gate::new();
    cluster.llm.push(Behaviour::held(&parts, 4, &gate));
    first_tab.send_message("resume me", Some(&conversation));
    let before = Turn::from_events(first_tab.events_until_chunk(3, EVENT_TIMEOUT).await);
    assert_eq!(before.indexes(), vec![0, 1, 2, 3], "{:?}", before.summary());
    // The page saw chunks 0 and 1 only (2 and 3 were lost with the connection), then reloads.
    let seen_text: String = before.chunks[..2]
        .iter()
        .map(|c| c.data["chunk"].as_str().unwrap_or_default())
        .collect();
    first_tab.disconnect().await;

    let mut reloaded = user.socket(&cluster.b).await;
    let ack = reloaded.watch(&conversation, Some(1)).await;
    assert_eq!(ack, json!({"ok": true, "streaming": true}));
    // The missed chunks come from the reply log while the reply is still held...
    let mut events = reloaded.events_until_chunk(3, EVENT_TIMEOUT).await;
    // ...and the rest live, once the upstream goes on.
    gate.release();
    events.extend(reloaded.reply_events_until(TURN_TIMEOUT, is_end).await);
    let resumed = Turn::from_events(events);
    assert_eq!(
        resumed.indexes(),
        vec![2, 3, 4, 5],
        "each missing chunk exactly once, in order; events: {:?}",
        resumed.summary()
    );
    assert_eq!(format!("{seen_text}{}", resumed.text()), texts(&parts));
    let end = resumed.expect_end();
    assert_eq!(end["stopped"], false, "{end}");
    assert_eq!(end["chunks"], parts.len(), "{end}");
    assert_eq!(end["conversation_id"], conversation.as_str());
    let late: Vec<_> = reloaded
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|e| e.name == "response_chunk" || e.name == "response_end")
        .map(|e| (e.name, e.data))
        .collect();
    assert!(late.is_empty(), "events after response_end: {late:?}");

    // The disconnect did not cut the reply: it was stored whole.
    assert_eq!(
        user.history(&cluster.b, &conversation).await,
        vec![msg("user", "resume me"), msg("assistant", &texts(&parts))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_after_the_reply_ended_gets_the_missing_chunks_from_the_reply_log() {
    let cluster = Cluster::start().await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    let mut first_tab = user.socket(&cluster.a).await;
    // Another tab, to know when the reply has ended.
    let mut other_tab = user.socket(&cluster.a).await;
    other_tab.watch(&conversation, None).await;

    let parts = ["Ended", " reply", " to", " replay"];
    let gate = Gate::new();
    cluster.llm.push(Behaviour::held(&parts, 1, &gate));
    first_tab.send_message("replay me", Some(&conversation));
    first_tab.events_until_chunk(0, EVENT_TIMEOUT).await;
    first_tab.disconnect().await;
    gate.release();
    other_tab.collect_reply(TURN_TIMEOUT).await.expect_end();

    let mut reloaded = user.socket(&cluster.b).await;
    let ack = reloaded.watch(&conversation, Some(0)).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let resumed = reloaded.collect_reply(TURN_TIMEOUT).await;
    assert_eq!(resumed.indexes(), vec![1, 2, 3], "{:?}", resumed.summary());
    assert_eq!(resumed.text(), texts(&parts[1..]));
    assert_eq!(resumed.expect_end()["chunks"], parts.len());
}

// ------------------------------------------------------------------ stop

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_generation_from_b_ends_a_reply_running_on_a() {
    stop_from_b_ends_reply_on_a(&Cluster::start().await).await;
}

/// Also run on a Redis Cluster and on Sentinel (`topologies.rs`).
pub(crate) async fn stop_from_b_ends_reply_on_a(cluster: &Cluster) {
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    let mut on_a = user.socket(&cluster.a).await;
    let on_b = user.socket(&cluster.b).await;

    let gate = Gate::new(); // never released: only the stop can end this reply
    cluster.llm.push(Behaviour::held(
        &["Partial", " reply", " never", " sent"],
        2,
        &gate,
    ));
    on_a.send_message("stop me from B", Some(&conversation));
    let mut events = on_a.events_until_chunk(1, EVENT_TIMEOUT).await;
    on_b.emit("stop_generation", json!({"conversation_id": conversation}));
    events.extend(on_a.reply_events_until(TURN_TIMEOUT, is_end).await);
    let turn = Turn::from_events(events);
    let end = turn.expect_end();
    assert_eq!(end["stopped"], true, "{end}");
    assert_eq!(end["chunks"], 2, "{end}");
    assert_eq!(turn.text(), "Partial reply");

    assert_eq!(
        user.history(&cluster.b, &conversation).await,
        vec![
            msg("user", "stop me from B"),
            msg("assistant", "Partial reply")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_generation_from_b_without_an_id_ends_a_reply_on_a_before_its_first_token() {
    let cluster = Cluster::start().await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    let mut on_a = user.socket(&cluster.a).await;
    let on_b = user.socket(&cluster.b).await;

    cluster.llm.push(Behaviour::Hang);
    let calls = cluster.llm.requests().len();
    on_a.send_message("stop me early", Some(&conversation));
    // The request is upstream (and unanswered): the reply is in flight, with no token yet.
    cluster.llm.wait_for_calls(calls + 1, EVENT_TIMEOUT).await;
    on_b.emit("stop_generation", json!({}));
    let turn = on_a.collect_reply(TURN_TIMEOUT).await;
    let end = turn.expect_end();
    assert_eq!(end["stopped"], true, "{end}");
    assert_eq!(end["chunks"], 0, "{end}");
    assert!(turn.chunks.is_empty());

    assert_eq!(
        user.history(&cluster.b, &conversation).await,
        vec![msg("user", "stop me early")],
        "a stop before any text stores the user's message only"
    );
}

// ------------------------------------------------------------------ rate limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_rate_limit_holds_across_instances() {
    let cluster = Cluster::start_with(&[("RATE_LIMIT_MESSAGES_PER_MINUTE", "3")], false).await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    // One conversation per tab, so that neither tab watches the other's replies: the limit
    // is per user, whatever the conversation.
    let on_a_conversation = user.start_conversation(&cluster.a).await;
    let on_b_conversation = user.start_conversation(&cluster.b).await;
    let mut on_a = user.socket(&cluster.a).await;
    let mut on_b = user.socket(&cluster.b).await;

    for (on_b_side, text) in [(false, "m1"), (true, "m2"), (false, "m3")] {
        let (socket, conversation) = if on_b_side {
            (&mut on_b, &on_b_conversation)
        } else {
            (&mut on_a, &on_a_conversation)
        };
        socket.send_message(text, Some(conversation));
        let turn = socket.collect_reply(TURN_TIMEOUT).await;
        assert_sender_turn(&turn, conversation, &echo_pieces(text));
    }
    let upstream_calls = cluster.llm.requests().len();

    for (socket, conversation) in [
        (&mut on_b, &on_b_conversation),
        (&mut on_a, &on_a_conversation),
    ] {
        socket.send_message("one too many", Some(conversation));
        let turn = socket.collect_reply(TURN_TIMEOUT).await;
        let error = turn.expect_error();
        assert_eq!(error["error"], "rate_limited", "{error}");
        let retry_after = error["retry_after"]
            .as_u64()
            .unwrap_or_else(|| panic!("retry_after is not a whole number: {error}"));
        assert!((1..=60).contains(&retry_after), "{error}");
        assert_eq!(
            error["message"],
            format!("Too many requests. Try again in {retry_after} seconds."),
            "{error}"
        );
        assert!(turn.chunks.is_empty() && turn.token_usage.is_none());
    }
    assert_eq!(
        cluster.llm.requests().len(),
        upstream_calls,
        "a refused message must not reach the LLM"
    );
    assert_eq!(user.history(&cluster.b, &on_a_conversation).await.len(), 4);
    assert_eq!(user.history(&cluster.a, &on_b_conversation).await.len(), 2);

    // The limit is per user: another browser on B still chats.
    let other = cluster.new_user();
    other.get(&cluster.b, "/").await.assert_status(200);
    let theirs = other.start_conversation(&cluster.b).await;
    let mut socket = other.socket(&cluster.b).await;
    socket.send_message("m1 of another user", Some(&theirs));
    let turn = socket.collect_reply(TURN_TIMEOUT).await;
    assert_sender_turn(&turn, &theirs, &echo_pieces("m1 of another user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_rate_limit_holds_across_instances() {
    let cluster = Cluster::start_with(&[("RATE_LIMIT_UPLOADS_PER_HOUR", "1")], false).await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    user.start_conversation(&cluster.a).await;

    let first = user
        .upload(&cluster.a, "notes.txt", b"Some notes to analyse.".to_vec())
        .await;
    first.assert_status(200);
    assert_eq!(first.json["chunks"], 1, "{}", first.text);

    let second = user
        .upload(&cluster.b, "more.txt", b"More notes.".to_vec())
        .await;
    second.assert_status(429);
    assert_eq!(second.json["error"], "rate_limited", "{}", second.text);
    let retry_after = second.json["retry_after"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retry_after: {}", second.text));
    assert!((1..=3600).contains(&retry_after), "{}", second.text);
    assert_eq!(
        second.json["message"],
        format!("Too many requests. Try again in {retry_after} seconds.")
    );
    assert_eq!(
        second.header("retry-after"),
        Some(retry_after.to_string()),
        "Retry-After header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_spent_on_one_instance_count_against_the_quota_on_the_other() {
    let cluster = Cluster::start_with(&[("QUOTA_TOKENS_PER_DAY", "100")], false).await;
    cluster.llm.reports_usage(Some(Usage::new(80, 30)));
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let on_a_conversation = user.start_conversation(&cluster.a).await;
    let on_b_conversation = user.start_conversation(&cluster.b).await;
    let mut on_a = user.socket(&cluster.a).await;
    let mut on_b = user.socket(&cluster.b).await;

    on_a.send_message("spend on A", Some(&on_a_conversation));
    let spent = on_a.collect_reply(TURN_TIMEOUT).await;
    let upstream_calls = cluster.llm.requests().len();
    let seen_on_b = user.get(&cluster.b, "/usage").await;
    on_b.send_message("refused on B", Some(&on_b_conversation));
    let refused = on_b.collect_reply(TURN_TIMEOUT).await;

    assert_sender_turn(&spent, &on_a_conversation, &echo_pieces("spend on A"));
    assert_eq!(seen_on_b.json["prompt_tokens"], 80, "{}", seen_on_b.text);
    assert_eq!(
        seen_on_b.json["completion_tokens"], 30,
        "{}",
        seen_on_b.text
    );
    assert_eq!(
        seen_on_b.json["quota_tokens_per_day"], 100,
        "{}",
        seen_on_b.text
    );
    let error = refused.expect_error();
    assert_eq!(error["error"], "quota_exceeded", "{error}");
    assert!(error["resets_at"].is_string(), "{error}");
    assert!(refused.chunks.is_empty() && refused.token_usage.is_none());
    assert_eq!(
        cluster.llm.requests().len(),
        upstream_calls,
        "a refused message must not reach the LLM"
    );
    assert!(user
        .history(&cluster.a, &on_b_conversation)
        .await
        .is_empty());
}

// ------------------------------------------------------------------ Redis outage

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_keeps_both_instances_serving_and_readyz_recovers_after_a_restart() {
    let mut cluster = Cluster::start().await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    let mut on_a = user.socket(&cluster.a).await;
    let mut on_b = user.socket(&cluster.b).await;
    on_b.watch(&conversation, None).await;
    for instance in [&cluster.a, &cluster.b] {
        let (status, body) = cluster.readyz(instance).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ready", "{body}");
        assert_eq!(body["checks"]["redis"], "up", "{body}");
        assert_eq!(body["checks"]["adapter"], "subscribed", "{body}");
    }
    on_a.send_message("before", Some(&conversation));
    assert_sender_turn(
        &on_a.collect_reply(TURN_TIMEOUT).await,
        &conversation,
        &echo_pieces("before"),
    );
    assert_full_reply(
        &on_b.collect_reply(TURN_TIMEOUT).await,
        &conversation,
        &echo_pieces("before"),
    );

    cluster.redis.kill();
    for instance in [&cluster.a, &cluster.b] {
        let elapsed = poll_readyz(
            &cluster,
            instance,
            "503 with redis: down",
            |status, body| {
                status == 503 && body["status"] == "not_ready" && body["checks"]["redis"] == "down"
            },
        )
        .await;
        eprintln!(
            "instance {}: /readyz said redis down after {elapsed:?}",
            instance.name
        );
        let health = harness::plain_get(instance, "/healthz", None).await;
        health.assert_status(200);
        assert_eq!(health.json, json!({"status": "ok"}));
    }

    // A socket connected before the outage still completes a turn on its own instance.
    on_a.send_message("during the outage", Some(&conversation));
    let turn = on_a.collect_reply(Duration::from_secs(40)).await;
    assert_sender_turn(&turn, &conversation, &echo_pieces("during the outage"));
    for instance in [&cluster.a, &cluster.b] {
        let health = harness::plain_get(instance, "/healthz", None).await;
        assert_eq!(
            health.status, 200,
            "instance {}: {}",
            instance.name, health.text
        );
    }

    cluster.redis.restart();
    for instance in [&cluster.a, &cluster.b] {
        let elapsed = poll_readyz(
            &cluster,
            instance,
            "200 with redis: up, adapter: subscribed",
            |status, body| {
                status == 200
                    && body["checks"]["redis"] == "up"
                    && body["checks"]["adapter"] == "subscribed"
            },
        )
        .await;
        eprintln!(
            "instance {}: /readyz ready again {elapsed:?} after the restart",
            instance.name
        );
    }

    // Cross-instance delivery works again: B (watching since before the outage) sees A's reply.
    on_b.drain(Duration::ZERO).await; // whatever arrived so far (nothing is ordered by this)
    on_a.send_message("after", Some(&conversation));
    assert_sender_turn(
        &on_a.collect_reply(TURN_TIMEOUT).await,
        &conversation,
        &echo_pieces("after"),
    );
    let watched = on_b.collect_reply(TURN_TIMEOUT).await;
    let reply_id = watched.chunks[0].data["reply_id"].clone();
    assert_eq!(
        watched.reply_started,
        Some(json!({"conversation_id": conversation, "message": "after", "reply_id": reply_id})),
        "{:?}",
        watched.summary()
    );
    assert_full_reply(&watched, &conversation, &echo_pieces("after"));

    // Nothing acknowledged was lost: the turn answered during the outage was stored (the
    // last prompt carries it).
    let requests = cluster.llm.requests();
    let contents = requests.last().expect("requests").contents();
    for expected in [
        "before",
        "You said: before",
        "during the outage",
        "You said: during the outage",
    ] {
        assert!(
            contents.contains(&expected.to_owned()),
            "the prompt after the restart lacks {expected:?}: {contents:?}"
        );
    }

    // Sessions work across instances again (a new browser; the old sessions were in the
    // Redis that was killed, which kept nothing).
    let newcomer = cluster.new_user();
    let theirs = newcomer.start_conversation(&cluster.b).await;
    assert_eq!(newcomer.listed_ids(&cluster.a).await, vec![theirs]);
}

// ------------------------------------------------------------------ nginx

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_the_http_routes_and_a_websocket_turn_work() {
    let cluster = Cluster::start_with(&[], true).await;
    let nginx = cluster.nginx();
    let user = cluster.new_user();

    let page = user.get(nginx, "/").await;
    page.assert_status(200);
    assert!(
        page.header("content-type")
            .unwrap_or_default()
            .starts_with("text/html"),
        "{:?}",
        page.headers
    );
    assert!(
        user.cookie_header().is_some(),
        "no session cookie through nginx"
    );
    let config = user.get(nginx, "/get_config").await;
    config.assert_status(200);
    assert_eq!(config.json["model"], "fake", "{}", config.text);
    let health = user.get(nginx, "/healthz").await;
    assert_eq!(health.json, json!({"status": "ok"}));
    // /readyz and /metrics are for the orchestrator and Prometheus, which reach an
    // instance directly: nginx refuses them, however the path is spelt.
    for path in [
        "/readyz",
        "/metrics",
        "/metrics/",
        "//metrics",
        "/%6detrics",
        "/readyz?full=1",
    ] {
        let refused = user.get(nginx, path).await;
        assert_eq!(
            refused.status, 404,
            "{path} through nginx: {}",
            refused.text
        );
        assert!(
            !refused.text.contains("chat_") && !refused.text.contains("redis"),
            "{path} through nginx leaked: {}",
            refused.text
        );
    }
    let ready = user.get(&cluster.a, "/readyz").await;
    ready.assert_status(200);
    assert_eq!(ready.json["checks"]["redis"], "up", "{}", ready.text);
    let metrics = harness::plain_get(&cluster.b, "/metrics", None).await;
    metrics.assert_status(200);
    assert!(metrics.text.contains("chat_"), "{}", metrics.text);

    let conversation = user.start_conversation(nginx).await;
    assert_eq!(user.listed_ids(nginx).await, vec![conversation.clone()]);

    // A browser's socket: same-origin Origin header (nginx must pass the Host with its port).
    let origin = nginx.base_url();
    let mut socket = user
        .socket_with(nginx, Transport::WebSocket, Some(&origin))
        .await;
    let pieces: Vec<String> = (0..12).map(|i| format!("w{i} ")).collect();
    cluster
        .llm
        .push(Behaviour::slow(pieces.clone(), Duration::from_millis(20)));
    socket.send_message("over websocket", Some(&conversation));
    let turn = socket.collect_reply(TURN_TIMEOUT).await;
    assert_sender_turn(&turn, &conversation, &pieces);
    assert_eq!(
        user.history(nginx, &conversation).await,
        vec![
            msg("user", "over websocket"),
            msg("assistant", &pieces.concat())
        ]
    );

    // Uploads: a small one is analysed; one over the app's 5 MB limit reaches the app (nginx's
    // own limit is above it) and gets the app's JSON answer, not nginx's HTML 413.
    let small = user
        .upload(nginx, "small.txt", b"A small file through nginx.".to_vec())
        .await;
    small.assert_status(200);
    assert_eq!(
        small.json["message"], "File was uploaded and analyzed successfully.",
        "{}",
        small.text
    );
    let big = user
        .upload(nginx, "big.txt", vec![b'x'; 5 * 1024 * 1024 + 300 * 1024])
        .await;
    big.assert_status(413);
    assert_eq!(big.json["error"], "too_large", "{}", big.text);
    assert_eq!(big.json["message"], "File too large. Max size is 5 MB.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_a_long_polling_only_client_completes_turns() {
    let cluster = Cluster::start_with(&[], true).await;
    let nginx = cluster.nginx();
    let user = cluster.new_user();
    user.get(nginx, "/").await.assert_status(200);
    let conversation = user.start_conversation(nginx).await;

    let origin = nginx.base_url();
    let mut socket = user
        .socket_with(nginx, Transport::Polling, Some(&origin))
        .await;
    assert_eq!(socket.transport, Transport::Polling);
    let socket_sid_marker = format!("sid={}", socket.engine_sid);
    let pieces: Vec<String> = (0..10).map(|i| format!("p{i} ")).collect();
    cluster
        .llm
        .push(Behaviour::slow(pieces.clone(), Duration::from_millis(30)));
    socket.send_message("over polling", Some(&conversation));
    let turn = socket.collect_reply(TURN_TIMEOUT).await;
    assert_sender_turn(&turn, &conversation, &pieces);

    // A second turn on the same polling session: every poll still reaches its instance.
    socket.send_message("again over polling", Some(&conversation));
    let turn = socket.collect_reply(TURN_TIMEOUT).await;
    assert_sender_turn(&turn, &conversation, &echo_pieces("again over polling"));
    socket
        .wait_for_matching("conversation_updated", EVENT_TIMEOUT, |d| {
            d["message_count"] == 4
        })
        .await;
    assert_eq!(user.history(nginx, &conversation).await.len(), 4);
    socket.disconnect().await;

    // Stickiness: every request of the polling session went to one instance.
    let upstreams: std::collections::BTreeSet<String> = nginx
        .access_log()
        .lines()
        .filter(|line| line.contains("/socket.io/") && line.contains(&socket_sid_marker))
        .filter_map(|line| line.split("upstream=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(upstreams.len(), 1, "polling requests went to {upstreams:?}");
}

// ------------------------------------------------------------------ latency

/// Prints how long a chunk takes from instance A to a watching tab on instance B (no
/// assertion on time): from A's own socket receiving it to B's socket receiving it, and from
/// the upstream sending it to B's socket receiving it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_instance_chunk_latency_is_measured() {
    let cluster = Cluster::start().await;
    let user = cluster.new_user();
    user.get(&cluster.a, "/").await.assert_status(200);
    let conversation = user.start_conversation(&cluster.a).await;
    let mut on_a = user.socket(&cluster.a).await;
    let mut on_b = user.socket(&cluster.b).await;
    on_b.watch(&conversation, None).await;

    let count = 200;
    let pieces: Vec<String> = (0..count).map(|i| format!("c{i} ")).collect();
    cluster
        .llm
        .push(Behaviour::slow(pieces.clone(), Duration::from_millis(5)));
    let calls = cluster.llm.requests().len();
    on_a.send_message("measure", Some(&conversation));
    let sent = on_a.collect_reply(Duration::from_secs(60)).await;
    let watched = on_b.collect_reply(Duration::from_secs(60)).await;
    assert_sender_turn(&sent, &conversation, &pieces);
    assert_full_reply(&watched, &conversation, &pieces);

    let upstream = &cluster.llm.requests()[calls];
    assert!(upstream.is_streaming() && upstream.path.ends_with("/chat/completions"));
    let mut a_to_b: Vec<f64> = Vec::new();
    let mut upstream_to_b: Vec<f64> = Vec::new();
    for (i, chunk) in watched.chunks.iter().enumerate() {
        let on_a_at = sent.chunks[i].at;
        a_to_b.push(chunk.at.saturating_duration_since(on_a_at).as_secs_f64() * 1000.0);
        upstream_to_b.push(
            chunk
                .at
                .saturating_duration_since(upstream.piece_sent_at[i])
                .as_secs_f64()
                * 1000.0,
        );
    }
    a_to_b.sort_by(f64::total_cmp);
    upstream_to_b.sort_by(f64::total_cmp);
    eprintln!(
        "cross-instance chunk latency over {count} chunks: A's socket -> B's socket median {:.2} ms, p99 {:.2} ms; upstream send -> B's socket median {:.2} ms, p99 {:.2} ms",
        percentile(&a_to_b, 50.0),
        percentile(&a_to_b, 99.0),
        percentile(&upstream_to_b, 50.0),
        percentile(&upstream_to_b, 99.0)
    );
}
