//! Share links: the owner of a conversation makes a read-only link to it
//! as it is now (a snapshot copied into the share), lists and revokes its
//! links; anyone holding a link reads the snapshot, without signing in.
//!
//! The owner's routes (`/api/shares`) act as the session's user in every
//! `AUTH_MODE` (an access token's owner too). The public ones
//! (`/share/{token}`, `/api/share/{token}`) never read the session, so they
//! neither need nor set a cookie, and answer nothing about the owner.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;

use super::bodies::{Done, NewShareLink, ShareList, ShareView, SharedView};
use super::extract::{ApiJson, SessionUser};
use crate::auth::{is_share_token, new_share_token, token_hash};
use crate::domain::ConversationId;
use crate::error::ApiError;
use crate::events::{Field, Inbound};
use crate::state::AppState;
use crate::store::rfc3339;
use crate::store::shares::{NewShare, Share, SharedConversation};
use crate::store::StoreError;

/// Share links one user may hold.
pub const MAX_SHARES_PER_USER: u32 = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/shares", get(list_shares).post(create_share))
        .route("/api/shares/{id}", delete(delete_share))
        .route("/api/share/{token}", get(shared_json))
        .route("/share/{token}", get(shared_page))
}

/// `{conversation_id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ShareRequest {
    conversation_id: Field<String>,
}

fn view(share: &Share) -> ShareView {
    ShareView {
        id: share.id.clone(),
        conversation_id: share.conversation_id.to_string(),
        title: share.title.clone(),
        message_count: share.message_count,
        created_at: rfc3339::format(&share.created_at),
    }
}

/// `POST /api/shares {conversation_id}` → 201 `{id, url, conversation_id,
/// title, message_count, created_at}`.
async fn create_share(
    State(state): State<AppState>,
    who: SessionUser,
    ApiJson(Inbound(body)): ApiJson<Inbound<ShareRequest>>,
) -> Result<(StatusCode, Json<NewShareLink>), ApiError> {
    let id = body
        .conversation_id
        .given()
        .and_then(|raw| ConversationId::parse(raw).ok())
        .ok_or_else(|| ApiError::invalid("Invalid conversation id."))?;
    let conversation = state.chat.store.load(&who.user, &id).await?;
    if conversation.messages.is_empty() {
        return Err(ApiError::invalid(
            "This conversation has no messages to share yet.",
        ));
    }
    let token = new_share_token();
    let new = NewShare {
        id: uuid::Uuid::new_v4().to_string(),
        token_hash: token_hash(&token),
        conversation_id: id.clone(),
        title: conversation.meta.title.clone(),
        messages: conversation.history(),
    };
    let Some(share) = state
        .shares
        .create_share(&who.user, new, MAX_SHARES_PER_USER)
        .await?
    else {
        return Err(ApiError::Conflict(
            "You have the most share links allowed (50). Revoke one first.",
        ));
    };
    // A delete of the conversation that ran meanwhile (between the load and
    // the insert) removed its links before this one was there: checking
    // after the insert takes this one back too. (The delete removes the
    // conversation first, then its links.)
    match state.chat.store.meta(&who.user, &id).await {
        Ok(_) => {}
        Err(StoreError::NotFound) => {
            state.shares.delete_share(&who.user, &share.id).await?;
            return Err(ApiError::NotFound);
        }
        Err(other) => return Err(other.into()),
    }
    tracing::info!(conversation = %id, share = %share.id, "share link created");
    Ok((
        StatusCode::CREATED,
        Json(NewShareLink {
            share: view(&share),
            url: format!("/share/{token}"),
        }),
    ))
}

/// `GET /api/shares` → `{shares: [..]}`, newest first.
async fn list_shares(
    State(state): State<AppState>,
    who: SessionUser,
) -> Result<Json<ShareList>, ApiError> {
    let shares = state.shares.shares(&who.user).await?;
    Ok(Json(ShareList {
        shares: shares.iter().map(view).collect(),
    }))
}

/// `DELETE /api/shares/{id}`: the link answers 404 from now on.
async fn delete_share(
    State(state): State<AppState>,
    who: SessionUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Done>, ApiError> {
    let Ok(Path(raw)) = path else {
        return Err(ApiError::invalid("Invalid share id."));
    };
    let id = uuid::Uuid::parse_str(raw.trim())
        .map_err(|_| ApiError::invalid("Invalid share id."))?
        .hyphenated()
        .to_string();
    if !state.shares.delete_share(&who.user, &id).await? {
        return Err(ApiError::ShareNotFound);
    }
    tracing::info!(share = %id, "share link revoked");
    Ok(Json(Done {
        message: "Share link revoked.",
    }))
}

/// The snapshot a link names, if it is there and its owner's account (if
/// any) is not disabled. A malformed token is never looked up.
async fn find_shared(state: &AppState, token: &str) -> Result<SharedConversation, ApiError> {
    if !is_share_token(token) {
        return Err(ApiError::ShareNotFound);
    }
    let Some(shared) = state.shares.shared(&token_hash(token)).await? else {
        return Err(ApiError::ShareNotFound);
    };
    if state.chat.settings.auth.accounts() {
        if let Some(account) = state.accounts.account(&shared.owner).await? {
            if account.disabled {
                return Err(ApiError::ShareNotFound);
            }
        }
    }
    Ok(shared)
}

/// What every public answer carries: never cached (a revoked link must stop
/// working at once), never indexed, and no referrer (the URL is the key).
fn public(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "x-robots-tag",
        HeaderValue::from_static("noindex, nofollow"),
    );
    response
}

/// `GET /api/share/{token}` → `{title, messages: [{role, content}],
/// created_at}`; 404 `not_found` "Share link not found." for an unknown
/// or revoked link.
async fn shared_json(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let token = path.map(|Path(token)| token).unwrap_or_default();
    public(match find_shared(&state, &token).await {
        Ok(shared) => Json(SharedView {
            title: shared.title,
            messages: shared.messages,
            created_at: rfc3339::format(&shared.created_at),
        })
        .into_response(),
        Err(err) => err.into_response(),
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "share.html")]
struct SharePage {
    found: bool,
    asset_version: String,
}

/// `GET /share/{token}`: the page showing a snapshot (its script reads
/// `/api/share/{token}`), or a not-found page (404) for an unknown or
/// revoked link.
async fn shared_page(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let token = path.map(|Path(token)| token).unwrap_or_default();
    let (status, found) = match find_shared(&state, &token).await {
        Ok(_) => (StatusCode::OK, true),
        Err(ApiError::ShareNotFound) => (StatusCode::NOT_FOUND, false),
        Err(err) => return public(err.into_response()),
    };
    let page = SharePage {
        found,
        asset_version: state.asset_version.to_string(),
    };
    public((status, page).into_response())
}
