//! Replies whose instance died mid-reply (Redis mode): their lease lapses
//! (`replies::lease`), one surviving instance claims each, stores the
//! user's message as for any failed turn (once: only the claimer does), and
//! ends the reply with `error` for the tabs watching it. The conversation
//! is then free for the next message: nothing else marks it busy.

use std::time::Duration;

use crate::domain::Role;
use crate::metrics::Metrics;
use crate::notify::conversation_updated;
use crate::store::NewMessage;

use super::chat::Chat;

/// Looks for lapsed replies about once a second, for as long as the
/// instance runs.
pub async fn end_lapsed_replies(chat: Chat) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for lapsed in chat.replies.claim_lapsed().await {
            let message = NewMessage {
                role: Role::User,
                tokens: Some(chat.tokens.count(&lapsed.message)),
                content: lapsed.message.clone(),
            };
            let stored = chat
                .store
                .append(&lapsed.user, &lapsed.conversation, vec![message])
                .await;
            // Stored first: a tab told the reply ended finds the message.
            chat.replies.interrupt(&lapsed).await;
            Metrics::inc(&chat.metrics.turns_failed);
            match stored {
                Ok(meta) => {
                    chat.notifier
                        .to_user(&lapsed.user, conversation_updated(&meta))
                        .await
                }
                Err(err) => {
                    tracing::warn!(error = %err, conversation = %lapsed.conversation, "could not store an interrupted reply's message")
                }
            }
        }
    }
}
