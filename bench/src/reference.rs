//! The transport reference: a bare socketioxide server (same versions as the chat server)
//! whose `send_message` handler answers with `token_usage`, N `response_chunk`s of B bytes
//! and `response_end`, and does nothing else. It is what the transport alone allows.

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

    let (layer, io) = SocketIo::new_layer();
    io.ns("/", move |socket: SocketRef| {
        let texts = texts.clone();
        async move { on_connect(socket, texts) }
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
                    let _ = socket.emit(
                        "token_usage",
                        &json!({
                            "total_tokens_used": 42,
                            "max_tokens": 128000,
                            "conversation_id": conversation_id,
                            "summarised": false,
                        }),
                    );
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
