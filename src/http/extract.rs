//! Extractors shared by the routes: the session's user, the client's
//! address, and JSON bodies whose rejections speak the app's error shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tower_sessions::Session;

use crate::auth::bearer_token;
use crate::domain::{ConversationId, UserId};
use crate::error::ApiError;
use crate::sessions;
use crate::state::AppState;

/// The request's session (the session layer puts it there).
async fn session_of(parts: &mut Parts, state: &AppState) -> Result<Session, ApiError> {
    Session::from_request_parts(parts, state)
        .await
        .map_err(|(_, why)| ApiError::Internal(anyhow::anyhow!("session layer missing: {why}")))
}

/// The session of the request and its user: the signed-in account, or
/// (where anonymous use is allowed) the browser's own anonymous user, given
/// on first contact. Without either: 401 `unauthenticated`.
pub struct SessionUser {
    pub user: UserId,
    pub session: Session,
}

impl FromRequestParts<AppState> for SessionUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let session = session_of(parts, state).await?;
        let user = if let Some(token) = bearer_token(&parts.headers) {
            state.token_user(token).await?
        } else if let Some(user) = state
            .proxied_user(peer_of(parts)?, &parts.headers, Some(&session))
            .await?
        {
            user
        } else if state.chat.settings.auth.allow_anonymous {
            sessions::ensure_user(&session).await?
        } else {
            sessions::signed_in(&session)
                .await?
                .ok_or(ApiError::Unauthenticated)?
        };
        Ok(Self { user, session })
    }
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
        if let Some(user) = state
            .proxied_user(peer_of(parts)?, &parts.headers, Some(&session))
            .await?
        {
            return Ok(Self(user));
        }
        sessions::signed_in(&session)
            .await?
            .map(Self)
            .ok_or(ApiError::Unauthenticated)
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
        let peer = peer_of(parts)?;
        let auth = &state.chat.settings.auth;
        if !auth.trusts(peer) {
            return Ok(Self(peer));
        }
        // Walk back from the nearest hop: the first address no trusted
        // proxy owns is the client (anything before it is the client's say).
        let forwarded: Vec<std::net::IpAddr> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        let client = forwarded
            .iter()
            .rev()
            .find(|hop| !auth.trusts(**hop))
            .or(forwarded.first())
            .copied()
            .unwrap_or(peer);
        Ok(Self(client))
    }
}

/// The TCP peer's address.
fn peer_of(parts: &Parts) -> Result<std::net::IpAddr, ApiError> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no peer address")))
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
                JsonRejection::BytesRejection(_) => {
                    ApiError::TooLarge("The request body is too large.".to_string())
                }
                _ => ApiError::invalid("The request body could not be read."),
            }),
        }
    }
}
