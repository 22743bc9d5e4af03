//! Shared application state, cheap to clone: handed to the HTTP router and
//! to the Socket.IO handlers alike, so both act on one world.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::auth::token_hash;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::ratelimit::RateLimiter;
use crate::sessions::Sessions;
use crate::store::accounts::{AccountStore, ActiveAccounts};
use crate::store::tokens::TokenStore;
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
    /// Their personal access tokens.
    pub access_tokens: Arc<dyn TokenStore>,
    /// Which accounts may act now (not disabled), remembered briefly.
    pub active_accounts: Arc<ActiveAccounts>,
    /// The session store the session layer uses, for ending all of an
    /// account's sessions at once.
    pub sessions: Sessions,
    /// Set when shutdown began: no new turns, `/readyz` answers 503.
    pub draining: Arc<AtomicBool>,
    /// Changes with every build, so browsers refetch static files.
    pub asset_version: Arc<str>,
}

impl AppState {
    /// 404 `not_found` ("Accounts are not enabled on this server.") unless
    /// `AUTH_MODE` has accounts.
    pub fn require_accounts(&self) -> Result<(), ApiError> {
        if self.chat.settings.auth.accounts() {
            Ok(())
        } else {
            Err(ApiError::AccountsDisabled)
        }
    }

    /// The account a personal access token belongs to: 401 for an unknown
    /// token, a disabled account, or a server without accounts.
    pub async fn token_user(&self, token: &str) -> Result<UserId, ApiError> {
        if !self.chat.settings.auth.accounts() {
            return Err(ApiError::Unauthenticated);
        }
        let Some(user) = self.access_tokens.token_owner(&token_hash(token)).await? else {
            return Err(ApiError::Unauthenticated);
        };
        self.require_active(&user).await?;
        Ok(user)
    }

    /// 401 `unauthenticated` unless `user` has an account that is not
    /// disabled (see [`ActiveAccounts`] for how fresh the answer is).
    pub async fn require_active(&self, user: &UserId) -> Result<(), ApiError> {
        if self.active_accounts.is_active(user).await? {
            Ok(())
        } else {
            Err(ApiError::Unauthenticated)
        }
    }

    /// Signs `user` out everywhere: every session signed in to the account
    /// is ended, in the shared session store, and every socket of the user
    /// is disconnected, on every instance. Returns how many sessions ended.
    /// Access tokens are not sessions: they keep working (unless the
    /// account is disabled).
    pub async fn sign_out_everywhere(&self, user: &UserId) -> Result<u64, ApiError> {
        // Sessions first: a socket connecting meanwhile finds its session
        // gone (see `realtime::identify`), or joined the room in time to be
        // disconnected next.
        let ended = self.sessions.revoke_user(user).await.map_err(|err| {
            tracing::warn!(
                error = format!("{err:#}"),
                "could not end the account's sessions"
            );
            ApiError::Unavailable
        })?;
        if let Err(err) = self.chat.notifier.disconnect_user(user).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "could not disconnect the account's sockets everywhere"
            );
            return Err(ApiError::Unavailable);
        }
        tracing::info!(user = %user, sessions = ended, "signed out everywhere");
        Ok(ended)
    }
}
