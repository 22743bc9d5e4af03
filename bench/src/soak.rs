//! `soak` (issue 7): many users chatting for a bounded time through several instances
//! while they restart, then a check of what got stored.
//!
//! Each virtual user gets its own session cookie and conversation (`GET /`,
//! `POST /start_conversation`), connects one Socket.IO socket to an instance, and runs
//! closed-loop turns with a small random think time, each message uniquely numbered
//! (`soak u17 m42`). A user that gets `server_restarting`, loses its socket, or has a
//! message refused with `restarting` moves to the next instance (sessions live in Redis,
//! so the cookie works everywhere). A turn cut off mid-reply is resumed on the new
//! instance with `watch_conversation` when the reply log still has it. With
//! `--drop-every K`, each user also drops its own socket mid-reply every K-th turn (a
//! network drop or a reload) and resumes that reply the same way.
//!
//! At the end every conversation is read back (`GET /load_conversation/{id}`) and
//! checked: a message that got `response_end` is stored exactly once with the reply that
//! was streamed, no message is stored twice, none is stored that was never sent, and a
//! message refused with `restarting` is not stored. Meanwhile the RSS of every instance
//! (pid given, or read again from a pid file on each sample) is sampled.
//!
//! Progress on stderr; one JSON line on stdout; an error (non-zero exit) when anything
//! was lost, duplicated or inconsistent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::args::Args;
use crate::procstat;
use crate::stats::{round3, summary_ms};
use crate::turns::{new_session, parse_url};
use testkit::sio::{self, Ws};

struct Instance {
    base: String,
    addr: SocketAddr,
    /// Where its pid is read from at every sample (rewritten on restart), or a fixed pid.
    pid: PidSource,
}

enum PidSource {
    None,
    Fixed(String),
    File(String),
}

impl PidSource {
    fn current(&self) -> Option<String> {
        match self {
            PidSource::None => None,
            PidSource::Fixed(pid) => Some(pid.clone()),
            PidSource::File(path) => std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        }
    }
}

/// Live counters, for the progress lines.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ended: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    interrupted: AtomicU64,
    resumed: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    restart_notices: AtomicU64,
    unannounced_disconnects: AtomicU64,
    client_drops: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

struct Plan {
    http: reqwest::Client,
    instances: Vec<Instance>,
    start: Instant,
    end: Instant,
    think: Duration,
    turn_timeout: Duration,
    /// Every this many turns a user drops its socket mid-reply (0: never).
    drop_every: u64,
    setup_gate: Semaphore,
    counters: Counters,
}

/// What became of one sent message, as this client saw it.
enum Outcome {
    /// `response_end` received (directly, or replayed after a reconnect).
    Ended { stopped: bool, text: String },
    /// `error` `restarting`: the server refused it and asked for it again.
    Refused,
    /// Another `error` event (the user message alone may be stored).
    Failed,
    /// The socket went away (or the turn timed out) before the end: either way is fine.
    Interrupted,
}

struct Sent {
    n: u64,
    outcome: Outcome,
}

#[derive(Default)]
struct UserReport {
    index: usize,
    session: Option<(String, String)>,
    sent: Vec<Sent>,
    turn_us: Vec<u64>,
    chunk_mismatches: u64,
    errors: u64,
    first_error: Option<String>,
    first_disconnect: Option<String>,
    /// A few turns cut off by the server side, described.
    interruptions: Vec<String>,
}

impl UserReport {
    /// Counts a restart notice or a socket lost without one; returns how long to wait
    /// before reconnecting.
    fn broke(&mut self, plan: &Plan, broken: Break) -> Duration {
        match broken {
            Break::Restarting(delay) => {
                Counters::add(&plan.counters.restart_notices);
                delay
            }
            Break::Lost(reason) => {
                Counters::add(&plan.counters.unannounced_disconnects);
                self.first_disconnect.get_or_insert(reason);
                Duration::ZERO
            }
        }
    }

    fn error(&mut self, plan: &Plan, what: String) {
        self.errors += 1;
        Counters::add(&plan.counters.errors);
        if self.first_error.is_none() {
            eprintln!("soak: user {}: {what}", self.index);
            self.first_error = Some(what);
        }
    }
}

// ------------------------------------------------------------- socket frames

enum Incoming {
    Event(String, Value),
    Ack(u64, Value),
    Closed(String),
}

/// The next Socket.IO event or ack (pings answered, everything else skipped).
async fn next_incoming(ws: &mut Ws) -> Incoming {
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => {
                return Incoming::Closed("connection closed".into())
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Incoming::Closed(format!("socket error: {err}")),
        };
        let text = text.as_str();
        if text == "2" {
            if let Err(err) = ws.send(Message::text("3")).await {
                return Incoming::Closed(format!("pong: {err}"));
            }
            continue;
        }
        if text == "1" || text == "41" {
            return Incoming::Closed("disconnected by the server".into());
        }
        if let Some(rest) = text.strip_prefix("42") {
            if let Ok(Value::Array(mut items)) = serde_json::from_str::<Value>(rest) {
                if let Some(Value::String(name)) = items.first().cloned() {
                    let payload = if items.len() > 1 {
                        items.swap_remove(1)
                    } else {
                        Value::Null
                    };
                    return Incoming::Event(name, payload);
                }
            }
            continue;
        }
        if let Some(rest) = text.strip_prefix("43") {
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if let (Ok(id), Ok(Value::Array(mut items))) = (
                rest[..digits].parse::<u64>(),
                serde_json::from_str::<Value>(&rest[digits..]),
            ) {
                let payload = if items.is_empty() {
                    Value::Null
                } else {
                    items.swap_remove(0)
                };
                return Incoming::Ack(id, payload);
            }
        }
    }
}

async fn next_before(ws: &mut Ws, deadline: Instant) -> Option<Incoming> {
    tokio::time::timeout_at(deadline.into(), next_incoming(ws))
        .await
        .ok()
}

fn restart_delay(payload: &Value) -> Duration {
    Duration::from_millis(
        payload["reconnect_in_ms"]
            .as_u64()
            .unwrap_or(1000)
            .min(10_000),
    )
}

/// How a turn (or a wait) ended when it was not a plain `response_end`.
enum Break {
    /// `server_restarting`: come back after this, elsewhere.
    Restarting(Duration),
    /// The socket closed or failed.
    Lost(String),
}

enum TurnEnd {
    Ended {
        stopped: bool,
        text: String,
        chunks: u64,
        announced: Option<u64>,
    },
    Error {
        code: String,
        message: String,
    },
    /// Cut off after this many chunks.
    Broken(Break, u64),
    TimedOut,
    /// This client dropped its socket mid-reply on purpose (`--drop-every`).
    Dropped,
}

/// Reads one turn's events up to `response_end` / `error`; with `drop_after`, gives up
/// the socket (as a network drop or a reload would) once that many chunks arrived.
async fn read_turn(ws: &mut Ws, timeout: Duration, drop_after: Option<u64>) -> TurnEnd {
    let deadline = Instant::now() + timeout;
    let mut text = String::new();
    let mut chunks = 0u64;
    loop {
        if drop_after.is_some_and(|after| chunks >= after) {
            return TurnEnd::Dropped;
        }
        let Some(incoming) = next_before(ws, deadline).await else {
            return TurnEnd::TimedOut;
        };
        match incoming {
            Incoming::Event(name, payload) => match name.as_str() {
                "response_chunk" => {
                    text.push_str(payload["chunk"].as_str().unwrap_or_default());
                    chunks += 1;
                }
                "response_end" => {
                    return TurnEnd::Ended {
                        stopped: payload["stopped"].as_bool().unwrap_or(false),
                        text,
                        chunks,
                        announced: payload["chunks"].as_u64(),
                    }
                }
                "error" => {
                    return TurnEnd::Error {
                        code: payload["error"].as_str().unwrap_or_default().to_string(),
                        message: payload["message"].as_str().unwrap_or_default().to_string(),
                    }
                }
                "server_restarting" => {
                    return TurnEnd::Broken(Break::Restarting(restart_delay(&payload)), chunks)
                }
                _ => {}
            },
            Incoming::Ack(..) => {}
            Incoming::Closed(reason) => return TurnEnd::Broken(Break::Lost(reason), chunks),
        }
    }
}

/// Think time: keeps reading (pings, a restart notice) until `until`.
async fn idle(ws: &mut Ws, until: Instant) -> Option<Break> {
    loop {
        match next_before(ws, until).await? {
            Incoming::Event(name, payload) if name == "server_restarting" => {
                return Some(Break::Restarting(restart_delay(&payload)))
            }
            Incoming::Closed(reason) => return Some(Break::Lost(reason)),
            _ => {}
        }
    }
}

/// After a reconnect: asks the new instance to replay the conversation's last reply
/// (`watch_conversation`, `last_index` -1) and, if it is this message's, follows it to
/// its end. Updates the outcome when the end is known.
async fn resume(
    plan: &Plan,
    ws: &mut Ws,
    conversation: &str,
    message: &str,
    sent: &mut Sent,
) -> Option<Break> {
    let frame = json!(["watch_conversation", {"conversation_id": conversation, "last_index": -1}]);
    if let Err(err) = ws.send(Message::text(format!("421{frame}"))).await {
        return Some(Break::Lost(format!("watch_conversation: {err}")));
    }
    let deadline = Instant::now() + plan.turn_timeout;
    let mut ours = None::<bool>;
    let mut text = String::new();
    let mut end = None::<Outcome>;
    let mut acked = false;
    while let Some(incoming) = next_before(ws, deadline).await {
        match incoming {
            Incoming::Event(name, payload) => match name.as_str() {
                "reply_started" => {
                    ours = Some(payload["message"].as_str() == Some(message));
                    text.clear();
                    end = None;
                }
                "response_chunk" => text.push_str(payload["chunk"].as_str().unwrap_or_default()),
                "response_end" => {
                    end = Some(Outcome::Ended {
                        stopped: payload["stopped"].as_bool().unwrap_or(false),
                        text: std::mem::take(&mut text),
                    });
                    if acked {
                        break;
                    }
                }
                "error" => {
                    end = Some(Outcome::Failed);
                    if acked {
                        break;
                    }
                }
                "server_restarting" => return Some(Break::Restarting(restart_delay(&payload))),
                _ => {}
            },
            Incoming::Ack(1, payload) => {
                acked = true;
                let streaming = payload["streaming"].as_bool().unwrap_or(false);
                if !streaming || end.is_some() {
                    break;
                }
            }
            Incoming::Ack(..) => {}
            Incoming::Closed(reason) => return Some(Break::Lost(reason)),
        }
    }
    if ours == Some(true) {
        match end {
            Some(outcome @ Outcome::Ended { .. }) => {
                Counters::add(&plan.counters.resumed);
                Counters::add(&plan.counters.ended);
                sent.outcome = outcome;
            }
            Some(outcome) => {
                Counters::add(&plan.counters.failed);
                sent.outcome = outcome;
            }
            None => {}
        }
    }
    None
}

/// Connects to `instances[*at]`, or the next ones in turn, for up to 60 s.
async fn connect_any(plan: &Plan, at: &mut usize, cookie: &str) -> Result<Ws> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let instance = &plan.instances[*at];
        match sio::connect(instance.addr, None, Some(cookie)).await {
            Ok(ws) => return Ok(ws),
            Err(err) if Instant::now() > deadline => {
                bail!("could not connect to any instance for 60 s: {err:#}")
            }
            Err(_) => {}
        }
        *at = (*at + 1) % plan.instances.len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A small xorshift generator: think times only, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [d/2, 3d/2).
    fn around(&mut self, d: Duration) -> Duration {
        let ms = d.as_millis() as u64;
        if ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(ms / 2 + self.next() % ms)
    }
}

async fn new_session_anywhere(plan: &Plan, at: &mut usize) -> Result<(String, String)> {
    let _permit = plan.setup_gate.acquire().await?;
    let mut last = None;
    for _ in 0..(plan.instances.len() * 10) {
        match new_session(&plan.http, &plan.instances[*at].base).await {
            Ok(session) => return Ok(session),
            Err(err) => last = Some(err),
        }
        *at = (*at + 1) % plan.instances.len();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last.unwrap_or_else(|| anyhow!("no instance")))
}

async fn user(plan: Arc<Plan>, index: usize) -> UserReport {
    let mut report = UserReport {
        index,
        ..UserReport::default()
    };
    let mut at = index % plan.instances.len();
    let (cookie, conversation) = match new_session_anywhere(&plan, &mut at).await {
        Ok(session) => session,
        Err(err) => {
            report.error(&plan, format!("setup: {err:#}"));
            return report;
        }
    };
    report.session = Some((cookie.clone(), conversation.clone()));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((index as u64 + 1) * 0x2545_F491_4F6C_DD1D));
    let mut ws: Option<Ws> = None;
    let mut first_connect = true;
    // Before the next connect: the delay `server_restarting` asked for.
    let mut wait = Duration::ZERO;
    // An interrupted turn (index into `report.sent`) to resume after reconnecting.
    let mut pending: Option<usize> = None;
    let message = |n: u64| format!("soak u{index} m{n}");
    let mut n = 0u64;
    loop {
        let Some(socket) = ws.as_mut() else {
            if !wait.is_zero() {
                tokio::time::sleep(std::mem::take(&mut wait)).await;
            }
            match connect_any(&plan, &mut at, &cookie).await {
                Ok(socket) => ws = Some(socket),
                Err(err) => {
                    report.error(&plan, format!("connect: {err:#}"));
                    break;
                }
            }
            if !std::mem::replace(&mut first_connect, false) {
                Counters::add(&plan.counters.reconnects);
            }
            if let Some(i) = pending.take() {
                let text = message(report.sent[i].n);
                let socket = ws.as_mut().expect("just connected");
                if let Some(broken) =
                    resume(&plan, socket, &conversation, &text, &mut report.sent[i]).await
                {
                    pending = Some(i);
                    ws = None;
                    at = (at + 1) % plan.instances.len();
                    wait = report.broke(&plan, broken);
                }
            }
            if Instant::now() >= plan.end && pending.is_none() {
                break;
            }
            continue;
        };
        if Instant::now() >= plan.end {
            break;
        }
        let think = rng.around(plan.think);
        if let Some(broken) = idle(socket, Instant::now() + think).await {
            ws = None;
            at = (at + 1) % plan.instances.len();
            wait = report.broke(&plan, broken);
            continue;
        }
        if Instant::now() >= plan.end {
            break;
        }
        n += 1;
        let frame = sio::send_message_frame(&message(n), &conversation);
        report.sent.push(Sent {
            n,
            outcome: Outcome::Interrupted,
        });
        Counters::add(&plan.counters.sent);
        let slot = report.sent.len() - 1;
        let drop_after = (plan.drop_every > 0 && n % plan.drop_every == 0).then_some(3);
        let t0 = Instant::now();
        let end = match socket.send(Message::text(frame)).await {
            Ok(()) => read_turn(socket, plan.turn_timeout, drop_after).await,
            Err(err) => TurnEnd::Broken(Break::Lost(format!("send: {err}")), 0),
        };
        match end {
            TurnEnd::Ended {
                stopped,
                text,
                chunks,
                announced,
            } => {
                report.turn_us.push(t0.elapsed().as_micros() as u64);
                if announced != Some(chunks) {
                    report.chunk_mismatches += 1;
                }
                report.sent[slot].outcome = Outcome::Ended { stopped, text };
                Counters::add(&plan.counters.ended);
            }
            TurnEnd::Error { code, .. } if code == "restarting" => {
                report.sent[slot].outcome = Outcome::Refused;
                Counters::add(&plan.counters.refused);
                // This instance is going away: go to the next one now.
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                ws = None;
                at = (at + 1) % plan.instances.len();
            }
            TurnEnd::Error { code, message } => {
                report.sent[slot].outcome = Outcome::Failed;
                Counters::add(&plan.counters.failed);
                report.error(&plan, format!("error event {code}: {message}"));
            }
            TurnEnd::Broken(broken, chunks) => {
                if report.interruptions.len() < 3 {
                    let how = match &broken {
                        Break::Restarting(_) => "server_restarting".to_string(),
                        Break::Lost(reason) => reason.clone(),
                    };
                    report.interruptions.push(format!(
                        "user {index} m{n} at {:.1}s: {how} after {chunks} chunks, {} ms into the turn, no response_end",
                        plan.start.elapsed().as_secs_f64(),
                        t0.elapsed().as_millis()
                    ));
                }
                Counters::add(&plan.counters.interrupted);
                pending = Some(slot);
                ws = None;
                at = (at + 1) % plan.instances.len();
                wait = report.broke(&plan, broken);
            }
            TurnEnd::Dropped => {
                // Gone without a word (the server sees the TCP connection close); the
                // reply goes on there and is resumed from another instance.
                Counters::add(&plan.counters.interrupted);
                Counters::add(&plan.counters.client_drops);
                pending = Some(slot);
                ws = None;
                at = (at + 1) % plan.instances.len();
            }
            TurnEnd::TimedOut => {
                Counters::add(&plan.counters.interrupted);
                report.error(&plan, format!("turn m{n} timed out"));
                pending = Some(slot);
                ws = None;
                at = (at + 1) % plan.instances.len();
            }
        }
    }
    if let Some(mut socket) = ws {
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    }
    report
}

// ------------------------------------------------------------------ memory

struct Process {
    pid: String,
    from: f64,
    to: f64,
    first_kib: u64,
    last_kib: u64,
    peak_kib: u64,
}

#[derive(Default)]
struct Series {
    /// VmRSS in KiB at each sample (None: no process).
    samples: Vec<Option<u64>>,
    processes: Vec<Process>,
}

impl Series {
    fn sample(&mut self, pid: Option<String>, at: f64) -> Option<u64> {
        let rss = pid
            .as_deref()
            .and_then(|pid| procstat::status_kib(pid, "VmRSS"));
        self.samples.push(rss);
        if let (Some(pid), Some(kib)) = (pid, rss) {
            match self.processes.last_mut() {
                Some(p) if p.pid == pid => {
                    p.to = at;
                    p.last_kib = kib;
                    p.peak_kib = p.peak_kib.max(kib);
                }
                _ => self.processes.push(Process {
                    pid,
                    from: at,
                    to: at,
                    first_kib: kib,
                    last_kib: kib,
                    peak_kib: kib,
                }),
            }
        }
        rss
    }
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Samples every instance's RSS every `every` and prints a progress line every
/// `progress`, until `stop`.
async fn sampler(
    plan: Arc<Plan>,
    every: Duration,
    progress: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<Series> {
    let mut series: Vec<Series> = plan.instances.iter().map(|_| Series::default()).collect();
    let mut next_progress = plan.start + progress;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let at = plan.start.elapsed().as_secs_f64();
        let mut rss = Vec::new();
        for (instance, series) in plan.instances.iter().zip(series.iter_mut()) {
            let pid = instance.pid.current();
            let kib = series.sample(pid.clone(), at);
            rss.push(match (pid, kib) {
                (Some(pid), Some(kib)) => format!("{} MiB (pid {pid})", mib(kib)),
                _ => "-".to_string(),
            });
        }
        let stopping = stop.load(Ordering::Relaxed);
        if Instant::now() >= next_progress || stopping {
            next_progress += progress;
            let c = &plan.counters;
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            eprintln!(
                "soak: {:>4.0}s sent {} ended {} (dropped {}, resumed {}) refused {} failed {} interrupted {} errors {} reconnects {} (restart notices {}, lost without notice {}) | RSS {}",
                at,
                get(&c.sent),
                get(&c.ended),
                get(&c.client_drops),
                get(&c.resumed),
                get(&c.refused),
                get(&c.failed),
                get(&c.interrupted),
                get(&c.errors),
                get(&c.reconnects),
                get(&c.restart_notices),
                get(&c.unannounced_disconnects),
                rss.join(", "),
            );
        }
        if stopping {
            return series;
        }
    }
}

// ------------------------------------------------------------ verification

/// The stored messages of one conversation (`GET /load_conversation/{id}`), from any
/// instance that answers, trying for up to 60 s.
async fn stored_history(plan: &Plan, cookie: &str, conversation: &str) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut at = 0;
    loop {
        let base = &plan.instances[at].base;
        let attempt = async {
            let response = plan
                .http
                .get(format!("{base}/load_conversation/{conversation}"))
                .header(reqwest::header::COOKIE, cookie)
                .timeout(Duration::from_secs(30))
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("GET /load_conversation answered {}", response.status());
            }
            let body: Value = response.json().await?;
            match body.get("conversation") {
                Some(Value::Array(messages)) => Ok(messages.clone()),
                _ => bail!("no conversation array in the answer"),
            }
        };
        match attempt.await {
            Ok(messages) => return Ok(messages),
            Err(err) if Instant::now() > deadline => return Err(err),
            Err(_) => {}
        }
        at = (at + 1) % plan.instances.len();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[derive(Default)]
struct Check {
    stored: u64,
    lost: u64,
    duplicated: u64,
    unknown_stored: u64,
    refused_stored: u64,
    reply_mismatches: u64,
    out_of_order: u64,
    interrupted_stored: u64,
    interrupted_not_stored: u64,
    failed_stored: u64,
    examples: Vec<String>,
}

impl Check {
    fn example(&mut self, what: String) {
        if self.examples.len() < 10 {
            self.examples.push(what);
        }
    }
}

/// Compares what one user sent with what is stored.
fn check_user(check: &mut Check, report: &UserReport, history: &[Value]) {
    let prefix = format!("soak u{} m", report.index);
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let mut replies: HashMap<u64, String> = HashMap::new();
    let mut last = 0u64;
    for (i, entry) in history.iter().enumerate() {
        if entry["role"] != "user" {
            continue;
        }
        let content = entry["content"].as_str().unwrap_or_default();
        let Some(n) = content
            .strip_prefix(&prefix)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            check.unknown_stored += 1;
            check.example(format!(
                "user {}: stored message never sent: {content:?}",
                report.index
            ));
            continue;
        };
        check.stored += 1;
        *counts.entry(n).or_default() += 1;
        if n < last {
            check.out_of_order += 1;
        }
        last = n;
        if let Some(next) = history.get(i + 1).filter(|m| m["role"] == "assistant") {
            replies.insert(n, next["content"].as_str().unwrap_or_default().to_string());
        }
    }
    let mut known = std::collections::HashSet::new();
    for sent in &report.sent {
        known.insert(sent.n);
        let count = counts.get(&sent.n).copied().unwrap_or(0);
        if count > 1 {
            check.duplicated += count - 1;
            check.example(format!(
                "user {} m{}: stored {count} times",
                report.index, sent.n
            ));
        }
        match &sent.outcome {
            Outcome::Ended { stopped, text } => {
                if count == 0 {
                    check.lost += 1;
                    check.example(format!(
                        "user {} m{}: got response_end (stopped {stopped}) but is not stored",
                        report.index, sent.n
                    ));
                    continue;
                }
                let stored = replies.get(&sent.n).map(String::as_str).unwrap_or("");
                if stored != text {
                    check.reply_mismatches += 1;
                    check.example(format!(
                        "user {} m{}: stored reply {stored:?} != streamed {text:?} (stopped {stopped})",
                        report.index, sent.n
                    ));
                }
            }
            Outcome::Refused => {
                if count > 0 {
                    check.refused_stored += 1;
                    check.example(format!(
                        "user {} m{}: refused with `restarting` but stored",
                        report.index, sent.n
                    ));
                }
            }
            Outcome::Failed => {
                if count > 0 {
                    check.failed_stored += 1;
                }
            }
            Outcome::Interrupted => {
                if count > 0 {
                    check.interrupted_stored += 1;
                } else {
                    check.interrupted_not_stored += 1;
                }
            }
        }
    }
    for n in counts.keys() {
        if !known.contains(n) {
            check.unknown_stored += 1;
            check.example(format!("user {} m{n}: stored but never sent", report.index));
        }
    }
}

// --------------------------------------------------------------------- run

pub async fn run(args: &Args) -> Result<()> {
    let urls: Vec<&str> = args
        .str("urls")?
        .split(',')
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        bail!("--urls needs at least one URL");
    }
    let list = |name: &str| -> Vec<String> {
        args.opt_str(name)
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    let (pids, pid_files) = (list("pids"), list("pid-files"));
    let mut instances = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let (base, addr) = parse_url(url)?;
        let pid = match (pid_files.get(i), pids.get(i)) {
            (Some(file), _) => PidSource::File(file.clone()),
            (None, Some(pid)) => PidSource::Fixed(pid.clone()),
            _ => PidSource::None,
        };
        instances.push(Instance { base, addr, pid });
    }
    let users = args.u64_or("users", 100)? as usize;
    let duration = Duration::from_secs(args.u64_or("duration-secs", 180)?);
    let sample_every = Duration::from_secs(args.u64_or("sample-secs", 5)?.max(1));
    let progress = Duration::from_secs(args.u64_or("progress-secs", 10)?.max(1));
    let settle = Duration::from_secs(args.u64_or("settle-secs", 3)?);
    let label = args.opt_str("label").unwrap_or("").to_string();
    let start = Instant::now();
    let plan = Arc::new(Plan {
        http: reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?,
        instances,
        start,
        end: start + duration,
        think: Duration::from_millis(args.u64_or("think-ms", 300)?),
        turn_timeout: Duration::from_secs(args.u64_or("turn-timeout-secs", 60)?),
        drop_every: args.u64_or("drop-every", 0)?,
        setup_gate: Semaphore::new(32),
        counters: Counters::default(),
    });
    eprintln!(
        "soak: {users} users on {} for {} s",
        urls.join(", "),
        duration.as_secs()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sampling = tokio::spawn(sampler(plan.clone(), sample_every, progress, stop.clone()));
    let tasks: Vec<_> = (0..users)
        .map(|i| tokio::spawn(user(plan.clone(), i)))
        .collect();
    let mut reports = Vec::with_capacity(users);
    for task in tasks {
        reports.push(task.await?);
    }
    let chatting_secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let series = sampling.await?;

    // Replies cut off with their socket are stored once their instance stops them.
    tokio::time::sleep(settle).await;
    eprintln!("soak: every turn is over; reading back {users} conversations");
    let gate = Arc::new(Semaphore::new(16));
    let fetches: Vec<_> = reports
        .iter()
        .map(|r| {
            let (plan, gate, session) = (plan.clone(), gate.clone(), r.session.clone());
            tokio::spawn(async move {
                let (cookie, conversation) = session?;
                let _permit = gate.acquire().await.ok()?;
                Some(stored_history(&plan, &cookie, &conversation).await)
            })
        })
        .collect();
    let mut check = Check::default();
    let mut fetch_failures = 0u64;
    let mut setup_failures = 0u64;
    let mut first_error = None;
    for (report, fetch) in reports.iter().zip(fetches) {
        match fetch.await? {
            None => setup_failures += 1,
            Some(Ok(history)) => check_user(&mut check, report, &history),
            Some(Err(err)) => {
                fetch_failures += 1;
                first_error.get_or_insert(format!("history of user {}: {err:#}", report.index));
            }
        }
        if let Some(err) = &report.first_error {
            first_error.get_or_insert(format!("user {}: {err}", report.index));
        }
    }

    let mut sent = 0u64;
    let (mut ended, mut stopped, mut refused, mut failed, mut interrupted) = (0u64, 0, 0, 0, 0);
    let (mut errors, mut chunk_mismatches) = (0u64, 0u64);
    let mut turn_us = Vec::new();
    for report in &reports {
        sent += report.sent.len() as u64;
        errors += report.errors;
        chunk_mismatches += report.chunk_mismatches;
        turn_us.extend_from_slice(&report.turn_us);
        for s in &report.sent {
            match s.outcome {
                Outcome::Ended { stopped: was, .. } => {
                    ended += 1;
                    stopped += u64::from(was);
                }
                Outcome::Refused => refused += 1,
                Outcome::Failed => failed += 1,
                Outcome::Interrupted => interrupted += 1,
            }
        }
    }
    let restarts_seen: usize = series
        .iter()
        .map(|s| s.processes.len().saturating_sub(1))
        .sum();
    let memory: Vec<Value> = plan
        .instances
        .iter()
        .zip(&series)
        .map(|(instance, s)| {
            json!({
                "url": instance.base,
                "rss_mib": s.samples.iter().map(|k| k.map(mib)).collect::<Vec<_>>(),
                "processes": s.processes.iter().map(|p| json!({
                    "pid": p.pid,
                    "secs": [p.from.round(), p.to.round()],
                    "rss_mib_first_last_peak": [mib(p.first_kib), mib(p.last_kib), mib(p.peak_kib)],
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let c = &plan.counters;
    let ok = check.lost == 0
        && check.duplicated == 0
        && check.unknown_stored == 0
        && check.refused_stored == 0
        && check.reply_mismatches == 0
        && fetch_failures == 0
        && setup_failures == 0
        && ended > 0;
    let summary = json!({
        "mode": "soak",
        "label": label,
        "ok": ok,
        "users": users,
        "instances": plan.instances.len(),
        "duration_secs": duration.as_secs(),
        "chatting_secs": round3(chatting_secs),
        "sent": sent,
        "stored": check.stored,
        "lost": check.lost,
        "duplicated": check.duplicated,
        "unknown_stored": check.unknown_stored,
        "refused_stored": check.refused_stored,
        "reply_mismatches": check.reply_mismatches,
        "out_of_order": check.out_of_order,
        "turns": {
            "ended": ended,
            "stopped": stopped,
            "dropped_by_client": c.client_drops.load(Ordering::Relaxed),
            "resumed_after_reconnect": c.resumed.load(Ordering::Relaxed),
            "refused_restarting": refused,
            "failed": failed,
            "interrupted": interrupted,
            "interrupted_stored": check.interrupted_stored,
            "interrupted_not_stored": check.interrupted_not_stored,
            "failed_stored": check.failed_stored,
        },
        "errors": errors,
        "chunk_mismatches": chunk_mismatches,
        "setup_failures": setup_failures,
        "fetch_failures": fetch_failures,
        "restarts_seen": restarts_seen,
        "server_restarting_events": c.restart_notices.load(Ordering::Relaxed),
        "reconnects": c.reconnects.load(Ordering::Relaxed),
        "disconnects_without_notice": c.unannounced_disconnects.load(Ordering::Relaxed),
        "first_disconnect_without_notice": reports.iter().find_map(|r| r.first_disconnect.clone()),
        "turn_ms": summary_ms(&mut turn_us),
        "rss_sample_every_secs": sample_every.as_secs(),
        "memory": memory,
        "first_error": first_error,
        "interruptions": reports.iter().flat_map(|r| r.interruptions.iter()).take(10).collect::<Vec<_>>(),
        "problems": check.examples,
    });
    println!("{summary}");
    if !ok {
        bail!(
            "soak failed: {} lost, {} duplicated, {} stored but never sent, {} refused but stored, {} reply mismatches, {} histories unreadable, {} users not set up, {} turns ended",
            check.lost,
            check.duplicated,
            check.unknown_stored,
            check.refused_stored,
            check.reply_mismatches,
            fetch_failures,
            setup_failures,
            ended
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(sent: Vec<(u64, Outcome)>) -> UserReport {
        UserReport {
            index: 3,
            sent: sent
                .into_iter()
                .map(|(n, outcome)| Sent { n, outcome })
                .collect(),
            ..UserReport::default()
        }
    }

    fn ended(text: &str) -> Outcome {
        Outcome::Ended {
            stopped: false,
            text: text.into(),
        }
    }

    #[test]
    fn counts_lost_duplicated_and_unknown() {
        let r = report(vec![
            (1, ended("a")),
            (2, ended("b")),
            (3, Outcome::Refused),
            (4, Outcome::Interrupted),
            (5, ended("e")),
        ]);
        let history = vec![
            json!({"role": "user", "content": "soak u3 m1"}),
            json!({"role": "assistant", "content": "a"}),
            json!({"role": "user", "content": "soak u3 m2"}),
            json!({"role": "assistant", "content": "b"}),
            json!({"role": "user", "content": "soak u3 m2"}),
            json!({"role": "assistant", "content": "b"}),
            json!({"role": "user", "content": "soak u3 m9"}),
            json!({"role": "user", "content": "soak u4 m1"}),
            json!({"role": "user", "content": "soak u3 m4"}),
            json!({"role": "assistant", "content": "d"}),
        ];
        let mut check = Check::default();
        check_user(&mut check, &r, &history);
        assert_eq!(check.stored, 5);
        assert_eq!(check.lost, 1, "m5");
        assert_eq!(check.duplicated, 1, "m2");
        assert_eq!(check.unknown_stored, 2, "u4 m1 and m9");
        assert_eq!(check.refused_stored, 0);
        assert_eq!(check.interrupted_stored, 1);
        assert_eq!(check.reply_mismatches, 0);
        assert_eq!(check.out_of_order, 1, "m4 after m9");
    }

    #[test]
    fn reply_must_match_what_was_streamed() {
        let r = report(vec![(1, ended("abc")), (2, Outcome::Refused)]);
        let history = vec![
            json!({"role": "user", "content": "soak u3 m1"}),
            json!({"role": "assistant", "content": "ab"}),
            json!({"role": "user", "content": "soak u3 m2"}),
        ];
        let mut check = Check::default();
        check_user(&mut check, &r, &history);
        assert_eq!(check.reply_mismatches, 1);
        assert_eq!(check.refused_stored, 1);
    }
}
