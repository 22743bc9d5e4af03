//! Stopping replies from any instance: a tab's `stop_generation` may reach
//! another instance than the one producing the reply, so a stop is applied
//! here and published on the control channel for the others.

use crate::domain::{ConversationId, UserId};

use super::chat::Chat;
use super::registry::TurnRegistry;

/// A stop request as published between instances.
#[derive(serde::Serialize, serde::Deserialize)]
struct StopRequest {
    instance: String,
    user: String,
    conversation: Option<String>,
}

/// Stops the user's reply (in `id`, or all) here and on every other
/// instance (Redis mode): the reply may run on another instance than the
/// tab that asks. Returns how many ran here.
pub async fn stop_everywhere(chat: &Chat, user: &UserId, id: Option<&ConversationId>) -> usize {
    let stopped = chat.turns.stop(user, id);
    if let Some(redis) = &chat.redis {
        use fred::interfaces::PubsubInterface;
        let request = StopRequest {
            instance: chat.replies.instance().to_string(),
            user: user.to_string(),
            conversation: id.map(ToString::to_string),
        };
        let message = serde_json::to_string(&request).unwrap_or_default();
        if let Err(err) = redis
            .timed(
                redis
                    .client
                    .publish::<u64, _, _>(redis.key("control"), message),
            )
            .await
        {
            tracing::warn!(error = %err, "could not pass the stop to other instances");
        }
    }
    stopped
}

/// Applies a stop published by another instance.
pub fn apply_remote_stop(turns: &TurnRegistry, raw: &str, own_instance: &str) {
    let Ok(request) = serde_json::from_str::<StopRequest>(raw) else {
        return;
    };
    if request.instance == own_instance {
        return;
    }
    let conversation = match request.conversation.as_deref().map(ConversationId::parse) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return,
    };
    turns.stop(&UserId::from_stored(request.user), conversation.as_ref());
}
