//! Sender + watchers: one conversation per group, one socket that sends the
//! messages and W sockets of the same user (same session cookie) that follow the
//! conversation with `watch_conversation`. Each group runs closed-loop turns; a turn
//! ends when the sender *and every watcher* got `response_end` (so watchers cannot
//! fall behind without bound), or `--watcher-grace-ms` after the sender's end for a
//! watcher whose `response_end` never comes (counted as unfinished, its chunks as
//! missing). For every chunk and every watcher the delay from the chunk's arrival on
//! the sender's socket to its arrival on the watcher's socket is recorded, and every
//! watcher's chunks are checked: each index exactly once, in order.
//!
//! Two modes use it:
//! - `fanout`: one group, W watchers on the same server (many tabs of one user);
//! - `cross`: N groups, one watcher each, the senders on instance A and the watchers
//!   on instance B (the chunks reach B through Redis).
//!
//! Arrival times are taken in this process (one clock) when the socket's task reads
//! the frame, so they include this process's own scheduling delay.
//! Delay percentiles come from a log-linear histogram (exact below 512 µs, within
//! 0.4 % above): W = 1000 gives 20 000 samples per turn.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Barrier, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::args::Args;
use crate::procstat;
use crate::stats::{round3, summary_ms};
use crate::turns::{new_session, parse_url, source_addrs};
use testkit::sio::{self, field_u64, Frame, Ws};

// ------------------------------------------------------------------ histogram

/// Sub-buckets per power of two (2^8: 0.4 % relative width).
const SUB_BITS: u32 = 8;
const SUB: u64 = 1 << SUB_BITS;

/// Log-linear histogram of microseconds.
#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

fn bucket_of(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    (2 * SUB + (shift as u64 - 1) * SUB + ((v >> shift) - SUB)) as usize
}

/// (lower bound, width) of a bucket.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB {
        return (i, 1);
    }
    let j = i - 2 * SUB;
    let shift = j / SUB + 1;
    ((j % SUB + SUB) << shift, 1 << shift)
}

impl Histogram {
    fn add(&mut self, us: u64) {
        let i = bucket_of(us);
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    fn merge(&mut self, other: &Histogram) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (i, c) in other.counts.iter().enumerate() {
            self.counts[i] += c;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Nearest-rank percentile in µs (the middle of its bucket, at most the max).
    fn percentile(&self, p: f64) -> u64 {
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bucket_range(i);
                return (low + width / 2).min(self.max);
            }
        }
        self.max
    }

    fn summary_ms(&self) -> Value {
        if self.total == 0 {
            return Value::Null;
        }
        let ms = |us: u64| round3(us as f64 / 1000.0);
        json!({
            "p50": ms(self.percentile(50.0)),
            "p90": ms(self.percentile(90.0)),
            "p99": ms(self.percentile(99.0)),
            "p999": ms(self.percentile(99.9)),
            "max": ms(self.max),
            "samples": self.total,
        })
    }
}

// ------------------------------------------------------------------ frames

/// `421["watch_conversation",{"conversation_id":..}]` (ack id 1).
fn watch_frame(conversation_id: &str) -> String {
    let payload = json!(["watch_conversation", {"conversation_id": conversation_id}]);
    format!("421{payload}")
}

// ------------------------------------------------------------------ watchers

/// What one watcher saw of one reply.
struct WatcherReport {
    /// When this reply began for the watcher (`reply_started`, else its first chunk,
    /// else its end): a report belongs to the turn sent before it. Matching by time,
    /// not by count, keeps the turns apart even when a watcher misses an event.
    began: Instant,
    arrivals: Vec<(u64, Instant)>,
    announced: Option<u64>,
    error: Option<String>,
    /// The watcher's connection is gone: no more reports will come.
    fatal: bool,
    at: Instant,
}

/// Connects one watcher and makes it follow the conversation (waits for the ack).
async fn connect_watcher(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    cookie: &str,
    conversation_id: &str,
) -> Result<Ws> {
    let mut ws = sio::connect(addr, source, Some(cookie)).await?;
    ws.send(Message::text(watch_frame(conversation_id))).await?;
    let acked = async {
        loop {
            let text = sio::next_text(&mut ws).await?;
            if text == "2" {
                ws.send(Message::text("3")).await?;
            } else if let Some(ack) = text.strip_prefix("431") {
                if !ack.contains("\"ok\":true") {
                    bail!("watch_conversation refused: {ack}");
                }
                return Ok(());
            } else if let Frame::Event("error", text) = sio::classify(&text) {
                bail!("watch_conversation: error event {}", &text[2..]);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .map_err(|_| anyhow!("watch_conversation ack timed out"))??;
    Ok(ws)
}

/// Reads a watcher's socket until told to stop; one report per reply.
async fn watcher_loop(
    mut ws: Ws,
    reports: mpsc::UnboundedSender<WatcherReport>,
    mut stop: watch::Receiver<bool>,
) {
    let mut began: Option<Instant> = None;
    let mut arrivals: Vec<(u64, Instant)> = Vec::with_capacity(64);
    let fail = |began: Option<Instant>, error: String| WatcherReport {
        began: began.unwrap_or_else(Instant::now),
        arrivals: Vec::new(),
        announced: None,
        error: Some(error),
        fatal: true,
        at: Instant::now(),
    };
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = ws.next() => message,
        };
        let now = Instant::now();
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => {
                let _ = reports.send(fail(began, "watcher: connection closed".into()));
                return;
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => {
                let _ = reports.send(fail(began, format!("watcher: {err}")));
                return;
            }
        };
        match sio::classify(text.as_str()) {
            Frame::Ping => {
                if ws.send(Message::text("3")).await.is_err() {
                    let _ = reports.send(fail(began, "watcher: pong failed".into()));
                    return;
                }
            }
            Frame::Close => {
                let _ = reports.send(fail(began, "watcher: disconnected by the server".into()));
                return;
            }
            Frame::Event("reply_started", _) => {
                began = Some(now);
                arrivals.clear();
            }
            Frame::Event("response_chunk", text) => {
                if let Some(index) = field_u64(text, "\"index\":") {
                    began.get_or_insert(now);
                    arrivals.push((index, now));
                }
            }
            Frame::Event("response_end", text) => {
                let _ = reports.send(WatcherReport {
                    began: began.take().unwrap_or(now),
                    arrivals: std::mem::take(&mut arrivals),
                    announced: field_u64(text, "\"chunks\":"),
                    error: None,
                    fatal: false,
                    at: now,
                });
            }
            Frame::Event("error", text) => {
                let _ = reports.send(WatcherReport {
                    began: began.take().unwrap_or(now),
                    arrivals: std::mem::take(&mut arrivals),
                    announced: None,
                    error: Some(format!("watcher: error event {}", &text[2..])),
                    fatal: false,
                    at: now,
                });
            }
            Frame::Event(_, _) | Frame::Other => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

// ------------------------------------------------------------------ groups

struct Plan {
    http: reqwest::Client,
    sender_base: String,
    sender_addr: SocketAddr,
    watcher_addr: SocketAddr,
    watchers: usize,
    sources: Vec<std::net::IpAddr>,
    connect_gate: Semaphore,
    barrier: Barrier,
    warmup: Duration,
    duration: Duration,
    turn_timeout: Duration,
    /// How long after the sender's `response_end` the watchers' may come.
    watcher_grace: Duration,
    start: std::sync::OnceLock<Instant>,
}

#[derive(Default)]
struct GroupResult {
    turns: u64,
    errors: u64,
    first_error: Option<String>,
    setup_failed: bool,
    /// Chunk events the watchers received (measured turns).
    deliveries: u64,
    /// Chunks the sender got × watchers (measured turns).
    expected_deliveries: u64,
    duplicates: u64,
    out_of_order: u64,
    missing: u64,
    /// Watcher replies that were not exactly chunks 0..n-1 in order with `response_end`.
    incomplete_watcher_turns: u64,
    /// The first such reply: what the watcher got.
    first_incomplete: Option<String>,
    /// Watcher replies without `response_end` within the grace after the sender's.
    unfinished_watcher_turns: u64,
    /// Reports of an earlier turn that came after it was given up.
    late_reports: u64,
    /// Chunks a watcher got before the sender did (counted as 0 µs).
    watcher_first: u64,
    /// Sender chunk count differing from its `response_end.chunks`.
    chunk_mismatches: u64,
    delay: Histogram,
    sender_turn_us: Vec<u64>,
    all_turn_us: Vec<u64>,
}

impl GroupResult {
    fn error(&mut self, err: String) {
        self.errors += 1;
        self.first_error.get_or_insert(err);
    }
}

/// The sender's side of one turn: chunk arrivals by index and the announced count.
async fn read_sender_turn(ws: &mut Ws) -> Result<(Vec<(u64, Instant)>, u64)> {
    let mut arrivals = Vec::with_capacity(32);
    loop {
        let message = match ws.next().await {
            Some(Ok(message)) => message,
            Some(Err(err)) => return Err(err.into()),
            None => bail!("connection closed"),
        };
        let now = Instant::now();
        let Message::Text(text) = message else {
            if let Message::Close(_) = message {
                bail!("connection closed");
            }
            continue;
        };
        match sio::classify(text.as_str()) {
            Frame::Ping => ws.send(Message::text("3")).await?,
            Frame::Close => bail!("disconnected by the server"),
            Frame::Event("response_chunk", text) => {
                let index = field_u64(text, "\"index\":")
                    .ok_or_else(|| anyhow!("response_chunk without an index: {text}"))?;
                arrivals.push((index, now));
            }
            Frame::Event("response_end", text) => {
                let announced = field_u64(text, "\"chunks\":").unwrap_or(u64::MAX);
                return Ok((arrivals, announced));
            }
            Frame::Event("error", text) => bail!("error event: {}", &text[2..]),
            Frame::Event(_, _) | Frame::Other => {}
        }
    }
}

struct GroupSetup {
    sender: Ws,
    conversation_id: String,
    reports: mpsc::UnboundedReceiver<WatcherReport>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn setup_group(plan: &Plan, group: usize) -> Result<GroupSetup> {
    let (cookie, conversation_id) = {
        let _permit = plan.connect_gate.acquire().await?;
        new_session(&plan.http, &plan.sender_base).await?
    };
    let source = |i: usize| (plan.sources.len() > 1).then(|| plan.sources[i % plan.sources.len()]);
    let sender = {
        let _permit = plan.connect_gate.acquire().await?;
        sio::connect(plan.sender_addr, source(group), Some(&cookie)).await?
    };
    let (report_tx, reports) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let mut connecting = Vec::with_capacity(plan.watchers);
    for w in 0..plan.watchers {
        let cookie = cookie.clone();
        let conversation_id = conversation_id.clone();
        let src = source(group + w + 1);
        connecting.push(async move {
            let _permit = plan.connect_gate.acquire().await?;
            connect_watcher(plan.watcher_addr, src, &cookie, &conversation_id).await
        });
    }
    let mut tasks = Vec::with_capacity(plan.watchers);
    let mut failure = None;
    for ws in futures_util::future::join_all(connecting).await {
        match ws {
            Ok(ws) => tasks.push(tokio::spawn(watcher_loop(
                ws,
                report_tx.clone(),
                stop_rx.clone(),
            ))),
            Err(err) => {
                failure.get_or_insert(err);
            }
        }
    }
    if let Some(err) = failure {
        let _ = stop.send(true);
        return Err(err.context(format!(
            "{} of {} watchers connected",
            tasks.len(),
            plan.watchers
        )));
    }
    Ok(GroupSetup {
        sender,
        conversation_id,
        reports,
        stop,
        tasks,
    })
}

/// Checks one watcher's reply against the sender's and records the delays.
fn score(
    result: &mut GroupResult,
    report: &WatcherReport,
    sender_at: &[Option<Instant>],
    chunks: u64,
    turn: u64,
) {
    let mut seen = vec![false; chunks as usize];
    let mut previous: Option<u64> = None;
    let mut clean = report.error.is_none() && report.announced == Some(chunks);
    for (i, &(index, at)) in report.arrivals.iter().enumerate() {
        result.deliveries += 1;
        if index != i as u64 {
            clean = false;
        }
        if previous.is_some_and(|p| index <= p) {
            result.out_of_order += 1;
        }
        previous = Some(index);
        match seen.get_mut(index as usize) {
            Some(flag) if *flag => result.duplicates += 1,
            Some(flag) => *flag = true,
            None => clean = false,
        }
        if let Some(Some(sent)) = sender_at.get(index as usize) {
            match at.checked_duration_since(*sent) {
                Some(delay) => result.delay.add(delay.as_micros() as u64),
                None => {
                    result.watcher_first += 1;
                    result.delay.add(0);
                }
            }
        }
    }
    let missing = seen.iter().filter(|s| !**s).count() as u64;
    result.missing += missing;
    if missing > 0 || report.arrivals.len() as u64 != chunks {
        clean = false;
    }
    if !clean {
        result.incomplete_watcher_turns += 1;
        if result.first_incomplete.is_none() {
            let got: Vec<u64> = report.arrivals.iter().map(|(i, _)| *i).collect();
            result.first_incomplete = Some(format!(
                "turn {turn}: sender got {chunks} chunks, a watcher got indices {got:?}, \
                 response_end.chunks {:?}, error {:?}",
                report.announced, report.error
            ));
        }
    }
}

async fn group(plan: Arc<Plan>, index: usize) -> GroupResult {
    let mut result = GroupResult::default();
    let setup = setup_group(&plan, index).await;
    plan.barrier.wait().await;
    let start = *plan.start.get_or_init(Instant::now);
    let mut setup = match setup {
        Ok(setup) => setup,
        Err(err) => {
            result.setup_failed = true;
            result.error(format!("setup: {err:#}"));
            return result;
        }
    };
    let warm_end = start + plan.warmup;
    let end = warm_end + plan.duration;
    let frame = sio::send_message_frame("Hello! How is the weather today?", &setup.conversation_id);
    let mut turn = 0u64;
    let mut reports = Vec::with_capacity(plan.watchers);
    while Instant::now() < end {
        turn += 1;
        let t0 = Instant::now();
        let deadline = t0 + plan.turn_timeout;
        let sender = async {
            setup.sender.send(Message::text(frame.clone())).await?;
            read_sender_turn(&mut setup.sender).await
        };
        let (arrivals, announced) = match tokio::time::timeout_at(deadline.into(), sender).await {
            Ok(Ok(turn)) => turn,
            Ok(Err(err)) => {
                // Even an `error` event ends the group: whether the watchers saw the
                // reply start is unknown, so their replies could no longer be matched.
                result.error(format!("sender: {err:#}"));
                break;
            }
            Err(_) => {
                result.error("sender: turn timed out".into());
                break;
            }
        };
        let t_sender = Instant::now();
        // Every watcher's report of this reply; a watcher that misses the reply's
        // end is given up after the grace (its next reply is matched by time).
        reports.clear();
        let mut gave_up = false;
        let mut unfinished = 0u64;
        let wait_until = deadline.min(t_sender + plan.watcher_grace);
        while reports.len() < plan.watchers {
            match tokio::time::timeout_at(wait_until.into(), setup.reports.recv()).await {
                Ok(Some(report)) if report.fatal => {
                    result.error(report.error.unwrap_or_default());
                    gave_up = true;
                    break;
                }
                Ok(Some(report)) if report.began < t0 => {
                    result.late_reports += 1;
                }
                Ok(Some(report)) => reports.push(report),
                Ok(None) => {
                    gave_up = true;
                    break;
                }
                Err(_) => {
                    unfinished = (plan.watchers - reports.len()) as u64;
                    break;
                }
            }
        }
        let t_all = reports
            .iter()
            .map(|r| r.at)
            .max()
            .unwrap_or(t_sender)
            .max(t_sender);
        if let Some(err) = reports.iter().find_map(|r| r.error.clone()) {
            result.error(err);
        }
        if t_all >= warm_end && t_all <= end {
            result.turns += 1;
            let chunks = arrivals.len() as u64;
            if chunks != announced {
                result.chunk_mismatches += 1;
            }
            let mut sender_at = vec![None; chunks as usize];
            for &(i, at) in &arrivals {
                if let Some(slot) = sender_at.get_mut(i as usize) {
                    *slot = Some(at);
                }
            }
            result.expected_deliveries += chunks * plan.watchers as u64;
            for report in &reports {
                score(&mut result, report, &sender_at, chunks, turn);
            }
            if unfinished > 0 {
                // Counted as missing whole: what they got shows up in no report.
                result.unfinished_watcher_turns += unfinished;
                result.incomplete_watcher_turns += unfinished;
                result.missing += unfinished * chunks;
                result.first_incomplete.get_or_insert(format!(
                    "turn {turn}: {unfinished} of {} watchers got no response_end within {:?} \
                     of the sender's",
                    plan.watchers, plan.watcher_grace
                ));
            }
            result
                .sender_turn_us
                .push((t_sender - t0).as_micros() as u64);
            result.all_turn_us.push((t_all - t0).as_micros() as u64);
        }
        if gave_up {
            break;
        }
    }
    let _ = setup.stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), setup.sender.close(None)).await;
    for task in setup.tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    result
}

struct Options {
    mode: &'static str,
    label: String,
    groups: usize,
    plan: Plan,
    /// The main server (CPU per turn, peak RSS).
    server_pid: Option<String>,
    /// Other processes whose CPU over the window is reported by name.
    cpu_pids: Vec<(String, String)>,
    llm_delay_ms: u64,
}

async fn measure(options: Options) -> Result<Value> {
    let Options {
        mode,
        label,
        groups,
        plan,
        server_pid,
        cpu_pids,
        llm_delay_ms,
    } = options;
    let plan = Arc::new(plan);
    let setup_started = Instant::now();
    let tasks: Vec<_> = (0..groups)
        .map(|i| tokio::spawn(group(plan.clone(), i)))
        .collect();

    // CPU over the measured window only.
    let sampler = {
        let plan = plan.clone();
        let mut pids: Vec<(String, String)> = Vec::new();
        if let Some(pid) = &server_pid {
            pids.push(("server".into(), pid.clone()));
        }
        pids.extend(cpu_pids.iter().cloned());
        pids.push(("client".into(), "self".into()));
        tokio::spawn(async move {
            while plan.start.get().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let start = *plan.start.get().unwrap();
            tokio::time::sleep_until((start + plan.warmup).into()).await;
            let before: Vec<Option<f64>> =
                pids.iter().map(|(_, p)| procstat::cpu_secs(p)).collect();
            tokio::time::sleep_until((start + plan.warmup + plan.duration).into()).await;
            pids.iter()
                .zip(before)
                .map(|((name, pid), b)| {
                    let used = b.zip(procstat::cpu_secs(pid)).map(|(b, a)| a - b);
                    (name.clone(), used)
                })
                .collect::<Vec<_>>()
        })
    };

    let mut total = GroupResult::default();
    let mut setup_failures = 0u64;
    for task in tasks {
        let r = task.await?;
        total.turns += r.turns;
        total.errors += r.errors;
        total.deliveries += r.deliveries;
        total.expected_deliveries += r.expected_deliveries;
        total.duplicates += r.duplicates;
        total.out_of_order += r.out_of_order;
        total.missing += r.missing;
        total.incomplete_watcher_turns += r.incomplete_watcher_turns;
        total.late_reports += r.late_reports;
        total.unfinished_watcher_turns += r.unfinished_watcher_turns;
        total.watcher_first += r.watcher_first;
        total.chunk_mismatches += r.chunk_mismatches;
        total.delay.merge(&r.delay);
        total.sender_turn_us.extend(r.sender_turn_us);
        total.all_turn_us.extend(r.all_turn_us);
        if r.setup_failed {
            setup_failures += 1;
        }
        if let Some(err) = r.first_error {
            total.first_error.get_or_insert(err);
        }
        if let Some(what) = r.first_incomplete {
            total.first_incomplete.get_or_insert(what);
        }
    }
    let setup_secs = plan
        .start
        .get()
        .map(|s| (*s - setup_started).as_secs_f64())
        .unwrap_or_default();
    let cpu = sampler.await?;
    let cpu_of = |name: &str| cpu.iter().find(|(n, _)| n == name).and_then(|(_, c)| *c);
    let secs = plan.duration.as_secs_f64();
    let exact = total.turns > 0
        && total.errors == 0
        && total.duplicates == 0
        && total.out_of_order == 0
        && total.missing == 0
        && total.incomplete_watcher_turns == 0
        && total.deliveries == total.expected_deliveries;
    let server_cpu = cpu_of("server");
    let others: serde_json::Map<String, Value> = cpu
        .iter()
        .filter(|(n, _)| n != "server" && n != "client")
        .map(|(n, c)| (n.clone(), json!(c.map(round3))))
        .collect();
    Ok(json!({
        "mode": mode,
        "label": label,
        "conversations": groups,
        "watchers_per_conversation": plan.watchers,
        "llm_delay_ms": llm_delay_ms,
        "duration_secs": secs,
        "turns": total.turns,
        "turns_per_sec": round3(total.turns as f64 / secs),
        "chunks_per_sec_to_watchers": round3(total.deliveries as f64 / secs),
        "errors": total.errors,
        "setup_failures": setup_failures,
        "first_error": total.first_error,
        "deliveries": total.deliveries,
        "expected_deliveries": total.expected_deliveries,
        "duplicates": total.duplicates,
        "out_of_order": total.out_of_order,
        "missing": total.missing,
        "incomplete_watcher_turns": total.incomplete_watcher_turns,
        "first_incomplete": total.first_incomplete,
        "unfinished_watcher_turns": total.unfinished_watcher_turns,
        "late_reports": total.late_reports,
        "chunk_mismatches": total.chunk_mismatches,
        "every_chunk_once_in_order": exact,
        "watcher_before_sender": total.watcher_first,
        "sender_to_watcher_ms": total.delay.summary_ms(),
        "sender_turn_ms": summary_ms(&mut total.sender_turn_us),
        "all_watchers_turn_ms": summary_ms(&mut total.all_turn_us),
        "server_cpu_secs": server_cpu.map(round3),
        "server_cpu_ms_per_turn": server_cpu.filter(|_| total.turns > 0).map(|c| round3(c * 1000.0 / total.turns as f64)),
        "server_peak_rss_kib": server_pid.as_deref().and_then(|p| procstat::status_kib(p, "VmHWM")),
        "other_cpu_secs": others,
        "client_cpu_secs": cpu_of("client").map(round3),
        "setup_secs": round3(setup_secs),
    }))
}

fn plan(
    args: &Args,
    sender: (String, SocketAddr),
    watcher_addr: SocketAddr,
    groups: usize,
    watchers: usize,
) -> Result<Plan> {
    Ok(Plan {
        http: reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(64)
            .build()?,
        sender_base: sender.0,
        sender_addr: sender.1,
        watcher_addr,
        watchers,
        sources: source_addrs(args.u64_or("source-addrs", 1)?),
        connect_gate: Semaphore::new(128),
        barrier: Barrier::new(groups),
        warmup: Duration::from_secs(args.u64_or("warmup-secs", 3)?),
        duration: Duration::from_secs(args.u64("duration-secs")?),
        turn_timeout: Duration::from_secs(args.u64_or("turn-timeout-secs", 30)?),
        watcher_grace: Duration::from_millis(args.u64_or("watcher-grace-ms", 5000)?),
        start: std::sync::OnceLock::new(),
    })
}

/// `fanout --url U --watchers W --duration-secs S`: one conversation, W watching tabs.
pub async fn run_fanout(args: &Args) -> Result<()> {
    let (base, addr) = parse_url(args.str("url")?)?;
    let watchers = args.u64("watchers")? as usize;
    if watchers == 0 {
        bail!("--watchers must be at least 1");
    }
    let conversations = args.u64_or("conversations", 1)? as usize;
    let plan = plan(args, (base, addr), addr, conversations, watchers)?;
    measure_and_print(args, "fanout", conversations, plan).await
}

/// Runs the measurement with the options both modes share and prints its line.
async fn measure_and_print(
    args: &Args,
    mode: &'static str,
    conversations: usize,
    plan: Plan,
) -> Result<()> {
    let report = measure(Options {
        mode,
        label: args.opt_str("label").unwrap_or("").to_string(),
        groups: conversations,
        plan,
        server_pid: args.opt_str("server-pid").map(str::to_string),
        cpu_pids: procstat::parse_pids(args.opt_str("cpu-pids"))?,
        llm_delay_ms: args.u64_or("llm-delay-ms", 0)?,
    })
    .await?;
    println!("{report}");
    Ok(())
}

/// `cross --url-a A --url-b B --conversations N --duration-secs S`: senders on A,
/// one watcher per conversation on B.
pub async fn run_cross(args: &Args) -> Result<()> {
    let (base_a, addr_a) = parse_url(args.str("url-a")?)?;
    let (_, addr_b) = parse_url(args.str("url-b")?)?;
    let conversations = args.u64("conversations")? as usize;
    let watchers = args.u64_or("watchers", 1)? as usize;
    if watchers == 0 || conversations == 0 {
        bail!("--conversations and --watchers must be at least 1");
    }
    let plan = plan(args, (base_a, addr_a), addr_b, conversations, watchers)?;
    measure_and_print(args, "cross", conversations, plan).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_round_trip() {
        for v in [0u64, 1, 511, 512, 513, 1023, 1024, 1_000_000, 123_456_789] {
            let (low, width) = bucket_range(bucket_of(v));
            assert!(low <= v && v < low + width, "{v}: {low}+{width}");
            assert!(width == 1 || (width as f64) / (low as f64) <= 1.0 / 256.0 + 1e-9);
        }
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.add(v);
        }
        assert_eq!(h.percentile(50.0), 500);
        assert!((h.percentile(99.0) as i64 - 990).abs() <= 2);
        assert_eq!(h.percentile(100.0), 1000);
    }

    #[test]
    fn fields_are_read_from_frames() {
        let text =
            r#"42["response_chunk",{"chunk":"a\"index\":7","conversation_id":"x","index":12}]"#;
        assert_eq!(field_u64(text, "\"index\":"), Some(12));
        assert_eq!(
            field_u64(
                r#"42["response_end",{"chunks":20,"stopped":false}]"#,
                "\"chunks\":"
            ),
            Some(20)
        );
    }
}
