//! Conversation routes: start, reset, list, load, delete, save, search and
//! few-shot examples. Every one is scoped to the session's user.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;

use super::bodies::{
    ConversationBranches, ConversationList, ConversationStarted, Done, HistorySaved,
    LoadedConversation, SavedConversation, SearchResults, SettingsChanged,
};
use super::extract::{ApiJson, IdPath, SessionUser};
use super::presets::{self, SettingsFields};
use crate::domain::{conversation_text, ConversationId, Role};
use crate::error::ApiError;
use crate::events::{Field, Inbound, SettingsShown};
use crate::notify::{conversation_updated, settings_changed};
use crate::ratelimit::{Bucket, Limit};
use crate::sessions;
use crate::state::AppState;
use crate::store::{rfc3339, ConversationSettings, NewMessage, SettingsChange};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/start_conversation", post(start_conversation))
        .route("/reset_conversation", post(reset_conversation))
        .route("/list_conversations", get(list_conversations))
        .route("/load_conversation/{id}", get(load_conversation))
        .route("/conversation/{id}", delete(delete_conversation))
        .route("/conversation/{id}/branches", get(conversation_branches))
        .route("/conversation/{id}/settings", patch(change_settings))
        .route("/save_history", post(save_history))
        .route("/search_conversations", get(search_conversations))
        .route("/add_few_shot_example", post(add_few_shot_example))
}

async fn current(who: &SessionUser, missing: &'static str) -> Result<ConversationId, ApiError> {
    sessions::current_conversation(&who.session)
        .await?
        .ok_or(ApiError::NoConversation(missing))
}

/// `POST /start_conversation`, with no body (the original app's call: the
/// default model, no system prompt) or `{model?, system_prompt?,
/// temperature?, preset_id?}`: a preset's settings, then the fields given
/// over them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StartRequest {
    preset_id: Field<String>,
    #[serde(flatten)]
    settings: SettingsFields,
}

async fn start_conversation(
    State(state): State<AppState>,
    mut who: SessionUser,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ConversationStarted>, ApiError> {
    // The original app's call has no body (and read none): an empty body,
    // or one not sent as JSON, starts a default conversation as before.
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"));
    let request: StartRequest = if !json || body.iter().all(u8::is_ascii_whitespace) {
        StartRequest::default()
    } else {
        serde_json::from_slice::<Inbound<StartRequest>>(&body)
            .map_err(|_| ApiError::invalid("The request body is not valid JSON."))?
            .0
    };
    let base = match &request.preset_id {
        Field::Absent => ConversationSettings::default(),
        Field::Given(raw) => {
            let id = presets::preset_id(raw)?;
            let preset = state
                .presets
                .preset(&who.user, &id)
                .await?
                .ok_or(ApiError::PresetNotFound)?;
            presets::settings_of(&preset)
        }
        Field::Wrong => return Err(ApiError::PresetNotFound),
    };
    let settings = request.settings.over(&state, base)?;
    // A preset naming a model that left the catalogue is refused too.
    state.chat.models.check(settings.model.as_deref())?;
    who.keep(&state).await?;
    let id = ConversationId::new();
    state
        .chat
        .store
        .create_with(&who.user, &id, &settings)
        .await?;
    sessions::set_current_conversation(&who.session, &id).await?;
    tracing::info!(conversation = %id, "conversation started");
    Ok(Json(ConversationStarted {
        message: "New conversation started.",
        conversation_id: id,
        model: shown_model(&state, &settings),
    }))
}

/// `PATCH /conversation/{id}/settings {model?, system_prompt?, temperature?}`:
/// each field given replaces the conversation's (checked as
/// `start_conversation` checks it); `null` (or an empty `model` or
/// `system_prompt`) sets it back to the default; a field left out is left
/// as it is. Answers the settings now and tells the user's tabs.
async fn change_settings(
    State(state): State<AppState>,
    who: SessionUser,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<SettingsChanged>, ApiError> {
    let serde_json::Value::Object(fields) = body else {
        return Err(ApiError::invalid(
            "The request body must be a JSON object, such as {\"system_prompt\": \"Answer briefly.\"}.",
        ));
    };
    fn read<T: serde::de::DeserializeOwned>(
        fields: &serde_json::Map<String, serde_json::Value>,
        name: &str,
    ) -> (bool, Field<T>) {
        (
            fields.contains_key(name),
            Field::from_json(fields.get(name)),
        )
    }
    let (model_sent, model) = read(&fields, "model");
    let (prompt_sent, system_prompt) = read(&fields, "system_prompt");
    let (temperature_sent, temperature) = read(&fields, "temperature");
    // Checked over the defaults: what each field given (not null) sets.
    let checked = SettingsFields {
        model,
        system_prompt,
        temperature,
    }
    .over(&state, ConversationSettings::default())?;
    let change = SettingsChange {
        model: model_sent.then_some(checked.model),
        system_prompt: prompt_sent.then_some(checked.system_prompt),
        temperature: temperature_sent.then_some(checked.temperature),
    };
    let settings = state
        .chat
        .store
        .change_settings(&who.user, &id, &change)
        .await?;
    let shown = SettingsShown {
        model: state
            .chat
            .models
            .for_conversation(&settings)
            .spec
            .id
            .clone(),
        system_prompt: settings.system_prompt,
        temperature: settings.temperature,
    };
    let meta = state.chat.store.meta(&who.user, &id).await?;
    state
        .chat
        .notifier
        .to_user(&who.user, settings_changed(&meta, shown.clone()))
        .await;
    tracing::info!(conversation = %id, "conversation settings changed");
    Ok(Json(SettingsChanged {
        conversation_id: id,
        settings: shown,
    }))
}

async fn reset_conversation(
    State(state): State<AppState>,
    who: SessionUser,
) -> Result<Json<Done>, ApiError> {
    let id = current(&who, "No active conversation to reset.").await?;
    let meta = state.chat.store.reset(&who.user, &id).await?;
    state
        .chat
        .notifier
        .to_user(&who.user, conversation_updated(&meta))
        .await;
    Ok(Json(Done {
        message: "Conversation has been reset successfully!",
    }))
}

/// A whole-number query parameter from 0 to `max` (`default` when absent);
/// anything else is 400 naming it.
pub(super) fn query_number(
    query: &HashMap<String, String>,
    name: &str,
    default: u32,
    max: u32,
) -> Result<u32, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| {
                ApiError::invalid(format!("{name} must be a whole number from 0 to {max}."))
            }),
    }
}

async fn list_conversations(
    State(state): State<AppState>,
    who: SessionUser,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<ConversationList>, ApiError> {
    let limit = query_number(&query, "limit", 200, 1000)?;
    let offset = query_number(&query, "offset", 0, u32::MAX)?;
    let conversations = state.chat.store.list(&who.user, limit, offset).await?;
    Ok(Json(ConversationList { conversations }))
}

/// The most messages one page of `GET /load_conversation` holds.
const MAX_PAGE: u32 = 1000;

/// `GET /load_conversation/{id}`: the whole history, or with `limit`
/// and/or `before` the page of at most `limit` messages before index
/// `before` (the end when absent), with `total` and `first` to page on.
async fn load_conversation(
    State(state): State<AppState>,
    mut who: SessionUser,
    IdPath(id): IdPath,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<LoadedConversation>, ApiError> {
    let paged = query.contains_key("limit") || query.contains_key("before");
    let loaded = if paged {
        let limit = match query.get("limit") {
            None => 100,
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "limit must be a whole number from 1 to {MAX_PAGE}."
                    ))
                })?,
        };
        let before = match query.contains_key("before") {
            true => Some(u64::from(query_number(&query, "before", 0, u32::MAX)?)),
            false => None,
        };
        let page = state
            .chat
            .store
            .load_page(&who.user, &id, before, u64::from(limit))
            .await?;
        LoadedConversation {
            conversation: page.messages,
            conversation_id: id.clone(),
            title: page.meta.title,
            total: Some(page.meta.message_count),
            first: Some(page.first),
            branches: Vec::new(),
            model: shown_model(&state, &page.settings),
            system_prompt: page.settings.system_prompt,
            temperature: page.settings.temperature,
        }
    } else {
        let conversation = state.chat.store.load(&who.user, &id).await?;
        LoadedConversation {
            conversation: conversation.history(),
            conversation_id: id.clone(),
            title: conversation.meta.title.clone(),
            total: None,
            first: None,
            branches: Vec::new(),
            model: shown_model(&state, &conversation.settings),
            system_prompt: conversation.settings.system_prompt.clone(),
            temperature: conversation.settings.temperature,
        }
    };
    let mut loaded = loaded;
    let first = loaded.first.unwrap_or(0);
    let end = first + loaded.conversation.len() as u64;
    let pool = state.chat.store.branches(&who.user, &id).await?;
    if !pool.is_empty() {
        loaded.branches = pool
            .siblings(loaded.total.unwrap_or(end))
            .into_iter()
            .filter(|s| (first..end).contains(&s.index))
            .collect();
    }
    who.keep(&state).await?;
    sessions::set_current_conversation(&who.session, &id).await?;
    Ok(Json(loaded))
}

/// `GET /conversation/{id}/branches`: every branch kept beside the
/// history (the page's JSON export); `branches` is null for a conversation
/// never forked.
async fn conversation_branches(
    State(state): State<AppState>,
    who: SessionUser,
    IdPath(id): IdPath,
) -> Result<Json<ConversationBranches>, ApiError> {
    let pool = state.chat.store.branches(&who.user, &id).await?;
    Ok(Json(ConversationBranches {
        conversation_id: id,
        branches: (!pool.is_empty()).then_some(pool),
    }))
}

async fn delete_conversation(
    State(state): State<AppState>,
    who: SessionUser,
    IdPath(id): IdPath,
) -> Result<Json<Done>, ApiError> {
    state.chat.store.delete(&who.user, &id).await?;
    // Its share links go with it (after it: see `shares::create_share`).
    let revoked = state
        .shares
        .delete_conversation_shares(&who.user, &id)
        .await?;
    if revoked > 0 {
        tracing::info!(conversation = %id, revoked, "share links of a deleted conversation revoked");
    }
    if sessions::current_conversation(&who.session).await?.as_ref() == Some(&id) {
        sessions::clear_current_conversation(&who.session).await?;
    }
    Ok(Json(Done {
        message: "Conversation deleted.",
    }))
}

async fn save_history(
    State(state): State<AppState>,
    who: SessionUser,
) -> Result<Json<HistorySaved>, ApiError> {
    let settings = &state.chat.settings;
    // Each call writes a file: limited per user, like uploads.
    let limit = Limit {
        count: settings.rate_limit_saves_per_hour,
        window: std::time::Duration::from_secs(3600),
    };
    state
        .limiter
        .check(Bucket::Saves, who.user.as_ref(), limit)
        .await
        .map_err(ApiError::RateLimited)?;
    let id = current(&who, "No active conversation to save.").await?;
    let conversation = state.chat.store.load(&who.user, &id).await?;
    let pool = state.chat.store.branches(&who.user, &id).await?;
    let history = conversation.history();
    // The original's document shape, so tools that read its files read ours.
    let document = SavedConversation {
        conversation_id: &id,
        user_id: &who.user,
        conversation_history: &history,
        conversation_text: conversation_text(&history),
        created_at: rfc3339::format(&conversation.meta.created_at),
        updated_at: rfc3339::format(&conversation.meta.updated_at),
        title: conversation.meta.title.as_deref(),
        branches: (!pool.is_empty()).then_some(&pool),
    };
    let bytes = serde_json::to_vec_pretty(&document).map_err(|e| ApiError::Internal(e.into()))?;
    let max = settings.save_history_max_bytes;
    if bytes.len() as u64 > max {
        return Err(ApiError::TooLarge(format!(
            "This conversation is too large to save (max {} MB).",
            max / (1024 * 1024)
        )));
    }
    // The id is a validated UUID: it cannot leave the folder.
    let file_name = format!(
        "{}_{}_conversation_history.json",
        Utc::now().format("%Y%m%d_%H%M%S"),
        id
    );
    let dir = settings.saved_conversations_dir.clone();
    let name = file_name.clone();
    let conversation_id = id.to_string();
    tokio::task::spawn_blocking(move || write_saved(&dir, &name, &conversation_id, &bytes))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| {
            ApiError::Internal(anyhow::Error::new(e).context("writing the saved conversation"))
        })?;
    tracing::info!(conversation = %id, file = %file_name, "conversation saved");
    Ok(Json(HistorySaved {
        message: "Conversation history saved successfully.",
        file_name,
    }))
}

/// Writes a saved conversation as `dir/name`, readable by the server's
/// user only (0600; the folder, when created here, 0700), then removes the
/// earlier saves of the same conversation: one file per conversation. The
/// file is written under a temporary name and renamed, so a reader or a
/// crash never sees half of it. Names start with a fixed-width timestamp:
/// only older ones are removed, so two saves at once leave the newer.
fn write_saved(
    dir: &std::path::Path,
    name: &str,
    conversation_id: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut folder = std::fs::DirBuilder::new();
    folder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
    folder.create(dir)?;
    let partial = dir.join(format!(".{name}.{}.partial", uuid::Uuid::new_v4()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&partial).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(err) = written.and_then(|()| std::fs::rename(&partial, dir.join(name))) {
        let _ = std::fs::remove_file(&partial);
        return Err(err);
    }
    let suffix = format!("_{conversation_id}_conversation_history.json");
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let earlier = entry
            .file_name()
            .to_str()
            .is_some_and(|other| other.ends_with(&suffix) && other < name);
        if earlier {
            match std::fs::remove_file(entry.path()) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
    }
    Ok(())
}

async fn search_conversations(
    State(state): State<AppState>,
    who: SessionUser,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<SearchResults>, ApiError> {
    let q = query.get("q").map(|q| q.trim()).unwrap_or_default();
    if q.is_empty() {
        return Err(ApiError::invalid("No search query provided."));
    }
    if q.chars().count() > 500 {
        return Err(ApiError::invalid(
            "The search query is too long (max 500 characters).",
        ));
    }
    let limit = query_number(&query, "limit", 50, 200)?;
    // Each search reads through the user's whole index: limited per user.
    let per_minute = Limit {
        count: state.chat.settings.rate_limit_searches_per_minute,
        window: std::time::Duration::from_secs(60),
    };
    state
        .limiter
        .check(Bucket::Searches, who.user.as_ref(), per_minute)
        .await
        .map_err(ApiError::RateLimited)?;
    let hits = state.chat.store.search(&who.user, q, limit).await?;
    Ok(Json(SearchResults {
        conversations: hits,
    }))
}

/// `POST /add_few_shot_example`: a wrong type reads as a missing field,
/// a body that is not an object as one without fields.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FewShotExample {
    user_prompt: Field<String>,
    assistant_response: Field<String>,
}

async fn add_few_shot_example(
    State(state): State<AppState>,
    who: SessionUser,
    ApiJson(Inbound(body)): ApiJson<Inbound<FewShotExample>>,
) -> Result<Json<Done>, ApiError> {
    let field = |field: &Field<String>| {
        field
            .given()
            .filter(|text| !text.trim().is_empty())
            .cloned()
    };
    let (Some(prompt), Some(response)) =
        (field(&body.user_prompt), field(&body.assistant_response))
    else {
        return Err(ApiError::invalid(
            "Both 'user_prompt' and 'assistant_response' are required.",
        ));
    };
    let max = state.chat.settings.max_message_chars;
    if prompt.chars().count() > max || response.chars().count() > max {
        return Err(ApiError::TooLarge(format!(
            "Each field may have at most {max} characters."
        )));
    }
    let id = current(
        &who,
        "No active conversation. Please start a new conversation.",
    )
    .await?;
    let messages = vec![
        NewMessage {
            role: Role::User,
            tokens: Some(state.chat.tokens.count(&prompt)),
            content: prompt,
        },
        NewMessage {
            role: Role::Assistant,
            tokens: Some(state.chat.tokens.count(&response)),
            content: response,
        },
    ];
    let meta = state.chat.store.append(&who.user, &id, messages).await?;
    state
        .chat
        .notifier
        .to_user(&who.user, conversation_updated(&meta))
        .await;
    Ok(Json(Done {
        message: "Few-shot example added successfully!",
    }))
}

/// The model id a conversation's answers name: shown when the server offers
/// several models or the conversation asked for one; otherwise absent, so a
/// client of the original app sees the original fields only.
fn shown_model(state: &AppState, settings: &ConversationSettings) -> Option<String> {
    let models = &state.chat.models;
    (models.all().len() > 1 || settings.model.is_some())
        .then(|| models.for_conversation(settings).spec.id.clone())
}
