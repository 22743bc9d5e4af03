//! Extractors shared by the routes: the session's user, and JSON bodies whose
//! rejections speak the app's error shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tower_sessions::Session;

use crate::domain::{ConversationId, UserId};
use crate::error::ApiError;
use crate::sessions;

/// The session of the request and its user (given one on first contact).
pub struct SessionUser {
    pub user: UserId,
    pub session: Session,
}

impl<S: Send + Sync> FromRequestParts<S> for SessionUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, state)
            .await
            .map_err(|(_, why)| {
                ApiError::Internal(anyhow::anyhow!("session layer missing: {why}"))
            })?;
        let user = sessions::ensure_user(&session).await?;
        Ok(Self { user, session })
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
                JsonRejection::BytesRejection(_) => {
                    ApiError::TooLarge("The request body is too large.".to_string())
                }
                _ => ApiError::invalid("The request body could not be read."),
            }),
        }
    }
}
