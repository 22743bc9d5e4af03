//! One chat turn, from a user's message to a stored reply, in three steps:
//! [`prepare`](Turn::prepare) loads the conversation (unless
//! [`run_branch`](Turn::run_branch) already did) and fits the prompt
//! into the context window (summarising older turns when needed),
//! [`stream`](Turn::stream) streams the reply to the sending socket and the
//! reply hub, and [`finish`](Turn::finish) stores the outcome and tells the
//! user's tabs. There is one finish path, whatever the ending.
//!
//! It knows nothing of Socket.IO: events go through an [`EventSink`]. What
//! is stored is always consistent: success stores the user's message and
//! the reply together; a stop or disconnect stores the partial reply; an
//! upstream failure, including a reply that ends without any text (or with
//! whitespace only), stores only the user's message (a failed regenerate
//! stores nothing: the old reply stays shown).

mod backoff;
mod chat;
mod full;
mod lapsed;
mod models;
mod quota;
mod registry;
mod stop;
mod summarise;
#[cfg(test)]
pub(crate) mod testing;
mod title;

use std::time::Instant;

use futures_util::StreamExt;
use serde_json::Value;

pub use backoff::SummaryBackoff;
pub use chat::Chat;
pub use lapsed::end_lapsed_replies;
pub use models::{Model, Models};
pub use quota::{effective_quota, resets_at, today, UsageToday};
pub use registry::{TurnGuard, TurnRegistry};
pub use stop::{apply_remote_stop, stop_everywhere};

use crate::context::{assemble, plan};
use crate::domain::{ChatMessage, ConversationId, Role, UserId};
use crate::error::ApiError;
use crate::events::{
    emit_paced, EventSink, Field, Offer, ResponseChunk, ResponseEnd, ServerEvent, TokenUsage,
    SLOW_SOCKET_PATIENCE,
};
use crate::llm::{ChatRequest, Delta, Messages, Usage};
use crate::metrics::Metrics;
use crate::notify::{conversation_branched, conversation_updated};
use crate::replies::{BranchPoint, Relay, ReplyEvent};
use crate::store::usage::DayUsage;
use crate::store::{Conversation, NewMessage};
use summarise::{Folded, Whose};

/// Checks a chat message as it came in a payload (raw JSON): a non-empty
/// string within the size limit.
pub fn validate_message(raw: Option<&Value>, max_chars: usize) -> Result<String, ApiError> {
    check_message(Field::from_json(raw), max_chars)
}

/// Checks a chat message: a non-empty string within the size limit.
pub fn check_message(raw: Field<String>, max_chars: usize) -> Result<String, ApiError> {
    let Field::Given(text) = raw else {
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
    Ok(text)
}

/// How the streaming part ended.
enum Outcome {
    Finished,
    Stopped,
    Failed(ApiError),
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Finished => "finished",
            Outcome::Stopped => "stopped",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// A turn that answers on a new branch: the history from `prefix` on is
/// set aside (kept as a branch, `ConversationStore::fork`) and the prompt is
/// the history before `prefix`, then the user's message.
#[derive(Debug, Clone, Copy)]
pub struct Branching {
    /// How many messages of the history the prompt keeps before the user's.
    pub prefix: usize,
    /// The user's message is the stored one at `prefix` (a regenerate: only
    /// the reply is new, a sibling of the old one); else it is new (an
    /// edit: a sibling of the message at `prefix`).
    pub user_stored: bool,
}

impl Branching {
    /// Where the new messages go in the history.
    fn at(&self) -> u64 {
        (self.prefix + usize::from(self.user_stored)) as u64
    }

    /// The same turn once its user's message is stored (by the instance
    /// that ended it for a dead one): only the reply is left, after it.
    fn with_user_stored(self) -> Self {
        Branching {
            user_stored: true,
            ..self
        }
    }
}

/// One turn: whose, in which conversation, and where its events go.
pub struct Turn<'a> {
    pub user: &'a UserId,
    pub conversation: &'a ConversationId,
    /// The registered turn (cancel handle; released once stored).
    pub guard: &'a TurnGuard,
    /// The sending socket's events.
    pub sink: &'a dyn EventSink,
    /// The sending socket's id: the hub does not send it the reply again.
    pub origin_socket: Option<String>,
    /// Answer on a new branch (edit, regenerate); `None`: append.
    pub branching: Option<Branching>,
    /// A model the message asked for (already checked against the
    /// catalogue): the conversation switches to it before the turn.
    pub switch_model: Option<&'a Model>,
}

/// What a turn has done so far; the finish path reads it.
struct Progress {
    /// The user's message and its token count.
    text: String,
    text_tokens: u32,
    prompt_tokens: u32,
    summarised: bool,
    /// The conversation had no messages before this turn.
    first_turn: bool,
    reply: String,
    chunks: usize,
    /// The upstream accepted the chat request (its tokens are spent).
    upstream_answered: bool,
    /// The upstream's own count, when it sent one.
    usage: Option<Usage>,
    /// Bytes of text the conversation could still take when the turn began.
    room: u64,
    /// Other tabs follow the reply through it (none before streaming).
    relay: Option<Relay>,
    started: Instant,
    /// The conversation's temperature, when it has its own.
    temperature: Option<f32>,
}

impl Progress {
    /// The tokens the reply's request spent: the upstream's count, else
    /// the server's (the prompt as sent, and `reply_tokens`: the count of
    /// the text that arrived, asked for only then), nothing when the
    /// upstream never accepted the request.
    fn spent(&self, reply_tokens: impl FnOnce() -> u32) -> DayUsage {
        match self.usage {
            Some(usage) => usage.into(),
            None if self.upstream_answered => DayUsage {
                prompt_tokens: u64::from(self.prompt_tokens),
                completion_tokens: u64::from(reply_tokens()),
            },
            None => DayUsage::default(),
        }
    }
}

/// What [`Turn::prepare`] leaves for the stream.
enum Prepared {
    /// The prompt, for the conversation's model.
    Prompt(Messages, std::sync::Arc<Model>),
    /// Stopped while summarising, before any reply.
    Stopped,
}

/// The conversation as a branch turn read it to pick its message: the turn
/// uses that read instead of a second one.
struct Loaded {
    conversation: Conversation,
    /// When the read began (the turn's start).
    started: Instant,
}

impl Turn<'_> {
    /// Runs the turn with the user's message `text`. Errors before
    /// streaming are returned (nothing stored); errors while streaming are
    /// emitted as `error` after storing what is consistent.
    pub async fn run(self, chat: &Chat, text: String) -> Result<(), ApiError> {
        self.run_with(chat, text, None).await
    }

    /// Runs the turn on a new branch (edit, regenerate): `pick` reads the
    /// stored conversation for the message to answer and where its branch
    /// starts, or refuses (nothing stored). The conversation is read once,
    /// for `pick` and the prompt alike (`self.branching` is replaced).
    pub async fn run_branch(
        mut self,
        chat: &Chat,
        pick: impl FnOnce(&Conversation) -> Result<(String, Branching), ApiError>,
    ) -> Result<(), ApiError> {
        let loaded = self.load(chat).await?;
        let (text, branching) = pick(&loaded.conversation)?;
        self.branching = Some(branching);
        self.run_with(chat, text, Some(loaded)).await
    }

    /// Reads the conversation (the store's latency observed).
    async fn load(&self, chat: &Chat) -> Result<Loaded, ApiError> {
        let started = Instant::now();
        let conversation = chat.store.load(self.user, self.conversation).await?;
        chat.metrics.store_latency.observe(started.elapsed());
        Ok(Loaded {
            conversation,
            started,
        })
    }

    async fn run_with(
        self,
        chat: &Chat,
        text: String,
        loaded: Option<Loaded>,
    ) -> Result<(), ApiError> {
        // Over the cap the message is refused at once (nothing stored),
        // rather than queued behind replies that may take minutes.
        let _slot = match &chat.llm_slots {
            None => None,
            Some(slots) => Some(slots.clone().try_acquire_owned().map_err(|_| {
                Metrics::inc(&chat.metrics.turns_refused_busy);
                ApiError::Busy("The server is busy. Please try again in a moment.".into())
            })?),
        };
        let mut progress = Progress {
            text_tokens: chat.tokens.count(&text),
            text,
            prompt_tokens: 0,
            summarised: false,
            first_turn: false,
            reply: String::new(),
            chunks: 0,
            upstream_answered: false,
            usage: None,
            room: 0,
            relay: None,
            started: loaded.as_ref().map_or_else(Instant::now, |l| l.started),
            temperature: None,
        };
        let outcome = match self.prepare(chat, &mut progress, loaded).await? {
            Prepared::Stopped => Outcome::Stopped,
            Prepared::Prompt(messages, model) => {
                self.stream(chat, &mut progress, messages, &model).await
            }
        };
        self.finish(chat, progress, outcome).await
    }

    /// Loads the conversation (unless `loaded` has it) and builds the
    /// prompt, summarising older turns when they no longer fit.
    async fn prepare(
        &self,
        chat: &Chat,
        progress: &mut Progress,
        loaded: Option<Loaded>,
    ) -> Result<Prepared, ApiError> {
        let settings = &chat.settings;
        let mut conversation = match loaded {
            Some(loaded) => loaded.conversation,
            None => self.load(chat).await?.conversation,
        };
        progress.room = full::room_for_turn(chat, &conversation, &progress.text)?;
        if let Some(branching) = self.branching {
            // The prompt is the path up to the branch point, nothing after;
            // a summary of more than that no longer stands for it.
            let Some(kept) = conversation.messages.get(..branching.prefix) else {
                return Err(crate::store::StoreError::NoSuchBranch.into());
            };
            conversation.messages = std::sync::Arc::new(kept.to_vec());
            if conversation
                .summary
                .as_ref()
                .is_some_and(|s| s.covers > branching.prefix)
            {
                conversation.summary = None;
            }
        }
        if let Some(model) = self
            .switch_model
            .filter(|m| conversation.settings.model.as_deref() != Some(m.spec.id.as_str()))
        {
            // Only the model: a settings change at the same time keeps its fields.
            let change = crate::store::SettingsChange {
                model: Some(Some(model.spec.id.clone())),
                ..Default::default()
            };
            conversation.settings = chat
                .store
                .change_settings(self.user, self.conversation, &change)
                .await?;
        }
        let model = chat.models.for_conversation(&conversation.settings).clone();
        progress.temperature = conversation.settings.temperature;
        let budget = model.spec.prompt_budget();
        // Stored messages cache their count with the server's tokenizer
        // (`TOKENIZER`); a model with another one counts them itself.
        let own_tokenizer = model.spec.tokenizer != settings.tokenizer;

        let new_tokens = if own_tokenizer {
            model.tokens.count(&progress.text)
        } else {
            progress.text_tokens
        };
        let new_cost = new_tokens + crate::context::MESSAGE_OVERHEAD;
        let system = conversation
            .settings
            .system_prompt
            .as_deref()
            .map(|prompt| ChatMessage::new(Role::System, prompt));
        let system_cost = system
            .as_ref()
            .map_or(0, |m| model.tokens.message_cost(&m.content));
        if new_cost + system_cost + crate::context::REPLY_PRIMING > budget {
            let room = budget.saturating_sub(
                system_cost + crate::context::MESSAGE_OVERHEAD + crate::context::REPLY_PRIMING,
            );
            return Err(ApiError::TooLarge(if system_cost > 0 {
                format!(
                    "Message too long for the context window with this conversation's system prompt ({new_tokens} tokens; at most {room} fit)."
                )
            } else {
                format!(
                    "Message too long for the context window ({new_tokens} tokens; at most {room} fit)."
                )
            }));
        }
        Metrics::inc(&chat.metrics.turns_started);

        // Token counts are cached per stored message; only older rows
        // without one are counted here.
        let costs: Vec<u32> = conversation
            .messages
            .iter()
            .map(|m| {
                if own_tokenizer {
                    model.tokens.message_cost(&m.message.content)
                } else {
                    crate::context::cost(&chat.tokens, m)
                }
            })
            .collect();
        let summary_cap = settings.summary_tokens.min(budget / 3).max(16);
        // The system prompt is in every prompt: it is planned as part of
        // the new message's cost.
        let prompt_plan = plan(
            &costs,
            conversation.summary.as_ref(),
            new_cost + system_cost,
            budget,
            summary_cap,
        );
        let mut summary_text = conversation.summary.as_ref().map(|s| s.text.clone());
        if let Some(from) = prompt_plan.summarise_from {
            let first_kept = prompt_plan.first_kept;
            let whose = Whose {
                user: self.user,
                conversation: self.conversation,
                cancel: &self.guard.cancel,
                model: &model,
            };
            match whose
                .summarise(chat, &conversation, &costs, from, first_kept, summary_cap)
                .await
            {
                Folded::Stopped => return Ok(Prepared::Stopped),
                Folded::Into(text) => {
                    summary_text = Some(text);
                    progress.summarised = true;
                }
                Folded::NotNow => {}
            }
        }

        let user_message = ChatMessage::new(Role::User, progress.text.clone());
        let (messages, prompt_tokens) = assemble(
            &model.tokens,
            &conversation.messages,
            &costs,
            prompt_plan.first_kept,
            system.map(|m| (m, system_cost)),
            summary_text.as_deref(),
            &user_message,
            new_cost,
            budget,
        );
        progress.prompt_tokens = prompt_tokens;
        progress.first_turn = conversation.messages.is_empty();
        Ok(Prepared::Prompt(messages, model))
    }

    /// Streams the reply to the sending socket and to the hub (other tabs,
    /// any instance) until it ends, is stopped or fails.
    async fn stream(
        &self,
        chat: &Chat,
        progress: &mut Progress,
        messages: Messages,
        model: &Model,
    ) -> Outcome {
        let id = self.conversation;
        self.sink.emit(ServerEvent::TokenUsage(TokenUsage {
            total_tokens_used: progress.prompt_tokens,
            max_tokens: model.spec.max_tokens,
            conversation_id: id.as_ref(),
            summarised: progress.summarised,
        }));
        let relay = progress.relay.insert(chat.replies.relay(
            self.user,
            id,
            self.origin_socket.clone(),
        ));
        relay.send(ReplyEvent::Started {
            message: progress.text.clone(),
            branch: self.branching.map(|b| BranchPoint {
                prefix: b.prefix as u64,
                user_stored: b.user_stored,
            }),
        });

        Metrics::add(&chat.metrics.tokens_in, progress.prompt_tokens as u64);
        let request = ChatRequest {
            messages,
            max_tokens: model.spec.reply_tokens,
            temperature: progress.temperature,
        };
        let cancel = &self.guard.cancel;
        let mut stream = tokio::select! {
            _ = cancel.cancelled() => return Outcome::Stopped,
            started = model.llm.stream(request) => match started {
                Err(err) => return Outcome::Failed(err.into()),
                Ok(stream) => stream,
            },
        };
        progress.upstream_answered = true;
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return Outcome::Stopped,
                next = stream.next() => next,
            };
            let chunk = match next {
                // A reply with nothing to read is a failure, not an
                // answer: the user is told, and only their message is
                // stored (whitespace alone counts as nothing).
                None if progress.reply.trim().is_empty() => {
                    return Outcome::Failed(ApiError::LlmEmptyReply)
                }
                None => return Outcome::Finished,
                Some(Err(err)) => return Outcome::Failed(err.into()),
                Some(Ok(Delta::Usage(usage))) => {
                    progress.usage = Some(usage);
                    continue;
                }
                Some(Ok(Delta::Text(chunk))) => chunk,
            };
            if progress.chunks == 0 {
                chat.metrics.first_chunk.observe(progress.started.elapsed());
            }
            let index = progress.chunks as u64;
            progress.reply.push_str(&chunk);
            let event = ServerEvent::ResponseChunk(ResponseChunk {
                chunk: &chunk,
                index,
                conversation_id: id.as_ref(),
                reply_id: relay.reply_id(),
            });
            // A sender whose buffer is full is waited for (a stop still
            // works meanwhile); one that stays full is disconnected and
            // resumes from the reply log.
            let stopped = self.sink.offer(&event) == Offer::Full
                && tokio::select! {
                    _ = cancel.cancelled() => true,
                    _ = emit_paced(self.sink, &event, SLOW_SOCKET_PATIENCE) => false,
                };
            // The chunk is in the reply's text: the other tabs get it too.
            relay.send(ReplyEvent::Chunk { index, chunk });
            progress.chunks += 1;
            if stopped {
                return Outcome::Stopped;
            }
        }
    }

    /// Stores what the turn produced and tells the sending socket, the
    /// other tabs and every socket of the user; the one ending of every
    /// turn that got past its checks.
    async fn finish(
        &self,
        chat: &Chat,
        progress: Progress,
        outcome: Outcome,
    ) -> Result<(), ApiError> {
        let id = self.conversation;
        // The reply is counted (with the server's tokenizer) at most once:
        // for the day's usage when the upstream sent none, and for its
        // stored count. The upstream's `completion_tokens` is not used for
        // the latter: an OpenAI-compatible upstream may tokenise otherwise
        // than `TOKENIZER` says (any model behind `LLM_BASE_URL`), and a
        // reasoning model's count includes its hidden reasoning tokens.
        let mut reply_tokens = None;
        let spent = progress.spent(|| *reply_tokens.insert(chat.tokens.count(&progress.reply)));
        let Progress {
            text,
            text_tokens,
            prompt_tokens,
            summarised,
            first_turn,
            reply,
            chunks,
            relay,
            started,
            room,
            ..
        } = progress;
        Metrics::add(&chat.metrics.reply_chunks, chunks as u64);
        let first_message = (chat.settings.llm_titles && first_turn).then(|| text.clone());
        let user_stored = self.branching.is_some_and(|b| b.user_stored);
        let mut to_store = Vec::new();
        if !user_stored {
            to_store.push(NewMessage {
                role: Role::User,
                content: text,
                tokens: Some(text_tokens),
            });
        }
        let keep_reply =
            matches!(outcome, Outcome::Finished | Outcome::Stopped) && !reply.is_empty();
        if keep_reply {
            let reply_tokens = reply_tokens.unwrap_or_else(|| chat.tokens.count(&reply));
            Metrics::add(&chat.metrics.tokens_out, reply_tokens as u64);
            to_store.push(NewMessage {
                role: Role::Assistant,
                tokens: Some(reply_tokens),
                content: reply,
            });
        }
        // Another instance took this reply for a dead one (its lease lapsed
        // while this instance was cut off from Redis) and stored the message
        // (an edit's on its new branch): the reply, if any, goes after it.
        let mut branching = self.branching;
        if let Some(relay) = relay
            .as_ref()
            .filter(|_| chat.redis.is_some() && !user_stored)
        {
            if !relay.stores_user_message().await {
                to_store.remove(0);
                branching = branching.map(|b| b.with_user_stored());
            }
        }
        let store_started = Instant::now();
        // Counted before the reply's end is announced, so a client that
        // asks `GET /usage` after `response_end` sees this turn.
        let store = async {
            match branching {
                // A regenerate with no new reply (failed, or stopped before
                // any text): the old reply stays where it was, shown.
                Some(_) if to_store.is_empty() => chat.store.meta(self.user, id).await,
                Some(branching) => {
                    full::fork_turn(chat, self.user, id, branching.at(), to_store, room).await
                }
                None if to_store.is_empty() => chat.store.meta(self.user, id).await,
                None => full::append_turn(chat, self.user, id, to_store, room).await,
            }
        };
        let (stored, ()) = tokio::join!(store, chat.record_usage(self.user, spent));
        chat.metrics.store_latency.observe(store_started.elapsed());
        chat.metrics.turn_duration.observe(started.elapsed());
        match (&outcome, &stored) {
            (Outcome::Finished, Ok(_)) => Metrics::inc(&chat.metrics.turns_completed),
            (Outcome::Stopped, Ok(_)) => Metrics::inc(&chat.metrics.turns_stopped),
            _ => Metrics::inc(&chat.metrics.turns_failed),
        }
        let relay_send = |event: ReplyEvent| {
            if let Some(relay) = &relay {
                relay.send(event);
            }
        };
        let meta = match stored {
            Ok(meta) => meta,
            Err(err) => {
                // The sending socket gets its error from the caller.
                let err = ApiError::from(err);
                relay_send(ReplyEvent::error(&err.body()));
                return Err(err);
            }
        };
        self.guard.release();
        // One line per turn; no message text at this level.
        tracing::info!(
            turn = self.guard.turn,
            conversation = %id,
            outcome = outcome.name(),
            chunks,
            prompt_tokens,
            summarised,
            ms = started.elapsed().as_millis() as u64,
            "turn"
        );
        match outcome {
            Outcome::Failed(err) => {
                let body = err.body();
                relay_send(ReplyEvent::error(&body));
                emit_paced(self.sink, &body.event(Some(id)), SLOW_SOCKET_PATIENCE).await;
            }
            Outcome::Finished | Outcome::Stopped => {
                let stopped = matches!(outcome, Outcome::Stopped);
                relay_send(ReplyEvent::End {
                    stopped,
                    chunks: chunks as u64,
                });
                // After the chunks, which may still fill the buffer.
                let end = ServerEvent::ResponseEnd(ResponseEnd {
                    conversation_id: id.as_ref(),
                    stopped,
                    chunks: chunks as u64,
                    reply_id: relay.as_ref().map(Relay::reply_id),
                });
                emit_paced(self.sink, &end, SLOW_SOCKET_PATIENCE).await;
            }
        }
        let updated = match self.branching {
            Some(_) => conversation_branched(&meta),
            None => conversation_updated(&meta),
        };
        chat.notifier.to_user(self.user, updated).await;
        if let Some(first_message) = first_message.filter(|_| keep_reply) {
            tokio::spawn(title::make_title(
                chat.clone(),
                self.user.clone(),
                id.clone(),
                first_message,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::testing::chat_in;
    use super::*;
    use crate::store::cache::CachedStore;
    use crate::store::ConversationStore;

    /// The names of the events the sending socket got.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl EventSink for Recorder {
        fn offer(&self, event: &ServerEvent<'_>) -> Offer {
            self.0.lock().unwrap().push(event.name().to_string());
            Offer::Queued
        }
    }

    /// A turn of no socket that appends, in the conversation's model.
    fn appending<'a>(
        user: &'a UserId,
        conversation: &'a ConversationId,
        guard: &'a TurnGuard,
        sink: &'a dyn EventSink,
    ) -> Turn<'a> {
        Turn {
            user,
            conversation,
            guard,
            sink,
            origin_socket: None,
            branching: None,
            switch_model: None,
        }
    }

    /// The loads of the conversation store so far (cache hits and misses).
    fn loads(store: &CachedStore) -> u64 {
        let (hits, misses) = store.stats();
        hits + misses
    }

    fn texts(conversation: &Conversation) -> Vec<(Role, String)> {
        conversation
            .messages
            .iter()
            .map(|m| (m.message.role, m.message.content.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn a_branch_turn_reads_the_conversation_once() {
        let dir = tempfile::tempdir().unwrap();
        let (chat, store) = chat_in(&dir).await;
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        let stored = |role, content: &str| NewMessage {
            role,
            content: content.to_string(),
            tokens: None,
        };
        store
            .append(
                &user,
                &id,
                vec![
                    stored(Role::User, "first question"),
                    stored(Role::Assistant, "old reply"),
                ],
            )
            .await
            .unwrap();

        // A regenerate, then an edit of the first message.
        let picks: [(&str, Branching); 2] = [
            (
                "first question",
                Branching {
                    prefix: 0,
                    user_stored: true,
                },
            ),
            (
                "edited question",
                Branching {
                    prefix: 0,
                    user_stored: false,
                },
            ),
        ];
        for (text, branching) in picks {
            let guard = chat.turns.begin(&user, &id, None).unwrap();
            let sink = Recorder::default();
            let turn = appending(&user, &id, &guard, &sink);
            let before = loads(&store);
            let seen = Mutex::new(None);
            turn.run_branch(&chat, |conversation| {
                *seen.lock().unwrap() = Some(texts(conversation));
                Ok((text.to_string(), branching))
            })
            .await
            .unwrap();

            assert_eq!(loads(&store) - before, 1, "loads of a turn for {text:?}");
            assert_eq!(
                seen.into_inner().unwrap().unwrap(),
                [
                    (Role::User, "first question".to_string()),
                    (
                        Role::Assistant,
                        if text == "first question" {
                            "old reply".to_string()
                        } else {
                            demo_reply_to("first question")
                        }
                    ),
                ]
            );
            let events = sink.0.lock().unwrap().clone();
            assert_eq!(events.first().map(String::as_str), Some("token_usage"));
            assert_eq!(events.last().map(String::as_str), Some("response_end"));
            // The prompt was the read's history up to the branch point.
            let now = store.load(&user, &id).await.unwrap();
            assert_eq!(
                texts(&now),
                [
                    (Role::User, text.to_string()),
                    (Role::Assistant, demo_reply_to(text)),
                ]
            );
            assert!(!store.branches(&user, &id).await.unwrap().nodes.is_empty());
        }
    }

    #[tokio::test]
    async fn a_turn_counts_the_message_and_the_reply_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let (chat, store) = chat_in(&dir).await;
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        // Stored with their counts, as turns store them: nothing to count.
        let stored = |role, content: &str| NewMessage {
            role,
            content: content.to_string(),
            tokens: Some(chat.tokens.count(content)),
        };
        store
            .append(
                &user,
                &id,
                vec![
                    stored(Role::User, "an earlier question"),
                    stored(Role::Assistant, "an earlier reply"),
                ],
            )
            .await
            .unwrap();
        let guard = chat.turns.begin(&user, &id, None).unwrap();
        let sink = Recorder::default();
        let turn = appending(&user, &id, &guard, &sink);
        let text = "count this message once";

        // The demo upstream sends no usage: the day's usage is counted by
        // the server, from the same count as the stored reply's.
        crate::context::counted::start();
        turn.run(&chat, text.to_string()).await.unwrap();
        let counted = crate::context::counted::take();

        let reply = demo_reply_to(text);
        assert_eq!(counted, [text.to_string(), reply.clone()]);
        let now = store.load(&user, &id).await.unwrap();
        let last = now.messages.last().unwrap();
        assert_eq!(last.message.content.to_string(), reply);
        let reply_tokens = chat.tokens.count(&reply);
        assert_eq!(last.tokens, Some(reply_tokens));
        let usage = chat.usage_today(&user).await.unwrap();
        assert_eq!(usage.used.completion_tokens, u64::from(reply_tokens));
    }

    /// The demo model's answer to a prompt whose last user message is `text`.
    fn demo_reply_to(text: &str) -> String {
        crate::llm::demo::demo_reply(&ChatRequest {
            messages: vec![ChatMessage::new(Role::User, text)].into(),
            max_tokens: 0,
            temperature: None,
        })
    }

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
}
