//! Shared application state, cheap to clone: handed to the HTTP router and
//! to the Socket.IO handlers alike, so both act on one world.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::ratelimit::RateLimiter;
use crate::store::accounts::AccountStore;
use crate::turn::Chat;

/// Everything a handler may need: the services turns use, and what only
/// the edge needs.
#[derive(Clone)]
pub struct AppState {
    /// Settings, store, model, hub, turns: what the turn path shares.
    pub chat: Chat,
    pub limiter: Arc<dyn RateLimiter>,
    /// People with accounts (`AUTH_MODE=local`).
    pub accounts: Arc<dyn AccountStore>,
    /// Set when shutdown began: no new turns, `/readyz` answers 503.
    pub draining: Arc<AtomicBool>,
    /// Changes with every build, so browsers refetch static files.
    pub asset_version: Arc<str>,
}
