//! Events out of the server: to one socket ([`SocketSink`]) or to every
//! socket of a user, on every instance ([`SocketNotifier`], which also
//! disconnects them all).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::SocketIo;
use socketioxide::{BroadcastError, SendError, SocketError};

use crate::domain::UserId;
use crate::events::{EventSink, Offer, ServerEvent};
use crate::notify::{user_room, Notifier};

/// Packets engine.io holds for one socket before it refuses more (its
/// default is 128).
///
/// Engine.io queues its heartbeat ping in the same buffer, and closes the
/// connection at once when the ping finds the buffer full: it takes that as
/// a client that stopped reading. Offering events until the buffer is full
/// (as a replay of a long reply does) would therefore close a healthy
/// connection whenever a ping fell in the moment before the socket's writer
/// caught up, and the first ping of a new connection, queued by a task that
/// a loaded machine may run late, often does. So offers stop well short of
/// the buffer ([`SendBurst`]); only a client that really stopped reading
/// fills it.
pub const SOCKET_BUFFER: usize = 1024;

/// Events a socket may be offered at once...
const BURST: u32 = 256;
/// ...and after that, per millisecond (32 000 a second: far above any
/// model's stream, so only replays and bursts are paced by it).
const PER_MS: u128 = 32;

// Two bursts (the second earned while the socket was idle) and what 16 ms
// earn leave engine.io's buffer room for its ping.
const _: () = assert!(2 * BURST as usize + 16 * PER_MS as usize <= SOCKET_BUFFER);

/// One socket's allowance of events offered: at most [`BURST`] at once,
/// then [`PER_MS`] a millisecond. What is offered meanwhile is refused as
/// [`Offer::Full`] and paced like a full buffer, so what the socket holds
/// stays under [`SOCKET_BUFFER`] unless its writer stalls for about
/// (1024 - 2 × 256) / 32 = 16 ms, and its ping finds room.
#[derive(Debug)]
pub struct SendBurst(Mutex<Allowance>);

#[derive(Debug)]
struct Allowance {
    left: u32,
    /// When `left` was last filled.
    since: Instant,
}

impl Default for SendBurst {
    fn default() -> Self {
        Self(Mutex::new(Allowance {
            left: BURST,
            since: Instant::now(),
        }))
    }
}

impl SendBurst {
    /// Takes one event's allowance; `false` when none is left yet. The
    /// clock is read only when the allowance runs out.
    fn take(&self) -> bool {
        self.take_by(Instant::now)
    }

    /// [`Self::take`] with `clock` telling the time.
    fn take_by(&self, clock: impl FnOnce() -> Instant) -> bool {
        let mut allowance = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if allowance.left == 0 {
            let now = clock();
            let earned = now.duration_since(allowance.since).as_micros() * PER_MS / 1000;
            if earned == 0 {
                return false;
            }
            allowance.left = earned.min(u128::from(BURST)) as u32;
            allowance.since = now;
        }
        allowance.left -= 1;
        true
    }
}

/// One socket's events.
pub(super) struct SocketSink<A: Adapter> {
    pub(super) socket: SocketRef<A>,
    burst: Arc<SendBurst>,
}

impl<A: Adapter> SocketSink<A> {
    /// The sink of `socket`, sharing the socket's allowance with its other
    /// sinks.
    pub(super) fn new(socket: SocketRef<A>) -> Self {
        let burst = socket
            .extensions
            .get::<Arc<SendBurst>>()
            .unwrap_or_default();
        Self { socket, burst }
    }

    fn queue(&self, event: &ServerEvent<'_>) -> Offer {
        let name = event.name();
        match self.socket.emit(name, event) {
            Ok(()) => Offer::Queued,
            Err(SendError::Socket(SocketError::InternalChannelFull)) => Offer::Full,
            Err(err) => {
                tracing::debug!(socket = %self.socket.id, event = name, error = %err, "emit failed");
                Offer::Gone
            }
        }
    }
}

impl<A: Adapter> EventSink for SocketSink<A> {
    fn offer(&self, event: &ServerEvent<'_>) -> Offer {
        if !self.burst.take() {
            return Offer::Full;
        }
        self.queue(event)
    }

    /// A single event that is not offered again: straight to the buffer.
    fn emit(&self, event: ServerEvent<'_>) {
        if self.queue(&event) == Offer::Full {
            tracing::debug!(socket = %self.socket.id, event = event.name(), "socket buffer full; event dropped");
        }
    }

    fn disconnect(&self) {
        tracing::info!(socket = %self.socket.id, "socket stopped reading its events; disconnecting it (its client resumes)");
        // With its buffer still full the disconnect packet cannot be
        // queued either: engine.io's next ping cannot be queued then, and
        // that closes the connection.
        if let Err(err) = self.socket.clone().disconnect() {
            tracing::debug!(socket = %self.socket.id, error = %err, "could not disconnect now; the heartbeat will");
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// How many of `tries` offers at the instant `at` are allowed.
    fn allowed(burst: &SendBurst, at: Instant, tries: u32) -> u32 {
        (0..tries).map(|_| u32::from(burst.take_by(|| at))).sum()
    }

    /// A burst gets its allowance at once and no more; time earns 32 a
    /// millisecond, never more than a burst.
    #[test]
    fn a_burst_is_allowed_then_refused_until_time_earns_more() {
        let burst = SendBurst::default();
        let start = burst.0.lock().unwrap().since;
        assert_eq!(allowed(&burst, start, 1000), BURST);
        assert_eq!(allowed(&burst, start + Duration::from_micros(20), 10), 0);
        assert_eq!(allowed(&burst, start + Duration::from_millis(1), 100), 32);
        assert_eq!(allowed(&burst, start + Duration::from_millis(3), 100), 64);
        assert_eq!(allowed(&burst, start + Duration::from_secs(5), 1000), BURST);
    }
}
