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
//! - `text_bytes`: the bytes of message text, kept by every write, for the
//!   conversation cap (`MAX_CONVERSATION_BYTES`); documents without it (the
//!   original app's) count the length of `conversation_text` instead.
//!
//! Appends are one update pipeline, evaluated by the server on the current
//! document: the history grows with `$concatArrays`, the searchable text with
//! `$concat`, the size checks (the cap and the 16 MB guard) sit in the
//! filter. Two tasks appending at once therefore never lose a message and
//! never leave `conversation_text` behind.
//! User text only ever enters a pipeline inside `$literal`.
//!
//! Search uses the text index (`$text`, `textScore`) when the server has one;
//! servers without text indexes (SecantusDB, some MongoDB-compatible
//! services) get a case-insensitive scan of the user's messages instead.
//!
//! The parts: `base` (the handle, limits and error mapping every part
//! shares), `schema` (validator and indexes), `documents` (the stored
//! shapes and their conversions), `pipelines` (appends and the size guard),
//! `search` (`$text` and the scan), `accounts` (local accounts in `users`:
//! `AccountStore`), `tokens` (personal access tokens in `tokens`:
//! `TokenStore`), `shares` (share links in `shares`: `ShareStore`), `usage` (token usage in `usage`, quotas in `quotas`:
//! `UsageStore`); the session store in the same database is
//! `crate::sessions::mongo`.

mod accounts;
mod base;
mod branches;
mod documents;
mod pipelines;
mod presets;
mod schema;
mod search;
mod shares;
mod tokens;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, ReturnDocument};
use mongodb::{Client, Database};

pub(crate) use self::base::{code, command_code, map_error};
pub use self::base::{
    MongoStore, CONVERSATIONS, IDENTITIES, META, QUOTAS, SESSIONS, SHARES, SIZE_LIMIT_BYTES,
    TOKENS, TOO_LARGE_MESSAGE, USAGE, USERS,
};
use self::base::{BASE_BYTES, HARD_LIMIT_BYTES, PER_MESSAGE_BYTES};
use self::documents::{
    as_u64, conversation_from_doc, export_filter, history_items, import_doc, insert_settings,
    meta_from_doc, meta_projection, now, revised, revision_of, revision_projection, revision_token,
    settings_change_update, settings_from_doc, settings_update, summary_doc, REVISION,
    SETTINGS_FIELDS,
};
use self::pipelines::{append_filter, append_update, encoded_len, estimate_added, text_added};
pub use self::presets::PRESETS;
pub use self::schema::validation_schema;
use super::{
    page_range, search_terms, title_from, BranchPool, Conversation, ConversationMeta,
    ConversationSettings, ConversationStore, Exported, HistoryPage, NewMessage, SearchHit,
    SettingsChange, StoreError, StoreResult, Summary,
};
use crate::config::ConversationLimits;
use crate::domain::{self, ChatMessage, ConversationId, Role, UserId};
use crate::redact::Redactor;

/// How long to wait for the server at start and per operation.
const SELECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// On a replica set an appended message must survive a failover: it is
/// acknowledged once a majority holds it, and a write or read interrupted by
/// an election is retried once by the driver. The connection string can say
/// otherwise (`w=1`, `retryWrites=false`).
fn durable_by_default(options: &mut ClientOptions) {
    options
        .write_concern
        .get_or_insert_with(mongodb::options::WriteConcern::majority);
    options.retry_writes.get_or_insert(true);
    options.retry_reads.get_or_insert(true);
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
        durable_by_default(&mut options);
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
            users: db.collection(USERS),
            meta: db.collection(META),
            tokens: db.collection(TOKENS),
            shares: db.collection(SHARES),
            identities: db.collection(IDENTITIES),
            usage: db.collection(USAGE),
            quotas: db.collection(QUOTAS),
            db,
            text_search: false,
            limits: ConversationLimits::default(),
            redactor: Arc::new(redactor),
        };
        store.apply_validator().await?;
        let text_search = store.create_indexes().await?;
        Ok(Self {
            text_search,
            ..store
        })
    }

    /// The same store with this conversation cap.
    pub fn with_limits(self, limits: ConversationLimits) -> Self {
        Self { limits, ..self }
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

    /// `find_one_and_update` (moving the revision on) returning the updated
    /// metadata.
    async fn update_meta(
        &self,
        filter: Document,
        update: impl Into<mongodb::options::UpdateModifications>,
    ) -> StoreResult<Option<ConversationMeta>> {
        Ok(self
            .update_meta_revised(filter, update)
            .await?
            .map(|(meta, _)| meta))
    }

    /// [`update_meta`](Self::update_meta), with the revision counter after
    /// the update.
    async fn update_meta_revised(
        &self,
        filter: Document,
        update: impl Into<mongodb::options::UpdateModifications>,
    ) -> StoreResult<Option<(ConversationMeta, u64)>> {
        let mut projection = meta_projection();
        projection.insert(REVISION, 1);
        let found = self
            .conversations
            .find_one_and_update(filter, revised(update))
            .projection(projection)
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| self.err(e))?;
        found
            .map(|d| {
                let meta = meta_from_doc(&d).map_err(StoreError::Backend)?;
                Ok((meta, as_u64(d.get(REVISION)).unwrap_or(0)))
            })
            .transpose()
    }

    /// `append`, with the revision counter after it.
    async fn append_counted(
        &self,
        user: &UserId,
        id: &ConversationId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<(ConversationMeta, u64)> {
        let room = self
            .limits
            .has_room(0, 0, messages.len() as u64, text_added(&messages) as u64);
        if !room || estimate_added(&messages) > SIZE_LIMIT_BYTES {
            self.meta(user, id).await?;
            return Err(self.too_large());
        }
        // Applied by the server only when the document has no title yet.
        let title = messages
            .iter()
            .find(|m| m.role == Role::User)
            .and_then(|m| title_from(&m.content));
        let (at, _) = now();
        let updated = self
            .update_meta_revised(
                append_filter(user, id, &messages, &self.limits),
                append_update(&messages, title.as_deref(), at),
            )
            .await?;
        match updated {
            Some(answer) => Ok(answer),
            // No match: either no such conversation, or no room in it.
            None => {
                self.meta(user, id).await?;
                Err(self.too_large())
            }
        }
    }
}

#[async_trait]
impl ConversationStore for MongoStore {
    async fn create_with(
        &self,
        user: &UserId,
        id: &ConversationId,
        settings: &ConversationSettings,
    ) -> StoreResult<ConversationMeta> {
        let (at, created_at) = now();
        let mut d = doc! {
            "conversation_id": id.as_ref(),
            "user_id": user.as_ref(),
            "conversation_history": [],
            "conversation_text": "",
            "created_at": at,
            "updated_at": at,
            "message_count": 0_i64,
            "text_bytes": 0_i64,
        };
        insert_settings(&mut d, settings);
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
        Ok(self.load_revised(user, id).await?.0)
    }

    async fn load_revised(
        &self,
        user: &UserId,
        id: &ConversationId,
    ) -> StoreResult<(Conversation, Option<u64>)> {
        let found = self
            .conversations
            .find_one(Self::key(user, id))
            .projection(doc! {"_id": 0, "conversation_text": 0, "branches": 0})
            .await
            .map_err(|e| self.err(e))?
            .ok_or(StoreError::NotFound)?;
        let conversation = conversation_from_doc(&found).map_err(StoreError::Backend)?;
        Ok((conversation, Some(revision_of(&found))))
    }

    async fn revision(&self, user: &UserId, id: &ConversationId) -> StoreResult<Option<u64>> {
        let found = self
            .conversations
            .find_one(Self::key(user, id))
            .projection(revision_projection())
            .await
            .map_err(|e| self.err(e))?
            .ok_or(StoreError::NotFound)?;
        Ok(Some(revision_of(&found)))
    }

    async fn load_page(
        &self,
        user: &UserId,
        id: &ConversationId,
        before: Option<u64>,
        limit: u64,
    ) -> StoreResult<HistoryPage> {
        let meta = self.meta(user, id).await?;
        let range = page_range(meta.message_count, before, limit);
        // Only the page's items (none for an empty page) and the settings
        // leave the server.
        let mut projection = doc! {"_id": 0, "conversation_id": 1};
        for field in SETTINGS_FIELDS {
            projection.insert(field, 1);
        }
        if !range.is_empty() {
            projection.insert(
                "conversation_history",
                doc! {"$slice": [range.start as i64, (range.end - range.start) as i64]},
            );
        }
        let found = self
            .conversations
            .find_one(Self::key(user, id))
            .projection(projection)
            .await
            .map_err(|e| self.err(e))?
            .ok_or(StoreError::NotFound)?;
        let messages = if range.is_empty() {
            Vec::new()
        } else {
            history_items(&found)
        };
        Ok(HistoryPage {
            meta,
            first: range.start,
            messages,
            settings: settings_from_doc(&found),
        })
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
        Ok(self.append_counted(user, id, messages).await?.0)
    }

    async fn append_revised(
        &self,
        user: &UserId,
        id: &ConversationId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<(ConversationMeta, Option<(u64, u64)>)> {
        let added = messages.len() as u64;
        let (meta, counter) = self.append_counted(user, id, messages).await?;
        // One update of ours: the counter moved on by one and the history
        // grew by `added`; anything else in between shows as another
        // revision before.
        let after = revision_token(counter, meta.message_count);
        let before = revision_token(
            counter.saturating_sub(1),
            meta.message_count.saturating_sub(added),
        );
        Ok((meta, Some((before, after))))
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
                    "text_bytes": rest.iter().map(|m| m.content.len() as i64).sum::<i64>(),
                    "updated_at": now().0,
                },
                "$inc": {"size_bytes": -freed},
            };
            let result = self
                .conversations
                .update_one(filter, revised(update))
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

    async fn branches(&self, user: &UserId, id: &ConversationId) -> StoreResult<BranchPool> {
        self.read_branches(user, id).await
    }

    async fn fork(
        &self,
        user: &UserId,
        id: &ConversationId,
        at: u64,
        messages: Vec<NewMessage>,
    ) -> StoreResult<ConversationMeta> {
        self.change_branches(user, id, branches::Change::Fork { at, messages })
            .await
    }

    async fn switch_branch(
        &self,
        user: &UserId,
        id: &ConversationId,
        index: u64,
        position: u64,
    ) -> StoreResult<ConversationMeta> {
        self.change_branches(user, id, branches::Change::Switch { index, position })
            .await
    }

    async fn reset(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta> {
        let (at, _) = now();
        let update = doc! {
            "$set": {
                "conversation_history": [],
                "conversation_text": "",
                "updated_at": at,
                "message_count": 0_i64,
                "text_bytes": 0_i64,
                "size_bytes": BASE_BYTES,
            },
            "$unset": {"title": "", "summary": "", "branches": "", "branch_messages": "", "branch_bytes": ""},
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
                revised(doc! {"$set": {"summary": summary_doc(&summary)}}),
            )
            .await
            .map_err(|e| self.err(e))?;
        if result.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn set_settings(
        &self,
        user: &UserId,
        id: &ConversationId,
        settings: &ConversationSettings,
    ) -> StoreResult<()> {
        let result = self
            .conversations
            .update_one(Self::key(user, id), revised(settings_update(settings)))
            .await
            .map_err(|e| self.err(e))?;
        if result.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn change_settings(
        &self,
        user: &UserId,
        id: &ConversationId,
        change: &SettingsChange,
    ) -> StoreResult<ConversationSettings> {
        let mut projection = doc! {"_id": 0};
        for field in SETTINGS_FIELDS {
            projection.insert(field, 1);
        }
        let update = settings_change_update(change);
        let found = if update.is_empty() {
            self.conversations
                .find_one(Self::key(user, id))
                .projection(projection)
                .await
        } else {
            self.conversations
                .find_one_and_update(Self::key(user, id), revised(update))
                .projection(projection)
                .return_document(ReturnDocument::After)
                .await
        }
        .map_err(|e| self.err(e))?
        .ok_or(StoreError::NotFound)?;
        Ok(settings_from_doc(&found))
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
    ) -> StoreResult<Vec<Exported>> {
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
            match conversation_from_doc(&d).and_then(|c| Ok((c, branches::pool_from_doc(&d)?))) {
                Ok((conversation, branches)) => page.push(Exported {
                    user: UserId::from_stored(user.to_string()),
                    conversation,
                    branches,
                }),
                Err(e) => tracing::warn!(error = %e, "skipping a malformed conversation"),
            }
        }
        Ok(page)
    }

    async fn import_branched(
        &self,
        user: &UserId,
        conversation: &Conversation,
        pool: &BranchPool,
    ) -> StoreResult<bool> {
        let text: u64 = conversation
            .messages
            .iter()
            .map(|m| m.message.content.len() as u64)
            .sum();
        if !self.limits.has_room(
            pool.nodes.len() as u64,
            pool.bytes(),
            conversation.messages.len() as u64,
            text,
        ) {
            return Err(self.too_large());
        }
        let d = import_doc(user, conversation, pool)?;
        if encoded_len(&d) > HARD_LIMIT_BYTES {
            return Err(self.too_large());
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

    #[tokio::test]
    async fn writes_wait_for_a_majority_and_retry_unless_the_uri_says_otherwise() {
        let mut options = ClientOptions::parse("mongodb://h1,h2,h3/?replicaSet=rs0")
            .await
            .unwrap();
        durable_by_default(&mut options);
        let majority = mongodb::options::Acknowledgment::Majority;
        assert_eq!(options.write_concern.as_ref().unwrap().w, Some(majority));
        assert_eq!(options.retry_writes, Some(true));
        assert_eq!(options.retry_reads, Some(true));

        let mut options = ClientOptions::parse("mongodb://h1/?w=1&retryWrites=false")
            .await
            .unwrap();
        durable_by_default(&mut options);
        let one = mongodb::options::Acknowledgment::Nodes(1);
        assert_eq!(options.write_concern.as_ref().unwrap().w, Some(one));
        assert_eq!(options.retry_writes, Some(false));
    }
}
