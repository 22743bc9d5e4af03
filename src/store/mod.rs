//! Conversation storage: one trait, one implementation per backend.
//!
//! Every operation takes the owning [`UserId`]: there is no way to reach a
//! conversation without naming its owner, so user scoping cannot be forgotten
//! by a caller. Backends: SQLite now (`sqlite.rs`, the embedded default);
//! MongoDB comes in its own issue and implements the same trait.

pub mod accounts;
pub mod branches;
pub mod cache;
mod message;
pub mod mongo;
pub mod presets;
pub mod shares;
pub mod sqlite;
pub mod tokens;
pub mod usage;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{ChatMessage, ConversationId, UserId};
pub use branches::{BranchPool, Siblings};
pub use message::NewMessage;

/// The conversation stores there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MongoDb,
}

impl Backend {
    /// `sqlite` or `mongodb` (also `mongo`), as the command line says it.
    pub fn parse(raw: &str) -> anyhow::Result<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "mongodb" | "mongo" => Ok(Backend::MongoDb),
            other => anyhow::bail!("unknown store {other:?}: use sqlite or mongodb"),
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No conversation with that id belongs to that user.
    #[error("conversation not found")]
    NotFound,
    /// The conversation would grow past its cap (`MAX_CONVERSATION_*`), or
    /// past what the backend can hold (MongoDB's 16 MB document limit); the
    /// sentence (the cap's, the same everywhere) says so to the user.
    #[error("{0}")]
    TooLarge(String),
    /// No branch at that index and position (`switch_branch`), or no
    /// message at that index to fork from (`fork`).
    #[error("no such branch")]
    NoSuchBranch,
    /// The backend cannot be reached right now (retryable).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or a corrupt row.
    #[error("store error: {0:#}")]
    Backend(anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What a conversation list shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversationMeta {
    pub conversation_id: ConversationId,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    pub title: Option<String>,
    pub message_count: u64,
}

/// A stored message with its cached token count (absent for rows written
/// by an older version; computed on use then).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub message: ChatMessage,
    pub tokens: Option<u32>,
}

/// The running summary of the oldest messages, kept beside the history
/// (which is never cut).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub text: String,
    /// How many messages, from the start of the history, it stands for.
    pub covers: usize,
    pub tokens: u32,
}

/// A conversation's own model, system prompt and temperature; each absent
/// one is the default (the catalogue's default model, no system prompt, the
/// model's temperature). Stored beside the history as optional fields: the
/// history itself holds only `user` and `assistant` messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConversationSettings {
    /// A model id of the catalogue (`MODELS_FILE`).
    pub model: Option<String>,
    /// Sent first in every prompt, as a `system` message.
    pub system_prompt: Option<String>,
    pub temperature: Option<f32>,
}

impl ConversationSettings {
    /// Whether nothing differs from the defaults.
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// A change of some of a conversation's settings
/// (`PATCH /conversation/{id}/settings`, a message naming a model): for
/// each field, `None` leaves it as it is, `Some(None)` sets it back to the
/// default and `Some(Some(v))` sets it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsChange {
    pub model: Option<Option<String>>,
    pub system_prompt: Option<Option<String>>,
    pub temperature: Option<Option<f32>>,
}

impl SettingsChange {
    /// `settings` with the change made.
    pub fn apply(&self, mut settings: ConversationSettings) -> ConversationSettings {
        if let Some(model) = &self.model {
            settings.model = model.clone();
        }
        if let Some(prompt) = &self.system_prompt {
            settings.system_prompt = prompt.clone();
        }
        if let Some(temperature) = self.temperature {
            settings.temperature = temperature;
        }
        settings
    }
}

/// A whole conversation.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub meta: ConversationMeta,
    pub messages: std::sync::Arc<Vec<StoredMessage>>,
    pub summary: Option<Summary>,
    pub settings: ConversationSettings,
}

impl Conversation {
    /// The history as plain messages.
    pub fn history(&self) -> Vec<ChatMessage> {
        self.messages.iter().map(|m| m.message.clone()).collect()
    }
}

/// One conversation as [`ConversationStore::export_page`] reads it: its
/// owner, the conversation and what its edits and regenerates set aside.
#[derive(Debug, Clone)]
pub struct Exported {
    pub user: UserId,
    pub conversation: Conversation,
    pub branches: BranchPool,
}

/// Part of a conversation's history (`GET /load_conversation/{id}?limit=&before=`).
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The conversation's metadata; `message_count` is the whole history's.
    pub meta: ConversationMeta,
    /// The index in the history of the first message returned.
    pub first: u64,
    pub messages: Vec<ChatMessage>,
    pub settings: ConversationSettings,
}

/// The range of the page before `before` (the end when absent or past
/// it) of at most `limit` messages, in a history of `total`.
pub fn page_range(total: u64, before: Option<u64>, limit: u64) -> std::ops::Range<u64> {
    let end = before.unwrap_or(total).min(total);
    end.saturating_sub(limit)..end
}

impl HistoryPage {
    /// The page of a whole conversation.
    pub fn of(conversation: &Conversation, before: Option<u64>, limit: u64) -> Self {
        let range = page_range(conversation.messages.len() as u64, before, limit);
        HistoryPage {
            meta: conversation.meta.clone(),
            first: range.start,
            messages: conversation.messages[range.start as usize..range.end as usize]
                .iter()
                .map(|m| m.message.clone())
                .collect(),
            settings: conversation.settings.clone(),
        }
    }
}

/// One search result.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    #[serde(flatten)]
    pub meta: ConversationMeta,
    pub score: f64,
}

/// Storage of conversations, scoped by user.
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// Creates an empty conversation with the default settings.
    async fn create(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta> {
        self.create_with(user, id, &ConversationSettings::default())
            .await
    }
    /// Creates an empty conversation with its own settings (model, system
    /// prompt, temperature), in one write.
    async fn create_with(
        &self,
        user: &UserId,
        id: &ConversationId,
        settings: &ConversationSettings,
    ) -> StoreResult<ConversationMeta>;
    /// Replaces the conversation's settings (model, system prompt,
    /// temperature); its history, title and times are left as they are.
    async fn set_settings(
        &self,
        user: &UserId,
        id: &ConversationId,
        settings: &ConversationSettings,
    ) -> StoreResult<()>;
    /// Changes the settings `change` names, leaving the others as they are
    /// (in one step: two changes at once each keep the other's fields), and
    /// answers the settings now; `NotFound` unless the user has the
    /// conversation. Its history, title and times are left as they are.
    async fn change_settings(
        &self,
        user: &UserId,
        id: &ConversationId,
        change: &SettingsChange,
    ) -> StoreResult<ConversationSettings>;
    /// The conversation with its messages and summary.
    async fn load(&self, user: &UserId, id: &ConversationId) -> StoreResult<Conversation>;
    /// At most `limit` messages before index `before` (the end when
    /// absent), with the metadata. Backends read only the page; this
    /// default reads the whole conversation (a cache serves it).
    async fn load_page(
        &self,
        user: &UserId,
        id: &ConversationId,
        before: Option<u64>,
        limit: u64,
    ) -> StoreResult<HistoryPage> {
        let conversation = self.load(user, id).await?;
        Ok(HistoryPage::of(&conversation, before, limit))
    }
    /// The conversation's revision: a number the store changes with every
    /// write to the conversation (its messages, summary, settings, title,
    /// owner), whichever process makes it, in the write's own transaction.
    /// `None` where the store keeps none: then no process can tell whether
    /// a copy it kept is still the stored one (see `cache`).
    async fn revision(&self, user: &UserId, id: &ConversationId) -> StoreResult<Option<u64>> {
        self.meta(user, id).await?;
        Ok(None)
    }
    /// [`load`](Self::load) with the [`revision`](Self::revision) of what
    /// it read, in one read.
    async fn load_revised(
        &self,
        user: &UserId,
        id: &ConversationId,
    ) -> StoreResult<(Conversation, Option<u64>)> {
        Ok((self.load(user, id).await?, None))
    }
    /// [`append`](Self::append), also answering the conversation's
    /// revisions just before and just after the append, from its own
    /// transaction (`None` where the store keeps none).
    async fn append_revised(
        &self,
        user: &UserId,
        id: &ConversationId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<(ConversationMeta, Option<(u64, u64)>)> {
        Ok((self.append(user, id, messages).await?, None))
    }
    /// The conversation's metadata only (an existence check).
    async fn meta(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta>;
    /// The user's conversations, newest `created_at` first.
    async fn list(
        &self,
        user: &UserId,
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<ConversationMeta>>;
    /// Appends messages atomically (all or none), sets the title from the
    /// first user message when there is none, bumps `updated_at`.
    async fn append(
        &self,
        user: &UserId,
        id: &ConversationId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<ConversationMeta>;
    /// Removes the last message and returns it (`None` when the history is
    /// empty); for regenerating a reply.
    async fn delete_last_message(
        &self,
        user: &UserId,
        id: &ConversationId,
    ) -> StoreResult<Option<ChatMessage>>;
    /// The branches set aside beside the active path (empty when the
    /// conversation was never forked).
    async fn branches(&self, user: &UserId, id: &ConversationId) -> StoreResult<BranchPool>;
    /// Sets the history from index `at` aside as a branch and appends
    /// `messages` in its place, atomically (an edit: the new user message and
    /// its reply; a regenerate: the new reply). The conversation cap counts
    /// what is stored, branches included. A summary covering more than `at`
    /// messages is dropped. `NoSuchBranch` when `at` is past the end.
    async fn fork(
        &self,
        user: &UserId,
        id: &ConversationId,
        at: u64,
        messages: Vec<NewMessage>,
    ) -> StoreResult<ConversationMeta>;
    /// Makes the sibling at `position` (from 1, oldest first) of the active
    /// message at `index` active: the active suffix from `index` is set aside
    /// and the sibling's branch, following the children shown last, takes its
    /// place. The active one itself changes nothing. A summary covering more
    /// than `index` messages is dropped. `NoSuchBranch` when there is none.
    async fn switch_branch(
        &self,
        user: &UserId,
        id: &ConversationId,
        index: u64,
        position: u64,
    ) -> StoreResult<ConversationMeta>;
    /// Empties the history, drops the summary and the branches.
    async fn reset(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta>;
    /// Removes the conversation.
    async fn delete(&self, user: &UserId, id: &ConversationId) -> StoreResult<()>;
    /// Replaces the running summary.
    async fn set_summary(
        &self,
        user: &UserId,
        id: &ConversationId,
        summary: Summary,
    ) -> StoreResult<()>;
    /// Replaces the title (LLM-made titles).
    async fn set_title(
        &self,
        user: &UserId,
        id: &ConversationId,
        title: &str,
    ) -> StoreResult<ConversationMeta>;
    /// Full-text search over the user's conversations, best first.
    async fn search(&self, user: &UserId, query: &str, limit: u32) -> StoreResult<Vec<SearchHit>>;
    /// How many conversations there are, over all users (for progress).
    async fn count_all(&self) -> StoreResult<u64>;
    /// Every conversation of every user with its branches, ordered by
    /// (user id, conversation id), `limit` at a time after `after`: for
    /// copying between backends ([`import_branched`](Self::import_branched)).
    async fn export_page(
        &self,
        after: Option<(UserId, ConversationId)>,
        limit: u32,
    ) -> StoreResult<Vec<Exported>>;
    /// Stores a whole conversation (times, title, summary, messages with
    /// their token counts) unless one with that id already exists for that
    /// user; `true` when it was inserted. Copying twice changes nothing.
    async fn import(&self, user: &UserId, conversation: &Conversation) -> StoreResult<bool> {
        self.import_branched(user, conversation, &BranchPool::default())
            .await
    }
    /// [`import`](Self::import) with the branches kept beside the history
    /// (a ChatGPT export's other branches), in the same write; the cap
    /// counts them too.
    async fn import_branched(
        &self,
        user: &UserId,
        conversation: &Conversation,
        pool: &BranchPool,
    ) -> StoreResult<bool>;
    /// Drops what is kept in memory for `user`, whose conversations moved to
    /// another user (a sign-in); a store without a cache keeps nothing.
    fn forget_user(&self, _user: &UserId) {}
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
    /// Backend name for logs and `/readyz`.
    fn backend(&self) -> &'static str;
}

/// The first words of a message, as a title.
pub fn title_from(content: &str) -> Option<String> {
    let words: Vec<&str> = content.split_whitespace().collect();
    if words.is_empty() {
        return None;
    }
    let joined = words.join(" ");
    let mut title: String = joined.chars().take(80).collect();
    if joined.chars().count() > 80 {
        title.push('…');
    }
    Some(title)
}

/// The search terms of a free-text query: words of letters and digits, at
/// most 16, so no query syntax of any backend leaks through.
pub fn search_terms(query: &str) -> Vec<String> {
    words(query).take(16).collect()
}

/// The words of a text as search sees them, lowercased: what an index built
/// in Rust (SQLite's) stores and what [`search_terms`] looks up.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    raw_words(text)
        .map(|w| {
            let mut term = String::new();
            push_lowercase(w, &mut term);
            term
        })
        .filter(|w| !w.is_empty())
}

/// Appends the words of `text`, as [`words`] gives them, to `out`: each
/// after `prefix`, separated by spaces. What the SQLite index writes for
/// every message, without a string per word.
pub fn push_words(text: &str, prefix: &str, out: &mut String) {
    for word in raw_words(text) {
        let mark = out.len();
        if mark > 0 {
            out.push(' ');
        }
        out.push_str(prefix);
        let body = out.len();
        push_lowercase(word, out);
        if out.len() == body {
            out.truncate(mark);
        }
    }
}

/// The runs of letters and digits in `text`.
fn raw_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// Appends `word` lowercased as a term: ASCII (most words) in place; other
/// text through `str::to_lowercase` (a final sigma lowercases otherwise
/// than on its own), keeping only letters and digits (lowercasing can add
/// a combining mark: "İ" becomes "i\u{307}").
fn push_lowercase(word: &str, out: &mut String) {
    if word.is_ascii() {
        // Copied whole and lowercased in place, not pushed a char at a time.
        let start = out.len();
        out.push_str(word);
        out[start..].make_ascii_lowercase();
    } else {
        out.extend(word.to_lowercase().chars().filter(|c| c.is_alphanumeric()));
    }
}

/// RFC 3339 UTC with microseconds and `Z`: sorts as text, as the DB needs.
pub mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    pub fn format(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_terms_stay_plain_words_when_lowercasing_adds_a_mark() {
        // Found by the property test: "İ" lowercases to "i" + U+0307.
        assert_eq!(search_terms("İstanbul, ÜNÏ 42"), ["istanbul", "ünï", "42"]);
        assert!(search_terms("İ").iter().all(|t| t == "i"));
    }

    #[test]
    fn pushed_words_are_the_words_each_after_the_prefix() {
        let texts = [
            "",
            "   ",
            "Hello, World! 42 times",
            "w0 xxxxxxxxxxxxx w1 xxxxxxxx",
            "İstanbul ÜNÏ ΟΔΟΣ Σ café-crème",
            "a\u{307}b \u{301}",
            "日本語のテキスト 和 English",
            "--::..",
        ];
        for text in texts {
            let expected = words(text)
                .map(|w| format!("7_{w}"))
                .collect::<Vec<_>>()
                .join(" ");
            let mut pushed = String::new();
            push_words(text, "7_", &mut pushed);
            assert_eq!(pushed, expected, "{text:?}");
        }
    }

    #[test]
    fn titles_are_the_first_words_collapsed_and_cut() {
        assert_eq!(
            title_from("  hello\n\nworld "),
            Some("hello world".to_string())
        );
        assert_eq!(title_from("   "), None);
        let long = "word ".repeat(40);
        let title = title_from(&long).unwrap();
        assert_eq!(title.chars().count(), 81);
        assert!(title.ends_with('…'));
    }

    #[test]
    fn search_terms_drop_query_syntax() {
        assert_eq!(
            search_terms("\"rust\" OR (tokio*) -x"),
            vec!["rust", "or", "tokio", "x"]
        );
        assert!(search_terms("*** ()").is_empty());
    }
}
