//! Events out of the server: to one socket ([`SocketSink`]) or to every
//! socket of a user, on every instance ([`SocketNotifier`], which also
//! disconnects them all).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::SocketIo;
use socketioxide::{BroadcastError, SendError, SocketError};

use crate::domain::UserId;
use crate::events::{EventSink, Offer, ServerEvent};
use crate::notify::{user_room, Notifier};

/// One socket's events.
pub(super) struct SocketSink<A: Adapter>(pub(super) SocketRef<A>);

impl<A: Adapter> EventSink for SocketSink<A> {
    fn offer(&self, event: &ServerEvent<'_>) -> Offer {
        let name = event.name();
        match self.0.emit(name, event) {
            Ok(()) => Offer::Queued,
            Err(SendError::Socket(SocketError::InternalChannelFull)) => Offer::Full,
            Err(err) => {
                tracing::debug!(socket = %self.0.id, event = name, error = %err, "emit failed");
                Offer::Gone
            }
        }
    }

    fn emit(&self, event: ServerEvent<'_>) {
        if self.offer(&event) == Offer::Full {
            tracing::debug!(socket = %self.0.id, event = event.name(), "socket buffer full; event dropped");
        }
    }

    fn disconnect(&self) {
        tracing::info!(socket = %self.0.id, "socket stopped reading its events; disconnecting it (its client resumes)");
        // With its buffer still full the disconnect packet cannot be
        // queued either: engine.io's next ping cannot be queued then, and
        // that closes the connection.
        if let Err(err) = self.0.clone().disconnect() {
            tracing::debug!(socket = %self.0.id, error = %err, "could not disconnect now; the heartbeat will");
        }
    }
}

/// [`Notifier`] over a Socket.IO server, set once the server is built.
pub struct SocketNotifier<A: Adapter> {
    io: OnceLock<SocketIo<A>>,
}

impl<A: Adapter> Default for SocketNotifier<A> {
    fn default() -> Self {
        Self {
            io: OnceLock::new(),
        }
    }
}

impl<A: Adapter> SocketNotifier<A> {
    /// Connects the notifier to the server (once).
    pub fn attach(self: &Arc<Self>, io: SocketIo<A>) {
        let _ = self.io.set(io);
    }
}

#[async_trait]
impl<A: Adapter> Notifier for SocketNotifier<A> {
    async fn to_user(&self, user: &UserId, event: ServerEvent<'_>) {
        let Some(io) = self.io.get() else { return };
        let name = event.name();
        if let Err(err) = io.to(user_room(user)).emit(name, &event).await {
            tracing::debug!(event = name, error = %err, "broadcast to user failed");
        }
    }

    async fn disconnect_user(&self, user: &UserId) -> anyhow::Result<()> {
        let Some(io) = self.io.get() else {
            return Ok(());
        };
        // Through the adapter: with Redis, every instance disconnects its
        // own sockets in the room.
        match io.to(user_room(user)).disconnect().await {
            Ok(()) => Ok(()),
            // Sockets already closing: they are going anyway.
            Err(BroadcastError::Socket(errors)) => {
                tracing::debug!(?errors, "some of the user's sockets were already closing");
                Ok(())
            }
            Err(err) => {
                // The other instances were not reached (Redis is down);
                // this one's sockets go at least.
                if let Err(local) = io.local().to(user_room(user)).disconnect().await {
                    tracing::debug!(error = %local, "disconnecting the user's local sockets");
                }
                Err(anyhow::anyhow!(
                    "disconnecting the user's sockets on other instances: {err}"
                ))
            }
        }
    }
}
