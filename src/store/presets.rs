//! Presets: a user's saved starting points for conversations (a name, a
//! model, a system prompt, a temperature). Every operation names the
//! owner: another user's preset cannot be listed, used or deleted.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{rfc3339, StoreResult};
use crate::domain::UserId;

/// A stored preset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preset {
    /// A UUID, to name the preset in `DELETE /presets/{id}` and
    /// `start_conversation`.
    pub preset_id: String,
    pub name: String,
    /// A model id of the catalogue; `None`: the default model.
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    pub temperature: Option<f32>,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// A preset about to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPreset {
    pub name: String,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    pub temperature: Option<f32>,
}

/// Storage of presets, scoped by user.
#[async_trait]
pub trait PresetStore: Send + Sync + 'static {
    /// Stores a new preset with id `id` for `user`; `None` when the user has
    /// `max_per_user` presets already.
    async fn create_preset(
        &self,
        user: &UserId,
        id: &str,
        preset: &NewPreset,
        max_per_user: u32,
    ) -> StoreResult<Option<Preset>>;
    /// The user's presets, oldest first.
    async fn presets(&self, user: &UserId) -> StoreResult<Vec<Preset>>;
    /// The user's preset `id`; `None` when the user has no such preset.
    async fn preset(&self, user: &UserId, id: &str) -> StoreResult<Option<Preset>>;
    /// Deletes the user's preset `id`; `false` when the user has no such preset.
    async fn delete_preset(&self, user: &UserId, id: &str) -> StoreResult<bool>;

    /// Every preset with its owner, oldest first, for `migrate`.
    async fn presets_for_copy(&self) -> StoreResult<Vec<(UserId, Preset)>>;
    /// Writes a preset as it is (id, owner, fields, date), for `migrate`:
    /// `false` when its id is already there (left as it is). The per-user
    /// limit is not applied: the source held it.
    async fn import_preset(&self, user: &UserId, preset: &Preset) -> StoreResult<bool>;
}
