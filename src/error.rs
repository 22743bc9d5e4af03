//! The one error type the edge speaks: a status, a sentence for people and a
//! stable code for programs. Inner errors convert into it; internal causes are
//! logged here, once, and never sent to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::ConversationId;
use crate::events::{ErrorEvent, ServerEvent};
use crate::llm::LlmError;
use crate::store::StoreError;

/// What a client is told went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input: the sentence says what and how to fix it.
    #[error("{0}")]
    Invalid(String),
    /// The session has no current conversation.
    #[error("{0}")]
    NoConversation(&'static str),
    #[error("Conversation not found.")]
    NotFound,
    /// No signed-in account where one is needed.
    #[error("Sign in to continue.")]
    Unauthenticated,
    /// A wrong email or password (one sentence for both, so the answer
    /// does not tell which emails have accounts).
    #[error("{0}")]
    InvalidCredentials(&'static str),
    #[error("Token not found.")]
    TokenNotFound,
    #[error("Preset not found.")]
    PresetNotFound,
    /// A model id the catalogue does not have (only a well-formed id is
    /// repeated in the sentence).
    #[error("{}", unknown_model_message(.0))]
    UnknownModel(String),
    #[error("Share link not found.")]
    ShareNotFound,
    #[error("User not found.")]
    UserNotFound,
    #[error("This account is disabled.")]
    Disabled,
    #[error("Sign-up is closed. Ask an administrator for an account.")]
    SignupClosed,
    /// `AUTH_MODE=none`: the account routes do not exist.
    #[error("Accounts are not enabled on this server.")]
    AccountsDisabled,
    /// No `local` in `AUTH_MODE`: no passwords (sign-up, sign-in, change).
    #[error("Signing in with a password is not enabled on this server.")]
    PasswordsDisabled,
    /// The request conflicts with what exists (an email already taken).
    #[error("{0}")]
    Conflict(&'static str),
    /// A state-changing request from another site (CSRF).
    #[error("Cross-site request refused.")]
    Forbidden,
    /// An account without administrator rights on an administrator's route.
    #[error("Only administrators may do this.")]
    NotAdmin,
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Busy(String),
    /// Over a rate limit; try again after this many seconds.
    #[error("Too many requests. Try again in {0} seconds.")]
    RateLimited(u64),
    /// The user's tokens for today (UTC) are used up.
    #[error(
        "You have used your {quota} tokens for today. The quota resets at {} UTC.",
        resets_at.format("%Y-%m-%d %H:%M")
    )]
    QuotaExceeded {
        quota: u64,
        resets_at: DateTime<Utc>,
    },
    #[error("The language model is unavailable right now. Please try again.")]
    LlmUnavailable,
    /// The model's stream ended without any text (or only whitespace): an
    /// upstream failure like the others (same code, so the page keeps the
    /// user's message, which is stored).
    #[error("The language model returned an empty reply. Please try again.")]
    LlmEmptyReply,
    #[error("The service is temporarily unavailable. Please try again.")]
    Unavailable,
    /// This instance is shutting down; another one (or this one, restarted)
    /// takes the message.
    #[error("The server is restarting. Please send your message again in a moment.")]
    Restarting,
    #[error("Something went wrong on our side. Please try again.")]
    Internal(#[source] anyhow::Error),
}

fn unknown_model_message(id: &str) -> String {
    if crate::config::models::valid_model_id(id) {
        format!("Unknown model \"{id}\": choose one of the models GET /get_config lists.")
    } else {
        "Unknown model: choose one of the models GET /get_config lists.".to_string()
    }
}

/// The JSON body of every error: `{"message", "error"}`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub message: String,
    pub error: &'static str,
    /// Seconds to wait, for `rate_limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// RFC 3339, for `quota_exceeded`: when the daily quota starts again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

impl ErrorBody {
    /// The socket `error` event carrying this body (and the conversation it
    /// is about, when there is one).
    pub fn event<'a>(&'a self, conversation: Option<&'a ConversationId>) -> ServerEvent<'a> {
        ServerEvent::Error(ErrorEvent {
            message: &self.message,
            error: self.error,
            retry_after: self.retry_after,
            resets_at: self.resets_at.as_deref(),
            conversation_id: conversation.map(AsRef::as_ref),
            reply_id: None,
        })
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_)
            | ApiError::NoConversation(_)
            | ApiError::Unsupported(_)
            | ApiError::UnknownModel(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound
            | ApiError::PresetNotFound
            | ApiError::AccountsDisabled
            | ApiError::PasswordsDisabled
            | ApiError::TokenNotFound
            | ApiError::ShareNotFound
            | ApiError::UserNotFound => StatusCode::NOT_FOUND,
            ApiError::Unauthenticated | ApiError::InvalidCredentials(_) => StatusCode::UNAUTHORIZED,
            ApiError::Disabled | ApiError::SignupClosed => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden | ApiError::NotAdmin => StatusCode::FORBIDDEN,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Busy(_) => StatusCode::CONFLICT,
            ApiError::RateLimited(_) | ApiError::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::LlmUnavailable | ApiError::LlmEmptyReply => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable | ApiError::Restarting => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) => "invalid",
            ApiError::NoConversation(_) => "no_conversation",
            ApiError::UnknownModel(_) => "unknown_model",
            ApiError::NotFound
            | ApiError::PresetNotFound
            | ApiError::AccountsDisabled
            | ApiError::PasswordsDisabled
            | ApiError::TokenNotFound
            | ApiError::ShareNotFound
            | ApiError::UserNotFound => "not_found",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::InvalidCredentials(_) => "invalid_credentials",
            ApiError::Disabled => "disabled",
            ApiError::SignupClosed => "signup_closed",
            ApiError::Conflict(_) => "conflict",
            ApiError::Forbidden | ApiError::NotAdmin => "forbidden",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Unsupported(_) => "unsupported",
            ApiError::Busy(_) => "busy",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::QuotaExceeded { .. } => "quota_exceeded",
            ApiError::LlmUnavailable | ApiError::LlmEmptyReply => "llm_unavailable",
            ApiError::Unavailable => "unavailable",
            ApiError::Restarting => "restarting",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The body sent to clients (HTTP responses and socket `error` events).
    /// Logs the internal cause once, so callers need not.
    pub fn body(&self) -> ErrorBody {
        if let ApiError::Internal(cause) = self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        ErrorBody {
            message: self.to_string(),
            error: self.code(),
            retry_after: match self {
                ApiError::RateLimited(seconds) => Some(*seconds),
                _ => None,
            },
            resets_at: match self {
                ApiError::QuotaExceeded { resets_at, .. } => {
                    Some(resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                }
                _ => None,
            },
        }
    }

    pub fn invalid(why: impl Into<String>) -> Self {
        ApiError::Invalid(why.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        let retry_after = match self {
            ApiError::RateLimited(seconds) => Some(seconds),
            ApiError::QuotaExceeded { resets_at, .. } => {
                Some((resets_at - Utc::now()).num_seconds().max(1) as u64)
            }
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::NoSuchBranch => {
                ApiError::invalid("There is no such message or branch in this conversation.")
            }
            StoreError::TooLarge(why) => ApiError::TooLarge(why),
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "store unavailable");
                ApiError::Unavailable
            }
            StoreError::Backend(cause) => ApiError::Internal(cause),
        }
    }
}

impl From<LlmError> for ApiError {
    fn from(err: LlmError) -> Self {
        tracing::warn!(error = %err, "language model request failed");
        ApiError::LlmUnavailable
    }
}

impl From<tower_sessions::session::Error> for ApiError {
    fn from(err: tower_sessions::session::Error) -> Self {
        match err {
            // The session store (SQLite, MongoDB or Redis) cannot be reached:
            // retryable, like any store outage.
            tower_sessions::session::Error::Store(cause) => {
                tracing::warn!(error = %cause, "session store unavailable");
                ApiError::Unavailable
            }
            other => ApiError::Internal(anyhow::anyhow!("session: {other}")),
        }
    }
}
