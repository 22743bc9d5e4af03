//! Idle sockets: reads the server's RSS, connects N Socket.IO sockets (one session
//! cookie shared by all: the per-socket cost is what is measured), lets the server
//! settle, reads the RSS again, reports KiB per socket, then closes everything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::args::Args;
use crate::procstat;
use crate::stats::round3;
use crate::turns::{new_session, parse_url, source_addrs};
use testkit::sio;

pub async fn run(args: &Args) -> Result<()> {
    let (base, addr) = parse_url(args.str("url")?)?;
    let sockets = args.u64("sockets")? as usize;
    let server_pid = args.opt_str("server-pid").map(str::to_string);
    let settle = Duration::from_secs(args.u64_or("settle-secs", 3)?);
    let sources = source_addrs(args.u64_or("source-addrs", 8)?);
    let label = args.opt_str("label").unwrap_or("").to_string();

    let http = reqwest::Client::new();
    let (cookie, _) = new_session(&http, &base).await?;
    let rss = |key: &str| {
        server_pid
            .as_deref()
            .and_then(|p| procstat::status_kib(p, key))
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss("VmRSS");

    let gate = Arc::new(Semaphore::new(128));
    let connected = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(sockets);
    for i in 0..sockets {
        let gate = gate.clone();
        let connected = connected.clone();
        let failures = failures.clone();
        let first_error = first_error.clone();
        let cookie = cookie.clone();
        let source = (sources.len() > 1).then(|| sources[i % sources.len()]);
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire().await;
            let ws = sio::connect(addr, source, Some(&cookie)).await;
            drop(permit);
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(err) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap()
                        .get_or_insert_with(|| format!("{err:#}"));
                    return;
                }
            };
            connected.fetch_add(1, Ordering::Relaxed);
            // Stay idle: answer pings until told to stop.
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    message = ws.next() => match message {
                        Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                            if ws.send(Message::text("3")).await.is_err() {
                                break;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    },
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        }));
    }
    // Wait until every socket is connected or failed (bounded).
    let deadline = Instant::now() + Duration::from_secs(120);
    while (connected.load(Ordering::Relaxed) + failures.load(Ordering::Relaxed)) < sockets as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss_after = rss("VmRSS");
    let n = connected.load(Ordering::Relaxed);
    let per_socket = rss_before
        .zip(rss_after)
        .filter(|_| n > 0)
        .map(|(a, b)| round3((b as f64 - a as f64) / n as f64));
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let report = json!({
        "mode": "idle",
        "label": label,
        "sockets": sockets,
        "connected": n,
        "errors": failures.load(Ordering::Relaxed),
        "first_error": first_error.lock().unwrap().clone(),
        "connect_secs": round3(connect_secs),
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "kib_per_socket": per_socket,
        "server_peak_rss_kib": rss("VmHWM"),
    });
    println!("{report}");
    Ok(())
}
