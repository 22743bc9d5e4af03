//! The OpenAI-compatible API under `/v1`, so OpenAI SDKs and tools can use
//! the server as their endpoint: `GET /v1/models`, `GET /v1/models/{id}`
//! and `POST /v1/chat/completions` (streamed as `text/event-stream` or
//! not), for holders of a personal access token (`Authorization: Bearer`).
//!
//! A request goes through what a page's message goes through: the per-user
//! message rate limit, the daily token quota before the upstream is asked,
//! the `LLM_MAX_CONCURRENCY` slots, and metering of what the upstream call
//! spent (`Chat::record_usage`, by the upstream's `usage`, else the
//! server's tokenizer). The request's own messages are the prompt (no
//! stored history, no summary); `temperature` and `max_tokens` are capped
//! by the server's settings. `X-Keep-Conversation: true` stores the
//! exchange (the request's user and assistant messages, then the reply) as
//! a new conversation of the token's owner, named in `X-Conversation-Id`.
//!
//! Every error is OpenAI's shape, `{"error": {"message", "type", "param",
//! "code"}}`, with a sentence for people and never an internal detail. It
//! leaves the model call to `llm/` and metering to `turn/`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::auth::bearer_token;
use crate::config::LlmProvider;
use crate::domain::{ChatMessage, ConversationId, Role, UserId};
use crate::error::ApiError;
use crate::llm::{ChatRequest, ChunkStream, Delta, Messages, Usage};
use crate::metrics::Metrics;
use crate::notify::conversation_updated;
use crate::ratelimit::{Bucket, Limit};
use crate::state::AppState;
use crate::store::usage::DayUsage;
use crate::store::NewMessage;
use crate::turn::{Chat, Model};

/// The header that asks to keep the exchange as a conversation.
pub const KEEP_HEADER: &str = "x-keep-conversation";
/// The header naming the conversation a kept exchange is stored in.
pub const CONVERSATION_HEADER: &str = "x-conversation-id";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(list_models).fallback(wrong_method))
        .route(
            "/v1/models/{id}",
            get(retrieve_model).fallback(wrong_method),
        )
        .route(
            "/v1/chat/completions",
            post(chat_completions).fallback(wrong_method),
        )
        .route("/v1/{*rest}", any(unknown_route))
}

// ------------------------------------------------------------------ errors

/// An error in OpenAI's shape: status, `type`, `code`, `param` and a
/// sentence for people.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    code: &'static str,
    param: Option<String>,
    retry_after: Option<u64>,
    /// The daily quota: the SDKs' automatic retries would only be refused
    /// again (`x-should-retry: false` tells them).
    retry_pointless: bool,
}

impl OpenAiError {
    fn invalid(message: impl Into<String>, code: &'static str, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            code,
            param: param.map(str::to_owned),
            retry_after: None,
            retry_pointless: false,
        }
    }

    fn unauthenticated(message: &str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_api_key",
            ..Self::invalid(message, "", None)
        }
    }

    fn model_not_found(model: &str) -> Self {
        let shown: String = model.chars().take(100).collect();
        Self {
            status: StatusCode::NOT_FOUND,
            ..Self::invalid(
                format!("The model '{shown}' does not exist. GET /v1/models lists the models."),
                "model_not_found",
                Some("model"),
            )
        }
    }
}

impl From<ApiError> for OpenAiError {
    fn from(err: ApiError) -> Self {
        // `body()` logs an internal cause once; only its sentence is sent.
        let message = err.body().message;
        let status = err.status();
        let (kind, code) = match &err {
            ApiError::Unauthenticated | ApiError::Disabled => {
                return Self::unauthenticated("Invalid or revoked personal access token.")
            }
            ApiError::RateLimited(_) => ("rate_limit_error", "rate_limit_exceeded"),
            ApiError::QuotaExceeded { .. } => ("insufficient_quota", "insufficient_quota"),
            ApiError::TooLarge(_) => ("invalid_request_error", "request_too_large"),
            ApiError::NotFound => ("invalid_request_error", "not_found"),
            ApiError::Busy(_) => ("server_error", "server_busy"),
            ApiError::LlmUnavailable | ApiError::LlmEmptyReply => ("api_error", "upstream_error"),
            ApiError::Unavailable | ApiError::Restarting => ("api_error", "service_unavailable"),
            ApiError::Internal(_) => ("api_error", "internal_error"),
            _ if status.is_client_error() => ("invalid_request_error", "invalid_request"),
            _ => ("api_error", "internal_error"),
        };
        let status = match err {
            // A client should come back later, not give up (HTTP 409 is the
            // page's answer for a busy conversation).
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => status,
        };
        Self {
            status,
            message,
            kind,
            code,
            param: None,
            retry_after: match &err {
                ApiError::RateLimited(seconds) => Some(*seconds),
                ApiError::QuotaExceeded { resets_at, .. } => {
                    Some((*resets_at - chrono::Utc::now()).num_seconds().max(1) as u64)
                }
                _ => None,
            },
            retry_pointless: matches!(err, ApiError::QuotaExceeded { .. }),
        }
    }
}

impl OpenAiError {
    /// The `{"error": {...}}` object.
    fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.retry_pointless {
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response
    }
}

type Answer<T> = Result<T, OpenAiError>;

async fn unknown_route() -> OpenAiError {
    OpenAiError {
        status: StatusCode::NOT_FOUND,
        ..OpenAiError::invalid(
            "Unknown route. This server offers GET /v1/models and POST /v1/chat/completions.",
            "unknown_url",
            None,
        )
    }
}

async fn wrong_method() -> OpenAiError {
    OpenAiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..OpenAiError::invalid(
            "This method is not allowed here: GET /v1/models, POST /v1/chat/completions.",
            "method_not_allowed",
            None,
        )
    }
}

// ------------------------------------------------------------------ models

/// One model the API offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub id: String,
    pub owned_by: String,
    /// Tokens of prompt and reply together (`MAX_TOKENS`).
    pub context_window: u32,
}

/// The models the API offers: the catalogue's (`MODELS_FILE`), each by
/// its id. Without a catalogue file the one model is named as its upstream
/// names it (Azure's by its deployment), as SDK users expect.
pub fn models(chat: &Chat) -> Vec<ModelEntry> {
    offered(chat).into_iter().map(|(entry, _)| entry).collect()
}

/// [`models`] with the model each entry stands for.
fn offered(chat: &Chat) -> Vec<(ModelEntry, Arc<Model>)> {
    let all = chat.models.all();
    let implicit = all.len() == 1 && all[0].spec.id == "default";
    all.iter()
        .map(|model| {
            let info = model.llm.info();
            let id = if implicit {
                match &model.spec.provider {
                    LlmProvider::Azure { url, .. } => {
                        azure_deployment(url).unwrap_or("azure").to_owned()
                    }
                    _ => info.model,
                }
            } else {
                model.spec.id.clone()
            };
            let entry = ModelEntry {
                id,
                owned_by: info.provider.to_owned(),
                context_window: model.spec.max_tokens,
            };
            (entry, model.clone())
        })
        .collect()
}

/// `name` in an Azure URL's `/openai/deployments/{name}/`.
fn azure_deployment(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("/deployments/")?;
    rest.split(['/', '?'])
        .next()
        .filter(|name| !name.is_empty())
}

fn model_object(entry: &ModelEntry) -> Value {
    json!({
        "id": entry.id,
        "object": "model",
        "created": 0,
        "owned_by": entry.owned_by,
        "context_window": entry.context_window,
    })
}

/// `GET /v1/models` → `{"object": "list", "data": [model, ...]}`.
async fn list_models(State(state): State<AppState>, headers: HeaderMap) -> Answer<Json<Value>> {
    token_holder(&state, &headers).await?;
    let data: Vec<Value> = models(&state.chat).iter().map(model_object).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/models/{id}` → the model, or 404 `model_not_found`.
async fn retrieve_model(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Json<Value>> {
    token_holder(&state, &headers).await?;
    models(&state.chat)
        .iter()
        .find(|entry| entry.id == id)
        .map(|entry| Json(model_object(entry)))
        .ok_or_else(|| OpenAiError::model_not_found(&id))
}

// ------------------------------------------------------------ the request

/// The bearer of a personal access token; anything else is 401.
async fn token_holder(state: &AppState, headers: &HeaderMap) -> Answer<UserId> {
    let Some(token) = bearer_token(headers) else {
        return Err(OpenAiError::unauthenticated(
            "Send a personal access token: Authorization: Bearer <token>.",
        ));
    };
    Ok(state.token_user(token).await?)
}

/// A chat completion request, checked.
#[derive(Debug)]
struct Completion {
    model: String,
    messages: Vec<ChatMessage>,
    stream: bool,
    include_usage: bool,
    max_tokens: u32,
    temperature: Option<f32>,
}

fn missing(param: &str) -> OpenAiError {
    OpenAiError::invalid(
        format!("Missing required parameter: '{param}'."),
        "missing_required_parameter",
        Some(param),
    )
}

fn wrong(param: &str, what: &str) -> OpenAiError {
    OpenAiError::invalid(
        format!("Invalid value for '{param}': expected {what}."),
        "invalid_value",
        Some(param),
    )
}

/// A field's value, `None` when absent or `null`.
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|value| !value.is_null())
}

/// The text of a message's `content`: a string, or an array of text parts
/// (joined with newlines). Any other part (images, audio, files) is
/// refused: the server's model takes text only.
fn content_text(content: Option<&Value>, param: &str) -> Answer<String> {
    match content {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (n, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => texts.push(text),
                    (Some("text"), None) => {
                        return Err(wrong(&format!("{param}[{n}].text"), "a string"))
                    }
                    (Some(other), _) => {
                        let other: String = other.chars().take(40).collect();
                        return Err(OpenAiError::invalid(
                            format!(
                                "Content parts of type '{other}' are not supported: this server takes text only ({param}[{n}])."
                            ),
                            "unsupported_content",
                            Some(&format!("{param}[{n}].type")),
                        ));
                    }
                    (None, _) => return Err(missing(&format!("{param}[{n}].type"))),
                }
            }
            Ok(texts.join("\n"))
        }
        None => Err(missing(param)),
        Some(_) => Err(wrong(param, "a string or an array of text parts")),
    }
}

fn message(raw: &Value, n: usize) -> Answer<ChatMessage> {
    let at = format!("messages[{n}]");
    let Some(object) = raw.as_object() else {
        return Err(wrong(&at, "an object with 'role' and 'content'"));
    };
    let role = match field(object, "role") {
        None => return Err(missing(&format!("{at}.role"))),
        Some(Value::String(role)) => role.as_str(),
        Some(_) => return Err(wrong(&format!("{at}.role"), "a string")),
    };
    let role = match role {
        // Newer models call the system message `developer`.
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" | "function" => {
            return Err(OpenAiError::invalid(
                format!("Messages with role '{role}' are not supported: this server offers no tools ({at}.role)."),
                "unsupported_role",
                Some(&format!("{at}.role")),
            ))
        }
        _ => {
            return Err(wrong(
                &format!("{at}.role"),
                "one of 'system', 'developer', 'user', 'assistant'",
            ))
        }
    };
    let text = content_text(field(object, "content"), &format!("{at}.content"))?;
    Ok(ChatMessage::new(role, text))
}

/// Reads and checks the JSON body against the server's settings.
fn parse_request(chat: &Chat, body: &[u8]) -> Answer<Completion> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        OpenAiError::invalid("The request body is not valid JSON.", "invalid_json", None)
    })?;
    let Value::Object(object) = value else {
        return Err(OpenAiError::invalid(
            "The request body must be a JSON object.",
            "invalid_json",
            None,
        ));
    };
    let model = match field(&object, "model") {
        None => return Err(missing("model")),
        Some(Value::String(model)) => model.clone(),
        Some(_) => return Err(wrong("model", "a string")),
    };
    let messages = match field(&object, "messages") {
        None => return Err(missing("messages")),
        Some(Value::Array(messages)) if messages.is_empty() => {
            return Err(wrong("messages", "at least one message"))
        }
        Some(Value::Array(messages)) => messages
            .iter()
            .enumerate()
            .map(|(n, raw)| message(raw, n))
            .collect::<Answer<Vec<_>>>()?,
        Some(_) => return Err(wrong("messages", "an array of messages")),
    };
    let flag = |name: &str| match field(&object, name) {
        None => Ok(false),
        Some(Value::Bool(on)) => Ok(*on),
        Some(_) => Err(wrong(name, "a boolean")),
    };
    let stream = flag("stream")?;
    let include_usage = match field(&object, "stream_options") {
        None => false,
        Some(Value::Object(options)) => match field(options, "include_usage") {
            None => false,
            Some(Value::Bool(on)) => *on,
            Some(_) => return Err(wrong("stream_options.include_usage", "a boolean")),
        },
        Some(_) => return Err(wrong("stream_options", "an object")),
    };
    if include_usage && !stream {
        return Err(OpenAiError::invalid(
            "stream_options is only allowed when 'stream' is true.",
            "invalid_value",
            Some("stream_options"),
        ));
    }
    let limit = chat.settings.reply_tokens;
    let mut max_tokens = limit;
    for name in ["max_tokens", "max_completion_tokens"] {
        if let Some(value) = field(&object, name) {
            let asked = value
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| wrong(name, "a positive integer"))?;
            max_tokens = max_tokens.min(asked.min(u64::from(limit)) as u32);
        }
    }
    let temperature = match field(&object, "temperature") {
        None => None,
        Some(value) => {
            let asked = value
                .as_f64()
                .filter(|t| (0.0..=2.0).contains(t))
                .ok_or_else(|| wrong("temperature", "a number from 0 to 2"))?;
            Some((asked as f32).min(chat.settings.temperature))
        }
    };
    if let Some(n) = field(&object, "n") {
        if n.as_u64() != Some(1) {
            return Err(OpenAiError::invalid(
                "Only one choice per request is supported ('n' must be 1).",
                "unsupported_value",
                Some("n"),
            ));
        }
    }
    for name in ["tools", "functions"] {
        let given = match field(&object, name) {
            None => false,
            Some(Value::Array(items)) => !items.is_empty(),
            Some(_) => true,
        };
        if given {
            return Err(OpenAiError::invalid(
                format!("'{name}' is not supported: this server offers no tools."),
                "unsupported_parameter",
                Some(name),
            ));
        }
    }
    Ok(Completion {
        model,
        messages,
        stream,
        include_usage,
        max_tokens,
        temperature,
    })
}

/// Whether the request asks to keep the exchange (`X-Keep-Conversation`).
fn keep_asked(headers: &HeaderMap) -> Answer<bool> {
    let Some(value) = headers.get(KEEP_HEADER) else {
        return Ok(false);
    };
    match value
        .to_str()
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Ok("true" | "1" | "yes") => Ok(true),
        Ok("false" | "0" | "no") => Ok(false),
        _ => Err(OpenAiError::invalid(
            "X-Keep-Conversation must be 'true' or 'false'.",
            "invalid_header",
            Some(KEEP_HEADER),
        )),
    }
}

/// Refuses a user over the per-user message rate limit (the page's).
async fn within_rate_limit(state: &AppState, user: &UserId) -> Answer<()> {
    let limit = Limit {
        count: state.chat.settings.rate_limit_messages_per_minute,
        window: Duration::from_secs(60),
    };
    state
        .limiter
        .check(Bucket::Messages, user.as_ref(), limit)
        .await
        .map_err(|retry_after| ApiError::RateLimited(retry_after).into())
}

/// An exchange to store once the reply is in: the conversation's id (sent
/// in `X-Conversation-Id`) and the request's user and assistant messages.
struct Keep {
    id: ConversationId,
    messages: Vec<NewMessage>,
}

impl Keep {
    /// The exchange of `messages`, whose contents count `counts` (the
    /// request's, counted once for the prompt and the stored messages).
    fn of(chat: &Chat, messages: &[ChatMessage], counts: &[u32]) -> Answer<Self> {
        let messages: Vec<NewMessage> = messages
            .iter()
            .zip(counts)
            .filter(|(m, _)| m.role != Role::System)
            .map(|(m, &tokens)| NewMessage {
                role: m.role,
                content: m.content.to_string(),
                tokens: Some(tokens),
            })
            .collect();
        if !messages.iter().any(|m| m.role == Role::User) {
            return Err(OpenAiError::invalid(
                "A kept exchange needs at least one user message.",
                "invalid_value",
                Some("messages"),
            ));
        }
        // Refused before the upstream is asked, as a full conversation is.
        let limits = chat.settings.conversation_limits;
        let bytes: u64 = messages.iter().map(|m| m.content.len() as u64).sum();
        if !limits.has_room(0, 0, messages.len() as u64 + 1, bytes + 1) {
            return Err(ApiError::TooLarge(limits.full_message()).into());
        }
        Ok(Self {
            id: ConversationId::new(),
            messages,
        })
    }

    /// Stores the exchange with `reply` (cut to the room the conversation
    /// cap leaves) and tells the user's tabs. Run in its own task, so a
    /// client that leaves meanwhile cannot cut it in half. `reply_tokens`:
    /// the reply's count when it was counted already (for the usage).
    async fn store(self, chat: Chat, user: UserId, mut reply: String, reply_tokens: Option<u32>) {
        let limits = chat.settings.conversation_limits;
        let used: u64 = self.messages.iter().map(|m| m.content.len() as u64).sum();
        let mut room = limits.max_bytes.saturating_sub(used) as usize;
        let mut reply_tokens = reply_tokens;
        if room < reply.len() {
            while !reply.is_char_boundary(room) {
                room -= 1;
            }
            reply.truncate(room);
            reply_tokens = None;
        }
        let mut messages = self.messages;
        if !reply.trim().is_empty() {
            messages.push(NewMessage {
                role: Role::Assistant,
                tokens: Some(reply_tokens.unwrap_or_else(|| chat.tokens.count(&reply))),
                content: reply,
            });
        }
        let stored = async {
            chat.store.create(&user, &self.id).await?;
            chat.store.append(&user, &self.id, messages).await
        };
        match stored.await {
            Ok(meta) => {
                tracing::info!(conversation = %self.id, "API exchange kept as a conversation");
                chat.notifier
                    .to_user(&user, conversation_updated(&meta))
                    .await;
            }
            Err(err) => {
                tracing::warn!(error = %err, conversation = %self.id, "could not keep the API exchange");
            }
        }
    }
}

/// The server's count of a reply, when the usage `spent` holds it: the
/// upstream sent no usage of its own, so the reply was counted for it.
fn counted_reply(upstream_usage: bool, spent: DayUsage) -> Option<u32> {
    (!upstream_usage).then_some(spent.completion_tokens as u32)
}

/// What the request's prompt costs by the server's count and, when
/// `keep`, the exchange to keep: each message counted once for both.
fn count_request(chat: &Chat, messages: &[ChatMessage], keep: bool) -> Answer<(u64, Option<Keep>)> {
    let counts: Vec<u32> = messages
        .iter()
        .map(|m| chat.tokens.count(&m.content))
        .collect();
    let keep = match keep {
        true => Some(Keep::of(chat, messages, &counts)?),
        false => None,
    };
    Ok((crate::context::prompt_cost(counts), keep))
}

/// `POST /v1/chat/completions`: a `chat.completion`, or with `stream:
/// true` a `text/event-stream` of `chat.completion.chunk`s ending in
/// `data: [DONE]`.
async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Response> {
    let user = token_holder(&state, &headers).await?;
    within_rate_limit(&state, &user).await?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            OpenAiError::from(ApiError::TooLarge(
                "The request body is too large.".to_string(),
            ))
        } else {
            OpenAiError::invalid("The request body could not be read.", "invalid_body", None)
        }
    })?;
    let chat = &state.chat;
    let request = parse_request(chat, &body)?;
    let Some((model, serves)) = offered(chat)
        .into_iter()
        .find(|(entry, _)| entry.id == request.model)
    else {
        return Err(OpenAiError::model_not_found(&request.model));
    };
    // Each model's own reply tokens and context window.
    let mut request = request;
    request.max_tokens = request.max_tokens.min(serves.spec.reply_tokens);
    let window = serves.spec.max_tokens;
    let (prompt_tokens, keep) = count_request(chat, &request.messages, keep_asked(&headers)?)?;
    let messages = Messages::from(request.messages);
    let room = u64::from(window.saturating_sub(request.max_tokens));
    if prompt_tokens > room {
        return Err(OpenAiError::invalid(
            format!(
                "This model's context window is {} tokens; the messages take {prompt_tokens} and the reply up to {}. Shorten the messages or lower max_tokens.",
                window, request.max_tokens
            ),
            "context_length_exceeded",
            Some("messages"),
        ));
    }
    if let Err(err) = chat.check_quota(&user, true).await {
        if matches!(err, ApiError::QuotaExceeded { .. }) {
            Metrics::inc(&chat.metrics.turns_refused_quota);
        }
        return Err(err.into());
    }
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Restarting.into());
    }
    let slot = match &chat.llm_slots {
        None => None,
        Some(slots) => Some(slots.clone().try_acquire_owned().map_err(|_| {
            Metrics::inc(&chat.metrics.turns_refused_busy);
            ApiError::Busy("The server is busy. Please try again in a moment.".into())
        })?),
    };
    let upstream = ChatRequest {
        messages,
        max_tokens: request.max_tokens,
        temperature: request.temperature,
    };
    let reply = Reply {
        id: format!("chatcmpl-{}", crate::domain::new_uuid().simple()),
        created: chrono::Utc::now().timestamp(),
        model: model.id,
        max_tokens: request.max_tokens,
    };
    Metrics::add(&chat.metrics.tokens_in, prompt_tokens);
    let kept = keep.as_ref().map(|keep| keep.id.clone());
    let mut response = if request.stream {
        let stream = serves.llm.stream(upstream).await.map_err(ApiError::from)?;
        let (events, receiver) = mpsc::channel(32);
        let job = Streamed {
            chat: chat.clone(),
            user,
            reply,
            prompt_tokens,
            include_usage: request.include_usage,
            keep,
            slot,
        };
        tokio::spawn(job.run(stream, events));
        let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver
                .recv()
                .await
                .map(|event| (Ok::<_, Infallible>(event), receiver))
        });
        Sse::new(body)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response()
    } else {
        let (completion, spent) = chat
            .complete_counted(serves.llm.as_ref(), &user, upstream, prompt_tokens)
            .await
            .map_err(ApiError::from)?;
        let reply_tokens = counted_reply(completion.usage.is_some(), spent);
        let text = completion.text;
        drop(slot);
        if text.trim().is_empty() {
            return Err(ApiError::LlmEmptyReply.into());
        }
        Metrics::add(&chat.metrics.tokens_out, spent.completion_tokens);
        let body = reply.whole(&text, spent);
        if let Some(keep) = keep {
            let _ = tokio::spawn(keep.store(chat.clone(), user, text, reply_tokens)).await;
        }
        Json(body).into_response()
    };
    if let Some(id) = kept {
        if let Ok(value) = HeaderValue::from_str(id.as_ref()) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(CONVERSATION_HEADER), value);
        }
    }
    Ok(response)
}

/// What every object of one reply repeats.
struct Reply {
    id: String,
    created: i64,
    model: String,
    max_tokens: u32,
}

fn usage_object(spent: DayUsage) -> Value {
    json!({
        "prompt_tokens": spent.prompt_tokens,
        "completion_tokens": spent.completion_tokens,
        "total_tokens": spent.total(),
    })
}

impl Reply {
    /// `length` when the reply used all the tokens it was allowed (the
    /// upstream's own reason is not passed through the model client).
    fn finish_reason(&self, completion_tokens: u64) -> &'static str {
        if completion_tokens >= u64::from(self.max_tokens) {
            "length"
        } else {
            "stop"
        }
    }

    fn whole(&self, text: &str, spent: DayUsage) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": self.finish_reason(spent.completion_tokens),
            }],
            "usage": usage_object(spent),
        })
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>, with_usage: bool) -> Event {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        if with_usage {
            chunk["usage"] = Value::Null;
        }
        Event::default().data(chunk.to_string())
    }

    fn usage_chunk(&self, spent: DayUsage) -> Event {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_object(spent),
        });
        Event::default().data(chunk.to_string())
    }
}

/// A streamed reply, relayed by its own task from the upstream to the
/// client's event stream.
struct Streamed {
    chat: Chat,
    user: UserId,
    reply: Reply,
    prompt_tokens: u64,
    include_usage: bool,
    keep: Option<Keep>,
    /// Held until the reply ends (`LLM_MAX_CONCURRENCY`).
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Streamed {
    /// Relays deltas until the upstream ends, fails, or the client goes
    /// away: then the upstream is dropped at once (which closes its
    /// connection), and what it spent is metered as a page's turn is (a
    /// cut reply counts its prompt and the text that arrived). A kept
    /// exchange is stored with the reply, or the part that arrived.
    async fn run(self, mut upstream: ChunkStream, events: mpsc::Sender<Event>) {
        let Streamed {
            chat,
            user,
            reply,
            prompt_tokens,
            include_usage,
            keep,
            slot,
        } = self;
        let mut text = String::new();
        let mut usage: Option<Usage> = None;
        let opening = reply.chunk(
            json!({"role": "assistant", "content": ""}),
            None,
            include_usage,
        );
        let mut failed: Option<ApiError> = None;
        let mut gone = events.send(opening).await.is_err();
        while !gone {
            let next = tokio::select! {
                _ = events.closed() => { gone = true; break; }
                next = upstream.next() => next,
            };
            match next {
                None if text.trim().is_empty() => {
                    failed = Some(ApiError::LlmEmptyReply);
                    break;
                }
                None => break,
                Some(Err(err)) => {
                    failed = Some(err.into());
                    break;
                }
                Some(Ok(Delta::Usage(reported))) => usage = Some(reported),
                Some(Ok(Delta::Text(delta))) => {
                    text.push_str(&delta);
                    let chunk = reply.chunk(json!({"content": delta}), None, include_usage);
                    gone = events.send(chunk).await.is_err();
                }
            }
        }
        drop(upstream);
        drop(slot);
        let spent = chat.spent(usage, prompt_tokens, &text);
        Metrics::add(&chat.metrics.tokens_out, spent.completion_tokens);
        let record = chat.record_usage(&user, spent);
        match (&failed, keep) {
            (None, Some(keep)) => {
                let reply_tokens = counted_reply(usage.is_some(), spent);
                tokio::join!(
                    record,
                    keep.store(chat.clone(), user.clone(), text, reply_tokens)
                );
            }
            _ => record.await,
        }
        if gone {
            tracing::info!(completion = %reply.id, "API client left mid-reply; upstream closed");
            return;
        }
        let ending: Vec<Event> = match failed {
            Some(err) => {
                let err = OpenAiError::from(err);
                vec![Event::default().data(err.body().to_string())]
            }
            None => {
                let mut ending = vec![reply.chunk(
                    json!({}),
                    Some(reply.finish_reason(spent.completion_tokens)),
                    include_usage,
                )];
                if include_usage {
                    ending.push(reply.usage_chunk(spent));
                }
                ending.push(Event::default().data("[DONE]"));
                ending
            }
        };
        for event in ending {
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::ConversationStore;

    #[tokio::test]
    async fn a_kept_exchange_counts_each_message_and_the_reply_once() {
        let dir = tempfile::tempdir().unwrap();
        let (chat, store) = crate::turn::testing::chat_in(&dir).await;
        let user = UserId::new();
        let messages = [
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "Say hello"),
            ChatMessage::new(Role::Assistant, "Hello there!"),
            ChatMessage::new(Role::User, "Say it again, 12345 times"),
        ];
        let texts: Vec<String> = messages.iter().map(|m| m.content.to_string()).collect();
        let counts: Vec<u32> = texts.iter().map(|t| chat.tokens.count(t)).collect();

        crate::context::counted::start();
        let (prompt_tokens, keep) = count_request(&chat, &messages, true).unwrap();
        assert_eq!(crate::context::counted::take(), texts);
        let expected: u32 = counts.iter().map(|c| c + 4).sum::<u32>() + 3;
        assert_eq!(prompt_tokens, u64::from(expected));

        // The reply, counted for the usage, is stored with that count.
        let keep = keep.unwrap();
        let id = keep.id.clone();
        let reply = "Hello there! Hello there!";
        let reply_tokens = chat.tokens.count(reply);
        crate::context::counted::start();
        keep.store(
            chat.clone(),
            user.clone(),
            reply.to_string(),
            Some(reply_tokens),
        )
        .await;
        assert_eq!(crate::context::counted::take(), Vec::<String>::new());
        let stored: Vec<(String, Option<u32>)> = store
            .load(&user, &id)
            .await
            .unwrap()
            .messages
            .iter()
            .map(|m| (m.message.content.to_string(), m.tokens))
            .collect();
        assert_eq!(
            stored,
            [
                (texts[1].clone(), Some(counts[1])),
                (texts[2].clone(), Some(counts[2])),
                (texts[3].clone(), Some(counts[3])),
                (reply.to_string(), Some(reply_tokens)),
            ]
        );
    }

    #[test]
    fn the_azure_deployment_names_the_model() {
        assert_eq!(
            azure_deployment("https://x.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"),
            Some("gpt-4o")
        );
        assert_eq!(
            azure_deployment("https://x.example/v1/chat/completions"),
            None
        );
    }

    #[test]
    fn text_parts_are_joined_and_other_parts_refused() {
        let parts = json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]);
        assert_eq!(content_text(Some(&parts), "c").unwrap(), "a\nb");
        let image = json!([{"type": "image_url", "image_url": {"url": "x"}}]);
        let err = content_text(Some(&image), "messages[0].content").unwrap_err();
        assert_eq!(err.code, "unsupported_content");
        assert_eq!(err.param.as_deref(), Some("messages[0].content[0].type"));
        assert_eq!(
            content_text(Some(&json!(3)), "c").unwrap_err().code,
            "invalid_value"
        );
    }
}
