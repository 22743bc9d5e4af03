//! Shared application state, cheap to clone: handed to the HTTP router and
//! to the Socket.IO handlers alike, so both act on one world.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::auth::token_hash;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::oidc::Providers;
use crate::ratelimit::RateLimiter;
use crate::store::accounts::AccountStore;
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
    /// Single sign-on providers, discovered at start (`AUTH_MODE` with `oidc`).
    pub oidc: Option<Arc<Providers>>,
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
        match self.accounts.account(&user).await? {
            Some(account) if !account.disabled => Ok(user),
            _ => Err(ApiError::Unauthenticated),
        }
    }
}
