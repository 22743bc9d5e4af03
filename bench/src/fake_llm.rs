//! A fake OpenAI-compatible chat-completions server: `POST {any}/chat/completions`
//! streams N deltas of B bytes as SSE (`data: {"choices":[{"delta":{"content":..}}]}`),
//! then `data: [DONE]`, with D ms before each delta (D = 0: one write for the whole body).
//! A request without `"stream": true` gets one JSON body with the concatenation.
//!
//! Extra delays (both 0 by default): `--first-delay-ms F` once before the first
//! delta of a streamed reply (on top of D), and `--complete-delay-ms C` before a
//! non-streamed reply (the server's upload analysis and titles use those).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::json;

use crate::args::Args;

struct Script {
    chunks: Vec<String>,
    delay: Duration,
    /// Once before the first delta of a streamed reply.
    first_delay: Duration,
    /// Before a non-streamed reply.
    complete_delay: Duration,
    /// The whole SSE body, prebuilt (used when `delay` is zero).
    sse: Bytes,
    /// One SSE event per chunk, prebuilt (used when `delay` is non-zero).
    events: Vec<Bytes>,
    whole: Bytes,
}

/// Chunk `i` of `bytes` characters: `"w{i} "` padded with letters.
pub fn chunk_text(i: usize, bytes: usize) -> String {
    let mut text = format!("w{i} ");
    while text.len() < bytes {
        text.push('x');
    }
    text.truncate(bytes.max(1));
    text
}

pub async fn run(args: &Args) -> Result<()> {
    let port = args.u64("port")? as u16;
    let chunks = args.u64_or("chunks", 20)? as usize;
    let delay_ms = args.u64_or("delay-ms", 0)?;
    let bytes = args.u64_or("chunk-bytes", 16)? as usize;
    let extra = Delays {
        first: Duration::from_millis(args.u64_or("first-delay-ms", 0)?),
        complete: Duration::from_millis(args.u64_or("complete-delay-ms", 0)?),
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let addr = listener.local_addr()?;
    println!("fake-llm listening on http://{addr}");
    serve_with(
        listener,
        chunks,
        Duration::from_millis(delay_ms),
        bytes,
        extra,
    )
    .await
}

/// Delays beyond the per-delta one (zero by default).
#[derive(Clone, Copy, Default)]
pub struct Delays {
    /// Once before the first delta of a streamed reply.
    pub first: Duration,
    /// Before a non-streamed reply.
    pub complete: Duration,
}

#[allow(dead_code)]
pub async fn serve(
    listener: tokio::net::TcpListener,
    chunks: usize,
    delay: Duration,
    bytes: usize,
) -> Result<()> {
    serve_with(listener, chunks, delay, bytes, Delays::default()).await
}

pub async fn serve_with(
    listener: tokio::net::TcpListener,
    chunks: usize,
    delay: Duration,
    bytes: usize,
    extra: Delays,
) -> Result<()> {
    let chunks: Vec<String> = (0..chunks).map(|i| chunk_text(i, bytes)).collect();
    let events: Vec<Bytes> = chunks
        .iter()
        .map(|c| {
            let event = json!({"choices": [{"index": 0, "delta": {"content": c}}]});
            Bytes::from(format!("data: {event}\n\n"))
        })
        .collect();
    let mut sse = Vec::new();
    for event in &events {
        sse.extend_from_slice(event);
    }
    sse.extend_from_slice(b"data: [DONE]\n\n");
    let whole = json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": chunks.concat()}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": chunks.len(), "total_tokens": chunks.len() + 1}
    });
    let script = Arc::new(Script {
        chunks,
        delay,
        first_delay: extra.first,
        complete_delay: extra.complete,
        sse: Bytes::from(sse),
        events,
        whole: Bytes::from(whole.to_string()),
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback(post(move |body: Bytes| completion(script.clone(), body)));
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn completion(script: Arc<Script>, body: Bytes) -> Response {
    let streaming = contains(&body, b"\"stream\":true") || contains(&body, b"\"stream\": true");
    if !streaming {
        if !script.complete_delay.is_zero() {
            tokio::time::sleep(script.complete_delay).await;
        }
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(script.whole.clone()))
            .unwrap();
    }
    let body = if script.delay.is_zero() && script.first_delay.is_zero() {
        Body::from(script.sse.clone())
    } else {
        let script = script.clone();
        let stream = futures_util::stream::unfold(0usize, move |i| {
            let script = script.clone();
            async move {
                if i > script.chunks.len() {
                    return None;
                }
                if i == script.chunks.len() {
                    return Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from_static(b"data: [DONE]\n\n")),
                        i + 1,
                    ));
                }
                if i == 0 && !script.first_delay.is_zero() {
                    tokio::time::sleep(script.first_delay).await;
                }
                if !script.delay.is_zero() {
                    tokio::time::sleep(script.delay).await;
                }
                Some((Ok(script.events[i].clone()), i + 1))
            }
        });
        Body::from_stream(stream)
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    // From the end: the server writes `stream` last, after the whole
    // history, and a forward scan of a long prompt made this fake LLM a
    // visible share of the machine's CPU.
    haystack.windows(needle.len()).rev().any(|w| w == needle)
}
