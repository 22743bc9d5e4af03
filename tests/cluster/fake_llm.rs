//! A fake OpenAI-compatible chat-completions server on 127.0.0.1 (a real HTTP server in the
//! test process, shared by both instances of a cluster). Each request takes the next scripted
//! [`Reply`] from a queue, or the default (which echoes the user's message in four pieces).
//!
//! A reply can be *held*: it streams its first pieces, then waits until the test releases its
//! [`Gate`], so a test can act (disconnect, reconnect elsewhere, stop) while the reply is
//! provably still in flight. The fake records every request and, for each streamed piece, the
//! moment it was handed to the connection (for latency measurements).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Lets a held reply go on. Cheap to clone; every clone opens the same gate.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    pub fn new() -> Gate {
        Gate(Arc::new(watch::channel(false).0))
    }

    /// Opens the gate: the held reply sends the rest of its pieces.
    pub fn release(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut receiver = self.0.subscribe();
        // Only fails when the sender is gone, which cannot happen while `self` holds it.
        let _ = receiver.wait_for(|open| *open).await;
    }
}

/// What the fake answers to one request.
#[derive(Clone)]
pub enum Reply {
    /// Streams `pieces`, waiting `delay` before each one; when `hold` is set, stops after
    /// `hold.0` pieces until `hold.1` is released. A non-streaming request gets the
    /// concatenation as one JSON body.
    Stream {
        pieces: Vec<String>,
        delay: Duration,
        hold: Option<(usize, Gate)>,
    },
    /// Accepts the request and never answers (not even headers).
    Hang,
}

impl Reply {
    /// `pieces`, each after `delay`.
    pub fn slow(pieces: Vec<String>, delay: Duration) -> Reply {
        Reply::Stream {
            pieces,
            delay,
            hold: None,
        }
    }

    /// `parts`, holding after the first `sent_before_hold` of them until `gate` opens.
    pub fn held(parts: &[&str], sent_before_hold: usize, gate: &Gate) -> Reply {
        Reply::Stream {
            pieces: parts.iter().map(|part| (*part).to_owned()).collect(),
            delay: Duration::ZERO,
            hold: Some((sent_before_hold, gate.clone())),
        }
    }
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub body: Value,
    /// When each streamed piece was handed to the connection (index = piece index).
    pub piece_sent_at: Vec<Instant>,
}

impl Recorded {
    pub fn is_streaming(&self) -> bool {
        self.body["stream"].as_bool() == Some(true)
    }

    /// Every `content` of the `messages` array, in order.
    pub fn contents(&self) -> Vec<String> {
        self.body["messages"]
            .as_array()
            .map(|messages| {
                messages
                    .iter()
                    .filter_map(|message| message["content"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Script {
    queue: VecDeque<Reply>,
    requests: Vec<Recorded>,
}

/// Handle to a running fake; the server task stops when the last clone drops.
#[derive(Clone)]
pub struct FakeLlm {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    _server: Arc<ServerTask>,
}

struct ServerTask(JoinHandle<()>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The default reply's pieces for a user message: `You said: <message>` in four pieces.
pub fn echo_pieces(message: &str) -> Vec<String> {
    vec![
        "You".to_owned(),
        " said".to_owned(),
        ": ".to_owned(),
        message.to_owned(),
    ]
}

impl FakeLlm {
    pub async fn start() -> FakeLlm {
        let script = Arc::new(Mutex::new(Script::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake LLM binds 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake LLM address");
        let state = script.clone();
        let router = Router::new().fallback(move |uri: Uri, body: Bytes| {
            let state = state.clone();
            async move { handle(state, uri, body).await }
        });
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("fake LLM serves");
        });
        FakeLlm {
            addr,
            script,
            _server: Arc::new(ServerTask(server)),
        }
    }

    /// The value for `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The next request (not yet received) gets `reply`.
    pub fn push(&self, reply: Reply) {
        self.script.lock().unwrap().queue.push_back(reply);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.script.lock().unwrap().requests.clone()
    }

    /// Waits (bounded) until at least `count` requests arrived.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "fake LLM got {} requests, expected at least {count} within {timeout:?}",
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn last_user_message(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|messages| {
            messages
                .iter()
                .rev()
                .find(|message| message["role"] == "user")
        })
        .and_then(|message| message["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

async fn handle(script: Arc<Mutex<Script>>, uri: Uri, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let streaming = body["stream"].as_bool() == Some(true);
    let (reply, index) = {
        let mut script = script.lock().unwrap();
        let reply = script.queue.pop_front().unwrap_or_else(|| Reply::Stream {
            pieces: echo_pieces(&last_user_message(&body)),
            delay: Duration::ZERO,
            hold: None,
        });
        script.requests.push(Recorded {
            path: uri.path().to_owned(),
            body,
            piece_sent_at: Vec::new(),
        });
        (reply, script.requests.len() - 1)
    };
    match reply {
        Reply::Hang => std::future::pending().await,
        Reply::Stream { pieces, .. } if !streaming => json_answer(&pieces.concat()),
        Reply::Stream {
            pieces,
            delay,
            hold,
        } => event_stream(script, index, pieces, delay, hold),
    }
}

fn json_answer(text: &str) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        })
        .to_string(),
    )
        .into_response()
}

fn frame(delta: Value, finish: Value) -> Bytes {
    Bytes::from(format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    ))
}

struct StreamState {
    script: Arc<Mutex<Script>>,
    request: usize,
    pieces: VecDeque<String>,
    sent: usize,
    delay: Duration,
    hold: Option<(usize, Gate)>,
    opened: bool,
    finished: bool,
}

fn event_stream(
    script: Arc<Mutex<Script>>,
    request: usize,
    pieces: Vec<String>,
    delay: Duration,
    hold: Option<(usize, Gate)>,
) -> Response {
    let state = StreamState {
        script,
        request,
        pieces: pieces.into(),
        sent: 0,
        delay,
        hold,
        opened: false,
        finished: false,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        if !state.opened {
            state.opened = true;
            let opening = frame(json!({"role": "assistant", "content": ""}), Value::Null);
            return Some((Ok::<Bytes, std::io::Error>(opening), state));
        }
        if state.finished {
            return None;
        }
        if let Some((after, gate)) = &state.hold {
            if state.sent == *after {
                gate.wait().await;
            }
        }
        match state.pieces.pop_front() {
            Some(piece) => {
                if !state.delay.is_zero() {
                    tokio::time::sleep(state.delay).await;
                }
                state.sent += 1;
                state.script.lock().unwrap().requests[state.request]
                    .piece_sent_at
                    .push(Instant::now());
                Some((Ok(frame(json!({"content": piece}), Value::Null)), state))
            }
            None => {
                state.finished = true;
                let mut end = frame(json!({}), json!("stop")).to_vec();
                end.extend_from_slice(b"data: [DONE]\n\n");
                Some((Ok(Bytes::from(end)), state))
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .expect("event stream response")
}
