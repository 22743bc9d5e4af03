//! Extractors shared by the routes: the session's user, the account, the
//! administrator, the client's address, and JSON bodies whose rejections
//! speak the app's error shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tower_sessions::Session;

use crate::auth::bearer_token;
use crate::domain::{ConversationId, UserId};
use crate::error::ApiError;
use crate::ratelimit::{Bucket, Limit};
use crate::sessions;
use crate::state::AppState;
use crate::store::accounts::Account;

/// The request's session (the session layer puts it there).
async fn session_of(parts: &mut Parts, state: &AppState) -> Result<Session, ApiError> {
    Session::from_request_parts(parts, state)
        .await
        .map_err(|(_, why)| ApiError::Internal(anyhow::anyhow!("session layer missing: {why}")))
}

/// The session of the request and its user: the bearer of an access
/// token, the signed-in account, or (where anonymous use is allowed) the
/// browser's own anonymous user. Without either: 401 `unauthenticated`.
///
/// Reading stores nothing: a request without a session is a user with
/// nothing. A route that is about to give the session data first calls
/// [`SessionUser::keep`], which stores a new anonymous session (counted
/// against the per-address limit) and settles its user.
pub struct SessionUser {
    pub user: UserId,
    pub session: Session,
    /// Neither a token nor a signed-in account: the per-address limits apply.
    pub anonymous: bool,
    /// The client's address (`ClientAddress`), when the peer is known.
    pub client: Option<std::net::IpAddr>,
    /// The anonymous user is not stored yet: `None` when it is (or is no
    /// anonymous user); `Some(true)` for a session with no user at all.
    unsaved: Option<bool>,
}

impl SessionUser {
    /// Before the session is given data: a new anonymous session is
    /// counted against `RATE_LIMIT_NEW_SESSIONS_PER_IP_PER_HOUR` (429
    /// `rate_limited` over it) and given its user, so the response stores it.
    pub async fn keep(&mut self, state: &AppState) -> Result<(), ApiError> {
        let Some(without_user) = self.unsaved else {
            return Ok(());
        };
        if let Some(client) = self.client {
            let limit = Limit {
                count: state.chat.settings.rate_limit_new_sessions_per_ip_per_hour,
                window: std::time::Duration::from_secs(3600),
            };
            state
                .limiter
                .check(Bucket::NewSessions, &client.to_string(), limit)
                .await
                .map_err(ApiError::RateLimited)?;
        }
        if without_user {
            sessions::adopt(&self.session, &self.user).await?;
        }
        // A pending session is stored once it gets its data.
        self.unsaved = None;
        Ok(())
    }
}

impl FromRequestParts<AppState> for SessionUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let session = session_of(parts, state).await?;
        let client = peer_of(parts).map(|peer| {
            state
                .chat
                .settings
                .auth
                .client_address(peer, &parts.headers)
        });
        let proxied = match peer_of(parts) {
            Some(peer) => {
                state
                    .proxied_user(peer, &parts.headers, Some(&session))
                    .await?
            }
            None => None,
        };
        let (user, anonymous, unsaved) = if let Some(token) = bearer_token(&parts.headers) {
            (state.token_user(token).await?, false, None)
        } else if let Some(user) = proxied {
            (user, false, None)
        } else if let Some(user) = signed_in_account(state, &session).await? {
            (user, false, None)
        } else if state.chat.settings.auth.allow_anonymous {
            match sessions::existing_user(&session).await? {
                Some(user) if sessions::is_pending(&session).await? => (user, true, Some(false)),
                Some(user) => (user, true, None),
                None => (UserId::new(), true, Some(true)),
            }
        } else {
            return Err(ApiError::Unauthenticated);
        };
        Ok(Self {
            user,
            session,
            anonymous,
            client,
            unsaved,
        })
    }
}

/// The TCP peer of the request (axum's `ConnectInfo`).
fn peer_of(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

/// The account the session is signed in to, if any. An account that is
/// gone or disabled ends the session here and answers 401, even if its
/// session survived being ended (a second line of defence: disabling an
/// account ends its sessions). Without accounts (`AUTH_MODE=none`) no
/// session is signed in.
async fn signed_in_account(
    state: &AppState,
    session: &Session,
) -> Result<Option<UserId>, ApiError> {
    if !state.chat.settings.auth.accounts() {
        return Ok(None);
    }
    let Some(user) = sessions::signed_in(session).await? else {
        return Ok(None);
    };
    if let Err(refused) = state.require_active(&user).await {
        tracing::info!(user = %user, "session of a disabled account ended");
        sessions::sign_out(session).await?;
        return Err(refused);
    }
    Ok(Some(user))
}

/// A person with an account: the bearer of one of its access tokens, or a
/// session signed in to it. Otherwise 401 `unauthenticated`.
pub struct AccountUser(pub UserId);

impl FromRequestParts<AppState> for AccountUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(token) = bearer_token(&parts.headers) {
            return state.token_user(token).await.map(Self);
        }
        let session = session_of(parts, state).await?;
        if let Some(peer) = peer_of(parts) {
            if let Some(user) = state
                .proxied_user(peer, &parts.headers, Some(&session))
                .await?
            {
                return Ok(Self(user));
            }
        }
        signed_in_account(state, &session)
            .await?
            .map(Self)
            .ok_or(ApiError::Unauthenticated)
    }
}

/// An administrator: a person with an account (as [`AccountUser`]) that
/// has administrator rights, as the store says now (not a remembered
/// answer). Without accounts on the server: 404 as every account route;
/// without an account: 401; an account that is not an administrator: 403
/// `forbidden`.
pub struct AdminUser(pub Account);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state.require_accounts()?;
        let AccountUser(user) = AccountUser::from_request_parts(parts, state).await?;
        match state.accounts.account(&user).await? {
            Some(account) if account.disabled => Err(ApiError::Unauthenticated),
            Some(account) if account.is_admin => Ok(Self(account)),
            Some(_) => Err(ApiError::NotAdmin),
            None => Err(ApiError::Unauthenticated),
        }
    }
}

/// The client's address: the TCP peer, or the last address a trusted
/// proxy (`TRUSTED_PROXIES`) added to `X-Forwarded-For`.
pub struct ClientAddress(pub std::net::IpAddr);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer =
            peer_of(parts).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no peer address")))?;
        Ok(Self(
            state
                .chat
                .settings
                .auth
                .client_address(peer, &parts.headers),
        ))
    }
}

/// A conversation id from the path, validated; a malformed one (not a UUID,
/// not UTF-8) gets the app's 400 JSON rather than axum's plain text.
pub struct IdPath(pub ConversationId);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let invalid = || ApiError::invalid("Invalid conversation id.");
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| invalid())?;
        ConversationId::parse(&raw)
            .map(IdPath)
            .map_err(|_| invalid())
    }
}

/// `axum::Json` with a 400 `{"message", "error"}` rejection.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => {
                    ApiError::invalid("Send a JSON body with Content-Type: application/json.")
                }
                JsonRejection::JsonSyntaxError(_) => {
                    ApiError::invalid("The request body is not valid JSON.")
                }
                JsonRejection::JsonDataError(err) => ApiError::invalid(format!(
                    "The JSON body has the wrong shape: {}",
                    err.body_text()
                )),
                JsonRejection::BytesRejection(rejection)
                    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
                {
                    ApiError::TooLarge("The request body is too large.".to_string())
                }
                _ => ApiError::invalid("The request body could not be read."),
            }),
        }
    }
}
