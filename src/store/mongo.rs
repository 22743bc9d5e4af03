//! The MongoDB store, compatible with the original app's data.
//!
//! One document per conversation in `conversations`, in the original's shape:
//! `{conversation_id, user_id, conversation_history: [{role, content}],
//! conversation_text, created_at, updated_at}` (BSON dates), under the
//! original's `$jsonSchema` validator. Fields this port adds are optional, so
//! a database written by the original app loads unchanged and the original
//! app can still read what is written here:
//!
//! - `title`: the first user message, or an LLM-made title;
//! - `tokens` inside history items: the cached token count of a message;
//! - `summary: {text, covers, tokens}`: the running summary;
//! - `message_count`: the history length (informational: reads use `$size`
//!   of the history, so a document later rewritten by the original app is
//!   still counted right);
//! - `size_bytes`: an over-estimate of the document's BSON size, kept by
//!   every write, so an append can be refused before MongoDB's 16 MB limit.
//!
//! Appends are one update pipeline, evaluated by the server on the current
//! document: the history grows with `$concatArrays`, the searchable text with
//! `$concat`, the size check sits in the filter. Two tasks appending at once
//! therefore never lose a message and never leave `conversation_text` behind.
//! User text only ever enters a pipeline inside `$literal`.
//!
//! Search uses the text index (`$text`, `textScore`) when the server has one;
//! servers without text indexes (SecantusDB, some MongoDB-compatible
//! services) get a case-insensitive scan of the user's messages instead.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};

use super::{
    search_terms, title_from, Conversation, ConversationMeta, ConversationStore, NewMessage,
    SearchHit, StoreError, StoreResult, StoredMessage, Summary,
};
use crate::domain::{self, ChatMessage, ConversationId, Role, UserId};
use crate::redact::Redactor;

/// Collection holding conversations (the original's name).
pub const CONVERSATIONS: &str = "conversations";
/// Collection holding HTTP sessions.
pub const SESSIONS: &str = "sessions";

/// Refuse a write that would take a conversation past this estimated size:
/// 15 MiB, leaving 1 MiB of MongoDB's 16 MiB document limit for the title,
/// the summary and the estimate's slack.
pub const SIZE_LIMIT_BYTES: i64 = 15 * 1024 * 1024;
/// MongoDB's hard limit on a document (what an import may not exceed).
const HARD_LIMIT_BYTES: usize = 16 * 1024 * 1024;
/// What a user is told when a conversation is full.
pub const TOO_LARGE_MESSAGE: &str = "This conversation has reached its size limit (about 15 MB of text). Please start a new conversation.";

/// Estimated bytes of a document's fixed part (ids, dates, counters, keys).
const BASE_BYTES: i64 = 512;
/// Estimated bytes one message adds besides twice its content (once in the
/// history, once in `conversation_text`): the history item's keys, role and
/// token count, the text's `"Assistant: "` prefix and newline.
const PER_MESSAGE_BYTES: i64 = 80;

/// How long to wait for the server at start and per operation.
const SELECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// MongoDB error codes this store reacts to.
pub(crate) mod code {
    pub const INDEX_NOT_FOUND: i32 = 27;
    pub const NAMESPACE_EXISTS: i32 = 48;
    pub const DUPLICATE_KEY: i32 = 11000;
    /// `BSONObjectTooLarge` and "Resulting document after update is larger than".
    pub const TOO_LARGE: [i32; 3] = [10334, 17419, 17420];
    /// The server cannot answer now: shutting down, stepping down, not primary,
    /// host unreachable, network timeout, socket exception, exceeded time limit.
    pub const RETRYABLE: [i32; 14] = [
        6, 7, 89, 91, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436, 50,
    ];
}

/// The original app's `validation_schema`, verbatim.
pub fn validation_schema() -> Document {
    doc! {
        "$jsonSchema": {
            "bsonType": "object",
            "required": ["conversation_id", "user_id", "conversation_history", "created_at"],
            "properties": {
                "conversation_id": {"bsonType": "string"},
                "user_id": {"bsonType": "string"},
                "conversation_history": {
                    "bsonType": "array",
                    "items": {
                        "bsonType": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"enum": ["user", "assistant"]},
                            "content": {"bsonType": "string"}
                        }
                    }
                },
                "conversation_text": {"bsonType": "string"},
                "created_at": {"bsonType": "date"},
                "updated_at": {"bsonType": "date"}
            }
        }
    }
}

/// The MongoDB conversation store.
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    conversations: Collection<Document>,
    /// HTTP sessions (`crate::sessions::mongo`).
    pub(crate) sessions: Collection<Document>,
    text_search: bool,
    /// Hides the URI's password in every error, the session store's too.
    pub(crate) redactor: Arc<Redactor>,
}

impl fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.db.name())
            .field("text_search", &self.text_search)
            .finish()
    }
}

impl MongoStore {
    /// Connects (waiting up to ~5 s for the server), applies the original's
    /// validator and creates the indexes (idempotently).
    pub async fn connect(uri: &str, database: &str) -> anyhow::Result<Self> {
        let mut redactor = Redactor::for_uri(uri);
        let mut options = ClientOptions::parse(uri).await.map_err(|e| {
            anyhow!(
                "MONGODB_URI is not a usable MongoDB connection string: {}",
                redactor.clean(&e.kind.to_string())
            )
        })?;
        if let Some(password) = options.credential.as_ref().and_then(|c| c.password.clone()) {
            redactor.add(&password);
        }
        options
            .server_selection_timeout
            .get_or_insert(SELECTION_TIMEOUT);
        options.connect_timeout.get_or_insert(SELECTION_TIMEOUT);
        options
            .app_name
            .get_or_insert_with(|| "llm-chat-server".to_string());
        let waited = options
            .server_selection_timeout
            .unwrap_or(SELECTION_TIMEOUT)
            .as_secs_f32();
        let hosts = options
            .hosts
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let client = Client::with_options(options)
            .map_err(|e| anyhow!("MONGODB_URI: {}", redactor.clean(&e.kind.to_string())))?;
        let db = client.database(database);

        // Server selection retries inside the driver for SELECTION_TIMEOUT.
        if let Err(e) = db.run_command(doc! {"ping": 1}).await {
            let cause = redactor.clean(&e.kind.to_string());
            return Err(match *e.kind {
                ErrorKind::Authentication { .. } => {
                    anyhow!("MONGODB_URI: the MongoDB server at {hosts} refused the credentials: {cause}")
                }
                _ => anyhow!(
                    "MONGODB_URI could not be reached ({hosts}, waited {waited} s): {cause}"
                ),
            });
        }

        let store = Self {
            conversations: db.collection(CONVERSATIONS),
            sessions: db.collection(SESSIONS),
            db,
            text_search: false,
            redactor: Arc::new(redactor),
        };
        store.apply_validator().await?;
        let text_search = store.create_indexes().await?;
        Ok(Self {
            text_search,
            ..store
        })
    }

    /// Whether search uses the server's text index (`$text`), rather than
    /// the case-insensitive scan.
    pub fn text_search(&self) -> bool {
        self.text_search
    }

    /// The database this store uses.
    pub fn database(&self) -> &Database {
        &self.db
    }

    async fn apply_validator(&self) -> anyhow::Result<()> {
        match self
            .db
            .create_collection(CONVERSATIONS)
            .validator(validation_schema())
            .await
        {
            Ok(()) => {
                tracing::info!("created the collection 'conversations' with schema validation");
                Ok(())
            }
            Err(e) if command_code(&e) == Some(code::NAMESPACE_EXISTS) => {
                let coll_mod = doc! {"collMod": CONVERSATIONS, "validator": validation_schema()};
                if let Err(e) = self.db.run_command(coll_mod).await {
                    // A readWrite-only user may not run collMod: the
                    // collection still works, as it did for the original.
                    tracing::warn!(
                        error = %self.redactor.clean(&e.kind.to_string()),
                        "could not apply the schema validator to 'conversations'"
                    );
                }
                Ok(())
            }
            Err(e) => Err(anyhow!(
                "creating the collection 'conversations': {}",
                self.redactor.clean(&e.kind.to_string())
            )),
        }
    }

    /// Creates the indexes; returns whether a text index is available.
    async fn create_indexes(&self) -> anyhow::Result<bool> {
        let index = |keys: Document, options: IndexOptions| {
            IndexModel::builder().keys(keys).options(options).build()
        };
        let named = |name: &str| IndexOptions::builder().name(name.to_string()).build();

        // Required: import idempotence and user scoping rely on it.
        let unique = IndexOptions::builder()
            .name("conversation_user_idx".to_string())
            .unique(true)
            .build();
        self.conversations
            .create_index(index(doc! {"conversation_id": 1, "user_id": 1}, unique))
            .await
            .map_err(|e| {
                anyhow!(
                    "creating the unique index conversation_user_idx: {}",
                    self.redactor.clean(&e.kind.to_string())
                )
            })?;

        let optional = [
            // The original's.
            ("created_at_idx", doc! {"created_at": -1}),
            // A user's list, newest first.
            ("user_created_idx", doc! {"user_id": 1, "created_at": -1}),
            // Export order.
            (
                "user_conversation_idx",
                doc! {"user_id": 1, "conversation_id": 1},
            ),
        ];
        for (name, keys) in optional {
            if let Err(e) = self
                .conversations
                .create_index(index(keys, named(name)))
                .await
            {
                tracing::warn!(index = name, error = %self.redactor.clean(&e.kind.to_string()), "could not create an index");
            }
        }

        let ttl = IndexOptions::builder()
            .name("expires_at_ttl".to_string())
            .expire_after(Duration::ZERO)
            .build();
        if let Err(e) = self
            .sessions
            .create_index(index(doc! {"expires_at": 1}, ttl))
            .await
        {
            tracing::warn!(error = %self.redactor.clean(&e.kind.to_string()), "could not create the sessions TTL index");
        }

        let text = IndexOptions::builder()
            .name("conversation_text_index".to_string())
            .default_language("english".to_string())
            .build();
        match self
            .conversations
            .create_index(index(doc! {"conversation_text": "text"}, text))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => {
                // A text index under another name still serves `$text`.
                if self.has_text_index().await {
                    return Ok(true);
                }
                tracing::warn!(
                    error = %self.redactor.clean(&e.kind.to_string()),
                    "the MongoDB server refused a text index: search falls back to a case-insensitive scan"
                );
                Ok(false)
            }
        }
    }

    async fn has_text_index(&self) -> bool {
        let Ok(mut cursor) = self.conversations.list_indexes().await else {
            return false;
        };
        while let Ok(Some(model)) = cursor.try_next().await {
            if model.keys.values().any(|v| v.as_str() == Some("text"))
                || model.keys.contains_key("_fts")
            {
                return true;
            }
        }
        false
    }

    fn err(&self, err: mongodb::error::Error) -> StoreError {
        map_error(&self.redactor, err)
    }

    fn key(user: &UserId, id: &ConversationId) -> Document {
        doc! {"conversation_id": id.as_ref(), "user_id": user.as_ref()}
    }

    /// `find_one_and_update` returning the updated metadata.
    async fn update_meta(
        &self,
        filter: Document,
        update: impl Into<mongodb::options::UpdateModifications>,
    ) -> StoreResult<Option<ConversationMeta>> {
        let found = self
            .conversations
            .find_one_and_update(filter, update)
            .projection(meta_projection())
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| self.err(e))?;
        found
            .map(|d| meta_from_doc(&d).map_err(StoreError::Backend))
            .transpose()
    }

    async fn text_index_search(
        &self,
        user: &UserId,
        terms: &[String],
        limit: u32,
    ) -> StoreResult<Vec<SearchHit>> {
        let (filter, projection, sort) = text_search_query(user, terms);
        let found = self
            .conversations
            .find(filter)
            .projection(projection)
            .sort(sort)
            .limit(i64::from(limit))
            .await;
        let mut cursor = match found {
            Ok(cursor) => cursor,
            // The text index was dropped since start: scan instead.
            Err(e) if command_code(&e) == Some(code::INDEX_NOT_FOUND) => {
                tracing::warn!("the text index is gone: this search falls back to a scan");
                return self.scan_search(user, terms, limit).await;
            }
            Err(e) => return Err(self.err(e)),
        };
        let mut hits = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(|e| self.err(e))? {
            hits.push(hit_from_doc(&d).map_err(StoreError::Backend)?);
        }
        Ok(hits)
    }

    async fn scan_search(
        &self,
        user: &UserId,
        terms: &[String],
        limit: u32,
    ) -> StoreResult<Vec<SearchHit>> {
        let mut cursor = self
            .conversations
            .aggregate(scan_search_pipeline(user, terms, limit))
            .await
            .map_err(|e| self.err(e))?;
        let mut hits = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(|e| self.err(e))? {
            match hit_from_doc(&d) {
                Ok(hit) => hits.push(hit),
                Err(e) => tracing::warn!(error = %e, "skipping a malformed conversation"),
            }
        }
        Ok(hits)
    }
}

/// Maps a driver error: unreachable server → `Unavailable`, a document over
/// the size limit → `TooLarge`, anything else → `Backend`. Messages never
/// carry the URI's password.
pub(crate) fn map_error(redactor: &Redactor, err: mongodb::error::Error) -> StoreError {
    let message = redactor.clean(&err.kind.to_string());
    match err.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => StoreError::Unavailable(format!("MongoDB: {message}")),
        ErrorKind::Command(c) if code::RETRYABLE.contains(&c.code) => {
            StoreError::Unavailable(format!("MongoDB: {message}"))
        }
        ErrorKind::Command(c) if code::TOO_LARGE.contains(&c.code) => {
            StoreError::TooLarge(TOO_LARGE_MESSAGE.to_string())
        }
        ErrorKind::Write(WriteFailure::WriteError(w)) if code::TOO_LARGE.contains(&w.code) => {
            StoreError::TooLarge(TOO_LARGE_MESSAGE.to_string())
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(w))
            if code::RETRYABLE.contains(&w.code) =>
        {
            StoreError::Unavailable(format!("MongoDB: {message}"))
        }
        _ => StoreError::Backend(anyhow!("MongoDB: {message}")),
    }
}

/// The server's error code of a command or write error.
pub(crate) fn command_code(err: &mongodb::error::Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|w| w.code),
        _ => None,
    }
}

fn to_bson_time(at: &DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(at.timestamp_millis())
}

fn from_bson_time(at: bson::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or_default()
}

/// Now, at MongoDB's (millisecond) precision.
fn now() -> (bson::DateTime, DateTime<Utc>) {
    let at = bson::DateTime::now();
    (at, from_bson_time(at))
}

fn as_u64(value: Option<&Bson>) -> Option<u64> {
    match value? {
        Bson::Int32(n) => u64::try_from(*n).ok(),
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Double(n) if n.is_finite() && *n >= 0.0 => Some(*n as u64),
        _ => None,
    }
}

fn as_f64(value: Option<&Bson>) -> Option<f64> {
    match value? {
        Bson::Int32(n) => Some(f64::from(*n)),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(n) => Some(*n),
        _ => None,
    }
}

/// The history's user messages (an aggregation expression).
fn user_messages() -> Document {
    doc! {"$filter": {
        "input": {"$ifNull": ["$conversation_history", []]},
        "as": "m",
        "cond": {"$eq": ["$$m.role", "user"]},
    }}
}

/// What every metadata read asks for. The count is the history's length, so
/// it is right for original documents and for documents the original app
/// rewrote after us. Untitled documents (the original app's) also bring
/// their first user message, whose first words are their title.
fn meta_projection() -> Document {
    doc! {
        "_id": 0,
        "conversation_id": 1,
        "created_at": 1,
        "updated_at": 1,
        "title": 1,
        "message_count": {"$size": {"$ifNull": ["$conversation_history", []]}},
        "first_user": {"$cond": [
            {"$eq": [{"$type": "$title"}, "string"]},
            null,
            {"$arrayElemAt": [user_messages(), 0]},
        ]},
    }
}

fn meta_from_doc(d: &Document) -> anyhow::Result<ConversationMeta> {
    let raw_id = d
        .get_str("conversation_id")
        .map_err(|_| anyhow!("a conversation without a string conversation_id"))?;
    let conversation_id = ConversationId::parse(raw_id)
        .map_err(|_| anyhow!("a conversation with a malformed id {raw_id:?}"))?;
    let created_at = d
        .get_datetime("created_at")
        .map(|t| from_bson_time(*t))
        .map_err(|_| anyhow!("conversation {raw_id} has no created_at date"))?;
    let updated_at = d
        .get_datetime("updated_at")
        .map(|t| from_bson_time(*t))
        .unwrap_or(created_at);
    let title = d.get_str("title").ok().map(str::to_string).or_else(|| {
        d.get_document("first_user")
            .ok()
            .and_then(|m| m.get_str("content").ok())
            .and_then(title_from)
    });
    let message_count = as_u64(d.get("message_count")).unwrap_or_else(|| {
        d.get_array("conversation_history")
            .map(|h| h.len() as u64)
            .unwrap_or(0)
    });
    Ok(ConversationMeta {
        conversation_id,
        created_at,
        updated_at,
        title,
        message_count,
    })
}

fn hit_from_doc(d: &Document) -> anyhow::Result<SearchHit> {
    Ok(SearchHit {
        meta: meta_from_doc(d)?,
        score: as_f64(d.get("score")).unwrap_or(0.0).max(1e-6),
    })
}

/// A whole conversation from its document (history, summary, metadata).
fn conversation_from_doc(d: &Document) -> anyhow::Result<Conversation> {
    let mut meta = meta_from_doc(d)?;
    let messages: Vec<StoredMessage> = d
        .get_array("conversation_history")
        .map(|items| {
            items
                .iter()
                .filter_map(Bson::as_document)
                .map(|item| StoredMessage {
                    message: ChatMessage::new(
                        item.get_str("role")
                            .ok()
                            .and_then(Role::parse)
                            .unwrap_or(Role::User),
                        item.get_str("content").unwrap_or_default(),
                    ),
                    tokens: as_u64(item.get("tokens")).map(|t| t.min(u64::from(u32::MAX)) as u32),
                })
                .collect()
        })
        .unwrap_or_default();
    meta.message_count = messages.len() as u64;
    if meta.title.is_none() {
        meta.title = messages
            .iter()
            .find(|m| m.message.role == Role::User)
            .and_then(|m| title_from(&m.message.content));
    }
    let summary = d.get_document("summary").ok().and_then(|s| {
        Some(Summary {
            text: s.get_str("text").ok()?.to_string(),
            covers: as_u64(s.get("covers")).unwrap_or(0) as usize,
            tokens: as_u64(s.get("tokens"))
                .unwrap_or(0)
                .min(u64::from(u32::MAX)) as u32,
        })
    });
    Ok(Conversation {
        meta,
        messages: messages.into(),
        summary,
    })
}

fn summary_doc(summary: &Summary) -> Document {
    doc! {
        "text": summary.text.as_str(),
        "covers": summary.covers as i64,
        "tokens": i64::from(summary.tokens),
    }
}

fn history_item(role: Role, content: &str, tokens: Option<u32>) -> Document {
    let mut item = doc! {"role": role.as_str(), "content": content};
    if let Some(tokens) = tokens {
        item.insert("tokens", i64::from(tokens));
    }
    item
}

/// How many bytes `messages` add to a document (an over-estimate).
fn estimate_added(messages: &[NewMessage]) -> i64 {
    messages
        .iter()
        .map(|m| 2 * m.content.len() as i64 + PER_MESSAGE_BYTES)
        .sum()
}

/// The document's estimated size: the stored counter, or for documents
/// written by the original app (which has none) an estimate from the text
/// and the history length, computed by the server on the document itself.
fn size_expr() -> Bson {
    bson::bson!({
        "$ifNull": [
            "$size_bytes",
            {"$add": [
                {"$multiply": [{"$strLenBytes": {"$ifNull": ["$conversation_text", ""]}}, 2]},
                {"$multiply": [{"$size": {"$ifNull": ["$conversation_history", []]}}, PER_MESSAGE_BYTES]},
                BASE_BYTES,
            ]}
        ]
    })
}

/// The filter of an append: the conversation, if it has room for `added`.
fn append_filter(user: &UserId, id: &ConversationId, added: i64) -> Document {
    let mut filter = MongoStore::key(user, id);
    if added > 0 {
        filter.insert(
            "$expr",
            doc! {"$lte": [{"$add": [size_expr(), added]}, SIZE_LIMIT_BYTES]},
        );
    }
    filter
}

/// The update pipeline of an append: evaluated by the server on the current
/// document, so concurrent appends compose. User text is `$literal`.
fn append_update(
    messages: &[NewMessage],
    title: Option<&str>,
    at: bson::DateTime,
) -> Vec<Document> {
    let mut set = doc! {"updated_at": at};
    if !messages.is_empty() {
        let items: Vec<Bson> = messages
            .iter()
            .map(|m| Bson::Document(history_item(m.role, &m.content, m.tokens)))
            .collect();
        let chat: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage::new(m.role, m.content.clone()))
            .collect();
        // The lines the original's generate_conversation_text adds (it
        // strips the whole text; the start of these lines is never blank).
        let lines = domain::conversation_text(&chat);
        let old_text = doc! {"$ifNull": ["$conversation_text", ""]};
        let old_history = doc! {"$ifNull": ["$conversation_history", []]};
        set.insert(
            "conversation_history",
            doc! {"$concatArrays": [old_history.clone(), {"$literal": items}]},
        );
        set.insert(
            "conversation_text",
            doc! {"$cond": [
                {"$eq": [old_text.clone(), ""]},
                {"$literal": lines.as_str()},
                {"$concat": [old_text, "\n", {"$literal": lines.as_str()}]},
            ]},
        );
        set.insert(
            "message_count",
            doc! {"$add": [{"$size": old_history}, messages.len() as i64]},
        );
        set.insert(
            "size_bytes",
            doc! {"$add": [size_expr(), estimate_added(messages)]},
        );
    }
    if let Some(title) = title {
        // Only when the document has no title and no user message yet: an
        // untitled document of the original app keeps deriving its title
        // from its first user message (null stands for "none" then).
        set.insert(
            "title",
            doc! {"$ifNull": ["$title", {"$cond": [
                {"$gt": [{"$size": user_messages()}, 0]},
                null,
                {"$literal": title},
            ]}]},
        );
    }
    vec![doc! {"$set": set}]
}

/// A term as a regex matching it literally.
fn escape_regex(term: &str) -> String {
    let mut out = String::with_capacity(term.len());
    for c in term.chars() {
        if c.is_ascii_punctuation() || c.is_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unique_terms(terms: &[String]) -> Vec<String> {
    let mut unique: Vec<String> = Vec::new();
    for term in terms {
        if !unique.contains(term) {
            unique.push(term.clone());
        }
    }
    unique
}

/// `$text` search: filter, projection and sort (best `textScore` first).
fn text_search_query(user: &UserId, terms: &[String]) -> (Document, Document, Document) {
    // Terms are letters and digits only: no phrase or negation syntax.
    let filter = doc! {"user_id": user.as_ref(), "$text": {"$search": terms.join(" ")}};
    let mut projection = meta_projection();
    projection.insert("score", doc! {"$meta": "textScore"});
    let sort = doc! {"score": {"$meta": "textScore"}};
    (filter, projection, sort)
}

/// The fallback search: the user's conversations whose messages mention a
/// term (case-insensitive), scored by how many times the terms occur in the
/// messages' text, best first.
fn scan_search_pipeline(user: &UserId, terms: &[String], limit: u32) -> Vec<Document> {
    let terms = unique_terms(terms);
    let patterns: Vec<String> = terms.iter().map(|t| escape_regex(t)).collect();
    let counts: Vec<Bson> = patterns
        .iter()
        .map(|p| {
            Bson::Document(doc! {"$size": {"$regexFindAll": {
                "input": {"$ifNull": ["$$m.content", ""]},
                "regex": p.as_str(),
                "options": "i",
            }}})
        })
        .collect();
    let mut project = meta_projection();
    project.insert(
        "score",
        doc! {"$sum": {"$map": {
            "input": {"$ifNull": ["$conversation_history", []]},
            "as": "m",
            "in": {"$add": counts},
        }}},
    );
    vec![
        doc! {"$match": {
            "user_id": user.as_ref(),
            "conversation_history.content": {"$regex": patterns.join("|"), "$options": "i"},
        }},
        doc! {"$project": project},
        doc! {"$match": {"score": {"$gt": 0}}},
        doc! {"$sort": {"score": -1, "updated_at": -1, "conversation_id": 1}},
        doc! {"$limit": i64::from(limit)},
    ]
}

/// The filter of an export page: keys after `(user, conversation)`.
fn export_filter(after: Option<&(UserId, ConversationId)>) -> Document {
    match after {
        None => doc! {},
        Some((user, id)) => doc! {"$or": [
            {"user_id": {"$gt": user.as_ref()}},
            {"user_id": user.as_ref(), "conversation_id": {"$gt": id.as_ref()}},
        ]},
    }
}

/// The document of an imported conversation, in the original's shape plus
/// the optional fields.
fn import_doc(user: &UserId, conversation: &Conversation) -> Document {
    let meta = &conversation.meta;
    let history: Vec<Bson> = conversation
        .messages
        .iter()
        .map(|m| Bson::Document(history_item(m.message.role, &m.message.content, m.tokens)))
        .collect();
    let text = domain::conversation_text(conversation.messages.iter().map(|m| &m.message));
    let estimate = BASE_BYTES
        + conversation
            .messages
            .iter()
            .map(|m| 2 * m.message.content.len() as i64 + PER_MESSAGE_BYTES)
            .sum::<i64>();
    let mut d = doc! {
        "conversation_id": meta.conversation_id.as_ref(),
        "user_id": user.as_ref(),
        "conversation_history": history,
        "conversation_text": text,
        "created_at": to_bson_time(&meta.created_at),
        "updated_at": to_bson_time(&meta.updated_at),
        "message_count": conversation.messages.len() as i64,
        "size_bytes": estimate,
    };
    if let Some(title) = &meta.title {
        d.insert("title", title.as_str());
    }
    if let Some(summary) = &conversation.summary {
        d.insert("summary", summary_doc(summary));
    }
    d
}

fn encoded_len(d: &Document) -> usize {
    let mut buf = Vec::new();
    match d.to_writer(&mut buf) {
        Ok(()) => buf.len(),
        Err(_) => usize::MAX,
    }
}

#[async_trait]
impl ConversationStore for MongoStore {
    async fn create(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta> {
        let (at, created_at) = now();
        let mut d = doc! {
            "conversation_id": id.as_ref(),
            "user_id": user.as_ref(),
            "conversation_history": [],
            "conversation_text": "",
            "created_at": at,
            "updated_at": at,
            "message_count": 0_i64,
        };
        d.insert("size_bytes", BASE_BYTES.max(encoded_len(&d) as i64));
        self.conversations
            .insert_one(d)
            .await
            .map_err(|e| self.err(e))?;
        Ok(ConversationMeta {
            conversation_id: id.clone(),
            created_at,
            updated_at: created_at,
            title: None,
            message_count: 0,
        })
    }

    async fn load(&self, user: &UserId, id: &ConversationId) -> StoreResult<Conversation> {
        let found = self
            .conversations
            .find_one(Self::key(user, id))
            .projection(doc! {"_id": 0, "conversation_text": 0})
            .await
            .map_err(|e| self.err(e))?
            .ok_or(StoreError::NotFound)?;
        conversation_from_doc(&found).map_err(StoreError::Backend)
    }

    async fn meta(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta> {
        let found = self
            .conversations
            .find_one(Self::key(user, id))
            .projection(meta_projection())
            .await
            .map_err(|e| self.err(e))?
            .ok_or(StoreError::NotFound)?;
        meta_from_doc(&found).map_err(StoreError::Backend)
    }

    async fn list(
        &self,
        user: &UserId,
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<ConversationMeta>> {
        if limit == 0 {
            // MongoDB reads limit 0 as "no limit".
            return Ok(Vec::new());
        }
        let mut cursor = self
            .conversations
            .find(doc! {"user_id": user.as_ref()})
            .projection(meta_projection())
            .sort(doc! {"created_at": -1, "conversation_id": 1})
            .skip(u64::from(offset))
            .limit(i64::from(limit))
            .await
            .map_err(|e| self.err(e))?;
        let mut list = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(|e| self.err(e))? {
            match meta_from_doc(&d) {
                Ok(meta) => list.push(meta),
                Err(e) => tracing::warn!(error = %e, "skipping a malformed conversation"),
            }
        }
        Ok(list)
    }

    async fn append(
        &self,
        user: &UserId,
        id: &ConversationId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<ConversationMeta> {
        let added = estimate_added(&messages);
        if added > SIZE_LIMIT_BYTES {
            self.meta(user, id).await?;
            return Err(StoreError::TooLarge(TOO_LARGE_MESSAGE.to_string()));
        }
        // Applied by the server only when the document has no title yet.
        let title = messages
            .iter()
            .find(|m| m.role == Role::User)
            .and_then(|m| title_from(&m.content));
        let (at, _) = now();
        let updated = self
            .update_meta(
                append_filter(user, id, added),
                append_update(&messages, title.as_deref(), at),
            )
            .await?;
        match updated {
            Some(meta) => Ok(meta),
            // No match: either no such conversation, or no room in it.
            None => {
                self.meta(user, id).await?;
                Err(StoreError::TooLarge(TOO_LARGE_MESSAGE.to_string()))
            }
        }
    }

    async fn delete_last_message(
        &self,
        user: &UserId,
        id: &ConversationId,
    ) -> StoreResult<Option<ChatMessage>> {
        // Read, then $pop under a filter on the history's size: a
        // concurrent append makes the update miss, and it is tried again.
        for _ in 0..5 {
            let found = self
                .conversations
                .find_one(Self::key(user, id))
                .projection(doc! {"conversation_history": 1})
                .await
                .map_err(|e| self.err(e))?
                .ok_or(StoreError::NotFound)?;
            let history = found
                .get_array("conversation_history")
                .map_err(|e| StoreError::Backend(anyhow!("conversation_history: {e}")))?;
            let parsed: Vec<ChatMessage> = history
                .iter()
                .filter_map(Bson::as_document)
                .map(|item| {
                    ChatMessage::new(
                        item.get_str("role")
                            .ok()
                            .and_then(Role::parse)
                            .unwrap_or(Role::User),
                        item.get_str("content").unwrap_or_default(),
                    )
                })
                .collect();
            let Some((last, rest)) = parsed.split_last() else {
                return Ok(None);
            };
            let count = history.len() as i64;
            let mut filter = Self::key(user, id);
            filter.insert("conversation_history", doc! {"$size": count});
            let freed = (last.content.len() as i64) * 2 + PER_MESSAGE_BYTES;
            let update = doc! {
                "$pop": {"conversation_history": 1},
                "$set": {
                    "conversation_text": domain::conversation_text(rest),
                    "message_count": count - 1,
                    "updated_at": now().0,
                },
                "$inc": {"size_bytes": -freed},
            };
            let result = self
                .conversations
                .update_one(filter, update)
                .await
                .map_err(|e| self.err(e))?;
            if result.matched_count == 1 {
                return Ok(Some(last.clone()));
            }
        }
        Err(StoreError::Unavailable(
            "the conversation kept changing while its last message was removed".into(),
        ))
    }

    async fn reset(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta> {
        let (at, _) = now();
        let update = doc! {
            "$set": {
                "conversation_history": [],
                "conversation_text": "",
                "updated_at": at,
                "message_count": 0_i64,
                "size_bytes": BASE_BYTES,
            },
            "$unset": {"title": "", "summary": ""},
        };
        self.update_meta(Self::key(user, id), update)
            .await?
            .ok_or(StoreError::NotFound)
    }

    async fn delete(&self, user: &UserId, id: &ConversationId) -> StoreResult<()> {
        let result = self
            .conversations
            .delete_one(Self::key(user, id))
            .await
            .map_err(|e| self.err(e))?;
        if result.deleted_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn set_summary(
        &self,
        user: &UserId,
        id: &ConversationId,
        summary: Summary,
    ) -> StoreResult<()> {
        let result = self
            .conversations
            .update_one(
                Self::key(user, id),
                doc! {"$set": {"summary": summary_doc(&summary)}},
            )
            .await
            .map_err(|e| self.err(e))?;
        if result.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn set_title(
        &self,
        user: &UserId,
        id: &ConversationId,
        title: &str,
    ) -> StoreResult<ConversationMeta> {
        self.update_meta(Self::key(user, id), doc! {"$set": {"title": title}})
            .await?
            .ok_or(StoreError::NotFound)
    }

    async fn search(&self, user: &UserId, query: &str, limit: u32) -> StoreResult<Vec<SearchHit>> {
        let terms = search_terms(query);
        if terms.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        if self.text_search {
            self.text_index_search(user, &terms, limit).await
        } else {
            self.scan_search(user, &terms, limit).await
        }
    }

    async fn export_page(
        &self,
        after: Option<(UserId, ConversationId)>,
        limit: u32,
    ) -> StoreResult<Vec<(UserId, Conversation)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cursor = self
            .conversations
            .find(export_filter(after.as_ref()))
            .projection(doc! {"_id": 0, "conversation_text": 0})
            .sort(doc! {"user_id": 1, "conversation_id": 1})
            .limit(i64::from(limit))
            .await
            .map_err(|e| self.err(e))?;
        let mut page = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(|e| self.err(e))? {
            let Ok(user) = d.get_str("user_id") else {
                tracing::warn!("skipping a conversation without a string user_id");
                continue;
            };
            match conversation_from_doc(&d) {
                Ok(conversation) => {
                    page.push((UserId::from_stored(user.to_string()), conversation))
                }
                Err(e) => tracing::warn!(error = %e, "skipping a malformed conversation"),
            }
        }
        Ok(page)
    }

    async fn import(&self, user: &UserId, conversation: &Conversation) -> StoreResult<bool> {
        let d = import_doc(user, conversation);
        if encoded_len(&d) > HARD_LIMIT_BYTES {
            return Err(StoreError::TooLarge(TOO_LARGE_MESSAGE.to_string()));
        }
        match self.conversations.insert_one(d).await {
            Ok(_) => Ok(true),
            Err(e) if command_code(&e) == Some(code::DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn count_all(&self) -> StoreResult<u64> {
        self.conversations
            .count_documents(doc! {})
            .await
            .map_err(|e| self.err(e))
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn backend(&self) -> &'static str {
        "mongodb"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: Role, content: &str) -> NewMessage {
        NewMessage {
            role,
            content: content.to_string(),
            tokens: Some(7),
        }
    }

    #[test]
    fn text_search_uses_only_the_terms_and_sorts_by_text_score() {
        let user = UserId::from_stored("alice".into());
        let terms = search_terms("\"rust\" -tokio (async*)");
        let (filter, projection, sort) = text_search_query(&user, &terms);
        assert_eq!(
            filter,
            doc! {"user_id": "alice", "$text": {"$search": "rust tokio async"}}
        );
        assert_eq!(
            projection.get_document("score").unwrap(),
            &doc! {"$meta": "textScore"}
        );
        assert_eq!(projection.get_i32("_id").unwrap(), 0);
        assert!(projection.contains_key("message_count"));
        assert_eq!(sort, doc! {"score": {"$meta": "textScore"}});
    }

    #[test]
    fn the_scan_search_is_scoped_escaped_and_ranked() {
        let user = UserId::from_stored("alice".into());
        let terms = vec!["zebra".to_string(), "zebra".to_string(), "c".to_string()];
        let pipeline = scan_search_pipeline(&user, &terms, 5);
        let first = pipeline[0].get_document("$match").unwrap();
        assert_eq!(first.get_str("user_id").unwrap(), "alice");
        assert_eq!(
            first
                .get_document("conversation_history.content")
                .unwrap()
                .get_str("$regex")
                .unwrap(),
            "zebra|c"
        );
        assert_eq!(
            pipeline[3],
            doc! {"$sort": {"score": -1, "updated_at": -1, "conversation_id": 1}}
        );
        assert_eq!(pipeline[4], doc! {"$limit": 5_i64});
        assert_eq!(escape_regex("a.b*(c)$"), "a\\.b\\*\\(c\\)\\$");
        assert_eq!(escape_regex("été"), "été");
    }

    #[test]
    fn an_append_carries_user_text_only_as_literals() {
        let messages = vec![
            msg(Role::User, "$where: {$gt: 1}"),
            msg(Role::Assistant, "$$ROOT"),
        ];
        let pipeline = append_update(&messages, Some("$title"), bson::DateTime::from_millis(0));
        let set = pipeline[0].get_document("$set").unwrap();
        let history = set.get_document("conversation_history").unwrap();
        let parts = history.get_array("$concatArrays").unwrap();
        let literal = parts[1]
            .as_document()
            .unwrap()
            .get_array("$literal")
            .unwrap();
        assert_eq!(
            literal[0].as_document().unwrap(),
            &doc! {"role": "user", "content": "$where: {$gt: 1}", "tokens": 7_i64}
        );
        let cond = set
            .get_document("conversation_text")
            .unwrap()
            .get_array("$cond")
            .unwrap();
        let lines = doc! {"$literal": "User: $where: {$gt: 1}\nAssistant: $$ROOT"};
        assert_eq!(cond[1].as_document().unwrap(), &lines);
        let concat = cond[2].as_document().unwrap().get_array("$concat").unwrap();
        assert_eq!(concat[2].as_document().unwrap(), &lines);
        let title = set
            .get_document("title")
            .unwrap()
            .get_array("$ifNull")
            .unwrap();
        let cond = title[1].as_document().unwrap().get_array("$cond").unwrap();
        assert_eq!(cond[2].as_document().unwrap(), &doc! {"$literal": "$title"});
        assert!(set.contains_key("size_bytes") && set.contains_key("message_count"));
    }

    #[test]
    fn an_empty_append_only_touches_updated_at() {
        let pipeline = append_update(&[], None, bson::DateTime::from_millis(0));
        assert_eq!(
            pipeline,
            vec![doc! {"$set": {"updated_at": bson::DateTime::from_millis(0)}}]
        );
        let filter = append_filter(
            &UserId::from_stored("u".into()),
            &ConversationId::parse("3f2504e0-4f89-11d3-9a0c-0305e82c3301").unwrap(),
            0,
        );
        assert!(!filter.contains_key("$expr"));
    }

    #[test]
    fn the_size_estimate_over_counts_the_bson() {
        let messages = vec![msg(Role::Assistant, &"é".repeat(1000))];
        let mut d = doc! {"conversation_history": [], "conversation_text": ""};
        let before = encoded_len(&d);
        d.get_array_mut("conversation_history")
            .unwrap()
            .push(Bson::Document(history_item(
                Role::Assistant,
                &messages[0].content,
                Some(7),
            )));
        d.insert(
            "conversation_text",
            domain::conversation_text(&[ChatMessage::new(
                Role::Assistant,
                messages[0].content.clone(),
            )]),
        );
        let real = (encoded_len(&d) - before) as i64;
        assert!(
            estimate_added(&messages) >= real,
            "{} < {real}",
            estimate_added(&messages)
        );
    }

    #[test]
    fn errors_map_to_unavailable_too_large_or_backend() {
        let redactor = Redactor::for_uri("mongodb://u:hunter2@h");
        let io = mongodb::error::Error::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused hunter2",
        ));
        match map_error(&redactor, io) {
            StoreError::Unavailable(m) => assert!(!m.contains("hunter2"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_export_page_starts_after_the_key() {
        let id = ConversationId::parse("3f2504e0-4f89-11d3-9a0c-0305e82c3301").unwrap();
        let after = (UserId::from_stored("bob".into()), id);
        assert_eq!(
            export_filter(Some(&after)),
            doc! {"$or": [
                {"user_id": {"$gt": "bob"}},
                {"user_id": "bob", "conversation_id": {"$gt": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}},
            ]}
        );
        assert_eq!(export_filter(None), doc! {});
    }
}
