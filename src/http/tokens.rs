//! Personal access tokens (`AUTH_MODE=local`): a person makes one for a
//! script (`Authorization: Bearer <token>` on any route and on the Socket.IO
//! handshake), lists and deletes them. The token is shown once, when made;
//! only its SHA-256 is stored.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;

use super::bodies::{Done, NewToken, TokenList, TokenView};
use super::extract::{AccountUser, ApiJson};
use crate::auth::{new_token, token_hash};
use crate::error::ApiError;
use crate::events::{Field, Inbound};
use crate::state::AppState;
use crate::store::tokens::AccessToken;

/// Tokens one person may hold.
pub const MAX_TOKENS_PER_USER: u32 = 20;
const MAX_NAME_CHARS: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/tokens", get(list_tokens).post(create_token))
        .route("/api/tokens/{id}", delete(delete_token))
}

/// `{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TokenRequest {
    name: Field<String>,
}

fn view(token: &AccessToken) -> TokenView {
    TokenView {
        id: token.id.clone(),
        name: token.name.clone(),
        created_at: crate::store::rfc3339::format(&token.created_at),
    }
}

/// `POST /api/tokens {name}` → 201 `{id, name, created_at, token}`.
async fn create_token(
    State(state): State<AppState>,
    AccountUser(user): AccountUser,
    ApiJson(Inbound(body)): ApiJson<Inbound<TokenRequest>>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    state.require_accounts()?;
    let name = body.name.given().map(|n| n.trim()).unwrap_or_default();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(format!(
            "Give the token a name of 1 to {MAX_NAME_CHARS} characters."
        )));
    }
    let token = new_token();
    let id = uuid::Uuid::new_v4().to_string();
    let Some(stored) = state
        .access_tokens
        .create_token(&user, &id, name, &token_hash(&token), MAX_TOKENS_PER_USER)
        .await?
    else {
        return Err(ApiError::Conflict(
            "You have the most tokens allowed (20). Delete one first.",
        ));
    };
    tracing::info!(user = %user, token = %stored.id, "access token created");
    let view = view(&stored);
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            id: view.id,
            name: view.name,
            created_at: view.created_at,
            token,
        }),
    ))
}

/// `GET /api/tokens` → `{tokens: [{id, name, created_at}]}`, newest first.
async fn list_tokens(
    State(state): State<AppState>,
    AccountUser(user): AccountUser,
) -> Result<Json<TokenList>, ApiError> {
    state.require_accounts()?;
    let tokens = state.access_tokens.tokens(&user).await?;
    Ok(Json(TokenList {
        tokens: tokens.iter().map(view).collect(),
    }))
}

/// `DELETE /api/tokens/{id}`: the token stops working at once.
async fn delete_token(
    State(state): State<AppState>,
    AccountUser(user): AccountUser,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Done>, ApiError> {
    state.require_accounts()?;
    let Ok(Path(raw)) = path else {
        return Err(ApiError::invalid("Invalid token id."));
    };
    let id = uuid::Uuid::parse_str(raw.trim())
        .map_err(|_| ApiError::invalid("Invalid token id."))?
        .hyphenated()
        .to_string();
    if !state.access_tokens.delete_token(&user, &id).await? {
        return Err(ApiError::TokenNotFound);
    }
    tracing::info!(user = %user, token = %id, "access token deleted");
    Ok(Json(Done {
        message: "Token deleted.",
    }))
}
