//! The stored document shapes and their conversions: a conversation's
//! metadata (with the projection every metadata read uses), its whole
//! history and summary, history items, BSON dates and numbers; the filter of
//! an export page and the document of an imported conversation.

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use mongodb::bson::{self, doc, Bson, Document};

use super::base::{BASE_BYTES, PER_MESSAGE_BYTES};
use crate::domain::{self, ChatMessage, ConversationId, Role, UserId};
use crate::store::{
    title_from, BranchPool, Conversation, ConversationMeta, ConversationSettings, SearchHit,
    SettingsChange, StoreError, StoreResult, StoredMessage, Summary,
};

pub(super) fn to_bson_time(at: &DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(at.timestamp_millis())
}

pub(super) fn from_bson_time(at: bson::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or_default()
}

/// Now, at MongoDB's (millisecond) precision.
pub(super) fn now() -> (bson::DateTime, DateTime<Utc>) {
    let at = bson::DateTime::now();
    (at, from_bson_time(at))
}

pub(super) fn as_u64(value: Option<&Bson>) -> Option<u64> {
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
pub(super) fn user_messages() -> Document {
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
pub(super) fn meta_projection() -> Document {
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

pub(super) fn meta_from_doc(d: &Document) -> anyhow::Result<ConversationMeta> {
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

pub(super) fn hit_from_doc(d: &Document) -> anyhow::Result<SearchHit> {
    Ok(SearchHit {
        meta: meta_from_doc(d)?,
        score: as_f64(d.get("score")).unwrap_or(0.0).max(1e-6),
    })
}

/// One history item as a message (a missing or unknown role reads as the
/// user's, missing content as empty, as the original app's documents may).
pub(super) fn message_from_item(item: &Document) -> ChatMessage {
    ChatMessage::new(
        item.get_str("role")
            .ok()
            .and_then(Role::parse)
            .unwrap_or(Role::User),
        item.get_str("content").unwrap_or_default(),
    )
}

/// The messages of a document's `conversation_history` (all of it, or the
/// slice a projection left).
pub(super) fn history_items(d: &Document) -> Vec<ChatMessage> {
    d.get_array("conversation_history")
        .map(|items| {
            items
                .iter()
                .filter_map(Bson::as_document)
                .map(message_from_item)
                .collect()
        })
        .unwrap_or_default()
}

/// A whole conversation from its document (history, summary, metadata).
pub(super) fn conversation_from_doc(d: &Document) -> anyhow::Result<Conversation> {
    let mut meta = meta_from_doc(d)?;
    let messages: Vec<StoredMessage> = d
        .get_array("conversation_history")
        .map(|items| {
            items
                .iter()
                .filter_map(Bson::as_document)
                .map(|item| StoredMessage {
                    message: message_from_item(item),
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
        settings: settings_from_doc(d),
    })
}

/// The fields of a conversation's settings, in a projection.
pub(super) const SETTINGS_FIELDS: [&str; 3] = ["model", "system_prompt", "temperature"];

/// A conversation's settings: optional fields beside the original app's
/// (absent, or of another type: the default).
pub(super) fn settings_from_doc(d: &Document) -> ConversationSettings {
    ConversationSettings {
        model: d.get_str("model").ok().map(str::to_string),
        system_prompt: d.get_str("system_prompt").ok().map(str::to_string),
        temperature: as_f64(d.get("temperature")).map(|t| t as f32),
    }
}

/// The update that writes `settings`: `$set` for each one given, `$unset`
/// for each default (so a default leaves no field, as the original's
/// documents have none).
pub(super) fn settings_update(settings: &ConversationSettings) -> Document {
    settings_change_update(&SettingsChange {
        model: Some(settings.model.clone()),
        system_prompt: Some(settings.system_prompt.clone()),
        temperature: Some(settings.temperature),
    })
}

/// The update that makes `change`: `$set` for each field it sets, `$unset`
/// for each one it clears, nothing for the others (empty when it changes
/// nothing).
pub(super) fn settings_change_update(change: &SettingsChange) -> Document {
    let mut set = Document::new();
    let mut unset = Document::new();
    match &change.model {
        Some(Some(model)) => set.insert("model", model.as_str()),
        Some(None) => unset.insert("model", ""),
        None => None,
    };
    match &change.system_prompt {
        Some(Some(prompt)) => set.insert("system_prompt", prompt.as_str()),
        Some(None) => unset.insert("system_prompt", ""),
        None => None,
    };
    match change.temperature {
        Some(Some(temperature)) => set.insert("temperature", f64::from(temperature)),
        Some(None) => unset.insert("temperature", ""),
        None => None,
    };
    let mut update = Document::new();
    if !set.is_empty() {
        update.insert("$set", set);
    }
    if !unset.is_empty() {
        update.insert("$unset", unset);
    }
    update
}

/// Adds the settings that differ from the defaults to a new document.
pub(super) fn insert_settings(d: &mut Document, settings: &ConversationSettings) {
    if let Some(model) = &settings.model {
        d.insert("model", model.as_str());
    }
    if let Some(prompt) = &settings.system_prompt {
        d.insert("system_prompt", prompt.as_str());
    }
    if let Some(temperature) = settings.temperature {
        d.insert("temperature", f64::from(temperature));
    }
}

pub(super) fn summary_doc(summary: &Summary) -> Document {
    doc! {
        "text": summary.text.as_str(),
        "covers": summary.covers as i64,
        "tokens": i64::from(summary.tokens),
    }
}

pub(super) fn history_item(role: Role, content: &str, tokens: Option<u32>) -> Document {
    let mut item = doc! {"role": role.as_str(), "content": content};
    if let Some(tokens) = tokens {
        item.insert("tokens", i64::from(tokens));
    }
    item
}

/// The filter of an export page: keys after `(user, conversation)`.
pub(super) fn export_filter(after: Option<&(UserId, ConversationId)>) -> Document {
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
pub(super) fn import_doc(
    user: &UserId,
    conversation: &Conversation,
    pool: &BranchPool,
) -> StoreResult<Document> {
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
            .sum::<i64>()
        + pool
            .nodes
            .iter()
            .map(|n| n.content.len() as i64 + PER_MESSAGE_BYTES)
            .sum::<i64>();
    let mut d = doc! {
        "conversation_id": meta.conversation_id.as_ref(),
        "user_id": user.as_ref(),
        "conversation_history": history,
        "conversation_text": text,
        "created_at": to_bson_time(&meta.created_at),
        "updated_at": to_bson_time(&meta.updated_at),
        "message_count": conversation.messages.len() as i64,
        "text_bytes": conversation.messages.iter().map(|m| m.message.content.len() as i64).sum::<i64>(),
        "size_bytes": estimate,
    };
    if let Some(title) = &meta.title {
        d.insert("title", title.as_str());
    }
    if let Some(summary) = &conversation.summary {
        d.insert("summary", summary_doc(summary));
    }
    insert_settings(&mut d, &conversation.settings);
    if !pool.is_empty() {
        let raw = bson::to_bson(pool).map_err(|e| StoreError::Backend(e.into()))?;
        d.insert("branches", raw);
        d.insert("branch_messages", pool.nodes.len() as i64);
        d.insert("branch_bytes", pool.bytes() as i64);
    }
    Ok(d)
}

/// The field a conversation's revision is kept in: every write of ours
/// adds one to it ([`revised`]).
pub(super) const REVISION: &str = "revision";

/// `update` that also moves the conversation's revision on by one (an
/// operator update gets `$inc`, a pipeline a last `$set` stage).
pub(super) fn revised(
    update: impl Into<mongodb::options::UpdateModifications>,
) -> mongodb::options::UpdateModifications {
    use mongodb::options::UpdateModifications;
    match update.into() {
        UpdateModifications::Document(mut update) => {
            match update.get_document_mut("$inc") {
                Ok(inc) => {
                    inc.insert(REVISION, 1_i64);
                }
                Err(_) => {
                    update.insert("$inc", doc! {REVISION: 1_i64});
                }
            }
            UpdateModifications::Document(update)
        }
        UpdateModifications::Pipeline(mut stages) => {
            stages.push(doc! {"$set": {
                REVISION: {"$add": [{"$ifNull": [format!("${REVISION}"), 0_i64]}, 1_i64]},
            }});
            UpdateModifications::Pipeline(stages)
        }
        other => other,
    }
}

/// How many bits of a revision token hold the history's length.
const LENGTH_BITS: u32 = 24;

/// The revision a document is read as: the count our writes move on, with
/// the history's length beside it, so a write of the original app (which
/// knows no revision, and always changes the history's length) is told
/// too.
pub(super) fn revision_token(revision: u64, history_length: u64) -> u64 {
    (revision << LENGTH_BITS) | (history_length & ((1 << LENGTH_BITS) - 1))
}

/// The revision token of a document read with its whole history or with
/// [`revision_projection`].
pub(super) fn revision_of(d: &Document) -> u64 {
    let length = as_u64(d.get("history_length")).unwrap_or_else(|| {
        d.get_array("conversation_history")
            .map_or(0, |items| items.len() as u64)
    });
    revision_token(as_u64(d.get(REVISION)).unwrap_or(0), length)
}

/// What a revision read asks for.
pub(super) fn revision_projection() -> Document {
    doc! {
        "_id": 0,
        REVISION: 1,
        "history_length": {"$size": {"$ifNull": ["$conversation_history", []]}},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
