//! `POST /upload_file`: a text file is checked (name, extension, size while
//! it streams in, UTF-8), cut into token-sized chunks, and each chunk is
//! analysed by the LLM, a few at once, with `upload_progress` events to the
//! user's sockets.

use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::StreamExt;

use super::bodies::UploadAnalysed;
use super::extract::SessionUser;
use crate::context::chunk_text;
use crate::domain::{ChatMessage, Role};
use crate::error::ApiError;
use crate::events::{ServerEvent, UploadProgress};
use crate::files::{clean_file_name, decode_text, extension_allowed};
use crate::llm::ChatRequest;
use crate::metrics::Metrics;
use crate::ratelimit::{Bucket, Limit};
use crate::state::AppState;

/// What a chunk gets when its analysis failed after retries (the original's
/// text).
pub const ANALYSIS_FAILED: &str =
    "Unable to process your request at this time. Please try again later.";

pub fn router(max_file_bytes: u64) -> Router<AppState> {
    // Leave room for multipart framing; the exact limit is checked below
    // while the file streams in.
    let limit = (max_file_bytes + 64 * 1024).min(usize::MAX as u64) as usize;
    Router::new()
        .route("/upload_file", post(upload_file))
        .layer(DefaultBodyLimit::max(limit))
}

fn multipart_error(err: axum::extract::multipart::MultipartError, max_mb: f64) -> ApiError {
    if err.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!("File too large. Max size is {max_mb} MB."))
    } else {
        ApiError::invalid("The upload is not a valid multipart form.")
    }
}

async fn upload_file(
    State(state): State<AppState>,
    who: SessionUser,
    mut multipart: Multipart,
) -> Result<Json<UploadAnalysed>, ApiError> {
    let settings = &state.chat.settings;
    let limit = Limit {
        count: settings.rate_limit_uploads_per_hour,
        window: std::time::Duration::from_secs(3600),
    };
    state
        .limiter
        .check(Bucket::Uploads, who.user.as_ref(), limit)
        .await
        .map_err(ApiError::RateLimited)?;
    // Before the file is read: over quota, nothing is analysed or stored.
    state.chat.check_quota(&who.user, !who.anonymous).await?;
    // A new cookie is a new user: anonymous uploads are limited per client
    // address too.
    if let (true, Some(client)) = (who.anonymous, who.client) {
        let per_address = Limit {
            count: settings.rate_limit_uploads_per_ip_per_hour,
            window: std::time::Duration::from_secs(3600),
        };
        state
            .limiter
            .check(Bucket::AddressUploads, &client.to_string(), per_address)
            .await
            .map_err(ApiError::RateLimited)?;
    }
    let max_mb = settings.max_file_size_mb;
    let too_large = || ApiError::TooLarge(format!("File too large. Max size is {max_mb} MB."));
    let mut upload = None;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, max_mb))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let Some(name) = field.file_name().and_then(clean_file_name) else {
            return Err(ApiError::invalid("No file selected."));
        };
        if !extension_allowed(&name, &settings.allowed_extensions) {
            return Err(ApiError::Unsupported("Unsupported file type.".into()));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| multipart_error(e, max_mb))?
        {
            if (bytes.len() + chunk.len()) as u64 > settings.max_file_size_bytes {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        upload = Some((name, bytes));
        break;
    }
    let Some((name, bytes)) = upload else {
        return Err(ApiError::invalid("No file selected."));
    };
    let text =
        decode_text(bytes).ok_or_else(|| ApiError::invalid("The file is not valid UTF-8 text."))?;

    let tokens = state.chat.tokens;
    let chunk_size = settings.chunk_size_tokens;
    let chunks = tokio::task::spawn_blocking(move || chunk_text(&tokens, &text, chunk_size))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let total = chunks.len();
    state
        .chat
        .notifier
        .to_user(
            &who.user,
            ServerEvent::UploadProgress(UploadProgress { done: 0, total }),
        )
        .await;

    let mut analyses: Vec<Option<String>> = vec![None; total];
    let mut done = 0;
    let mut pending = futures_util::stream::iter(chunks.into_iter().enumerate())
        .map(|(index, chunk)| {
            let (chat, user) = (&state.chat, &who.user);
            async move {
                let request = ChatRequest {
                    messages: vec![ChatMessage::new(
                        Role::User,
                        format!("Please analyze the following text:\n{chunk}"),
                    )]
                    .into(),
                    max_tokens: 500,
                    temperature: None,
                };
                (index, chat.complete_metered(user, request).await)
            }
        })
        .buffer_unordered(settings.upload_concurrency);
    while let Some((index, result)) = pending.next().await {
        analyses[index] = Some(match result {
            Ok(text) => text,
            Err(err) => {
                tracing::warn!(error = %err, chunk = index + 1, "chunk analysis failed");
                ANALYSIS_FAILED.to_string()
            }
        });
        done += 1;
        Metrics::inc(&state.chat.metrics.upload_chunks);
        state
            .chat
            .notifier
            .to_user(
                &who.user,
                ServerEvent::UploadProgress(UploadProgress { done, total }),
            )
            .await;
    }

    let mut analysis = String::new();
    for (i, text) in analyses.into_iter().enumerate() {
        analysis.push_str(&format!(
            "\n-- Analysis for Chunk {} --\n{}",
            i + 1,
            text.unwrap_or_default()
        ));
    }
    tracing::info!(file = %name, chunks = total, "file uploaded and analysed");
    Ok(Json(UploadAnalysed {
        message: "File was uploaded and analyzed successfully.",
        analysis,
        chunks: total,
        file_name: name,
    }))
}
