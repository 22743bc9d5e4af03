//! The HTTP client for OpenAI-compatible chat completions (Azure OpenAI
//! included): one `reqwest::Client`, streaming SSE, timeouts for connect,
//! first byte and between chunks, and retries with backoff that honour
//! `Retry-After`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{RequestBuilder, Response, StatusCode};

use super::model::{
    ChatModel, ChatRequest, ChunkStream, Completion, Delta, LlmError, Messages, ModelInfo,
};
use super::sse::{completion, parse_line, take_lines, SseItem};
use crate::config::{AzureAuth, LlmProvider, ModelSpec, Settings};

/// The chat completions request body, written by hand around the
/// messages' cached JSON forms ([`ChatMessage::wire`]): a turn copies the
/// history's bytes instead of escaping its text again, and whole runs of
/// the history go in as the buffers they are kept in
/// ([`Messages::write_json_array`]), not copied at all. The buffers, in
/// order, and their total length.
///
/// [`ChatMessage::wire`]: crate::domain::ChatMessage::wire
/// [`Messages::write_json_array`]: super::model::Messages::write_json_array
fn chat_body(
    model: Option<&str>,
    messages: &super::model::Messages,
    max_tokens: u32,
    temperature: f32,
    top_p: f32,
    stream: bool,
    include_usage: bool,
) -> (Vec<Bytes>, usize) {
    let mut body = super::model::WireBody::default();
    body.raw(b"{");
    if let Some(model) = model {
        body.raw(b"\"model\":");
        // A string always serialises.
        body.raw(&serde_json::to_vec(model).unwrap_or_default());
        body.raw(b",");
    }
    body.raw(b"\"messages\":");
    messages.write_json_array(&mut body);
    let number = |x: f32| serde_json::to_string(&x).unwrap_or_else(|_| "null".into());
    body.raw(
        format!(
            ",\"max_tokens\":{max_tokens},\"temperature\":{},\"top_p\":{},",
            number(temperature),
            number(top_p),
        )
        .as_bytes(),
    );
    if stream && include_usage {
        body.raw(b"\"stream_options\":{\"include_usage\":true},");
    }
    // `stream` stays last: the bench's fake LLM looks for it from the end.
    body.raw(format!("\"stream\":{stream}}}").as_bytes());
    body.finish()
}

/// Whether to ask for the usage chunk in streamed replies when
/// `LLM_STREAM_USAGE=auto`: OpenAI and the servers that copy its API take
/// `stream_options`; Azure OpenAI refuses it ("Unknown parameter") before
/// API version 2024-08-01(-preview), and takes it in later ones and in the
/// v1 API (no `api-version`).
pub fn stream_usage_by_default(provider: &LlmProvider) -> bool {
    match provider {
        LlmProvider::Azure { url, .. } => {
            let version = url
                .split(['?', '&'])
                .find_map(|pair| pair.strip_prefix("api-version="));
            match version {
                None => true,
                Some(version) => version.get(..10).is_some_and(|date| date >= "2024-08-01"),
            }
        }
        LlmProvider::OpenAi { .. } => true,
        LlmProvider::Demo => false,
    }
}

/// A client for one configured endpoint.
pub struct OpenAiClient {
    http: reqwest::Client,
    url: String,
    headers: HeaderMap,
    model: Option<String>,
    provider: &'static str,
    temperature: f32,
    top_p: f32,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    max_attempts: u32,
    retry_max_wait: Duration,
    /// Ask for `stream_options.include_usage`; cleared for good when the
    /// upstream refuses the parameter.
    stream_usage: AtomicBool,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl OpenAiClient {
    /// Builds the client for a model of an `Azure` or `OpenAi` provider.
    pub fn new(
        settings: &Settings,
        spec: &ModelSpec,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Self> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let bearer = |key: &str| -> anyhow::Result<HeaderValue> {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                anyhow::anyhow!("the API key contains characters not allowed in a header")
            })?;
            value.set_sensitive(true);
            Ok(value)
        };
        let (url, model, provider) = match &spec.provider {
            LlmProvider::Azure { url, key, auth } => {
                match auth {
                    AzureAuth::Bearer => {
                        headers.insert(AUTHORIZATION, bearer(key.expose())?);
                    }
                    AzureAuth::ApiKey => {
                        let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
                            anyhow::anyhow!("API_KEY contains characters not allowed in a header")
                        })?;
                        value.set_sensitive(true);
                        headers.insert("api-key", value);
                    }
                }
                (url.clone(), None, "azure")
            }
            LlmProvider::OpenAi {
                base_url,
                key,
                model,
            } => {
                if !key.expose().is_empty() {
                    headers.insert(AUTHORIZATION, bearer(key.expose())?);
                }
                (
                    format!("{base_url}/chat/completions"),
                    Some(model.clone()),
                    "openai",
                )
            }
            LlmProvider::Demo => anyhow::bail!("the demo provider has no HTTP client"),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("llm-chat-server/", env!("CARGO_PKG_VERSION")))
            // The key header would follow a redirect to wherever it points;
            // a 3xx is an upstream failure instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            url,
            headers,
            model,
            provider,
            temperature: spec.temperature,
            top_p: settings.top_p,
            first_byte_timeout: settings.first_byte_timeout,
            idle_timeout: settings.idle_timeout,
            max_attempts: settings.max_attempts,
            retry_max_wait: settings.retry_max_wait,
            stream_usage: AtomicBool::new(
                settings
                    .llm_stream_usage
                    .unwrap_or_else(|| stream_usage_by_default(&spec.provider)),
            ),
            metrics,
        })
    }

    fn request(&self, request: &ChatRequest, stream: bool) -> RequestBuilder {
        let body = chat_body(
            self.model.as_deref(),
            &request.messages,
            request.max_tokens,
            request.temperature.unwrap_or(self.temperature),
            self.top_p,
            stream,
            self.stream_usage.load(Ordering::Relaxed),
        );
        let (chunks, len) = body;
        let request = self.http.post(&self.url).headers(self.headers.clone());
        match <[Bytes; 1]>::try_from(chunks) {
            Ok([one]) => request.body(one),
            // Sent as they are, with their length (not chunked: some
            // endpoints refuse a chunked request body).
            Err(chunks) => request
                .header(CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
                ))),
        }
    }

    /// Sends with retries until a 2xx response's headers arrive.
    async fn send(&self, request: &ChatRequest, stream: bool) -> Result<Response, LlmError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = tokio::time::timeout(
                self.first_byte_timeout,
                self.request(request, stream).send(),
            )
            .await;
            self.metrics.llm_response(match &outcome {
                Ok(Ok(response)) => response.status().as_u16(),
                _ => 0,
            });
            let (error, wait_hint) = match outcome {
                Err(_) => (LlmError::Timeout(self.first_byte_timeout), None),
                Ok(Err(err)) if err.is_connect() || err.is_request() => {
                    (LlmError::Connect(without_url(&err)), None)
                }
                Ok(Err(err)) => return Err(LlmError::Connect(without_url(&err))),
                Ok(Ok(response)) if response.status().is_success() => return Ok(response),
                Ok(Ok(response)) => {
                    let status = response.status();
                    let hint = retry_after(response.headers());
                    // The body may explain (quota, bad deployment): log only.
                    let body = tokio::time::timeout(Duration::from_secs(2), response.text())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    if status.is_redirection() {
                        // Never followed: the key would go with it.
                        tracing::warn!(
                            status = status.as_u16(),
                            "the language model endpoint answered with a redirect, which is not followed (check its URL)"
                        );
                    } else {
                        tracing::warn!(
                            status = status.as_u16(),
                            attempt,
                            body = %loggable_error_body(&body, &request.messages),
                            "language model answered with an error"
                        );
                    }
                    if stream
                        && status == StatusCode::BAD_REQUEST
                        && body.contains("stream_options")
                        && self.stream_usage.swap(false, Ordering::Relaxed)
                    {
                        // An endpoint (an older Azure API version) that does
                        // not take the usage option: ask again without it,
                        // from now on; its tokens are counted here instead.
                        tracing::warn!("the language model refused stream_options; streamed usage is counted locally from now on (LLM_STREAM_USAGE=false says so at start)");
                        attempt -= 1;
                        continue;
                    }
                    let error = LlmError::Status {
                        status: status.as_u16(),
                    };
                    if !retryable(status) {
                        return Err(error);
                    }
                    (error, hint)
                }
            };
            // A hang is not worth repeating: the user has waited long enough.
            if attempt >= self.max_attempts || matches!(error, LlmError::Timeout(_)) {
                return Err(error);
            }
            let wait = wait_hint
                .unwrap_or_else(|| backoff(attempt))
                .min(self.retry_max_wait);
            tracing::info!(attempt, wait_ms = wait.as_millis() as u64, error = %error, "retrying language model request");
            crate::metrics::Metrics::inc(&self.metrics.llm_retries);
            tokio::time::sleep(wait).await;
        }
    }
}

/// Most characters of an upstream error body that are logged.
const LOGGED_BODY_CHARS: usize = 500;

/// A run of this many characters that is also in the prompt is the
/// prompt's text, echoed back.
const ECHO_RUN_CHARS: usize = 12;

/// What the prompt's text is logged as.
const PROMPT_MASK: &str = "[prompt text]";

/// An upstream error body as it may be logged: at most
/// [`LOGGED_BODY_CHARS`] characters, without the prompt's text, which
/// servers echo (a validation error quoting its `input`). In a JSON body,
/// a string that is a prompt message, or that shares a run of
/// [`ECHO_RUN_CHARS`] characters with one, is replaced by a mask; in any
/// other body such runs (and whole messages of 4 characters or more) are.
fn loggable_error_body(body: &str, prompt: &Messages) -> String {
    // Enough to fill the logged length even after masking.
    let body: String = body.chars().take(LOGGED_BODY_CHARS * 8).collect();
    let texts: Vec<&str> = prompt
        .iter()
        .map(|m| &*m.content)
        .filter(|t| !t.is_empty())
        .collect();
    let echo = EchoFinder::new(&texts);
    let masked = match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(mut value) => {
            mask_json(&mut value, &echo);
            value.to_string()
        }
        Err(_) => echo.mask_text(&body),
    };
    let mut logged: String = masked.chars().take(LOGGED_BODY_CHARS).collect();
    if logged.len() < masked.len() {
        logged.push('…');
    }
    logged
}

fn mask_json(value: &mut serde_json::Value, echo: &EchoFinder) {
    use serde_json::Value;
    match value {
        Value::String(text) if echo.is_prompt_text(text) => *text = PROMPT_MASK.to_string(),
        Value::Array(items) => items.iter_mut().for_each(|v| mask_json(v, echo)),
        Value::Object(fields) => fields.values_mut().for_each(|v| mask_json(v, echo)),
        _ => {}
    }
}

/// Finds the prompt's text in an upstream answer.
struct EchoFinder<'a> {
    messages: &'a [&'a str],
    /// Every run of [`ECHO_RUN_CHARS`] characters of the prompt.
    runs: std::collections::HashSet<&'a str>,
}

impl<'a> EchoFinder<'a> {
    fn new(messages: &'a [&'a str]) -> Self {
        let mut runs = std::collections::HashSet::new();
        for text in messages {
            let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            for n in 0..starts.len().saturating_sub(ECHO_RUN_CHARS - 1) {
                let end = starts
                    .get(n + ECHO_RUN_CHARS)
                    .copied()
                    .unwrap_or(text.len());
                runs.insert(&text[starts[n]..end]);
            }
        }
        Self { messages, runs }
    }

    /// Byte ranges of `text` that are runs of the prompt.
    fn echoed(&self, text: &str) -> Vec<std::ops::Range<usize>> {
        let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
        for n in 0..starts.len().saturating_sub(ECHO_RUN_CHARS - 1) {
            let end = starts
                .get(n + ECHO_RUN_CHARS)
                .copied()
                .unwrap_or(text.len());
            if self.runs.contains(&text[starts[n]..end]) {
                match ranges.last_mut() {
                    Some(last) if last.end >= starts[n] => last.end = end,
                    _ => ranges.push(starts[n]..end),
                }
            }
        }
        ranges
    }

    fn is_prompt_text(&self, text: &str) -> bool {
        self.messages.contains(&text) || !self.echoed(text).is_empty()
    }

    fn mask_text(&self, text: &str) -> String {
        let mut text = text.to_string();
        for message in self.messages.iter().filter(|m| m.chars().count() >= 4) {
            text = text.replace(message, PROMPT_MASK);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for range in self.echoed(&text) {
            out.push_str(&text[at..range.start]);
            out.push_str(PROMPT_MASK);
            at = range.end;
        }
        out.push_str(&text[at..]);
        out
    }
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// The error without the URL (which may carry a key in its query).
fn without_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(url.as_str(), "<llm url>");
    }
    text
}

/// `retry-after-ms` (Azure, OpenAI) or `Retry-After` in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// 0.5 s, 1 s, 2 s, ... with up to 25% jitter.
fn backoff(attempt: u32) -> Duration {
    let base = 0.5 * 2f64.powi(attempt.saturating_sub(1).min(6) as i32);
    let jitter = rand::rng().random_range(0.0..=base * 0.25);
    Duration::from_secs_f64(base + jitter)
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

#[async_trait]
impl ChatModel for OpenAiClient {
    async fn stream(&self, request: ChatRequest) -> Result<ChunkStream, LlmError> {
        let response = self.send(&request, true).await?;
        let idle = self.idle_timeout;
        if is_json(&response) {
            // The endpoint ignored `stream`: one whole reply, one chunk.
            let body = tokio::time::timeout(idle, response.bytes())
                .await
                .map_err(|_| LlmError::Timeout(idle))?
                .map_err(|e| LlmError::Interrupted(without_url(&e)))?;
            let Completion { text, usage } = completion(&body)?;
            let items = std::iter::once(Ok(Delta::Text(text)))
                .chain(usage.map(|usage| Ok(Delta::Usage(usage))));
            return Ok(Box::pin(futures_util::stream::iter(items)));
        }
        // Parsed in the consumer's task as it polls: no producer task and no
        // channel hop per chunk. Dropping the stream drops the body, which
        // closes the upstream connection.
        let state = SseState {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            pending: std::collections::VecDeque::new(),
            finished: false,
            idle,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |mut state| async move { state.next_item().await.map(|item| (item, state)) },
        )))
    }

    async fn complete(&self, request: ChatRequest) -> Result<Completion, LlmError> {
        let response = self.send(&request, false).await?;
        let body = tokio::time::timeout(self.idle_timeout, response.bytes())
            .await
            .map_err(|_| LlmError::Timeout(self.idle_timeout))?
            .map_err(|e| LlmError::Interrupted(without_url(&e)))?;
        completion(&body)
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            provider: self.provider,
            model: self
                .model
                .clone()
                .unwrap_or_else(|| "azure deployment".to_string()),
            demo: false,
        }
    }
}

type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A streamed reply being read: the body, a partial line, the deltas
/// already parsed and not yet handed out.
struct SseState {
    body: ByteStream,
    buffer: Vec<u8>,
    pending: std::collections::VecDeque<Result<Delta, LlmError>>,
    /// `[DONE]`, the end of the body or an error was seen: hand out what
    /// is pending, then end.
    finished: bool,
    idle: Duration,
}

impl SseState {
    async fn next_item(&mut self) -> Option<Result<Delta, LlmError>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            let next = match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => return self.fail(LlmError::Timeout(self.idle)),
                Ok(next) => next,
            };
            match next {
                None => {
                    // Closed without [DONE]: accept whatever was complete.
                    self.finished = true;
                    if !self.buffer.is_empty() {
                        self.buffer.push(b'\n');
                        self.parse_lines();
                    }
                }
                Some(Err(e)) => return self.fail(LlmError::Interrupted(without_url(&e))),
                Some(Ok(bytes)) => {
                    self.buffer.extend_from_slice(&bytes);
                    if self.buffer.len() > 4 * 1024 * 1024 {
                        return self.fail(LlmError::Decode("an event is larger than 4 MiB".into()));
                    }
                    self.parse_lines();
                }
            }
        }
    }

    /// Queues the texts of the buffer's complete lines; stops at `[DONE]`
    /// or at the first bad line (queued as the stream's last item).
    fn parse_lines(&mut self) {
        for line in take_lines(&mut self.buffer) {
            match parse_line(&line) {
                Ok(SseItem::Text(t)) if !t.is_empty() => self.pending.push_back(Ok(Delta::Text(t))),
                Ok(SseItem::WithUsage { text, usage }) => {
                    if !text.is_empty() {
                        self.pending.push_back(Ok(Delta::Text(text)));
                    }
                    self.pending.push_back(Ok(Delta::Usage(usage)));
                }
                Ok(SseItem::Done) => {
                    self.finished = true;
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    self.pending.push_back(Err(e));
                    self.finished = true;
                    return;
                }
            }
        }
    }

    /// Ends the stream with `error` after what was already parsed.
    fn fail(&mut self, error: LlmError) -> Option<Result<Delta, LlmError>> {
        self.finished = true;
        if self.pending.is_empty() {
            Some(Err(error))
        } else {
            self.pending.push_back(Err(error));
            self.pending.pop_front()
        }
    }
}

/// Sending half of a [`ChunkStream`] built by [`async_stream`].
pub(crate) struct ChunkSender(tokio::sync::mpsc::Sender<Result<Delta, LlmError>>);

impl ChunkSender {
    /// Sends text; `false` when the receiver is gone (cancelled).
    pub(crate) async fn text(&self, text: String) -> bool {
        self.0.send(Ok(Delta::Text(text))).await.is_ok()
    }
}

/// A stream fed by a producer task. Dropping the stream ends the task at its
/// next send (and with it the upstream connection it owns).
pub(crate) fn async_stream<F, Fut>(producer: F) -> ChunkStream
where
    F: FnOnce(ChunkSender) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(32);
    let task = tokio::spawn(producer(ChunkSender(tx)));
    let guard = AbortOnDrop(task);
    Box::pin(futures_util::stream::unfold(
        (rx, guard),
        |(mut rx, guard)| async move { rx.recv().await.map(|item| (item, (rx, guard))) },
    ))
}

/// Aborts the producer task when the consumer drops the stream, so an idle
/// upstream (no chunk to send) is closed at once rather than at its timeout.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(user: &str) -> Messages {
        use crate::domain::{ChatMessage, Role};
        vec![
            ChatMessage::new(Role::System, "You are a helpful assistant."),
            ChatMessage::new(Role::User, user),
        ]
        .into()
    }

    #[test]
    fn an_error_body_echoing_the_prompt_is_logged_without_it() {
        let secret =
            r#"my account number is 4242-1111 and my \"password\" is hunter2, \u00e9t\u00e9"#;
        let decoded: String = serde_json::from_str(&format!("\"{secret}\"")).unwrap();
        let messages = prompt(&decoded);
        // A FastAPI validation error quoting its input, JSON-escaped.
        let json = format!(
            r#"{{"detail":[{{"type":"missing","loc":["body","model"],"msg":"Field required","input":{{"messages":[{{"role":"user","content":"{secret}"}}]}}}}]}}"#
        );
        // A plain-text error quoting part of it.
        let text = format!("bad request near '{}'", &decoded[5..40]);

        for body in [json, text] {
            let logged = loggable_error_body(&body, &messages);

            for word in ["4242-1111", "hunter2", "account number", "été"] {
                assert!(!logged.contains(word), "{word} logged: {logged}");
            }
            assert!(logged.contains(PROMPT_MASK), "{logged}");
        }
        let logged = loggable_error_body(
            r#"{"error":{"message":"Field required","code":"missing"}}"#,
            &messages,
        );
        assert!(
            logged.contains("Field required") && logged.contains("missing"),
            "{logged}"
        );
    }

    #[test]
    fn an_error_body_is_logged_truncated() {
        let body = "x".repeat(100_000);

        let logged = loggable_error_body(&body, &prompt("hello"));

        assert_eq!(logged.chars().count(), LOGGED_BODY_CHARS + 1, "{logged}");
        assert!(logged.ends_with('…'));
    }

    #[test]
    fn retry_after_prefers_milliseconds_then_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(150)));
        headers.clear();
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    /// The body's buffers as one, checking the length they were given.
    fn concat((chunks, len): (Vec<Bytes>, usize)) -> Vec<u8> {
        let body: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(body.len(), len, "the length sent is the body's");
        body
    }

    /// The `messages` of a body, parsed.
    fn sent_messages(messages: &Messages) -> serde_json::Value {
        let body = concat(chat_body(None, messages, 1, 1.0, 1.0, true, false));
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["messages"].take()
    }

    fn history(texts: impl IntoIterator<Item = String>) -> Vec<crate::store::StoredMessage> {
        use crate::domain::{ChatMessage, Role};
        texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| crate::store::StoredMessage {
                message: ChatMessage::new(
                    if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    text,
                ),
                tokens: None,
            })
            .collect()
    }

    fn expected(
        head: &[crate::domain::ChatMessage],
        history: &[crate::store::StoredMessage],
        tail: &[crate::domain::ChatMessage],
    ) -> serde_json::Value {
        serde_json::to_value(
            head.iter()
                .chain(history.iter().map(|m| &m.message))
                .chain(tail)
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn a_long_history_is_sent_whole_and_in_order_from_any_first_message() {
        use crate::domain::{ChatMessage, Role, WIRE_RUN};
        use std::sync::Arc;
        let texts = (0..WIRE_RUN * 3 + 5).map(|i| format!("message \"{i}\"\n"));
        let history = Arc::new(history(texts));
        let system = vec![ChatMessage::new(Role::System, "Be brief.")];
        let new = vec![ChatMessage::new(Role::User, "and now?")];
        for start in [0, 1, WIRE_RUN - 1, WIRE_RUN, WIRE_RUN + 3, history.len()] {
            for end in [start, history.len(), WIRE_RUN * 2, WIRE_RUN * 2 - 1] {
                if end < start {
                    continue;
                }
                for (head, tail) in [(&system, &new), (&Vec::new(), &Vec::new())] {
                    let messages =
                        Messages::around(head.clone(), history.clone(), start..end, tail.clone());
                    // Twice: runs made by the first, kept and shared by the second.
                    for _ in 0..2 {
                        assert_eq!(
                            sent_messages(&messages),
                            expected(head, &history[start..end], tail),
                            "history[{start}..{end}]"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_run_kept_for_one_history_is_never_sent_for_another() {
        use crate::domain::WIRE_RUN;
        use std::sync::Arc;
        let first = history((0..WIRE_RUN).map(|i| format!("first {i}")));
        let whole = |h: &Vec<crate::store::StoredMessage>| {
            Messages::around(Vec::new(), Arc::new(h.clone()), 0..h.len(), Vec::new())
        };
        assert_eq!(sent_messages(&whole(&first)), expected(&[], &first, &[]));
        // The same last message (it keeps the run) after other messages.
        let mut other = history((0..WIRE_RUN).map(|i| format!("other {i}")));
        other[WIRE_RUN - 1] = first[WIRE_RUN - 1].clone();
        assert_eq!(sent_messages(&whole(&other)), expected(&[], &other, &[]));
        // One message in the middle replaced.
        let mut edited = first.clone();
        edited[5] = history([String::from("edited")]).remove(0);
        assert_eq!(sent_messages(&whole(&edited)), expected(&[], &edited, &[]));
        // And the first history still gets its own.
        assert_eq!(sent_messages(&whole(&first)), expected(&[], &first, &[]));
    }

    #[test]
    fn the_body_is_the_json_a_serialiser_would_write() {
        use crate::domain::{ChatMessage, Role};
        let messages = [
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(
                Role::User,
                "quote \" backslash \\ newline \n tab \t \u{7} ünï",
            ),
            ChatMessage::new(Role::Assistant, ""),
        ];
        for (model, stream, include_usage) in [
            (Some("gpt-4o\"x"), true, false),
            (None, false, true),
            (None, true, true),
        ] {
            let body = concat(chat_body(
                model,
                &messages.to_vec().into(),
                512,
                0.7,
                0.95,
                stream,
                include_usage,
            ));
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let mut expected = serde_json::json!({
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "quote \" backslash \\ newline \n tab \t \u{7} ünï"},
                    {"role": "assistant", "content": ""},
                ],
                "max_tokens": 512,
                "temperature": 0.7,
                "top_p": 0.95,
                "stream": stream,
            });
            if let Some(model) = model {
                expected["model"] = serde_json::json!(model);
            }
            // Only a streamed request asks for the usage chunk.
            if stream && include_usage {
                expected["stream_options"] = serde_json::json!({"include_usage": true});
            }
            assert_eq!(parsed, expected);
            assert!(String::from_utf8(body)
                .unwrap()
                .ends_with(&format!("\"stream\":{stream}}}")));
        }
        let empty = concat(chat_body(
            None,
            &Vec::new().into(),
            1,
            1.0,
            1.0,
            true,
            false,
        ));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&empty).unwrap()["messages"],
            serde_json::json!([])
        );
    }

    #[test]
    fn stream_usage_is_asked_of_providers_known_to_take_it() {
        use crate::config::{AzureAuth, Secret};
        let azure = |url: &str| LlmProvider::Azure {
            url: url.to_string(),
            key: Secret::default(),
            auth: AzureAuth::ApiKey,
        };
        let base = "https://x.openai.azure.com/openai/deployments/d/chat/completions";
        assert!(!stream_usage_by_default(&azure(&format!(
            "{base}?api-version=2024-05-01-preview"
        ))));
        assert!(!stream_usage_by_default(&azure(&format!(
            "{base}?api-version=2023-05-15"
        ))));
        assert!(stream_usage_by_default(&azure(&format!(
            "{base}?foo=1&api-version=2024-10-21"
        ))));
        assert!(stream_usage_by_default(&azure(&format!(
            "{base}?api-version=2024-08-01-preview"
        ))));
        assert!(stream_usage_by_default(&azure(
            "https://x.openai.azure.com/openai/v1/chat/completions"
        )));
        assert!(!stream_usage_by_default(&LlmProvider::Demo));
    }

    #[test]
    fn only_rate_limits_and_server_errors_are_retried() {
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!retryable(StatusCode::UNAUTHORIZED));
        assert!(!retryable(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        assert!(
            backoff(1) >= Duration::from_millis(500) && backoff(1) <= Duration::from_millis(625)
        );
        assert!(backoff(3) >= Duration::from_secs(2));
        assert!(backoff(50) <= Duration::from_secs(40));
    }
}
