//! Upload analysis: one text file of `--file-bytes` bytes (5 000 000 by default,
//! English-like lines, deterministic) sent through the real `POST /upload_file`
//! (multipart field `file`), with one Socket.IO socket of the same session open to
//! time the `upload_progress` events. Wall time is from the start of the request to
//! its answer (which comes when every chunk is analysed); it is split at the first
//! `upload_progress {done: 0}` (the server has the file and has cut it into chunks)
//! into `chunking_secs` and `analysis_secs`.
//!
//! Run it against a server with `UPLOAD_CONCURRENCY=1`, then one with the default
//! (4), passing the first wall time as `--baseline-secs` to get the ratio.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::args::Args;
use crate::procstat;
use crate::stats::round3;
use crate::turns::{new_session, parse_url};
use testkit::sio::{self, field_u64, Frame};

const WORDS: &[&str] = &[
    "the",
    "report",
    "shows",
    "that",
    "our",
    "quarterly",
    "revenue",
    "grew",
    "by",
    "about",
    "percent",
    "while",
    "costs",
    "stayed",
    "flat",
    "in",
    "most",
    "regions",
    "customers",
    "asked",
    "for",
    "faster",
    "delivery",
    "and",
    "better",
    "support",
    "team",
    "will",
    "review",
    "plan",
    "next",
    "month",
    "before",
    "final",
    "budget",
    "is",
    "approved",
    "weather",
    "delayed",
    "two",
    "shipments",
    "north",
    "warehouse",
    "new",
    "software",
    "release",
    "fixed",
    "several",
    "bugs",
    "users",
    "reported",
    "last",
    "week",
    "sales",
    "meeting",
    "moved",
    "to",
    "Thursday",
    "afternoon",
    "please",
    "send",
    "your",
    "notes",
    "a",
    "of",
    "with",
    "from",
    "this",
    "we",
    "expect",
    "growth",
    "market",
    "share",
    "product",
    "launch",
    "schedule",
    "risk",
    "analysis",
    "data",
    "model",
    "training",
    "results",
    "improved",
    "accuracy",
    "compared",
    "baseline",
    "system",
    "performance",
    "under",
    "load",
];

/// `bytes` of deterministic English-like text, lines of 8-20 words.
pub fn text_of(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 200);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut line_no = 0u64;
    while text.len() < bytes {
        line_no += 1;
        let words = 8 + (next() % 13) as usize;
        let mut line = format!("{line_no}.");
        for _ in 0..words {
            line.push(' ');
            line.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
        }
        line.push_str(".\n");
        text.push_str(&line);
    }
    // Cut at a line end at or below the size (the file must be exactly `bytes` or less).
    if text.len() > bytes {
        let cut = text[..bytes].rfind('\n').map_or(bytes, |i| i + 1);
        text.truncate(cut);
    }
    text
}

/// (done, total, when) of each `upload_progress`.
type Progress = Arc<Mutex<Vec<(u64, u64, Instant)>>>;

pub async fn run(args: &Args) -> Result<()> {
    let (base, addr) = parse_url(args.str("url")?)?;
    let bytes = args.u64_or("file-bytes", 5_000_000)? as usize;
    let label = args.opt_str("label").unwrap_or("").to_string();
    let server_pid = args.opt_str("server-pid").map(str::to_string);
    let concurrency = args.opt_u64("concurrency")?;
    let llm_delay_ms = args.opt_u64("llm-delay-ms")?;
    let baseline = args
        .opt_str("baseline-secs")
        .map(|v| {
            v.parse::<f64>()
                .map_err(|_| anyhow!("--baseline-secs: not a number: {v:?}"))
        })
        .transpose()?;
    let timeout = Duration::from_secs(args.u64_or("timeout-secs", 600)?);

    // `--one-line yes`: the same bytes with every newline a space (one line
    // to cut inside, the worst case of chunking).
    let one_line = matches!(args.opt_str("one-line"), Some("yes" | "true" | "1"));
    let text = if one_line {
        text_of(bytes).replace('\n', " ")
    } else {
        text_of(bytes)
    };
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(timeout)
        .build()?;
    let (cookie, _) = new_session(&http, &base).await?;

    // The socket that hears `upload_progress`.
    let mut ws = sio::connect(addr, None, Some(&cookie)).await?;
    let progress: Progress = Arc::default();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let reader = {
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    biased;
                    _ = stop_rx.changed() => break,
                    message = ws.next() => message,
                };
                let now = Instant::now();
                let Some(Ok(Message::Text(text))) = message else {
                    if matches!(message, Some(Ok(_))) {
                        continue;
                    }
                    break;
                };
                match sio::classify(text.as_str()) {
                    Frame::Ping => {
                        let pong = ws.send(Message::text("3")).await;
                        if pong.is_err() {
                            break;
                        }
                    }
                    Frame::Event("upload_progress", text) => {
                        let done = field_u64(text, "\"done\":").unwrap_or(u64::MAX);
                        let total = field_u64(text, "\"total\":").unwrap_or(u64::MAX);
                        progress.lock().unwrap().push((done, total, now));
                    }
                    Frame::Close => break,
                    _ => {}
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        })
    };

    let boundary = "chatbenchboundary7MA4YWxkTrZu0gW";
    let mut body = Vec::with_capacity(text.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench-upload.txt\"\r\nContent-Type: text/plain\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(text.as_bytes());
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let file_bytes = text.len();
    drop(text);

    let cpu0 = server_pid.as_deref().and_then(procstat::cpu_secs);
    let t0 = Instant::now();
    let response = http
        .post(format!("{base}/upload_file"))
        .header(reqwest::header::COOKIE, &cookie)
        .header(
            reqwest::header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await;
    let outcome: Result<(u16, Value)> = async {
        let response = response?;
        let status = response.status().as_u16();
        let body: Value = response.json().await?;
        Ok((status, body))
    }
    .await;
    let t1 = Instant::now();
    let cpu1 = server_pid.as_deref().and_then(procstat::cpu_secs);
    // Let the last `upload_progress` arrive (it is sent before the answer).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;

    let (status, body) = outcome?;
    if status != 200 {
        bail!("POST /upload_file answered {status}: {body}");
    }
    let chunks = body["chunks"].as_u64().unwrap_or(0);
    let analysis = body["analysis"].as_str().unwrap_or_default();
    let sections = analysis.matches("\n-- Analysis for Chunk ").count() as u64;
    let failed = analysis
        .matches("Unable to process your request at this time.")
        .count() as u64;
    let progress = progress.lock().unwrap().clone();
    let started = progress.iter().find(|(done, _, _)| *done == 0).map(|p| p.2);
    let finished = progress
        .iter()
        .find(|(done, total, _)| done == total && *total > 0)
        .map(|p| p.2);
    let wall = (t1 - t0).as_secs_f64();
    let ideal = concurrency
        .zip(llm_delay_ms)
        .filter(|(c, _)| *c > 0)
        .map(|(c, d)| chunks.div_ceil(c) as f64 * d as f64 / 1000.0);
    let report = json!({
        "mode": "upload",
        "label": label,
        "file_bytes": file_bytes,
        "one_line": one_line,
        "upload_concurrency": concurrency,
        "llm_delay_ms": llm_delay_ms,
        "status": status,
        "chunks": chunks,
        "analysis_sections": sections,
        "failed_chunks": failed,
        "progress_events": progress.len(),
        "wall_secs": round3(wall),
        "chunking_secs": started.map(|s| round3((s - t0).as_secs_f64())),
        "analysis_secs": started.map(|s| round3((t1 - s).as_secs_f64())),
        "last_progress_before_answer_ms": finished.map(|f| round3(t1.saturating_duration_since(f).as_secs_f64() * 1000.0)),
        "ideal_analysis_secs": ideal.map(round3),
        "ratio_to_sequential": baseline.filter(|b| *b > 0.0).map(|b| round3(wall / b)),
        "server_cpu_secs": cpu0.zip(cpu1).map(|(a, b)| round3(b - a)),
        "server_peak_rss_kib": server_pid.as_deref().and_then(|p| procstat::status_kib(p, "VmHWM")),
    });
    println!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_the_size_and_whole_lines() {
        let text = text_of(100_000);
        assert!(text.len() <= 100_000 && text.len() > 99_800);
        assert!(text.ends_with('\n'));
        assert_eq!(text, text_of(100_000));
    }
}
