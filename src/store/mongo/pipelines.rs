//! Writes as the server evaluates them: an append is one update pipeline
//! run on the current document (concurrent appends compose; user text only
//! ever inside `$literal`), and the size guard: the over-estimate every
//! write keeps in `size_bytes`, checked in the append's filter, so a
//! conversation is refused before MongoDB's 16 MB document limit.

use mongodb::bson::{self, doc, Bson, Document};

use super::base::{MongoStore, BASE_BYTES, PER_MESSAGE_BYTES, SIZE_LIMIT_BYTES};
use super::documents::{history_item, user_messages};
use crate::config::ConversationLimits;
use crate::domain::{self, ChatMessage, ConversationId, UserId};
use crate::store::NewMessage;

/// How many bytes `messages` add to a document (an over-estimate).
pub(super) fn estimate_added(messages: &[NewMessage]) -> i64 {
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

/// The bytes of message text (the cap's measure): the stored counter, or
/// for documents without one (the original app's), the length of
/// `conversation_text` (the text with its `User: ` prefixes: a little more).
pub(super) fn text_bytes_expr() -> Bson {
    bson::bson!({
        "$ifNull": ["$text_bytes", {"$strLenBytes": {"$ifNull": ["$conversation_text", ""]}}]
    })
}

/// UTF-8 bytes of the messages' text.
pub(super) fn text_added(messages: &[NewMessage]) -> i64 {
    messages.iter().map(|m| m.content.len() as i64).sum()
}

/// The filter of an append: the conversation, if it has room for
/// `messages`: under the cap (`limits`: messages and bytes of text) and
/// under the 15 MiB guard of the estimate behind it.
pub(super) fn append_filter(
    user: &UserId,
    id: &ConversationId,
    messages: &[NewMessage],
    limits: &ConversationLimits,
) -> Document {
    let mut filter = MongoStore::key(user, id);
    if !messages.is_empty() {
        // The cap counts everything stored, branches set aside too.
        let count = doc! {"$add": [
            {"$size": {"$ifNull": ["$conversation_history", []]}},
            {"$ifNull": ["$branch_messages", 0]},
        ]};
        let text = doc! {"$add": [text_bytes_expr(), {"$ifNull": ["$branch_bytes", 0]}]};
        filter.insert(
            "$expr",
            doc! {"$and": [
                {"$lte": [{"$add": [size_expr(), estimate_added(messages)]}, SIZE_LIMIT_BYTES]},
                {"$lte": [{"$add": [count, messages.len() as i64]}, limits.max_messages as i64]},
                {"$lte": [{"$add": [text, text_added(messages)]}, limits.max_bytes as i64]},
            ]},
        );
    }
    filter
}

/// The update pipeline of an append: evaluated by the server on the current
/// document, so concurrent appends compose. User text is `$literal`.
pub(super) fn append_update(
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
        set.insert(
            "text_bytes",
            doc! {"$add": [text_bytes_expr(), text_added(messages)]},
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

pub(super) fn encoded_len(d: &Document) -> usize {
    let mut buf = Vec::new();
    match d.to_writer(&mut buf) {
        Ok(()) => buf.len(),
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    fn msg(role: Role, content: &str) -> NewMessage {
        NewMessage {
            role,
            content: content.to_string(),
            tokens: Some(7),
        }
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
            &[],
            &ConversationLimits::default(),
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
}
