//! Presets: a user's saved starting points for conversations (name, model,
//! system prompt, temperature), listed, made and deleted here and used by
//! `POST /start_conversation {preset_id}`. Every route is scoped to the
//! session's user; and the checks of a conversation's settings, which
//! `start_conversation` shares.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::bodies::Done;
use super::extract::{ApiJson, SessionUser};
use crate::domain::ConversationId;
use crate::error::ApiError;
use crate::events::{Field, Inbound};
use crate::state::AppState;
use crate::store::presets::{NewPreset, Preset};
use crate::store::ConversationSettings;

/// Presets one user may keep.
pub const MAX_PRESETS_PER_USER: u32 = 50;
const MAX_NAME_CHARS: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/presets", get(list_presets).post(create_preset))
        .route("/presets/{id}", delete(delete_preset))
}

/// The settings fields of a request (`POST /presets`,
/// `POST /start_conversation`), as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SettingsFields {
    pub model: Field<String>,
    pub system_prompt: Field<String>,
    pub temperature: Field<f64>,
}

impl SettingsFields {
    /// Checks the fields over `base` (a preset's, or the defaults): each
    /// one given replaces the base's; an empty `model` or `system_prompt`
    /// clears it. An unknown model is 400 `unknown_model`.
    pub(super) fn over(
        &self,
        state: &AppState,
        base: ConversationSettings,
    ) -> Result<ConversationSettings, ApiError> {
        let mut settings = base;
        match &self.model {
            Field::Absent => {}
            Field::Given(id) if id.is_empty() => settings.model = None,
            Field::Given(id) => {
                state.chat.models.check(Some(id))?;
                settings.model = Some(id.clone());
            }
            Field::Wrong => return Err(ApiError::invalid("model must be a model id (a string).")),
        }
        let max_chars = state.chat.settings.max_message_chars;
        match &self.system_prompt {
            Field::Absent => {}
            Field::Given(prompt) if prompt.trim().is_empty() => settings.system_prompt = None,
            Field::Given(prompt) if prompt.chars().count() > max_chars => {
                return Err(ApiError::TooLarge(format!(
                    "System prompt too long (max {max_chars} characters)."
                )))
            }
            Field::Given(prompt) => settings.system_prompt = Some(prompt.clone()),
            Field::Wrong => return Err(ApiError::invalid("system_prompt must be a string.")),
        }
        match self.temperature {
            Field::Absent => {}
            Field::Given(t) if t.is_finite() && (0.0..=2.0).contains(&t) => {
                settings.temperature = Some(t as f32)
            }
            Field::Given(_) | Field::Wrong => {
                return Err(ApiError::invalid(
                    "temperature must be a number from 0 to 2.",
                ))
            }
        }
        Ok(settings)
    }
}

/// A preset id from a client: a UUID (what the server makes).
pub(super) fn preset_id(raw: &str) -> Result<String, ApiError> {
    ConversationId::parse(raw)
        .map(String::from)
        .map_err(|_| ApiError::PresetNotFound)
}

/// A preset's settings, for a conversation started from it.
pub(super) fn settings_of(preset: &Preset) -> ConversationSettings {
    ConversationSettings {
        model: preset.model.clone(),
        system_prompt: preset.system_prompt.clone(),
        temperature: preset.temperature,
    }
}

/// `{name, model?, system_prompt?, temperature?}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PresetRequest {
    name: Field<String>,
    #[serde(flatten)]
    settings: SettingsFields,
}

/// `GET /presets`.
#[derive(Debug, Serialize)]
struct PresetList {
    presets: Vec<Preset>,
}

/// `GET /presets`: the user's presets, oldest first.
async fn list_presets(
    State(state): State<AppState>,
    who: SessionUser,
) -> Result<Json<PresetList>, ApiError> {
    let presets = state.presets.presets(&who.user).await?;
    Ok(Json(PresetList { presets }))
}

/// `POST /presets {name, model?, system_prompt?, temperature?}` → 201 with
/// the preset.
async fn create_preset(
    State(state): State<AppState>,
    mut who: SessionUser,
    ApiJson(Inbound(body)): ApiJson<Inbound<PresetRequest>>,
) -> Result<(StatusCode, Json<Preset>), ApiError> {
    let name = body.name.given().map(|n| n.trim()).unwrap_or_default();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(format!(
            "Give the preset a name of 1 to {MAX_NAME_CHARS} characters."
        )));
    }
    let settings = body
        .settings
        .over(&state, ConversationSettings::default())?;
    who.keep(&state).await?;
    let preset = NewPreset {
        name: name.to_string(),
        model: settings.model,
        system_prompt: settings.system_prompt,
        temperature: settings.temperature,
    };
    let id = uuid::Uuid::new_v4().to_string();
    let Some(created) = state
        .presets
        .create_preset(&who.user, &id, &preset, MAX_PRESETS_PER_USER)
        .await?
    else {
        return Err(ApiError::invalid(format!(
            "You have {MAX_PRESETS_PER_USER} presets, the most there may be: delete one first."
        )));
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// `DELETE /presets/{id}`: 404 `not_found` unless the user has that preset.
async fn delete_preset(
    State(state): State<AppState>,
    who: SessionUser,
    Path(raw): Path<String>,
) -> Result<Json<Done>, ApiError> {
    let id = preset_id(&raw)?;
    if !state.presets.delete_preset(&who.user, &id).await? {
        return Err(ApiError::PresetNotFound);
    }
    Ok(Json(Done {
        message: "Preset deleted.",
    }))
}
