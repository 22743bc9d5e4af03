//! What a connected socket carries: its user, and the wait until
//! socketioxide has marked it connected.

use std::time::Duration;

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use tower_sessions::Session;

use crate::domain::UserId;

/// Who a socket acts as: the user of the session its handshake carried.
#[derive(Clone)]
pub struct SocketUser {
    pub user: UserId,
    pub session: Option<Session>,
    /// Neither a token nor a signed-in account: the per-address limits apply.
    pub anonymous: bool,
    /// The client's address at the handshake (`TRUSTED_PROXIES` rules).
    pub client: Option<std::net::IpAddr>,
    /// The user is an account (a signed-in session or an access token):
    /// each event checks it is still allowed to act.
    pub account: bool,
}

/// Waits until socketioxide has marked the socket connected. It runs the
/// connect middlewares (where our handlers are registered), sends the
/// connect packet, and only then sets the flag; a client that sends at
/// once can have its event handled in between, and emits to a socket not
/// yet marked connected are dropped. The gap is microseconds, but a
/// loaded machine can stretch it.
pub(super) async fn settled<A: Adapter>(socket: &SocketRef<A>) {
    for _ in 0..1000 {
        if socket.connected() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
