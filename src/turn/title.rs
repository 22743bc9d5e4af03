//! Conversation titles from the model (`LLM_TITLES=true`), asked for after
//! a conversation's first turn; the first-message title stays if it fails.

use crate::domain::{ChatMessage, ConversationId, Role, UserId};
use crate::llm::ChatRequest;
use crate::notify::conversation_updated;

use super::chat::Chat;

/// Asks the LLM for a short title and stores it.
pub(super) async fn make_title(
    chat: Chat,
    user: UserId,
    id: ConversationId,
    first_message: String,
) {
    let excerpt: String = first_message.chars().take(1000).collect();
    let request = ChatRequest {
        messages: vec![
            ChatMessage::new(
                Role::System,
                "You write short titles for conversations. Answer with the title only: at most six words, no quotes.",
            ),
            ChatMessage::new(Role::User, format!("Title for a conversation that starts with:\n{excerpt}")),
        ]
        .into(),
        max_tokens: 20,
        temperature: None,
    };
    let title = match chat.complete_metered(&user, request).await {
        Ok(text) => text,
        Err(err) => return tracing::debug!(error = %err, "title request failed"),
    };
    let Some(title) = crate::store::title_from(title.trim().trim_matches(['"', '\'', '.'])) else {
        return;
    };
    match chat.store.set_title(&user, &id, &title).await {
        Ok(meta) => {
            chat.notifier
                .to_user(&user, conversation_updated(&meta))
                .await
        }
        Err(err) => tracing::debug!(error = %err, "could not store the title"),
    }
}
