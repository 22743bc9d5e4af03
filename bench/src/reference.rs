//! The references a chat server is measured against, bare socketioxide servers (same
//! versions as the chat server) whose `send_message` handler does only this:
//!
//! - transport reference (no `--llm-url`): answers with `token_usage`, N `response_chunk`s
//!   of B bytes and `response_end`: what the transport alone allows;
//! - proxy reference (`--llm-url http://fake-llm`): streams each reply from the LLM with
//!   reqwest (`POST /v1/chat/completions`, `stream: true`) and forwards every delta as a
//!   `response_chunk`, then `response_end`: the least any chat server must do per turn
//!   (no store, no sessions, no context window). It sends the conversation so far, as a
//!   chat server must: each socket's messages are kept in memory as the JSON they are
//!   sent as (each message serialised once, when it is added), and a turn's request is
//!   that JSON with the new message after it. A new `conversation_id` starts an empty
//!   history. `--history one-message` sends only the new message instead (the proxy
//!   reference of sessions 8–10).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

    let keep_history = match args.opt_str("history").unwrap_or("keep") {
        "keep" => true,
        "one-message" => false,
        other => anyhow::bail!("--history: keep or one-message, not {other:?}"),
    };
    let upstream = args.opt_str("llm-url").map(|url| Upstream {
        url: format!("{}/v1/chat/completions", url.trim_end_matches('/')),
        http: reqwest::Client::new(),
        keep_history,
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
                // A new id each time: the proxy starts a new history for it.
                static STARTED: AtomicU64 = AtomicU64::new(0);
                let n = STARTED.fetch_add(1, Ordering::Relaxed);
                axum::Json(json!({
                    "message": "New conversation started.",
                    "conversation_id": format!("00000000-0000-4000-8000-{n:012x}"),
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
    /// Send the conversation so far (else only the new message).
    keep_history: bool,
}

/// One socket's conversation as the proxy keeps it: its messages' JSON objects,
/// comma-separated, as they go into the request's `messages` array.
#[derive(Default)]
struct History {
    conversation_id: Value,
    json: Vec<u8>,
}

impl History {
    /// The request body of a turn: the history, then `message` (its JSON given).
    fn body(&self, message: &[u8]) -> Vec<u8> {
        // `stream` last, as the server writes it (the fake LLM looks for it from the end).
        const HEAD: &[u8] = br#"{"model":"fake","messages":["#;
        const TAIL: &[u8] = br#"],"stream":true}"#;
        let mut body =
            Vec::with_capacity(HEAD.len() + self.json.len() + message.len() + TAIL.len() + 1);
        body.extend_from_slice(HEAD);
        body.extend_from_slice(&self.json);
        if !self.json.is_empty() {
            body.push(b',');
        }
        body.extend_from_slice(message);
        body.extend_from_slice(TAIL);
        body
    }

    fn push(&mut self, message: &[u8]) {
        if !self.json.is_empty() {
            self.json.push(b',');
        }
        self.json.extend_from_slice(message);
    }
}

/// A chat message's JSON object.
fn message_json(role: &str, content: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"role": role, "content": content})).unwrap_or_default()
}

fn on_connect_proxy(socket: SocketRef, upstream: Upstream) {
    let history = Arc::new(Mutex::new(History::default()));
    socket.on(
        "send_message",
        move |socket: SocketRef, Data::<Value>(data)| {
            let upstream = upstream.clone();
            let history = history.clone();
            async move {
                let conversation_id = data
                    .get("conversation_id")
                    .cloned()
                    .unwrap_or(Value::Null);
                let message = data.get("message").cloned().unwrap_or(Value::Null);
                emit_token_usage(&socket, &conversation_id);
                let user = message_json("user", &message);
                let body = {
                    let mut history = history.lock().unwrap();
                    if !upstream.keep_history || history.conversation_id != conversation_id {
                        *history = History {
                            conversation_id: conversation_id.clone(),
                            json: Vec::new(),
                        };
                    }
                    history.body(&user)
                };
                let reply = match stream_reply(&upstream, body, &socket, &conversation_id).await {
                    Ok(reply) => reply,
                    Err(error) => {
                        let _ = socket.emit("error", &json!({"message": error.to_string()}));
                        return;
                    }
                };
                if upstream.keep_history {
                    let mut history = history.lock().unwrap();
                    history.push(&user);
                    history.push(&message_json("assistant", &Value::String(reply.text)));
                }
                let _ = socket.emit(
                    "response_end",
                    &json!({"conversation_id": conversation_id, "stopped": false, "chunks": reply.chunks}),
                );
            }
        },
    );
}

/// A streamed reply: its text and how many deltas were forwarded.
struct Reply {
    text: String,
    chunks: usize,
}

/// Streams one reply for the request `body` and forwards each delta.
async fn stream_reply(
    upstream: &Upstream,
    body: Vec<u8>,
    socket: &SocketRef,
    conversation_id: &Value,
) -> Result<Reply> {
    use futures_util::StreamExt;
    let response = upstream
        .http
        .post(&upstream.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?
        .error_for_status()?;
    let mut body = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut reply = Reply {
        text: String::new(),
        chunks: 0,
    };
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
                    return Ok(reply);
                }
                let parsed: Value = serde_json::from_slice(data)?;
                if let Some(text) = parsed["choices"][0]["delta"]["content"].as_str() {
                    let _ = socket.emit(
                        "response_chunk",
                        &json!({"chunk": text, "index": reply.chunks, "conversation_id": conversation_id}),
                    );
                    reply.text.push_str(text);
                    reply.chunks += 1;
                }
            }
        }
    }
    Ok(reply)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(body: &[u8]) -> Vec<(String, String)> {
        let body: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(body["stream"], json!(true));
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_string(),
                    m["content"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn the_proxy_sends_the_conversation_so_far_then_the_new_message() {
        let mut history = History::default();
        let first = message_json("user", &json!("first \"question\""));
        assert_eq!(
            messages(&history.body(&first)),
            [("user".to_string(), "first \"question\"".to_string())]
        );
        history.push(&first);
        history.push(&message_json("assistant", &json!("a reply\non two lines")));
        let second = message_json("user", &json!("second"));
        assert_eq!(
            messages(&history.body(&second)),
            [
                ("user".to_string(), "first \"question\"".to_string()),
                ("assistant".to_string(), "a reply\non two lines".to_string()),
                ("user".to_string(), "second".to_string()),
            ]
        );
    }
}
