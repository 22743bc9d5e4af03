//! The `ChatModel` trait and what passes through it: the request and its
//! messages, the streamed reply, the model's description and its errors.
//! A leaf: it imports no sibling, and every provider imports it.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::Stream;
use serde::Serialize;

use bytes::Bytes;

use crate::domain::{ChatMessage, WIRE_RUN};
use crate::store::StoredMessage;

/// Why a model call failed. Shown to people only as a generic sentence.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
    #[error("upstream answered HTTP {status}")]
    Status { status: u16 },
    #[error("upstream body could not be read: {0}")]
    Decode(String),
    #[error("upstream reported an error: {0}")]
    Upstream(String),
    #[error("connection lost mid-reply: {0}")]
    Interrupted(String),
}

/// A chat request, in the upstream's terms.
#[derive(Debug, Clone, Serialize)]
pub struct ChatRequest {
    pub messages: Messages,
    pub max_tokens: u32,
    /// The sampling temperature: the conversation's own or the API request's; `None`: the model's.
    pub temperature: Option<f32>,
}

/// A prompt's messages: owned ones around an optional slice of a stored
/// history, which stays shared with the conversation (a turn's prompt
/// copies no part of the history, not even its `Arc`s).
#[derive(Debug, Clone, Default)]
pub struct Messages {
    head: Vec<ChatMessage>,
    history: Option<(Arc<Vec<StoredMessage>>, Range<usize>)>,
    tail: Vec<ChatMessage>,
}

impl Messages {
    /// `head`, then `history[range]`, then `tail`.
    pub fn around(
        head: Vec<ChatMessage>,
        history: Arc<Vec<StoredMessage>>,
        range: Range<usize>,
        tail: Vec<ChatMessage>,
    ) -> Self {
        let range = range.start.min(history.len())..range.end.min(history.len());
        Self {
            head,
            history: Some((history, range)),
            tail,
        }
    }

    fn history(&self) -> &[StoredMessage] {
        self.history
            .as_ref()
            .map_or(&[], |(history, range)| &history[range.clone()])
    }

    /// The messages in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &ChatMessage> + Clone {
        self.head
            .iter()
            .chain(self.history().iter().map(|m| &m.message))
            .chain(self.tail.iter())
    }

    pub fn last(&self) -> Option<&ChatMessage> {
        self.iter().next_back()
    }

    /// Writes the messages as a JSON array. Whole runs of [`WIRE_RUN`]
    /// history messages go in as the buffers their last message keeps
    /// ([`ChatMessage::joined_run`]): a long history is not copied again
    /// on every turn, only the messages around those runs are.
    pub fn write_json_array(&self, body: &mut WireBody) {
        body.raw(b"[");
        let mut first = true;
        let one = |body: &mut WireBody, first: &mut bool, message: &ChatMessage| {
            if !std::mem::take(first) {
                body.raw(b",");
            }
            body.raw(message.wire().as_bytes());
        };
        for message in &self.head {
            one(body, &mut first, message);
        }
        if let Some((history, range)) = &self.history {
            let mut at = range.start;
            while at < range.end {
                let end = at + WIRE_RUN;
                if at % WIRE_RUN == 0 && end <= range.end {
                    let before = history[at..end - 1].iter().map(|m| &m.message);
                    let run = history[end - 1].message.joined_run(before);
                    // Each JSON form comes after a comma: not the array's first.
                    body.shared(if std::mem::take(&mut first) {
                        run.slice(1..)
                    } else {
                        run
                    });
                    at = end;
                } else {
                    one(body, &mut first, &history[at].message);
                    at += 1;
                }
            }
        }
        for message in &self.tail {
            one(body, &mut first, message);
        }
        body.raw(b"]");
    }
}

/// A request body as a list of buffers: bytes written here, and shared
/// buffers (a history's joined runs) put in as they are.
#[derive(Debug, Default)]
pub struct WireBody {
    chunks: Vec<Bytes>,
    pending: Vec<u8>,
    len: usize,
}

impl WireBody {
    /// Appends a copy of `bytes`.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Appends `bytes` without copying them.
    pub fn shared(&mut self, bytes: Bytes) {
        self.flush();
        self.len += bytes.len();
        self.chunks.push(bytes);
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.len += pending.len();
            self.chunks.push(Bytes::from(pending));
        }
    }

    /// The buffers, in order, and their total length.
    pub fn finish(mut self) -> (Vec<Bytes>, usize) {
        self.flush();
        (self.chunks, self.len)
    }
}

impl From<Vec<ChatMessage>> for Messages {
    fn from(messages: Vec<ChatMessage>) -> Self {
        Self {
            head: messages,
            history: None,
            tail: Vec::new(),
        }
    }
}

impl Serialize for Messages {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// The tokens the upstream says a request used (its `usage` object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// One item of a streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// Reply text, one per upstream delta.
    Text(String),
    /// The request's usage, when the upstream reports it (after the last
    /// text, with `stream_options.include_usage`); a later one replaces an
    /// earlier one (some servers send running totals).
    Usage(Usage),
}

/// A streamed reply, one item per upstream delta.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Delta, LlmError>> + Send>>;

/// A whole reply, with its usage when the upstream reported one.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub usage: Option<Usage>,
}

/// What the page and `/get_config` say about the model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub provider: &'static str,
    pub model: String,
    pub demo: bool,
}

/// A chat model.
#[async_trait]
pub trait ChatModel: Send + Sync + 'static {
    /// Starts a streamed reply. Retries (429, 5xx, connection errors) happen
    /// here, before any text is returned; errors after that end the stream.
    async fn stream(&self, request: ChatRequest) -> Result<ChunkStream, LlmError>;
    /// A whole reply at once (summaries, file analysis), with the same retries.
    async fn complete(&self, request: ChatRequest) -> Result<Completion, LlmError>;
    /// Provider and model names.
    fn info(&self) -> ModelInfo;
}
