//! A turn in a conversation near its cap (`MAX_CONVERSATION_*`): refused
//! before anything is sent upstream when even the user's message and a
//! reply cannot be stored, and, when the reply that came turns out longer
//! than the room left, stored with the reply cut to that room rather than
//! lost.

use super::chat::Chat;
use crate::domain::{ConversationId, Role, UserId};
use crate::error::ApiError;
use crate::store::{Conversation, ConversationMeta, NewMessage, StoreError, StoreResult};

/// Bytes of text the conversation may still take, or the refusal (the
/// cap's sentence) when it cannot take the user's message (`text`) and a
/// reply. Checked before the LLM is asked, so no tokens are spent on a
/// turn that cannot be stored.
pub(super) fn room_for_turn(
    chat: &Chat,
    conversation: &Conversation,
    text: &str,
) -> Result<u64, ApiError> {
    let limits = chat.settings.conversation_limits;
    let count = conversation.meta.message_count;
    let bytes: u64 = conversation
        .messages
        .iter()
        .map(|m| m.message.content.len() as u64)
        .sum();
    // The user's message and a reply of at least one byte.
    if !limits.has_room(count, bytes, 2, text.len() as u64 + 1) {
        return Err(ApiError::TooLarge(limits.full_message()));
    }
    Ok(limits.max_bytes - bytes)
}

/// Appends the turn's messages. When the store refuses them as too large
/// and there is a reply, the reply is cut (on a character boundary) to the
/// `room` measured before the turn and stored so; a reply with no room at
/// all is left out and the user's message stored alone.
pub(super) async fn append_turn(
    chat: &Chat,
    user: &UserId,
    id: &ConversationId,
    messages: Vec<NewMessage>,
    room: u64,
) -> StoreResult<ConversationMeta> {
    store_turn(chat, user, id, None, messages, room).await
}

/// The same for a turn on a new branch: the history from `at` is set aside
/// (`ConversationStore::fork`) and the turn's messages take its place.
pub(super) async fn fork_turn(
    chat: &Chat,
    user: &UserId,
    id: &ConversationId,
    at: u64,
    messages: Vec<NewMessage>,
    room: u64,
) -> StoreResult<ConversationMeta> {
    store_turn(chat, user, id, Some(at), messages, room).await
}

async fn store_turn(
    chat: &Chat,
    user: &UserId,
    id: &ConversationId,
    at: Option<u64>,
    messages: Vec<NewMessage>,
    room: u64,
) -> StoreResult<ConversationMeta> {
    let write = |messages: Vec<NewMessage>| async move {
        match at {
            Some(at) => chat.store.fork(user, id, at, messages).await,
            None => chat.store.append(user, id, messages).await,
        }
    };
    let has_reply = messages.last().is_some_and(|m| m.role == Role::Assistant);
    let retry = has_reply.then(|| messages.clone());
    match write(messages).await {
        Err(StoreError::TooLarge(why)) => {
            let Some(mut messages) = retry else {
                return Err(StoreError::TooLarge(why));
            };
            let mut reply = messages.pop().expect("a reply");
            let before: u64 = messages.iter().map(|m| m.content.len() as u64).sum();
            let left = room.saturating_sub(before) as usize;
            let mut cut = left.min(reply.content.len());
            while !reply.content.is_char_boundary(cut) {
                cut -= 1;
            }
            reply.content.truncate(cut);
            if !reply.content.trim().is_empty() {
                reply.tokens = Some(chat.tokens.count(&reply.content));
                messages.push(reply);
            }
            tracing::warn!(conversation = %id, kept = cut, "the conversation is full: the reply is stored cut");
            write(messages).await
        }
        other => other,
    }
}
