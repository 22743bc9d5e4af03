//! Share links in MongoDB: [`ShareStore`] for [`MongoStore`], one document
//! per link in `shares` (`{_id: <share id>, user_id, conversation_id,
//! token_hash, title?, messages: [{role, content}], message_count,
//! created_at}`, unique on `token_hash`, listed through `{user_id,
//! created_at}`, see `schema`); never the token itself. A new collection:
//! the original app's collections are untouched.
//!
//! The per-user limit holds across instances without a transaction, as for
//! access tokens: insert first, count after, take the insert back when over.

use anyhow::anyhow;
use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};

use super::base::{code, command_code, map_error, MongoStore};
use super::documents::{from_bson_time, now, to_bson_time};
use crate::domain::{ChatMessage, ConversationId, Role, UserId};
use crate::store::shares::{NewShare, Share, ShareStore, SharedConversation, StoredShare};
use crate::store::{StoreError, StoreResult};

/// What a snapshot too large for one document is told.
const TOO_LARGE: &str = "This conversation is too large to share.";

fn text<'a>(d: &'a Document, key: &str) -> anyhow::Result<&'a str> {
    d.get_str(key)
        .map_err(|_| anyhow!("a share without a string {key}"))
}

/// A share's document.
fn share_doc(share: &Share, token_hash: &str, messages: &[ChatMessage]) -> Document {
    let items: Vec<Document> = messages
        .iter()
        .map(|m| doc! {"role": m.role.as_str(), "content": &*m.content})
        .collect();
    let mut d = doc! {
        "_id": &share.id,
        "user_id": share.user_id.as_ref(),
        "conversation_id": share.conversation_id.as_ref(),
        "token_hash": token_hash,
        "messages": items,
        "message_count": messages.len() as i64,
        "created_at": to_bson_time(&share.created_at),
    };
    if let Some(title) = &share.title {
        d.insert("title", title);
    }
    d
}

fn share_from_doc(d: &Document) -> anyhow::Result<Share> {
    Ok(Share {
        id: text(d, "_id")?.to_string(),
        user_id: UserId::from_stored(text(d, "user_id")?.to_string()),
        conversation_id: ConversationId::parse(text(d, "conversation_id")?)
            .map_err(|_| anyhow!("a share with a malformed conversation_id"))?,
        title: d.get_str("title").ok().map(str::to_string),
        message_count: match d.get("message_count") {
            Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or_default(),
            Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or_default(),
            _ => 0,
        },
        created_at: d
            .get_datetime("created_at")
            .map(|at| from_bson_time(*at))
            .map_err(|_| anyhow!("a share without a created_at date"))?,
    })
}

fn shared_from_doc(d: &Document) -> anyhow::Result<SharedConversation> {
    let items = d
        .get_array("messages")
        .map_err(|_| anyhow!("a share without messages"))?;
    let mut messages = Vec::with_capacity(items.len());
    for item in items {
        let Bson::Document(item) = item else {
            anyhow::bail!("a share's message that is not a document");
        };
        let role = Role::parse(text(item, "role")?)
            .ok_or_else(|| anyhow!("a share's message with an unknown role"))?;
        messages.push(ChatMessage::new(role, text(item, "content")?));
    }
    Ok(SharedConversation {
        owner: UserId::from_stored(text(d, "user_id")?.to_string()),
        title: d.get_str("title").ok().map(str::to_string),
        messages,
        created_at: d
            .get_datetime("created_at")
            .map(|at| from_bson_time(*at))
            .map_err(|_| anyhow!("a share without a created_at date"))?,
    })
}

impl MongoStore {
    async fn count_shares(&self, user: &UserId) -> StoreResult<u64> {
        self.shares
            .count_documents(doc! {"user_id": user.as_ref()})
            .await
            .map_err(|e| map_error(&self.redactor, e))
    }
}

#[async_trait]
impl ShareStore for MongoStore {
    async fn create_share(
        &self,
        user: &UserId,
        share: NewShare,
        max_per_user: u32,
    ) -> StoreResult<Option<Share>> {
        let max = u64::from(max_per_user);
        if self.count_shares(user).await? >= max {
            return Ok(None);
        }
        // Insert, then count, and take the insert back when over the limit
        // (see `tokens::create_token` for why no more than `max` survive).
        let (_, created_at) = now();
        let made = Share {
            id: share.id,
            user_id: user.clone(),
            conversation_id: share.conversation_id,
            title: share.title,
            message_count: share.messages.len() as u64,
            created_at,
        };
        let d = share_doc(&made, &share.token_hash, &share.messages);
        if let Err(e) = self.shares.insert_one(d).await {
            return Err(match map_error(&self.redactor, e) {
                StoreError::TooLarge(_) => StoreError::TooLarge(TOO_LARGE.to_string()),
                other => other,
            });
        }
        if self.count_shares(user).await? > max {
            self.shares
                .delete_one(doc! {"_id": &made.id, "user_id": user.as_ref()})
                .await
                .map_err(|e| map_error(&self.redactor, e))?;
            return Ok(None);
        }
        Ok(Some(made))
    }

    async fn shares(&self, user: &UserId) -> StoreResult<Vec<Share>> {
        let mut cursor = self
            .shares
            .find(doc! {"user_id": user.as_ref()})
            .projection(doc! {"token_hash": 0, "messages": 0})
            .sort(doc! {"created_at": -1, "_id": -1})
            .await
            .map_err(|e| map_error(&self.redactor, e))?;
        let mut list = Vec::new();
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| map_error(&self.redactor, e))?
        {
            match share_from_doc(&d) {
                Ok(share) => list.push(share),
                Err(e) => tracing::warn!(error = %e, "skipping a malformed share"),
            }
        }
        Ok(list)
    }

    async fn delete_share(&self, user: &UserId, id: &str) -> StoreResult<bool> {
        // Both keys: a user can never delete another's share.
        let result = self
            .shares
            .delete_one(doc! {"_id": id, "user_id": user.as_ref()})
            .await
            .map_err(|e| map_error(&self.redactor, e))?;
        Ok(result.deleted_count > 0)
    }

    async fn shared(&self, token_hash: &str) -> StoreResult<Option<SharedConversation>> {
        let found = self
            .shares
            .find_one(doc! {"token_hash": token_hash})
            .await
            .map_err(|e| map_error(&self.redactor, e))?;
        found
            .map(|d| shared_from_doc(&d).map_err(StoreError::Backend))
            .transpose()
    }

    async fn delete_conversation_shares(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> StoreResult<u64> {
        let result = self
            .shares
            .delete_many(doc! {"user_id": user.as_ref(), "conversation_id": conversation.as_ref()})
            .await
            .map_err(|e| map_error(&self.redactor, e))?;
        Ok(result.deleted_count)
    }

    async fn transfer_shares(&self, from: &UserId, to: &UserId) -> StoreResult<u64> {
        let result = self
            .shares
            .update_many(
                doc! {"user_id": from.as_ref()},
                doc! {"$set": {"user_id": to.as_ref()}},
            )
            .await
            .map_err(|e| map_error(&self.redactor, e))?;
        Ok(result.modified_count)
    }

    async fn shares_for_copy(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<StoredShare>> {
        let filter = match after {
            Some(after) => doc! {"_id": {"$gt": after}},
            None => doc! {},
        };
        let mut cursor = self
            .shares
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(i64::from(limit))
            .await
            .map_err(|e| map_error(&self.redactor, e))?;
        let mut list = Vec::new();
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| map_error(&self.redactor, e))?
        {
            let share = share_from_doc(&d).map_err(StoreError::Backend)?;
            let messages = shared_from_doc(&d).map_err(StoreError::Backend)?.messages;
            let token_hash = text(&d, "token_hash")
                .map_err(StoreError::Backend)?
                .to_string();
            list.push(StoredShare {
                share,
                token_hash,
                messages,
            });
        }
        Ok(list)
    }

    async fn import_share(&self, stored: &StoredShare) -> StoreResult<bool> {
        let d = share_doc(&stored.share, &stored.token_hash, &stored.messages);
        match self.shares.insert_one(d).await {
            Ok(_) => Ok(true),
            Err(e) if command_code(&e) == Some(code::DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(match map_error(&self.redactor, e) {
                StoreError::TooLarge(_) => StoreError::TooLarge(TOO_LARGE.to_string()),
                other => other,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_document_reads_back_and_a_malformed_one_is_refused() {
        let (at, created_at) = now();
        let user = UserId::new();
        let conversation = ConversationId::new();
        let d = doc! {
            "_id": "s1", "user_id": user.as_ref(), "conversation_id": conversation.as_ref(),
            "token_hash": "h", "title": "Hello", "message_count": 1_i64, "created_at": at,
            "messages": [{"role": "user", "content": "hi"}],
        };
        assert_eq!(
            share_from_doc(&d).unwrap(),
            Share {
                id: "s1".into(),
                user_id: user.clone(),
                conversation_id: conversation,
                title: Some("Hello".into()),
                message_count: 1,
                created_at,
            }
        );
        let shared = shared_from_doc(&d).unwrap();
        assert_eq!(shared.owner, user);
        assert_eq!(shared.messages, vec![ChatMessage::new(Role::User, "hi")]);
        let mut bad_role = d.clone();
        bad_role.insert("messages", vec![doc! {"role": "root", "content": "x"}]);
        assert!(shared_from_doc(&bad_role).is_err());
        let mut no_date = d;
        no_date.insert("created_at", "yesterday");
        assert!(share_from_doc(&no_date).is_err());
    }
}
