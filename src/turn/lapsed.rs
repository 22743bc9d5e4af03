//! Replies whose instance died mid-reply (Redis mode): their lease lapses
//! (`replies::lease`), one surviving instance claims each, stores the
//! user's message as for any failed turn (once: only the claimer does; an
//! edit's on its new branch, none for a regenerate), and
//! ends the reply with `error` for the tabs watching it. The conversation
//! is then free for the next message: nothing else marks it busy.

use std::time::Duration;

use crate::domain::Role;
use crate::metrics::Metrics;
use crate::notify::{conversation_branched, conversation_updated};
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
            let (user, id) = (&lapsed.user, &lapsed.conversation);
            // Where the turn would have stored it on failing (`Turn::finish`).
            let stored = match lapsed.branch {
                None => chat.store.append(user, id, vec![message]).await,
                // A regenerate: the old reply stays shown.
                Some(branch) if branch.user_stored => chat.store.meta(user, id).await,
                // An edit: the new message on its own branch.
                Some(branch) => {
                    chat.store
                        .fork(user, id, branch.prefix, vec![message])
                        .await
                }
            };
            // Stored first: a tab told the reply ended finds the message.
            chat.replies.interrupt(&lapsed).await;
            Metrics::inc(&chat.metrics.turns_failed);
            match stored {
                Ok(meta) => {
                    let updated = match lapsed.branch {
                        Some(_) => conversation_branched(&meta),
                        None => conversation_updated(&meta),
                    };
                    chat.notifier.to_user(&lapsed.user, updated).await
                }
                Err(err) => {
                    tracing::warn!(error = %err, conversation = %lapsed.conversation, "could not store an interrupted reply's message")
                }
            }
        }
    }
}
