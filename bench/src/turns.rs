//! Closed-loop chat turns: each virtual user gets its own session cookie and
//! conversation through the HTTP routes (optionally a history of N messages via
//! `POST /add_few_shot_example`), connects one Socket.IO socket, then loops:
//! `send_message` → `token_usage` → every `response_chunk` → `response_end`.
//! Only turns that end inside the measured window (after the warm-up) count.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{Barrier, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::args::Args;
use crate::procstat;
use crate::stats::{round3, summary_ms};
use testkit::sio::{self, Frame, Ws};

/// What one user measured.
#[derive(Default)]
struct UserResult {
    turns: u64,
    errors: u64,
    chunk_mismatches: u64,
    first_chunk_us: Vec<u64>,
    turn_us: Vec<u64>,
    first_error: Option<String>,
}

struct Plan {
    /// One client per source address (user i uses `http[i % len]`, as its socket does).
    http: Vec<reqwest::Client>,
    base: String,
    addr: SocketAddr,
    history: u64,
    sources: Vec<IpAddr>,
    setup_gate: Semaphore,
    barrier: Barrier,
    warmup: Duration,
    duration: Duration,
    turn_timeout: Duration,
    /// Start a new conversation (with `history` messages) every this many turns; 0 = never.
    fresh_every: u64,
    start: std::sync::OnceLock<Instant>,
}

impl Plan {
    fn http_of(&self, user: usize) -> &reqwest::Client {
        &self.http[user % self.http.len()]
    }
}

pub fn parse_url(url: &str) -> Result<(String, SocketAddr)> {
    let base = url.trim_end_matches('/').to_string();
    let host = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--url must start with http://"))?;
    let addr: SocketAddr = host
        .parse()
        .with_context(|| format!("--url host must be IP:PORT, got {host:?}"))?;
    Ok((base, addr))
}

pub fn source_addrs(count: u64) -> Vec<IpAddr> {
    (0..count.max(1))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)))
        .collect()
}

/// `--source-nets K`: 127.0.1.1, 127.0.2.1, .. 127.0.K.1, one loopback address in each
/// of K different /24 networks (all loopback on Linux). nginx's `ip_hash` hashes only the
/// first three octets of an IPv4 client, so addresses of one /24 (`--source-addrs`) all
/// land on one instance; these spread over the upstream servers.
pub fn source_nets(count: u64) -> Result<Vec<IpAddr>> {
    if !(1..=254).contains(&count) {
        bail!("--source-nets wants 1..=254, got {count}");
    }
    Ok((1..=count)
        .map(|net| IpAddr::V4(Ipv4Addr::new(127, 0, net as u8, 1)))
        .collect())
}

/// The source address of user `index` (none: the system's choice, 127.0.0.1).
fn source_of(sources: &[IpAddr], index: usize) -> Option<IpAddr> {
    (sources.len() > 1).then(|| sources[index % sources.len()])
}

/// Merges `Set-Cookie` name=value pairs into `jar` (a `Cookie` header value).
fn merge_cookies(jar: &mut Vec<(String, String)>, response: &reqwest::Response) {
    for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        let pair = value.split(';').next().unwrap_or_default();
        if let Some((name, val)) = pair.split_once('=') {
            let (name, val) = (name.trim().to_string(), val.trim().to_string());
            jar.retain(|(n, _)| *n != name);
            jar.push((name, val));
        }
    }
}

fn cookie_header(jar: &[(String, String)]) -> String {
    jar.iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `GET /` (session cookie), then `POST /start_conversation`; returns (cookie, id).
pub async fn new_session(http: &reqwest::Client, base: &str) -> Result<(String, String)> {
    let mut jar = Vec::new();
    let page = http.get(format!("{base}/")).send().await?;
    if !page.status().is_success() {
        bail!("GET / answered {}", page.status());
    }
    merge_cookies(&mut jar, &page);
    let _ = page.bytes().await?;
    let started = http
        .post(format!("{base}/start_conversation"))
        .header(reqwest::header::COOKIE, cookie_header(&jar))
        .send()
        .await?;
    if !started.status().is_success() {
        bail!("POST /start_conversation answered {}", started.status());
    }
    merge_cookies(&mut jar, &started);
    let body: Value = started.json().await?;
    let id = body["conversation_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no conversation_id in {body}"))?
        .to_string();
    Ok((cookie_header(&jar), id))
}

/// `POST /add_few_shot_example` `history / 2` times: `history` earlier messages.
async fn add_history(plan: &Plan, http: &reqwest::Client, cookie: &str) -> Result<()> {
    for i in 0..plan.history / 2 {
        let response = http
            .post(format!("{}/add_few_shot_example", plan.base))
            .header(reqwest::header::COOKIE, cookie)
            .json(&json!({
                "user_prompt": format!("Earlier question number {i} about the weather in a few words?"),
                "assistant_response": format!("Earlier answer number {i}: sunny, mild, a light breeze from the west."),
            }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("POST /add_few_shot_example answered {}", response.status());
        }
    }
    Ok(())
}

/// A fresh conversation (made current) with the planned history; returns its id.
async fn fresh_conversation(plan: &Plan, user: usize, cookie: &str) -> Result<String> {
    let http = plan.http_of(user);
    let started = http
        .post(format!("{}/start_conversation", plan.base))
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await?;
    if !started.status().is_success() {
        bail!("POST /start_conversation answered {}", started.status());
    }
    let body: Value = started.json().await?;
    let id = body["conversation_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no conversation_id in {body}"))?
        .to_string();
    add_history(plan, http, cookie).await?;
    Ok(id)
}

async fn setup(plan: &Plan, user: usize) -> Result<(Ws, String, String)> {
    let _permit = plan.setup_gate.acquire().await?;
    let http = plan.http_of(user);
    let (cookie, conversation_id) = new_session(http, &plan.base).await?;
    add_history(plan, http, &cookie).await?;
    let ws = sio::connect(plan.addr, source_of(&plan.sources, user), Some(&cookie)).await?;
    Ok((ws, cookie, conversation_id))
}

/// Reads one turn's frames; returns (first chunk time, chunks seen, chunks announced).
async fn read_turn(ws: &mut Ws) -> Result<(Option<Instant>, u64, u64)> {
    let mut first_chunk = None;
    let mut chunks = 0u64;
    let mut usage = false;
    loop {
        let message = match ws.next().await {
            Some(Ok(message)) => message,
            Some(Err(err)) => return Err(err.into()),
            None => bail!("connection closed"),
        };
        let Message::Text(text) = message else {
            if let Message::Close(_) = message {
                bail!("connection closed");
            }
            continue;
        };
        match sio::classify(text.as_str()) {
            Frame::Ping => ws.send(Message::text("3")).await?,
            Frame::Close => bail!("disconnected by the server"),
            Frame::Other => {}
            Frame::Event("token_usage", _) => usage = true,
            Frame::Event("response_chunk", _) => {
                if first_chunk.is_none() {
                    first_chunk = Some(Instant::now());
                }
                chunks += 1;
            }
            Frame::Event("response_end", text) => {
                if !usage {
                    bail!("response_end before token_usage");
                }
                let payload: Value = serde_json::from_str(&text[2..])?;
                let announced = payload[1]["chunks"].as_u64().unwrap_or(u64::MAX);
                return Ok((first_chunk, chunks, announced));
            }
            Frame::Event("error", text) => bail!("error event: {}", &text[2..]),
            Frame::Event(_, _) => {}
        }
    }
}

async fn user(plan: Arc<Plan>, index: usize) -> UserResult {
    let mut result = UserResult::default();
    let setup = setup(&plan, index).await;
    // Everyone waits for everyone, failed or not, then the clock starts.
    plan.barrier.wait().await;
    let start = *plan.start.get_or_init(Instant::now);
    let (mut ws, cookie, mut conversation_id) = match setup {
        Ok(ok) => ok,
        Err(err) => {
            result.errors += 1;
            result.first_error = Some(format!("setup: {err:#}"));
            return result;
        }
    };
    let warm_end = start + plan.warmup;
    let end = warm_end + plan.duration;
    let message = "Hello! How is the weather today?";
    let mut frame = sio::send_message_frame(message, &conversation_id);
    let mut on_this_conversation = 0u64;
    while Instant::now() < end {
        if plan.fresh_every > 0 && on_this_conversation >= plan.fresh_every {
            // Not timed: a new conversation with the same history length.
            match fresh_conversation(&plan, index, &cookie).await {
                Ok(id) => conversation_id = id,
                Err(err) => {
                    result.errors += 1;
                    result
                        .first_error
                        .get_or_insert(format!("fresh conversation: {err:#}"));
                    break;
                }
            }
            frame = sio::send_message_frame(message, &conversation_id);
            on_this_conversation = 0;
        }
        on_this_conversation += 1;
        let t0 = Instant::now();
        let sent = ws.send(Message::text(frame.clone())).await;
        let outcome = match sent {
            Ok(()) => tokio::time::timeout(plan.turn_timeout, read_turn(&mut ws))
                .await
                .unwrap_or_else(|_| Err(anyhow!("turn timed out"))),
            Err(err) => Err(err.into()),
        };
        let t1 = Instant::now();
        match outcome {
            Ok((first_chunk, chunks, announced)) => {
                if t1 >= warm_end && t1 <= end {
                    result.turns += 1;
                    if chunks != announced {
                        result.chunk_mismatches += 1;
                    }
                    if let Some(first) = first_chunk {
                        result.first_chunk_us.push((first - t0).as_micros() as u64);
                    }
                    result.turn_us.push((t1 - t0).as_micros() as u64);
                }
            }
            Err(err) => {
                result.errors += 1;
                if result.first_error.is_none() {
                    result.first_error = Some(format!("{err:#}"));
                }
                // A broken connection ends this user; an error event does not.
                if !err.to_string().starts_with("error event") {
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    result
}

fn http_client(source: Option<IpAddr>) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .local_address(source)
        .build()?)
}

pub async fn run(args: &Args) -> Result<()> {
    let (base, addr) = parse_url(args.str("url")?)?;
    let users = args.u64("users")? as usize;
    let duration = Duration::from_secs(args.u64("duration-secs")?);
    let warmup = Duration::from_secs(args.u64_or("warmup-secs", 3)?);
    let history = args.u64_or("history", 0)?;
    let server_pid = args.opt_str("server-pid").map(str::to_string);
    let cpu_pids = procstat::parse_pids(args.opt_str("cpu-pids"))?;
    let sources = match (args.opt_u64("source-nets")?, args.opt_u64("source-addrs")?) {
        (Some(_), Some(_)) => bail!("--source-nets and --source-addrs exclude each other"),
        (Some(nets), None) => source_nets(nets)?,
        (None, addrs) => source_addrs(addrs.unwrap_or(1)),
    };
    // The HTTP setup comes from the user's source address too, so behind nginx's
    // ip_hash a user's requests and socket reach the same instance.
    let http = match sources.len() {
        1 => vec![http_client(None)?],
        _ => sources
            .iter()
            .map(|&source| http_client(Some(source)))
            .collect::<Result<_>>()?,
    };
    let label = args.opt_str("label").unwrap_or("").to_string();
    let llm_delay_ms = args.u64_or("llm-delay-ms", 0)? as f64;
    let plan = Arc::new(Plan {
        http,
        base,
        addr,
        history,
        sources,
        setup_gate: Semaphore::new(64),
        barrier: Barrier::new(users),
        warmup,
        duration,
        turn_timeout: Duration::from_secs(args.u64_or("turn-timeout-secs", 30)?),
        fresh_every: args.u64_or("fresh-every", 0)?,
        start: std::sync::OnceLock::new(),
    });
    let setup_started = Instant::now();
    let tasks: Vec<_> = (0..users)
        .map(|i| tokio::spawn(user(plan.clone(), i)))
        .collect();

    // CPU of the server and of this process over the measured window only.
    let sampler = {
        let plan = plan.clone();
        let server_pid = server_pid.clone();
        tokio::spawn(async move {
            while plan.start.get().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let start = *plan.start.get().unwrap();
            tokio::time::sleep_until((start + plan.warmup).into()).await;
            let server0 = server_pid.as_deref().and_then(procstat::cpu_secs);
            let self0 = procstat::cpu_secs("self");
            let others0: Vec<Option<f64>> = cpu_pids
                .iter()
                .map(|(_, p)| procstat::cpu_secs(p))
                .collect();
            let machine0 = procstat::machine_busy_secs();
            tokio::time::sleep_until((start + plan.warmup + plan.duration).into()).await;
            let server1 = server_pid.as_deref().and_then(procstat::cpu_secs);
            let self1 = procstat::cpu_secs("self");
            let machine1 = procstat::machine_busy_secs();
            // Summed by name (a name may stand for several processes).
            let mut others: Vec<(String, Option<f64>)> = Vec::new();
            for ((name, pid), before) in cpu_pids.iter().zip(others0) {
                let used = before.zip(procstat::cpu_secs(pid)).map(|(b, a)| a - b);
                match others.iter_mut().find(|(n, _)| n == name) {
                    Some((_, sum)) => *sum = sum.zip(used).map(|(s, u)| s + u),
                    None => others.push((name.clone(), used)),
                }
            }
            (
                server0.zip(server1).map(|(a, b)| b - a),
                self0.zip(self1).map(|(a, b)| b - a),
                others,
                machine0.zip(machine1).map(|(a, b)| b - a),
            )
        })
    };

    let mut total = UserResult::default();
    let mut setup_failures = 0u64;
    for task in tasks {
        let r = task.await?;
        total.turns += r.turns;
        total.errors += r.errors;
        total.chunk_mismatches += r.chunk_mismatches;
        total.first_chunk_us.extend(r.first_chunk_us);
        total.turn_us.extend(r.turn_us);
        if let Some(err) = r.first_error {
            if err.starts_with("setup") {
                setup_failures += 1;
            }
            total.first_error.get_or_insert(err);
        }
    }
    let setup_secs = plan
        .start
        .get()
        .map(|s| (*s - setup_started).as_secs_f64())
        .unwrap_or_default();
    let (server_cpu, client_cpu, others, machine_busy) = sampler.await?;
    let others: serde_json::Map<String, Value> = others
        .into_iter()
        .map(|(n, c)| (n, json!(c.map(round3))))
        .collect();
    let secs = duration.as_secs_f64();
    let turns_per_sec = total.turns as f64 / secs;
    let mut overhead: Vec<u64> = total
        .first_chunk_us
        .iter()
        .map(|us| us.saturating_sub((llm_delay_ms * 1000.0) as u64))
        .collect();
    let report = json!({
        "mode": "turns",
        "label": label,
        "users": users,
        "history": history,
        "fresh_every": plan.fresh_every,
        "duration_secs": secs,
        "turns": total.turns,
        "turns_per_sec": round3(turns_per_sec),
        "errors": total.errors,
        "setup_failures": setup_failures,
        "chunk_mismatches": total.chunk_mismatches,
        "first_error": total.first_error,
        "first_chunk_ms": summary_ms(&mut total.first_chunk_us),
        "server_overhead_ms": summary_ms(&mut overhead),
        "turn_ms": summary_ms(&mut total.turn_us),
        "server_cpu_secs": server_cpu.map(round3),
        "server_cpu_ms_per_turn": server_cpu.filter(|_| total.turns > 0).map(|c| round3(c * 1000.0 / total.turns as f64)),
        "server_peak_rss_kib": server_pid.as_deref().and_then(|p| procstat::status_kib(p, "VmHWM")),
        "client_cpu_secs": client_cpu.map(round3),
        "other_cpu_secs": others,
        "machine_busy_cpu_secs": machine_busy.map(round3),
        "source_addrs": plan.sources.len(),
        "setup_secs": round3(setup_secs),
    });
    println!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_nets_put_each_user_in_its_own_slash_24_round_robin() {
        let nets = source_nets(4).unwrap();
        let users: Vec<String> = (0..6)
            .map(|i| source_of(&nets, i).unwrap().to_string())
            .collect();
        assert_eq!(
            users,
            [
                "127.0.1.1",
                "127.0.2.1",
                "127.0.3.1",
                "127.0.4.1",
                "127.0.1.1",
                "127.0.2.1"
            ]
        );
        // Every address is loopback and the /24s (what ip_hash keys on) differ.
        let prefixes: std::collections::HashSet<[u8; 3]> = nets
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => {
                    assert!(v4.is_loopback());
                    let [a, b, c, _] = v4.octets();
                    [a, b, c]
                }
                IpAddr::V6(_) => panic!("IPv6 source {ip}"),
            })
            .collect();
        assert_eq!(prefixes.len(), 4);
        assert_eq!(
            source_nets(254).unwrap().last().unwrap().to_string(),
            "127.0.254.1"
        );
        assert!(source_nets(0).is_err());
        assert!(source_nets(255).is_err());
    }

    #[test]
    fn one_source_means_the_systems_choice() {
        assert_eq!(source_of(&source_addrs(1), 7), None);
        assert_eq!(
            source_of(&source_addrs(8), 9).unwrap().to_string(),
            "127.0.0.2"
        );
    }
}
