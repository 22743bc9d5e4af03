//! One chat turn, from a user's message to a stored reply: resolve the
//! conversation, fit the prompt into the context window (summarising older
//! turns when needed), stream the reply, store the outcome, tell the user's
//! other tabs.
//!
//! It knows nothing of Socket.IO: events go through a [`TurnSink`]. What is
//! stored is always consistent: success stores the user's message and the
//! reply together; a stop or disconnect stores the partial reply; an upstream
//! failure stores only the user's message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::context::{assemble, plan, summary_request};
use crate::domain::{ChatMessage, ConversationId, Role, UserId};
use crate::error::{ApiError, ErrorBody};
use crate::llm::ChatRequest;
use crate::metrics::Metrics;
use crate::replies::ReplyEvent;
use crate::state::AppState;
use crate::store::{ConversationMeta, NewMessage, Summary};

/// Where a turn's events go (the sending socket).
pub trait TurnSink: Send + Sync {
    fn emit(&self, event: &'static str, payload: Value);

    /// `response_chunk {chunk, index, conversation_id}`, the event sent
    /// most; a sink may write it without building a JSON tree.
    fn emit_chunk(&self, chunk: &str, index: u64, conversation: &ConversationId) {
        self.emit(
            "response_chunk",
            json!({"chunk": chunk, "index": index, "conversation_id": conversation}),
        );
    }
}

/// The payload of `response_chunk`, serialised as it is.
#[derive(serde::Serialize)]
pub struct ChunkPayload<'a> {
    pub chunk: &'a str,
    pub index: u64,
    pub conversation_id: &'a ConversationId,
}

/// In-flight replies, so `stop_generation` and disconnects can cancel them
/// and a conversation never has two replies racing.
#[derive(Default, Debug)]
pub struct TurnRegistry {
    running: Mutex<HashMap<(UserId, ConversationId), Running>>,
    next_turn: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Running {
    turn: u64,
    cancel: CancellationToken,
    socket: Option<String>,
}

/// Removes its entry when the turn ends, however it ends.
pub struct TurnGuard {
    registry: Arc<TurnRegistry>,
    key: (UserId, ConversationId),
    /// This turn's number in this process (for logs).
    pub turn: u64,
    pub cancel: CancellationToken,
}

impl TurnGuard {
    /// Lets the next turn of the conversation start: called once the turn
    /// is stored, before its last events go out, so a client that answers
    /// `response_end` at once is not told a reply is still running.
    pub fn release(&self) {
        let mut running = self.registry.lock();
        // Only our own entry: a later turn may have registered since.
        if running.get(&self.key).is_some_and(|r| r.turn == self.turn) {
            running.remove(&self.key);
        }
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.release();
    }
}

impl TurnRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, ConversationId), Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a turn; `None` when that conversation already has one.
    pub fn begin(
        self: &Arc<Self>,
        user: &UserId,
        id: &ConversationId,
        socket: Option<String>,
    ) -> Option<TurnGuard> {
        let key = (user.clone(), id.clone());
        let mut running = self.lock();
        if running.contains_key(&key) {
            return None;
        }
        let cancel = CancellationToken::new();
        let turn = self
            .next_turn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        running.insert(
            key.clone(),
            Running {
                turn,
                cancel: cancel.clone(),
                socket,
            },
        );
        Some(TurnGuard {
            registry: self.clone(),
            key,
            turn,
            cancel,
        })
    }

    /// Cancels the user's turn in `id`, or all of the user's turns; returns
    /// how many were cancelled.
    pub fn stop(&self, user: &UserId, id: Option<&ConversationId>) -> usize {
        let running = self.lock();
        let mut count = 0;
        for ((owner, conversation), turn) in running.iter() {
            if owner == user && id.is_none_or(|id| id == conversation) {
                turn.cancel.cancel();
                count += 1;
            }
        }
        count
    }

    /// Cancels every turn (shutdown); returns how many.
    pub fn stop_all(&self) -> usize {
        let running = self.lock();
        running.values().for_each(|turn| turn.cancel.cancel());
        running.len()
    }

    /// The cancel handles of the turns a socket started.
    pub fn turns_of_socket(&self, socket: &str) -> Vec<CancellationToken> {
        self.lock()
            .values()
            .filter(|turn| turn.socket.as_deref() == Some(socket))
            .map(|turn| turn.cancel.clone())
            .collect()
    }

    /// Turns in flight.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stop request as published between instances.
#[derive(serde::Serialize, serde::Deserialize)]
struct StopRequest {
    instance: String,
    user: String,
    conversation: Option<String>,
}

/// Stops the user's reply (in `id`, or all) here and on every other
/// instance (Redis mode): the reply may run on another instance than the
/// tab that asks. Returns how many ran here.
pub async fn stop_everywhere(
    state: &AppState,
    user: &UserId,
    id: Option<&ConversationId>,
) -> usize {
    let stopped = state.turns.stop(user, id);
    if let Some(redis) = &state.redis {
        use fred::interfaces::PubsubInterface;
        let request = StopRequest {
            instance: state.replies.instance().to_string(),
            user: user.to_string(),
            conversation: id.map(ToString::to_string),
        };
        let message = serde_json::to_string(&request).unwrap_or_default();
        if let Err(err) = redis
            .timed(
                redis
                    .client
                    .publish::<u64, _, _>(redis.key("control"), message),
            )
            .await
        {
            tracing::warn!(error = %err, "could not pass the stop to other instances");
        }
    }
    stopped
}

/// Applies a stop published by another instance.
pub fn apply_remote_stop(turns: &TurnRegistry, raw: &str, own_instance: &str) {
    let Ok(request) = serde_json::from_str::<StopRequest>(raw) else {
        return;
    };
    if request.instance == own_instance {
        return;
    }
    let conversation = match request.conversation.as_deref().map(ConversationId::parse) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return,
    };
    turns.stop(&UserId::from_stored(request.user), conversation.as_ref());
}

/// Checks a chat message: a non-empty string within the size limit.
pub fn validate_message(raw: Option<&Value>, max_chars: usize) -> Result<String, ApiError> {
    let Some(Value::String(text)) = raw else {
        return Err(ApiError::invalid("No message received from user."));
    };
    if text.trim().is_empty() {
        return Err(ApiError::invalid("No message received from user."));
    }
    if text.chars().count() > max_chars {
        return Err(ApiError::TooLarge(format!(
            "Message too long (max {max_chars} characters)."
        )));
    }
    Ok(text.clone())
}

/// The payload of `conversation_updated`.
pub fn updated_payload(meta: &ConversationMeta) -> Value {
    json!({
        "conversation_id": meta.conversation_id,
        "title": meta.title,
        "updated_at": crate::store::rfc3339::format(&meta.updated_at),
        "message_count": meta.message_count,
    })
}

/// How the streaming part ended.
enum Outcome {
    Finished,
    Stopped,
    Failed(ApiError),
}

/// Runs one turn for `user` in conversation `id` with the registered
/// `guard`. Errors before streaming are returned (nothing stored); errors
/// while streaming are emitted as `error` after storing what is consistent.
pub async fn run_turn(
    state: &AppState,
    user: &UserId,
    id: &ConversationId,
    text: String,
    guard: &TurnGuard,
    sink: &dyn TurnSink,
    origin_socket: Option<String>,
) -> Result<(), ApiError> {
    let settings = &state.settings;
    let budget = settings.prompt_budget();
    let turn_started = std::time::Instant::now();
    let conversation = state.store.load(user, id).await?;
    state.metrics.store_latency.observe(turn_started.elapsed());

    let new_tokens = state.tokens.count(&text);
    let new_cost = new_tokens + crate::context::MESSAGE_OVERHEAD;
    if new_cost + crate::context::REPLY_PRIMING > budget {
        return Err(ApiError::TooLarge(format!(
            "Message too long for the context window ({new_tokens} tokens; at most {} fit).",
            budget.saturating_sub(crate::context::MESSAGE_OVERHEAD + crate::context::REPLY_PRIMING)
        )));
    }
    Metrics::inc(&state.metrics.turns_started);

    // Token counts are cached per stored message; only older rows without
    // one are counted here.
    let costs: Vec<u32> = conversation
        .messages
        .iter()
        .map(|m| crate::context::cost(&state.tokens, m))
        .collect();
    let summary_cap = settings.summary_tokens.min(budget / 3).max(16);
    let prompt_plan = plan(
        &costs,
        conversation.summary.as_ref(),
        new_cost,
        budget,
        summary_cap,
    );
    let mut summary_text = conversation.summary.as_ref().map(|s| s.text.clone());
    let mut summarised = false;
    if let Some(from) = prompt_plan.summarise_from {
        let to_fold = &conversation.messages[from..prompt_plan.first_kept];
        let request = ChatRequest {
            messages: summary_request(summary_text.as_deref(), to_fold).into(),
            max_tokens: summary_cap,
        };
        let outcome = tokio::select! {
            _ = guard.cancel.cancelled() => None,
            result = state.llm.complete(request) => Some(result),
        };
        match outcome {
            None => {
                // Stopped before any reply: keep the user's message, as
                // every other stop does.
                let user_message = NewMessage {
                    role: Role::User,
                    content: text,
                    tokens: Some(new_tokens),
                };
                let meta = state.store.append(user, id, vec![user_message]).await?;
                guard.release();
                Metrics::inc(&state.metrics.turns_stopped);
                sink.emit(
                    "response_end",
                    json!({"conversation_id": id, "stopped": true, "chunks": 0}),
                );
                state
                    .notifier
                    .to_user(user, "conversation_updated", updated_payload(&meta))
                    .await;
                return Ok(());
            }
            Some(Ok(text)) => {
                let text = text.trim().to_string();
                let summary = Summary {
                    tokens: state.tokens.count(&text),
                    text: text.clone(),
                    covers: prompt_plan.first_kept,
                };
                Metrics::inc(&state.metrics.summaries);
                if let Err(err) = state.store.set_summary(user, id, summary).await {
                    tracing::warn!(error = %err, "could not store the summary; using it for this turn only");
                }
                summary_text = Some(text);
                summarised = true;
            }
            Some(Err(err)) => {
                // Leave the oldest turns out of the prompt instead.
                Metrics::inc(&state.metrics.summary_failures);
                tracing::warn!(error = %err, conversation = %id, "summarising failed; leaving older turns out");
            }
        }
    }

    let user_message = ChatMessage::new(Role::User, text.clone());
    let (messages, prompt_tokens) = assemble(
        &state.tokens,
        &conversation.messages,
        &costs,
        prompt_plan.first_kept,
        summary_text.as_deref(),
        &user_message,
        new_cost,
        budget,
    );
    let was_empty = conversation.messages.is_empty();
    // The cache extends its history in place when nothing else holds it.
    drop(conversation);
    sink.emit(
        "token_usage",
        json!({
            "total_tokens_used": prompt_tokens,
            "max_tokens": settings.max_tokens,
            "conversation_id": id,
            "summarised": summarised,
        }),
    );
    // Other tabs (any instance) follow the reply through the hub.
    let relay = state.replies.relay(user, id, origin_socket);
    relay.send(ReplyEvent::Started {
        message: text.clone(),
    });

    Metrics::add(&state.metrics.tokens_in, prompt_tokens as u64);
    let request = ChatRequest {
        messages,
        max_tokens: settings.reply_tokens,
    };
    let mut reply = String::new();
    let mut chunks = 0usize;
    let outcome = tokio::select! {
        _ = guard.cancel.cancelled() => Outcome::Stopped,
        started = state.llm.stream(request) => match started {
            Err(err) => Outcome::Failed(err.into()),
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    _ = guard.cancel.cancelled() => break Outcome::Stopped,
                    next = stream.next() => next,
                };
                match next {
                    None => break Outcome::Finished,
                    Some(Err(err)) => break Outcome::Failed(err.into()),
                    Some(Ok(chunk)) => {
                        if chunks == 0 {
                            state.metrics.first_chunk.observe(turn_started.elapsed());
                        }
                        reply.push_str(&chunk);
                        sink.emit_chunk(&chunk, chunks as u64, id);
                        relay.send(ReplyEvent::Chunk { index: chunks as u64, chunk });
                        chunks += 1;
                    }
                }
            },
        },
    };
    state
        .metrics
        .reply_chunks
        .fetch_add(chunks as u64, std::sync::atomic::Ordering::Relaxed);

    let first_message = (settings.llm_titles && was_empty).then(|| text.clone());
    let mut to_store = vec![NewMessage {
        role: Role::User,
        content: text,
        tokens: Some(new_tokens),
    }];
    let keep_reply = matches!(outcome, Outcome::Finished | Outcome::Stopped) && !reply.is_empty();
    if keep_reply {
        let reply_tokens = state.tokens.count(&reply);
        Metrics::add(&state.metrics.tokens_out, reply_tokens as u64);
        to_store.push(NewMessage {
            role: Role::Assistant,
            tokens: Some(reply_tokens),
            content: reply,
        });
    }
    let store_started = std::time::Instant::now();
    let stored = state.store.append(user, id, to_store).await;
    state.metrics.store_latency.observe(store_started.elapsed());
    state.metrics.turn_duration.observe(turn_started.elapsed());
    match (&outcome, &stored) {
        (Outcome::Finished, Ok(_)) => Metrics::inc(&state.metrics.turns_completed),
        (Outcome::Stopped, Ok(_)) => Metrics::inc(&state.metrics.turns_stopped),
        _ => Metrics::inc(&state.metrics.turns_failed),
    }
    let meta = match stored {
        Ok(meta) => meta,
        Err(err) => {
            // The sending socket gets its error from the caller.
            let err = ApiError::from(err);
            relay.send(ReplyEvent::error(&err.body()));
            return Err(err);
        }
    };
    guard.release();
    // One line per turn; no message text at this level.
    tracing::info!(
        turn = guard.turn,
        conversation = %id,
        outcome = match &outcome {
            Outcome::Finished => "finished",
            Outcome::Stopped => "stopped",
            Outcome::Failed(_) => "failed",
        },
        chunks,
        prompt_tokens,
        summarised,
        ms = turn_started.elapsed().as_millis() as u64,
        "turn"
    );
    match outcome {
        Outcome::Failed(err) => {
            let body = err.body();
            relay.send(ReplyEvent::error(&body));
            sink.emit("error", body_payload(body, Some(id)));
        }
        Outcome::Finished | Outcome::Stopped => {
            let stopped = matches!(outcome, Outcome::Stopped);
            relay.send(ReplyEvent::End {
                stopped,
                chunks: chunks as u64,
            });
            sink.emit(
                "response_end",
                json!({"conversation_id": id, "stopped": stopped, "chunks": chunks}),
            );
        }
    }
    state
        .notifier
        .to_user(user, "conversation_updated", updated_payload(&meta))
        .await;
    if let Some(first_message) = first_message.filter(|_| keep_reply) {
        tokio::spawn(make_title(
            state.clone(),
            user.clone(),
            id.clone(),
            first_message,
        ));
    }
    Ok(())
}

/// Asks the LLM for a short title after a conversation's first turn
/// (`LLM_TITLES=true`); the first-message title stays if it fails.
async fn make_title(state: AppState, user: UserId, id: ConversationId, first_message: String) {
    let excerpt: String = first_message.chars().take(1000).collect();
    let request = ChatRequest {
        messages: vec![
            ChatMessage::new(
                Role::System,
                "You write short titles for conversations. Answer with the title only: at most six words, no quotes.",
            ),
            ChatMessage::new(Role::User, format!("Title for a conversation that starts with:\n{excerpt}")),
        ]
        .into(),
        max_tokens: 20,
    };
    let title = match state.llm.complete(request).await {
        Ok(text) => text,
        Err(err) => return tracing::debug!(error = %err, "title request failed"),
    };
    let Some(title) = crate::store::title_from(title.trim().trim_matches(['"', '\'', '.'])) else {
        return;
    };
    match state.store.set_title(&user, &id, &title).await {
        Ok(meta) => {
            state
                .notifier
                .to_user(&user, "conversation_updated", updated_payload(&meta))
                .await
        }
        Err(err) => tracing::debug!(error = %err, "could not store the title"),
    }
}

/// The `error` event's payload.
pub fn error_payload(err: &ApiError, id: Option<&ConversationId>) -> Value {
    body_payload(err.body(), id)
}

/// The `error` event's payload from an already made body (making a body
/// logs an internal cause, so it is made once).
fn body_payload(body: ErrorBody, id: Option<&ConversationId>) -> Value {
    let mut payload = json!({"message": body.message, "error": body.error});
    if let Some(seconds) = body.retry_after {
        payload["retry_after"] = json!(seconds);
    }
    if let Some(id) = id {
        payload["conversation_id"] = json!(id);
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_must_be_non_empty_strings_within_the_limit() {
        assert_eq!(validate_message(Some(&json!("hi")), 10).unwrap(), "hi");
        for bad in [
            None,
            Some(json!(42)),
            Some(json!("   ")),
            Some(json!(null)),
            Some(json!(["a"])),
        ] {
            let err = validate_message(bad.as_ref(), 10).unwrap_err();
            assert_eq!(err.to_string(), "No message received from user.");
        }
        let err = validate_message(Some(&json!("x".repeat(11))), 10).unwrap_err();
        assert_eq!(err.to_string(), "Message too long (max 10 characters).");
    }

    #[test]
    fn one_turn_per_conversation_and_stop_cancels_only_the_users_turns() {
        let registry = Arc::new(TurnRegistry::default());
        let (alice, bob) = (UserId::new(), UserId::new());
        let id = ConversationId::new();
        let first = registry.begin(&alice, &id, Some("s1".into())).unwrap();
        assert!(registry.begin(&alice, &id, None).is_none());
        let bobs = registry.begin(&bob, &id, None).unwrap();

        assert_eq!(registry.stop(&alice, None), 1);

        assert!(first.cancel.is_cancelled());
        assert!(!bobs.cancel.is_cancelled());
        drop(first);
        assert!(registry.begin(&alice, &id, None).is_some());
    }

    #[test]
    fn a_released_turn_lets_the_next_begin_and_its_late_drop_leaves_it_alone() {
        let registry = Arc::new(TurnRegistry::default());
        let (user, id) = (UserId::new(), ConversationId::new());
        let finished = registry.begin(&user, &id, None).unwrap();

        finished.release();
        let next = registry.begin(&user, &id, None).unwrap();
        drop(finished);

        assert_eq!(registry.len(), 1, "the old guard removed the new turn");
        assert!(registry.begin(&user, &id, None).is_none());
        drop(next);
        assert!(registry.is_empty());
    }
}
