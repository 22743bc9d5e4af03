//! Branches in MongoDB: the pool is the optional field `branches` of the
//! conversation's document (`{next, nodes: [{id, parent, depth, role,
//! content, tokens, left}], marks: [{index, id}]}`), with `branch_messages`
//! and `branch_bytes` beside it for the cap. `conversation_history` stays
//! the active path in the original's shape (no key is added to its items,
//! which the original app sends upstream as they are), so the original app
//! and every tool that reads these documents see a plain conversation.
//!
//! A fork or a switch reads the document and writes it back under a filter
//! on the history's length and `updated_at`: a concurrent write makes the
//! update miss, and it is tried again.

use anyhow::anyhow;
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::options::ReturnDocument;

use super::base::{MongoStore, BASE_BYTES, PER_MESSAGE_BYTES, SIZE_LIMIT_BYTES};
use super::documents::{
    as_u64, history_item, message_from_item, meta_from_doc, meta_projection, now, revised,
};
use crate::domain::{self, ChatMessage, ConversationId, UserId};
use crate::store::branches::BranchError;
use crate::store::{BranchPool, ConversationMeta, NewMessage, StoreError, StoreResult};

/// What a fork or a switch does to the pool, given the history's length.
pub(super) enum Change {
    Fork { at: u64, messages: Vec<NewMessage> },
    Switch { index: u64, position: u64 },
}

/// The pool of a document (empty when it has none).
pub(super) fn pool_from_doc(d: &Document) -> StoreResult<BranchPool> {
    match d.get("branches") {
        None | Some(Bson::Null) => Ok(BranchPool::default()),
        Some(raw) => bson::from_bson(raw.clone())
            .map_err(|e| StoreError::Backend(anyhow!("a malformed branch pool: {e}"))),
    }
}

impl MongoStore {
    fn branch_error(&self, err: BranchError) -> StoreError {
        match err {
            BranchError::NoSuchBranch => StoreError::NoSuchBranch,
            BranchError::Full => self.too_large(),
        }
    }

    /// The conversation's pool.
    pub(super) async fn read_branches(
        &self,
        user: &UserId,
        id: &ConversationId,
    ) -> StoreResult<BranchPool> {
        let found = self
            .conversations
            .find_one(Self::key(user, id))
            .projection(doc! {"_id": 0, "branches": 1})
            .await
            .map_err(|e| self.err(e))?
            .ok_or(StoreError::NotFound)?;
        pool_from_doc(&found)
    }

    /// A fork or a switch: read, change, write back if nothing changed
    /// meanwhile (else read again).
    pub(super) async fn change_branches(
        &self,
        user: &UserId,
        id: &ConversationId,
        change: Change,
    ) -> StoreResult<ConversationMeta> {
        for _ in 0..5 {
            let found = self
                .conversations
                .find_one(Self::key(user, id))
                .projection(doc! {
                    "_id": 0, "conversation_history": 1, "updated_at": 1,
                    "branches": 1, "summary": 1,
                })
                .await
                .map_err(|e| self.err(e))?
                .ok_or(StoreError::NotFound)?;
            let history: Vec<Document> = found
                .get_array("conversation_history")
                .map_err(|e| StoreError::Backend(anyhow!("conversation_history: {e}")))?
                .iter()
                .filter_map(Bson::as_document)
                .cloned()
                .collect();
            let len = history.len() as u64;
            let mut pool = pool_from_doc(&found)?;
            let as_new = |item: &Document| {
                let message = message_from_item(item);
                NewMessage {
                    role: message.role,
                    content: message.content.to_string(),
                    tokens: as_u64(item.get("tokens")).map(|t| t.min(u64::from(u32::MAX)) as u32),
                }
            };
            let (at, suffix) = match &change {
                Change::Fork { at, messages } => {
                    if *at > len {
                        return Err(StoreError::NoSuchBranch);
                    }
                    let stored: u64 = history
                        .iter()
                        .map(|item| message_from_item(item).content.len() as u64)
                        .sum::<u64>()
                        + pool.bytes();
                    let added: u64 = messages.iter().map(|m| m.content.len() as u64).sum();
                    let count = len + pool.nodes.len() as u64;
                    if !self
                        .limits
                        .has_room(count, stored, messages.len() as u64, added)
                    {
                        return Err(self.too_large());
                    }
                    let removed = history[*at as usize..].iter().map(as_new).collect();
                    pool.fork(*at, removed, messages.len())
                        .map_err(|e| self.branch_error(e))?;
                    (*at, messages.clone())
                }
                Change::Switch { index, position } => {
                    let Some(target) = pool
                        .sibling_at(len, *index, *position)
                        .map_err(|e| self.branch_error(e))?
                    else {
                        return self.meta_of(user, id).await;
                    };
                    let removed = history[*index as usize..].iter().map(as_new).collect();
                    let suffix = pool
                        .switch(*index, removed, target)
                        .map_err(|e| self.branch_error(e))?;
                    (*index, suffix)
                }
            };
            let mut items: Vec<Document> = history[..at as usize].to_vec();
            items.extend(
                suffix
                    .iter()
                    .map(|m| history_item(m.role, &m.content, m.tokens)),
            );
            let messages: Vec<ChatMessage> = items.iter().map(message_from_item).collect();
            let text_bytes: i64 = messages.iter().map(|m| m.content.len() as i64).sum();
            let size: i64 = BASE_BYTES
                + messages
                    .iter()
                    .map(|m| 2 * m.content.len() as i64 + PER_MESSAGE_BYTES)
                    .sum::<i64>()
                + pool
                    .nodes
                    .iter()
                    .map(|n| n.content.len() as i64 + PER_MESSAGE_BYTES)
                    .sum::<i64>();
            if size > SIZE_LIMIT_BYTES {
                return Err(self.too_large());
            }
            let mut set = doc! {
                "conversation_history": items,
                "conversation_text": domain::conversation_text(&messages),
                "message_count": messages.len() as i64,
                "text_bytes": text_bytes,
                "size_bytes": size,
                "updated_at": now().0,
            };
            let mut unset = Document::new();
            if pool.is_empty() {
                unset.insert("branches", "");
                unset.insert("branch_messages", "");
                unset.insert("branch_bytes", "");
            } else {
                let raw = bson::to_bson(&pool).map_err(|e| StoreError::Backend(e.into()))?;
                set.insert("branches", raw);
                set.insert("branch_messages", pool.nodes.len() as i64);
                set.insert("branch_bytes", pool.bytes() as i64);
            }
            let covers = found
                .get_document("summary")
                .ok()
                .and_then(|s| as_u64(s.get("covers")))
                .unwrap_or(0);
            if covers > at {
                unset.insert("summary", "");
            }
            let mut update = doc! {"$set": set};
            if !unset.is_empty() {
                update.insert("$unset", unset);
            }
            let mut filter = Self::key(user, id);
            filter.insert("conversation_history", doc! {"$size": len as i64});
            match found.get("updated_at") {
                Some(at) => filter.insert("updated_at", at.clone()),
                None => filter.insert("updated_at", doc! {"$exists": false}),
            };
            let written = self
                .conversations
                .find_one_and_update(filter, revised(update))
                .projection(meta_projection())
                .return_document(ReturnDocument::After)
                .await
                .map_err(|e| self.err(e))?;
            if let Some(d) = written {
                return meta_from_doc(&d).map_err(StoreError::Backend);
            }
        }
        Err(StoreError::Unavailable(
            "the conversation kept changing while a branch was made".into(),
        ))
    }

    async fn meta_of(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta> {
        let found = self
            .conversations
            .find_one(Self::key(user, id))
            .projection(meta_projection())
            .await
            .map_err(|e| self.err(e))?
            .ok_or(StoreError::NotFound)?;
        meta_from_doc(&found).map_err(StoreError::Backend)
    }
}
