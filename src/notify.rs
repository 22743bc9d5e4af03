//! Events for every socket of a user (all tabs, on every instance), and
//! disconnecting them all: the trait the turn and the HTTP routes go
//! through, implemented by the Socket.IO layer over its rooms.

use async_trait::async_trait;

use crate::domain::UserId;
use crate::events::{ConversationUpdated, ServerEvent, SettingsShown};
use crate::store::{rfc3339, ConversationMeta};

/// Sends an event to every socket of a user (all tabs; on all instances
/// through the Redis adapter).
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    async fn to_user(&self, user: &UserId, event: ServerEvent<'_>);

    /// Disconnects every socket of a user, on every instance (its sessions
    /// were ended, or its account disabled). A browser told so by the
    /// server does not reconnect by itself. Failing to reach another
    /// instance is an error (the caller reports it).
    async fn disconnect_user(&self, user: &UserId) -> anyhow::Result<()>;
}

/// The room every socket of a user joins.
pub fn user_room(user: &UserId) -> String {
    format!("user:{user}")
}

/// `conversation_updated` for a conversation as it is now.
pub fn conversation_updated(meta: &ConversationMeta) -> ServerEvent<'_> {
    ServerEvent::ConversationUpdated(ConversationUpdated {
        conversation_id: meta.conversation_id.as_ref(),
        title: meta.title.as_deref(),
        updated_at: rfc3339::format(&meta.updated_at),
        message_count: meta.message_count,
        branched: false,
        settings: None,
    })
}

/// `conversation_updated` after a change of the history's path (an edit, a
/// regenerate, a switch of branch): `branched: true`.
pub fn conversation_branched(meta: &ConversationMeta) -> ServerEvent<'_> {
    let mut event = conversation_updated(meta);
    if let ServerEvent::ConversationUpdated(updated) = &mut event {
        updated.branched = true;
    }
    event
}

/// `conversation_updated` after a change of the conversation's settings:
/// with `settings`, so the user's other tabs show them.
pub fn settings_changed(meta: &ConversationMeta, settings: SettingsShown) -> ServerEvent<'_> {
    let mut event = conversation_updated(meta);
    if let ServerEvent::ConversationUpdated(updated) = &mut event {
        updated.settings = Some(settings);
    }
    event
}
