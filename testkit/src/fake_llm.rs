//! A fake OpenAI-compatible chat-completions server on 127.0.0.1 (a real HTTP server, not a
//! mock inside the process under test). Each test scripts it with a queue of behaviours, used
//! one per request, then a default; every request is recorded (path, query, headers, JSON
//! body, arrival time) so tests can assert what the chat server sent upstream.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// Text in every upstream error body: a test checks that it never reaches a client.
pub const UPSTREAM_SECRET: &str = "UPSTREAM-SECRET-DETAIL-7f3a";

/// What the fake does with one request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Streamed deltas when the request asks for `stream: true`, else one JSON body holding
    /// their concatenation.
    Stream(Vec<String>),
    /// A non-streaming JSON body, even when streaming was asked for.
    Reply(String),
    /// This status with a JSON error body carrying [`UPSTREAM_SECRET`].
    Fail(u16),
    /// 429 with `Retry-After: secs`.
    RateLimited(u64),
    /// Accepts the request and never answers.
    Hang,
    /// Sends these deltas, then neither sends more nor ends the response.
    StreamThenHang(Vec<String>),
    /// Sends these deltas, then aborts the connection mid-body.
    StreamThenCut(Vec<String>),
    /// 200 with a body that is neither valid JSON nor a valid event stream.
    Malformed,
    /// Streams the deltas with this pause before each one.
    SlowStream(Vec<String>, Duration),
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The JSON body (`Value::Null` when the body was not JSON).
    pub body: Value,
    pub received_at: Instant,
}

impl RecordedRequest {
    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|value| value.to_str().unwrap_or("<non-ascii>").to_owned())
    }

    /// Whether the request asked for a streamed answer.
    pub fn is_streaming(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool) == Some(true)
    }

    /// The `messages` array (empty when missing).
    pub fn messages(&self) -> Vec<Value> {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The `content` of the last message, or "".
    pub fn last_message_content(&self) -> String {
        self.messages()
            .last()
            .and_then(|message| message.get("content"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    /// Every message content joined with newlines.
    pub fn prompt_text(&self) -> String {
        self.messages()
            .iter()
            .filter_map(|message| message.get("content").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

type DefaultFn = Arc<dyn Fn(&RecordedRequest) -> Behaviour + Send + Sync>;

struct Script {
    queue: VecDeque<Behaviour>,
    default: DefaultFn,
    requests: Vec<RecordedRequest>,
}

/// Handle to a running fake; cheap to clone. The server stops when the last handle drops.
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

/// The reply the fake streams when nothing else was scripted.
pub const DEFAULT_PIECES: [&str; 4] = ["Hello", " from", " the fake", " model."];

impl FakeLlm {
    /// Starts a fake on 127.0.0.1 with a free port. Default: streams [`DEFAULT_PIECES`].
    pub async fn start() -> FakeLlm {
        let script = Arc::new(Mutex::new(Script {
            queue: VecDeque::new(),
            default: Arc::new(|_| Behaviour::Stream(pieces(&DEFAULT_PIECES))),
            requests: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake LLM binds 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake LLM address");
        let state = script.clone();
        let router = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { handle(state, method, uri, headers, body).await }
            },
        );
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

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, the value for `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn push(&self, behaviour: Behaviour) -> &Self {
        self.script.lock().unwrap().queue.push_back(behaviour);
        self
    }

    /// Next request: stream these pieces.
    pub fn streams(&self, parts: &[&str]) -> &Self {
        self.push(Behaviour::Stream(pieces(parts)))
    }

    /// Next request: one non-streaming JSON answer.
    pub fn replies(&self, text: &str) -> &Self {
        self.push(Behaviour::Reply(text.to_owned()))
    }

    /// Next request: fail with this status.
    pub fn fails_with(&self, status: u16) -> &Self {
        self.push(Behaviour::Fail(status))
    }

    /// Next request: 429 with `Retry-After`.
    pub fn rate_limited(&self, retry_after_secs: u64) -> &Self {
        self.push(Behaviour::RateLimited(retry_after_secs))
    }

    /// Next request: never answered.
    pub fn hangs(&self) -> &Self {
        self.push(Behaviour::Hang)
    }

    /// Next request: these pieces, then silence with the response left open.
    pub fn stream_then_hang(&self, parts: &[&str]) -> &Self {
        self.push(Behaviour::StreamThenHang(pieces(parts)))
    }

    /// Next request: these pieces, then the connection is aborted.
    pub fn stream_then_cut(&self, parts: &[&str]) -> &Self {
        self.push(Behaviour::StreamThenCut(pieces(parts)))
    }

    /// Next request: 200 with a garbage body.
    pub fn malformed(&self) -> &Self {
        self.push(Behaviour::Malformed)
    }

    /// Next request: these pieces, each after `delay`.
    pub fn slow_stream(&self, parts: &[&str], delay: Duration) -> &Self {
        self.push(Behaviour::SlowStream(pieces(parts), delay))
    }

    /// The behaviour once the queue is empty.
    pub fn set_default(&self, behaviour: Behaviour) {
        self.script.lock().unwrap().default = Arc::new(move |_| behaviour.clone());
    }

    /// A default that depends on the request (e.g. summarisation versus chat).
    pub fn set_default_fn(
        &self,
        decide: impl Fn(&RecordedRequest) -> Behaviour + Send + Sync + 'static,
    ) {
        self.script.lock().unwrap().default = Arc::new(decide);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.script.lock().unwrap().requests.clone()
    }

    pub fn call_count(&self) -> usize {
        self.script.lock().unwrap().requests.len()
    }

    /// Waits (bounded) until at least `count` requests arrived.
    pub async fn wait_for_calls(&self, count: usize, timeout: Duration) -> Vec<RecordedRequest> {
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
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `&["a", "b"]` as owned strings.
pub fn pieces(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| (*part).to_owned()).collect()
}

async fn handle(
    script: Arc<Mutex<Script>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        received_at: Instant::now(),
    };
    let behaviour = {
        let mut script = script.lock().unwrap();
        script.requests.push(request.clone());
        match script.queue.pop_front() {
            Some(behaviour) => behaviour,
            None => (script.default)(&request),
        }
    };
    respond(behaviour, request.is_streaming()).await
}

async fn respond(behaviour: Behaviour, streaming: bool) -> Response {
    match behaviour {
        Behaviour::Stream(parts) if streaming => event_stream(parts, Duration::ZERO, End::Done),
        Behaviour::Stream(parts) => json_answer(&parts.concat()),
        Behaviour::Reply(text) => json_answer(&text),
        Behaviour::Fail(status) => (
            StatusCode::from_u16(status).expect("valid status"),
            [("content-type", "application/json")],
            json!({"error": {"message": format!("{UPSTREAM_SECRET}: model exploded"), "type": "server_error"}})
                .to_string(),
        )
            .into_response(),
        Behaviour::RateLimited(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("content-type", "application/json".to_owned()), ("retry-after", secs.to_string())],
            json!({"error": {"message": format!("{UPSTREAM_SECRET}: slow down"), "type": "rate_limit"}})
                .to_string(),
        )
            .into_response(),
        Behaviour::Hang => std::future::pending().await,
        Behaviour::StreamThenHang(parts) => event_stream(parts, Duration::ZERO, End::Hang),
        Behaviour::StreamThenCut(parts) => event_stream(parts, Duration::ZERO, End::Cut),
        Behaviour::Malformed => (
            StatusCode::OK,
            [("content-type", "application/json")],
            "<html>this is {{ not a chat completion",
        )
            .into_response(),
        Behaviour::SlowStream(parts, delay) if streaming => event_stream(parts, delay, End::Done),
        Behaviour::SlowStream(parts, delay) => {
            tokio::time::sleep(delay).await;
            json_answer(&parts.concat())
        }
    }
}

fn json_answer(text: &str) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        })
        .to_string(),
    )
        .into_response()
}

#[derive(Clone, Copy)]
enum End {
    Done,
    Hang,
    Cut,
}

struct StreamState {
    frames: VecDeque<Bytes>,
    delay: Duration,
    end: End,
    finished: bool,
    sent: usize,
}

fn event_stream(parts: Vec<String>, delay: Duration, end: End) -> Response {
    let mut frames: VecDeque<Bytes> = VecDeque::new();
    frames.push_back(Bytes::from(format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]})
    )));
    for part in parts {
        frames.push_back(Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {"content": part}, "finish_reason": null}]})
        )));
    }
    if matches!(end, End::Done) {
        frames.push_back(Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        )));
        frames.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    let state = StreamState {
        frames,
        delay,
        end,
        finished: false,
        sent: 0,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        if state.finished {
            return None;
        }
        match state.frames.pop_front() {
            Some(frame) => {
                // The opening role-only frame goes out at once; each later frame waits.
                if state.sent > 0 && !state.delay.is_zero() {
                    tokio::time::sleep(state.delay).await;
                }
                state.sent += 1;
                Some((Ok::<Bytes, std::io::Error>(frame), state))
            }
            None => match state.end {
                End::Done => None,
                End::Hang => std::future::pending().await,
                End::Cut => {
                    // Let the pieces reach the client before the connection is aborted
                    // (hyper drops unflushed data when a body fails).
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    state.finished = true;
                    Some((
                        Err(std::io::Error::other("fake LLM cuts the stream")),
                        state,
                    ))
                }
            },
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .expect("event stream response")
}
