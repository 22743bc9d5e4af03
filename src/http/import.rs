//! `POST /import/chatgpt`: a ChatGPT data export (`conversations.json`) as
//! the request body, into the session user's conversations (see
//! [`crate::import`]). The whole file is checked before anything is stored;
//! if storing fails midway, what this import stored is deleted again.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;

use super::extract::SessionUser;
use crate::domain::{ChatMessage, ConversationId, UserId};
use crate::error::ApiError;
use crate::import;
use crate::notify::conversation_updated;
use crate::state::AppState;
use crate::store::{Conversation, ConversationMeta, ConversationSettings, StoredMessage};

pub fn router(max_bytes: u64) -> Router<AppState> {
    Router::new()
        .route("/import/chatgpt", post(import_chatgpt))
        .layer(DefaultBodyLimit::max(
            max_bytes.min(usize::MAX as u64) as usize
        ))
}

#[derive(Debug, Serialize)]
struct ImportedOne {
    conversation_id: ConversationId,
    title: Option<String>,
    messages: u64,
}

#[derive(Debug, Serialize)]
struct ImportDone {
    imported: u64,
    skipped: u64,
    conversations: Vec<ImportedOne>,
}

async fn import_chatgpt(
    State(state): State<AppState>,
    mut who: SessionUser,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ImportDone>, ApiError> {
    let settings = &state.chat.settings;
    let body = body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "The export is too large: at most {} bytes can be imported at once.",
                settings.import_max_bytes
            ))
        } else {
            ApiError::invalid("The export could not be read.")
        }
    })?;
    // Up to IMPORT_MAX_BYTES of JSON: parsed on a blocking thread, so the
    // runtime's workers keep serving sockets meanwhile.
    let limits = settings.conversation_limits;
    let parsed = tokio::task::spawn_blocking(move || import::parse(&body, &limits))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the import parse failed: {e}")))?
        .map_err(ApiError::invalid)?;
    // The conversations go to the session's user: a session that has none
    // stored yet (a first request without a cookie) is kept now, counted as a
    // new anonymous session, so what is imported stays reachable.
    who.keep(&state).await?;
    // On a task of its own: a client that goes away while the conversations
    // are stored (its request future dropped) does not stop the import
    // halfway, before the undo below could run.
    let (stored, skipped) = tokio::spawn(store_all(state.clone(), who.user.clone(), parsed))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the import task failed: {e}")))??;
    tracing::info!(imported = stored.len(), skipped, "ChatGPT export imported");
    Ok(Json(ImportDone {
        imported: stored.len() as u64,
        skipped,
        conversations: stored
            .into_iter()
            .map(|(conversation_id, meta)| ImportedOne {
                conversation_id,
                title: meta.title,
                messages: meta.message_count,
            })
            .collect(),
    }))
}

/// Stores the parsed conversations for `user`: those stored and the number
/// skipped (already there). On a store error, what this import stored is
/// deleted again. Each stored one is announced to the user's sockets.
async fn store_all(
    state: AppState,
    user: UserId,
    parsed: Vec<import::Imported>,
) -> Result<(Vec<(ConversationId, ConversationMeta)>, u64), ApiError> {
    let store = &state.chat.store;
    let mut stored: Vec<(ConversationId, ConversationMeta)> = Vec::new();
    let mut skipped = 0u64;
    for one in parsed {
        let id = import::conversation_id(&user, &one.source_id);
        let meta = ConversationMeta {
            conversation_id: id.clone(),
            created_at: one.created_at,
            updated_at: one.updated_at,
            title: one.title,
            message_count: one.history.len() as u64,
        };
        let conversation = Conversation {
            meta: meta.clone(),
            messages: Arc::new(
                one.history
                    .into_iter()
                    .map(|m| StoredMessage {
                        message: ChatMessage::new(m.role, m.content),
                        tokens: None,
                    })
                    .collect(),
            ),
            summary: None,
            settings: ConversationSettings::default(),
        };
        match store.import_branched(&user, &conversation, &one.pool).await {
            Ok(true) => stored.push((id, meta)),
            Ok(false) => skipped += 1,
            Err(err) => {
                // Nothing half-imported: take back what this import stored.
                for (id, _) in &stored {
                    if let Err(e) = store.delete(&user, id).await {
                        tracing::warn!(conversation = %id, error = %e, "could not undo an import");
                    }
                }
                return Err(err.into());
            }
        }
    }
    for (_, meta) in &stored {
        state
            .chat
            .notifier
            .to_user(&user, conversation_updated(meta))
            .await;
    }
    Ok((stored, skipped))
}
