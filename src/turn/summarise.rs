//! Folding the oldest turns of a long conversation into its running
//! summary, one bounded piece per turn (`context::fold_limit`): one request
//! never carries more than a few summaries' worth of messages, the rest is
//! folded by the turns that follow. After a failure the conversation waits
//! (`backoff`) before it is summarised again.

use tokio_util::sync::CancellationToken;

use super::chat::Chat;
use crate::context::{fold_end, fold_limit, summary_request};
use crate::domain::{ConversationId, UserId};
use crate::llm::ChatRequest;
use crate::metrics::Metrics;
use crate::store::{Conversation, Summary};

/// What a summary step came to.
pub(super) enum Folded {
    /// The new summary's text (stored, or used for this turn only).
    Into(String),
    /// Not summarised now (failed, or waiting after a failure): the
    /// oldest turns are left out of the prompt instead.
    NotNow,
    /// Stopped while summarising.
    Stopped,
}

/// The conversation a summary step is for, and the turn's stop.
pub(super) struct Whose<'a> {
    pub user: &'a UserId,
    pub conversation: &'a ConversationId,
    pub cancel: &'a CancellationToken,
    /// The conversation's model: its window bounds a fold, it writes it.
    pub model: &'a super::models::Model,
}

impl Whose<'_> {
    /// Folds messages from `from` (where the summary ends) towards
    /// `first_kept` into the summary; `costs` as the plan had them.
    pub(super) async fn summarise(
        &self,
        chat: &Chat,
        conversation: &Conversation,
        costs: &[u32],
        from: usize,
        first_kept: usize,
        summary_cap: u32,
    ) -> Folded {
        if !chat.summary_backoff.ready(self.user, self.conversation) {
            return Folded::NotNow;
        }
        let previous = conversation.summary.as_ref();
        let limit = fold_limit(
            self.model.spec.prompt_budget(),
            summary_cap,
            previous.map_or(0, |s| s.tokens),
        );
        let end = fold_end(costs, from, first_kept, limit);
        let request = ChatRequest {
            messages: summary_request(
                previous.map(|s| s.text.as_str()),
                &conversation.messages[from..end],
            )
            .into(),
            max_tokens: summary_cap,
            temperature: None,
        };
        let outcome = tokio::select! {
            _ = self.cancel.cancelled() => return Folded::Stopped,
            result = chat.complete_metered_with(self.model.llm.as_ref(), self.user, request) => result,
        };
        match outcome {
            Ok(text) => {
                chat.summary_backoff.succeeded(self.user, self.conversation);
                let text = text.trim().to_string();
                let summary = Summary {
                    tokens: chat.tokens.count(&text),
                    text: text.clone(),
                    covers: end,
                };
                Metrics::inc(&chat.metrics.summaries);
                if let Err(err) = chat
                    .store
                    .set_summary(self.user, self.conversation, summary)
                    .await
                {
                    tracing::warn!(error = %err, "could not store the summary; using it for this turn only");
                }
                Folded::Into(text)
            }
            Err(err) => {
                // Leave the oldest turns out of the prompt instead, and
                // do not ask again on the next turn.
                chat.summary_backoff.failed(self.user, self.conversation);
                Metrics::inc(&chat.metrics.summary_failures);
                tracing::warn!(error = %err, conversation = %self.conversation, "summarising failed; leaving older turns out");
                Folded::NotNow
            }
        }
    }
}
