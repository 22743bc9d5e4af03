//! Shared application state, cheap to clone: handed to the HTTP router and
//! to the Socket.IO handlers alike, so both act on one world.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::http::HeaderMap;
use tower_sessions::Session;

use crate::auth::{display_name, normalise_email, token_hash};
use crate::domain::UserId;
use crate::error::ApiError;
use crate::oidc::Providers;
use crate::ratelimit::RateLimiter;
use crate::sessions::{self, Sessions};
use crate::store::accounts::{Account, AccountStore, ActiveAccounts, External, ExternalIdentity};
use crate::store::shares::ShareStore;
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
    /// Users' presets (name, model, system prompt, temperature).
    pub presets: Arc<dyn crate::store::presets::PresetStore>,
    /// Share links: read-only snapshots of conversations.
    pub shares: Arc<dyn ShareStore>,
    /// Which accounts may act now (not disabled), remembered briefly.
    pub active_accounts: Arc<ActiveAccounts>,
    /// The session store the session layer uses, for ending all of an
    /// account's sessions at once.
    pub sessions: Sessions,
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

    /// 404 `not_found` unless `AUTH_MODE` has `local` (email and password
    /// accounts): sign-up, sign-in and passwords.
    pub fn require_local(&self) -> Result<(), ApiError> {
        self.require_accounts()?;
        if self.chat.settings.auth.local() {
            Ok(())
        } else {
            Err(ApiError::PasswordsDisabled)
        }
    }

    /// The account of `user` unless it is gone or disabled (then 401).
    pub async fn active_account(&self, user: &UserId) -> Result<Account, ApiError> {
        match self.accounts.account(user).await? {
            Some(account) if !account.disabled => Ok(account),
            _ => Err(ApiError::Unauthenticated),
        }
    }

    /// Signs `account` in on `session` (by `method`: `local`, `oidc`,
    /// `proxy`) under a new session id, and moves the browser's anonymous
    /// conversations to it.
    pub async fn sign_in(
        &self,
        session: &Session,
        account: &Account,
        method: &'static str,
    ) -> Result<(), ApiError> {
        if let Some(anonymous) = sessions::sign_in(session, &account.user_id, method).await? {
            let moved = self
                .accounts
                .transfer_conversations(&anonymous, &account.user_id)
                .await?;
            // The conversation cache must not serve them under the old id.
            self.chat.store.forget_user(&anonymous);
            // Their share links go with them, so the account lists them.
            self.shares
                .transfer_shares(&anonymous, &account.user_id)
                .await?;
            if moved > 0 {
                tracing::info!(moved, "anonymous conversations moved to the account");
            }
        }
        Ok(())
    }

    /// `AUTH_MODE=proxy`: the account named by the identity header of a
    /// trusted proxy (`TRUSTED_PROXIES`), created on its first visit.
    /// `None` in other modes, without the header, or when the header comes
    /// from a peer that is not trusted (then it is ignored, and logged).
    /// With a `session`, the session is signed in to the account and
    /// remembers the email, so the next request costs no store lookup.
    pub async fn proxied_user(
        &self,
        peer: std::net::IpAddr,
        headers: &HeaderMap,
        session: Option<&Session>,
    ) -> Result<Option<UserId>, ApiError> {
        let auth = &self.chat.settings.auth;
        let Some(proxy) = &auth.proxy else {
            return Ok(None);
        };
        let Some(value) = headers.get(&proxy.header) else {
            return Ok(None);
        };
        if !auth.trusts(peer) {
            tracing::warn!(%peer, header = %proxy.header, "identity header from a peer outside TRUSTED_PROXIES ignored");
            return Ok(None);
        }
        let email = value
            .to_str()
            .ok()
            .and_then(|raw| normalise_email(raw).ok())
            .ok_or_else(|| {
                tracing::warn!(header = %proxy.header, "the proxy's identity header is not an email address");
                ApiError::Unauthenticated
            })?;
        if let Some(session) = session {
            if sessions::proxied_email(session).await?.as_deref() == Some(email.as_str()) {
                if let Some(user) = sessions::signed_in(session).await? {
                    self.require_active(&user).await?;
                    return Ok(Some(user));
                }
            }
        }
        let identity = ExternalIdentity {
            provider: "proxy".to_string(),
            subject: email.clone(),
            name: display_name(None, &email)?,
            email: email.clone(),
            email_verified: true,
        };
        let External::Account(account) = self.accounts.external_account(identity, None).await?
        else {
            return Err(ApiError::Unauthenticated);
        };
        if account.disabled {
            return Err(ApiError::Disabled);
        }
        if let Some(session) = session {
            self.sign_in(session, &account, "proxy").await?;
            sessions::set_proxied_email(session, &email).await?;
        }
        Ok(Some(account.user_id))
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
