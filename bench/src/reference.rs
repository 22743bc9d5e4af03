//! The references a chat server is measured against, bare socketioxide servers (same
//! versions as the chat server) whose `send_message` handler does only this:
//!
//! - transport reference (no `--llm-url`): answers with `token_usage`, N `response_chunk`s
//!   of B bytes and `response_end`: what the transport alone allows;
//! - proxy reference (`--llm-url http://fake-llm`): streams each reply from the LLM with
//!   reqwest (`POST /v1/chat/completions`, `stream: true`) and forwards every delta as a
//!   `response_chunk`, then `response_end`: the least any chat server must do per turn
//!   (no store, no sessions, no context window).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::{json, Value};
use socketioxide::extract::{Data, SocketRef};
use socketioxide::SocketIo;

use crate::args::Args;
use crate::fake_llm::chunk_text;

pub async fn run(args: &Args) -> Result<()> {
    let port = args.u64("port")? as u16;
    let chunks = args.u64_or("chunks", 20)? as usize;
    let bytes = args.u64_or("chunk-bytes", 16)? as usize;
    let texts: Arc<Vec<String>> = Arc::new((0..chunks).map(|i| chunk_text(i, bytes)).collect());

    let upstream = args.opt_str("llm-url").map(|url| Upstream {
        url: format!("{}/v1/chat/completions", url.trim_end_matches('/')),
        http: reqwest::Client::new(),
    });

    let (layer, io) = SocketIo::new_layer();
    io.ns("/", move |socket: SocketRef| {
        let texts = texts.clone();
        let upstream = upstream.clone();
        async move {
            match upstream {
                Some(upstream) => on_connect_proxy(socket, upstream),
                None => on_connect(socket, texts),
            }
        }
    });

    // The HTTP routes the load generator calls during set-up, answered trivially.
    let app = Router::new()
        .route("/", get(|| async { "reference" }))
        .route(
            "/start_conversation",
            post(|| async {
                axum::Json(json!({
                    "message": "New conversation started.",
                    "conversation_id": "00000000-0000-4000-8000-000000000000",
                }))
            }),
        )
        .route(
            "/add_few_shot_example",
            post(|| async {
                axum::Json(json!({"message": "Few-shot example added successfully!"}))
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("reference listening on http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

fn on_connect(socket: SocketRef, texts: Arc<Vec<String>>) {
    socket.on(
            "send_message",
            move |socket: SocketRef, Data::<Value>(data)| {
                let texts = texts.clone();
                async move {
                    let conversation_id = data
                        .get("conversation_id")
                        .cloned()
                        .unwrap_or(Value::Null);
                    emit_token_usage(&socket, &conversation_id);
                    for (index, chunk) in texts.iter().enumerate() {
                        let _ = socket.emit(
                            "response_chunk",
                            &json!({"chunk": chunk, "index": index, "conversation_id": conversation_id}),
                        );
                    }
                    let _ = socket.emit(
                        "response_end",
                        &json!({"conversation_id": conversation_id, "stopped": false, "chunks": texts.len()}),
                    );
                }
            },
        );
}

/// Where the proxy reference streams its replies from.
#[derive(Clone)]
struct Upstream {
    url: String,
    http: reqwest::Client,
}

fn on_connect_proxy(socket: SocketRef, upstream: Upstream) {
    socket.on(
        "send_message",
        move |socket: SocketRef, Data::<Value>(data)| {
            let upstream = upstream.clone();
            async move {
                let conversation_id = data
                    .get("conversation_id")
                    .cloned()
                    .unwrap_or(Value::Null);
                let message = data.get("message").cloned().unwrap_or(Value::Null);
                emit_token_usage(&socket, &conversation_id);
                let chunks = match stream_reply(&upstream, &message, &socket, &conversation_id).await {
                    Ok(chunks) => chunks,
                    Err(error) => {
                        let _ = socket.emit("error", &json!({"message": error.to_string()}));
                        return;
                    }
                };
                let _ = socket.emit(
                    "response_end",
                    &json!({"conversation_id": conversation_id, "stopped": false, "chunks": chunks}),
                );
            }
        },
    );
}

/// Streams one reply and forwards each delta; how many were forwarded.
async fn stream_reply(
    upstream: &Upstream,
    message: &Value,
    socket: &SocketRef,
    conversation_id: &Value,
) -> Result<usize> {
    use futures_util::StreamExt;
    let response = upstream
        .http
        .post(&upstream.url)
        .json(&json!({
            "model": "fake",
            "stream": true,
            "messages": [{"role": "user", "content": message}],
        }))
        .send()
        .await?
        .error_for_status()?;
    let mut body = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut index = 0;
    while let Some(bytes) = body.next().await {
        pending.extend_from_slice(&bytes?);
        // Server-sent events end with a blank line; a `data:` line carries one delta.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            for line in event.split(|b| *b == b'\n') {
                let Some(data) = line.strip_prefix(b"data: ") else {
                    continue;
                };
                if data == b"[DONE]" {
                    return Ok(index);
                }
                let parsed: Value = serde_json::from_slice(data)?;
                if let Some(text) = parsed["choices"][0]["delta"]["content"].as_str() {
                    let _ = socket.emit(
                        "response_chunk",
                        &json!({"chunk": text, "index": index, "conversation_id": conversation_id}),
                    );
                    index += 1;
                }
            }
        }
    }
    Ok(index)
}

/// The `token_usage` frame a turn starts with (fixed figures: no counting).
fn emit_token_usage(socket: &SocketRef, conversation_id: &Value) {
    let _ = socket.emit(
        "token_usage",
        &json!({
            "total_tokens_used": 42,
            "max_tokens": 128000,
            "conversation_id": conversation_id,
            "summarised": false,
        }),
    );
}
