//! A fake OpenAI-compatible chat-completions server on 127.0.0.1: a real HTTP server (not a
//! mock inside the process under test), for the black-box tests and for the bench.
//!
//! Each request takes the next scripted [`Behaviour`] from a queue, or the default one. A
//! streamed reply is a [`Stream`]: its frames prepared once, an optional pause before each
//! piece, an optional [`Gate`] holding it after some pieces until the test releases it, and
//! how it ends (done, hanging, or cut off). A recording fake ([`FakeLlm::start`]) keeps every
//! request (path, query, headers, JSON body, arrival time, and when each streamed piece was
//! handed to the connection) so tests can assert what the chat server sent upstream; the
//! bench's fake ([`FakeLlm::start_on`] without recording) parses no request, so a long
//! prompt costs it nothing but a scan for `"stream":true`.
//!
//! Usage reports are an option ([`FakeLlm::reports_usage`]): off by default (no `usage`
//! anywhere, as some OpenAI-compatible servers do); on, a non-streamed answer carries the
//! given `usage`, and a streamed reply ends with OpenAI's usage chunk (`choices: []`,
//! `usage`) before `[DONE]`, only when the request asked for it with
//! `stream_options: {include_usage: true}` (as the OpenAI API does).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Text in every upstream error body: a test checks that it never reaches a client.
pub const UPSTREAM_SECRET: &str = "UPSTREAM-SECRET-DETAIL-7f3a";

/// The reply the fake streams when nothing else was scripted.
pub const DEFAULT_PIECES: [&str; 4] = ["Hello", " from", " the fake", " model."];

/// `&["a", "b"]` as owned strings.
pub fn pieces(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| (*part).to_owned()).collect()
}

/// An echo of a user message: `You said: <message>` in four pieces.
pub fn echo_pieces(message: &str) -> Vec<String> {
    pieces(&["You", " said", ": ", message])
}

/// Token counts the fake reports as the upstream's `usage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
        }
    }

    fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// Lets a held reply go on. Cheap to clone; every clone opens the same gate.
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

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

/// What the fake does with one request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Streamed deltas when the request asks for `stream: true`, else one JSON body holding
    /// their concatenation. No deltas: an empty reply (`FakeLlm::replies_empty`).
    Stream(Vec<String>),
    /// A non-streaming JSON body, even when streaming was asked for.
    Reply(String),
    /// This status with a JSON error body carrying [`UPSTREAM_SECRET`].
    Fail(u16),
    /// 429 with `Retry-After: secs`.
    RateLimited(u64),
    /// This redirect status (307, 308 keep the method and body) to this `Location`.
    Redirect(u16, String),
    /// Accepts the request and never answers (not even headers).
    Hang,
    /// Sends these deltas, then neither sends more nor ends the response.
    StreamThenHang(Vec<String>),
    /// Sends these deltas, then aborts the connection mid-body.
    StreamThenCut(Vec<String>),
    /// 200 with a body that is neither valid JSON nor a valid event stream.
    Malformed,
    /// Streams the deltas with this pause before each one (a non-streaming request gets the
    /// concatenation after one pause).
    SlowStream(Vec<String>, Duration),
    /// Streams the deltas, stopping after the first `.1` of them until the gate opens.
    Held(Vec<String>, usize, Gate),
    /// A stream described in full (the bench's: prepared once, paced, lean framing).
    Prepared(Stream),
}

impl Behaviour {
    /// `pieces`, each after `delay`.
    pub fn slow(pieces: Vec<String>, delay: Duration) -> Behaviour {
        Behaviour::SlowStream(pieces, delay)
    }

    /// `parts`, holding after the first `sent_before_hold` of them until `gate` opens.
    pub fn held(parts: &[&str], sent_before_hold: usize, gate: &Gate) -> Behaviour {
        Behaviour::Held(pieces(parts), sent_before_hold, gate.clone())
    }
}

/// How the frames of a streamed reply (and the non-streamed answer) look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// As the OpenAI API sends them: `id` and `object` on every chunk, an opening role-only
    /// delta, a closing `finish_reason: "stop"` chunk, then `data: [DONE]`.
    OpenAi,
    /// Only what the server needs: one `{"choices":[{"index":0,"delta":{"content":..}}]}`
    /// per piece, then `data: [DONE]` (the bench's, so the fake costs the server little).
    Lean,
}

/// The bytes of one reply, prepared once.
#[derive(Debug)]
pub struct Frames {
    /// Sent at once when the response starts (the OpenAI framing's role-only delta).
    opening: Option<Bytes>,
    /// One SSE event per piece.
    pieces: Vec<Bytes>,
    /// After the last piece of a reply that ends normally, in one write.
    closing: Bytes,
    /// The whole event stream in one buffer, for a reply that nothing paces.
    whole_stream: Bytes,
    /// The answer to a request that did not ask for streaming.
    answer: Bytes,
}

impl Frames {
    pub fn new(pieces: &[String], framing: Framing) -> Frames {
        Frames::with_usage(pieces, framing, None)
    }

    /// Frames whose answer carries `usage`, and whose stream ends with OpenAI's usage chunk
    /// (before the closing frames) when there is one.
    pub fn with_usage(pieces: &[String], framing: Framing, usage: Option<Usage>) -> Frames {
        let event = |value: Value| Bytes::from(format!("data: {value}\n\n"));
        let (opening, piece_frames, closing) = match framing {
            Framing::OpenAi => {
                let chunk = |delta: Value, finish: Value| {
                    event(
                        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
                    )
                };
                let mut closing = chunk(json!({}), json!("stop")).to_vec();
                if let Some(usage) = usage {
                    closing.extend_from_slice(&event(json!({
                        "id": "chatcmpl-fake", "object": "chat.completion.chunk",
                        "choices": [], "usage": usage.json(),
                    })));
                }
                closing.extend_from_slice(b"data: [DONE]\n\n");
                (
                    Some(chunk(
                        json!({"role": "assistant", "content": ""}),
                        Value::Null,
                    )),
                    pieces
                        .iter()
                        .map(|piece| chunk(json!({"content": piece}), Value::Null))
                        .collect(),
                    Bytes::from(closing),
                )
            }
            Framing::Lean => (
                None,
                pieces
                    .iter()
                    .map(|piece| {
                        event(json!({"choices": [{"index": 0, "delta": {"content": piece}}]}))
                    })
                    .collect::<Vec<_>>(),
                Bytes::from_static(b"data: [DONE]\n\n"),
            ),
        };
        let mut whole = Vec::new();
        for frame in opening.iter().chain(&piece_frames) {
            whole.extend_from_slice(frame);
        }
        whole.extend_from_slice(&closing);
        Frames {
            opening,
            pieces: piece_frames,
            closing,
            whole_stream: Bytes::from(whole),
            answer: answer(framing, &pieces.concat(), pieces.len(), usage),
        }
    }
}

/// The JSON answer to a request that did not ask for streaming (`pieces`: how many the
/// lean framing counts as completion tokens; the OpenAI framing carries `usage` if any).
fn answer(framing: Framing, text: &str, pieces: usize, usage: Option<Usage>) -> Bytes {
    let message = json!([{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]);
    let body = match framing {
        Framing::OpenAi => {
            let mut body = json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": "fake-model",
                "choices": message,
            });
            if let Some(usage) = usage {
                body["usage"] = usage.json();
            }
            body
        }
        Framing::Lean => json!({
            "choices": message,
            "usage": {"prompt_tokens": 1, "completion_tokens": pieces, "total_tokens": pieces + 1}
        }),
    };
    Bytes::from(body.to_string())
}

/// How a streamed reply ends once its pieces are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The closing frames, then the end of the response.
    Done,
    /// Nothing more, the response left open.
    Hang,
    /// The connection is aborted mid-body.
    Cut,
}

/// A streamed reply in full.
#[derive(Clone, Debug)]
pub struct Stream {
    pub frames: Arc<Frames>,
    /// Before each piece.
    pub delay: Duration,
    /// Once before the first piece (on top of `delay`).
    pub first_delay: Duration,
    /// Before the answer to a request that did not ask for streaming.
    pub answer_delay: Duration,
    /// Stop after this many pieces until the gate opens.
    pub hold: Option<(usize, Gate)>,
    pub end: End,
}

impl Stream {
    /// These pieces, unpaced, ending normally.
    pub fn new(pieces: &[String], framing: Framing) -> Stream {
        Stream {
            frames: Arc::new(Frames::new(pieces, framing)),
            delay: Duration::ZERO,
            first_delay: Duration::ZERO,
            answer_delay: Duration::ZERO,
            hold: None,
            end: End::Done,
        }
    }

    fn openai(pieces: &[String], usage: Option<Usage>) -> Stream {
        Stream {
            frames: Arc::new(Frames::with_usage(pieces, Framing::OpenAi, usage)),
            ..Stream::new(&[], Framing::OpenAi)
        }
    }

    fn paced(&self) -> bool {
        !self.delay.is_zero() || !self.first_delay.is_zero() || self.hold.is_some()
    }
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
    /// When each streamed piece was handed to the connection (index = piece index).
    pub piece_sent_at: Vec<Instant>,
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

    /// Whether the request asked for the usage chunk (`stream_options.include_usage`).
    pub fn asks_for_usage(&self) -> bool {
        self.body
            .get("stream_options")
            .and_then(|options| options.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true)
    }

    /// The `messages` array (empty when missing).
    pub fn messages(&self) -> Vec<Value> {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Every `content` of the `messages` array, in order.
    pub fn contents(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter_map(|message| message.get("content").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
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

    /// The `content` of the last message with role `user`, or "".
    pub fn last_user_message(&self) -> String {
        self.messages()
            .iter()
            .rev()
            .find(|message| message["role"] == "user")
            .and_then(|message| message["content"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// Every message content joined with newlines.
    pub fn prompt_text(&self) -> String {
        self.contents().join("\n")
    }
}

type DecideFn = Arc<dyn Fn(&RecordedRequest) -> Behaviour + Send + Sync>;

#[derive(Clone)]
enum Fallback {
    Fixed(Behaviour),
    Decide(DecideFn),
}

struct Script {
    queue: VecDeque<Behaviour>,
    default: Fallback,
    requests: Vec<RecordedRequest>,
    /// Reported with every answer from now on (see [`FakeLlm::reports_usage`]).
    usage: Option<Usage>,
}

struct State {
    script: Mutex<Script>,
    recording: bool,
}

/// Handle to a running fake; cheap to clone. The server stops when the last handle drops.
#[derive(Clone)]
pub struct FakeLlm {
    addr: SocketAddr,
    state: Arc<State>,
    _server: Arc<ServerTask>,
}

struct ServerTask(JoinHandle<()>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl FakeLlm {
    /// A recording fake on 127.0.0.1 with a free port. Default: streams [`DEFAULT_PIECES`].
    pub async fn start() -> FakeLlm {
        FakeLlm::start_on(0, true)
            .await
            .expect("fake LLM binds 127.0.0.1:0")
    }

    /// A fake on 127.0.0.1:`port` (0: a free one). Without `recording` it keeps no request
    /// and parses none (and [`FakeLlm::set_default_fn`] is refused).
    pub async fn start_on(port: u16, recording: bool) -> std::io::Result<FakeLlm> {
        let state = Arc::new(State {
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                default: Fallback::Fixed(Behaviour::Stream(pieces(&DEFAULT_PIECES))),
                requests: Vec::new(),
                usage: None,
            }),
            recording,
        });
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let addr = listener.local_addr()?;
        let handler_state = state.clone();
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .fallback(
                move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let state = handler_state.clone();
                    async move { handle(state, method, uri, headers, body).await }
                },
            );
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("fake LLM serves");
        });
        Ok(FakeLlm {
            addr,
            state,
            _server: Arc::new(ServerTask(server)),
        })
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

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.state.script.lock().unwrap()
    }

    /// The next request (not yet received) gets `behaviour`.
    pub fn push(&self, behaviour: Behaviour) -> &Self {
        self.script().queue.push_back(behaviour);
        self
    }

    /// Next request: stream these pieces.
    pub fn streams(&self, parts: &[&str]) -> &Self {
        self.push(Behaviour::Stream(pieces(parts)))
    }

    /// Next request: a well-formed reply with no text at all (a streamed one is the opening
    /// role-only delta, the closing `finish_reason` chunk and `[DONE]`; a non-streamed one
    /// has `content: ""`).
    pub fn replies_empty(&self) -> &Self {
        self.push(Behaviour::Stream(Vec::new()))
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

    /// Next request: redirected (`status`, e.g. 307) to `location`.
    pub fn redirects(&self, status: u16, location: &str) -> &Self {
        self.push(Behaviour::Redirect(status, location.to_owned()))
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

    /// From now on every answer reports `usage` (`None`: none does): a non-streamed answer in
    /// its `usage` field, a streamed reply that ends normally in a last usage chunk, when the
    /// request asked for it (`stream_options: {include_usage: true}`).
    pub fn reports_usage(&self, usage: Option<Usage>) -> &Self {
        self.script().usage = usage;
        self
    }

    /// The behaviour once the queue is empty.
    pub fn set_default(&self, behaviour: Behaviour) {
        self.script().default = Fallback::Fixed(behaviour);
    }

    /// A default that depends on the request (e.g. summarisation versus chat).
    pub fn set_default_fn(
        &self,
        decide: impl Fn(&RecordedRequest) -> Behaviour + Send + Sync + 'static,
    ) {
        assert!(
            self.state.recording,
            "a fake LLM that does not record requests cannot decide on them"
        );
        self.script().default = Fallback::Decide(Arc::new(decide));
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.script().requests.clone()
    }

    pub fn call_count(&self) -> usize {
        self.script().requests.len()
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
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Where a streamed reply notes when each piece went out: (state, request index).
type Recorder = Option<(Arc<State>, usize)>;

async fn handle(
    state: Arc<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.recording {
        let (behaviour, usage) = {
            let mut script = state.script.lock().unwrap();
            let behaviour = match script.queue.pop_front() {
                Some(behaviour) => behaviour,
                None => match &script.default {
                    Fallback::Fixed(behaviour) => behaviour.clone(),
                    Fallback::Decide(_) => unreachable!("refused by set_default_fn"),
                },
            };
            (behaviour, script.usage)
        };
        let streaming = asks_for_streaming(&body);
        // Only when usage is on does the body get a second scan.
        let usage = usage.filter(|_| !streaming || scan(&body, &[b"\"include_usage\":true"]));
        return respond(behaviour, streaming, usage, None).await;
    }
    let request = RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        received_at: Instant::now(),
        piece_sent_at: Vec::new(),
    };
    let streaming = request.is_streaming();
    let asks_for_usage = request.asks_for_usage();
    let (behaviour, usage, index) = {
        let mut script = state.script.lock().unwrap();
        let behaviour = match script.queue.pop_front() {
            Some(behaviour) => behaviour,
            None => match &script.default {
                Fallback::Fixed(behaviour) => behaviour.clone(),
                Fallback::Decide(decide) => decide(&request),
            },
        };
        script.requests.push(request);
        let usage = script.usage.filter(|_| !streaming || asks_for_usage);
        (behaviour, usage, script.requests.len() - 1)
    };
    respond(behaviour, streaming, usage, Some((state, index))).await
}

/// `"stream":true` in a body the fake does not parse. From the end: the server writes
/// `stream` last, after the whole history, and a forward scan of a long prompt made the
/// bench's fake LLM a visible share of the machine's CPU.
fn asks_for_streaming(body: &[u8]) -> bool {
    scan(body, &[b"\"stream\":true", b"\"stream\": true"])
}

/// Whether any of `needles` is in `body`, looking from the end.
fn scan(body: &[u8], needles: &[&[u8]]) -> bool {
    needles.iter().any(|needle| {
        body.windows(needle.len())
            .rev()
            .any(|window| window == *needle)
    })
}

/// Answers with `behaviour`; `usage`: what this answer reports (already `None` for a
/// streamed request that did not ask for it).
async fn respond(
    behaviour: Behaviour,
    streaming: bool,
    usage: Option<Usage>,
    recorder: Recorder,
) -> Response {
    let stream = match behaviour {
        Behaviour::Stream(parts) => Stream::openai(&parts, usage),
        Behaviour::Reply(text) => {
            return json_body(
                StatusCode::OK,
                &[],
                answer(Framing::OpenAi, &text, 1, usage),
            )
        }
        Behaviour::Fail(status) => {
            let error = json!({"error": {"message": format!("{UPSTREAM_SECRET}: model exploded"), "type": "server_error"}});
            let status = StatusCode::from_u16(status).expect("valid status");
            return json_body(status, &[], Bytes::from(error.to_string()));
        }
        Behaviour::RateLimited(secs) => {
            let error = json!({"error": {"message": format!("{UPSTREAM_SECRET}: slow down"), "type": "rate_limit"}});
            let retry_after = [("retry-after", secs.to_string())];
            return json_body(
                StatusCode::TOO_MANY_REQUESTS,
                &retry_after,
                Bytes::from(error.to_string()),
            );
        }
        Behaviour::Redirect(status, location) => {
            let status = StatusCode::from_u16(status).expect("valid status");
            return json_body(status, &[("location", location)], Bytes::from_static(b"{}"));
        }
        Behaviour::Hang => std::future::pending().await,
        Behaviour::StreamThenHang(parts) => Stream {
            end: End::Hang,
            ..Stream::openai(&parts, usage)
        },
        Behaviour::StreamThenCut(parts) => Stream {
            end: End::Cut,
            ..Stream::openai(&parts, usage)
        },
        Behaviour::Malformed => {
            let garbage = Bytes::from_static(b"<html>this is {{ not a chat completion");
            return json_body(StatusCode::OK, &[], garbage);
        }
        Behaviour::SlowStream(parts, delay) => Stream {
            delay,
            answer_delay: delay,
            ..Stream::openai(&parts, usage)
        },
        Behaviour::Held(parts, after, gate) => Stream {
            hold: Some((after, gate)),
            ..Stream::openai(&parts, usage)
        },
        Behaviour::Prepared(stream) => stream,
    };
    // A reply that ends normally answers a non-streaming request with one JSON body.
    if !streaming && stream.end == End::Done {
        if !stream.answer_delay.is_zero() {
            tokio::time::sleep(stream.answer_delay).await;
        }
        return json_body(StatusCode::OK, &[], stream.frames.answer.clone());
    }
    event_stream(stream, recorder)
}

fn json_body(status: StatusCode, headers: &[(&'static str, String)], body: Bytes) -> Response {
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        response = response.header(*name, value);
    }
    response.body(Body::from(body)).expect("JSON response")
}

/// Where a streamed reply is.
struct StreamState {
    stream: Stream,
    recorder: Recorder,
    opened: bool,
    sent: usize,
    finished: bool,
}

fn event_stream(stream: Stream, recorder: Recorder) -> Response {
    let body = if !stream.paced() && stream.end == End::Done && recorder.is_none() {
        // Nothing waits between frames: the whole body in one write.
        Body::from(stream.frames.whole_stream.clone())
    } else {
        let state = StreamState {
            stream,
            recorder,
            opened: false,
            sent: 0,
            finished: false,
        };
        Body::from_stream(futures_util::stream::unfold(state, next_frame))
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("event stream response")
}

async fn next_frame(
    mut state: StreamState,
) -> Option<(Result<Bytes, std::io::Error>, StreamState)> {
    if !state.opened {
        state.opened = true;
        if let Some(opening) = &state.stream.frames.opening {
            return Some((Ok(opening.clone()), state));
        }
    }
    if state.finished {
        return None;
    }
    let stream = &state.stream;
    if let Some((after, gate)) = &stream.hold {
        if state.sent == *after {
            gate.wait().await;
        }
    }
    if let Some(piece) = stream.frames.pieces.get(state.sent) {
        let piece = piece.clone();
        if state.sent == 0 && !stream.first_delay.is_zero() {
            tokio::time::sleep(stream.first_delay).await;
        }
        if !stream.delay.is_zero() {
            tokio::time::sleep(stream.delay).await;
        }
        if let Some((recorded, index)) = &state.recorder {
            recorded.script.lock().unwrap().requests[*index]
                .piece_sent_at
                .push(Instant::now());
        }
        state.sent += 1;
        return Some((Ok(piece), state));
    }
    state.finished = true;
    match stream.end {
        End::Done => Some((Ok(stream.frames.closing.clone()), state)),
        End::Hang => std::future::pending().await,
        End::Cut => {
            // Let the pieces reach the client before the connection is aborted (hyper drops
            // unflushed data when a body fails).
            tokio::time::sleep(Duration::from_millis(300)).await;
            Some((
                Err(std::io::Error::other("fake LLM cuts the stream")),
                state,
            ))
        }
    }
}
