//! Presets in MongoDB: [`PresetStore`] for [`MongoStore`], one document per
//! preset in `presets` (`{_id: <preset id>, user_id, name, model?,
//! system_prompt?, temperature?, created_at}`), listed through
//! `{user_id, created_at}` (see `schema`).
//!
//! The per-user limit is checked as access tokens' is: insert, count, and
//! take the insert back when over it.

use anyhow::anyhow;
use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Collection;

use super::base::{code, command_code, MongoStore};
use super::documents::{from_bson_time, now, to_bson_time};
use crate::domain::UserId;
use crate::store::presets::{NewPreset, Preset, PresetStore};
use crate::store::{StoreError, StoreResult};

/// Collection holding presets.
pub const PRESETS: &str = "presets";

fn preset_from_doc(d: &Document) -> anyhow::Result<Preset> {
    let text = |key: &str| {
        d.get_str(key)
            .map(str::to_string)
            .map_err(|_| anyhow!("a preset without a string {key}"))
    };
    let optional = |key: &str| d.get_str(key).ok().map(str::to_string);
    Ok(Preset {
        preset_id: text("_id")?,
        name: text("name")?,
        model: optional("model"),
        system_prompt: optional("system_prompt"),
        temperature: match d.get("temperature") {
            Some(Bson::Double(t)) => Some(*t as f32),
            Some(Bson::Int32(t)) => Some(*t as f32),
            Some(Bson::Int64(t)) => Some(*t as f32),
            _ => None,
        },
        created_at: d
            .get_datetime("created_at")
            .map(|at| from_bson_time(*at))
            .map_err(|_| anyhow!("a preset without a created_at date"))?,
    })
}

impl MongoStore {
    pub(super) fn presets_collection(&self) -> Collection<Document> {
        self.db.collection(PRESETS)
    }

    async fn count_presets(&self, user: &UserId) -> StoreResult<u64> {
        self.presets_collection()
            .count_documents(doc! {"user_id": user.as_ref()})
            .await
            .map_err(|e| self.err(e))
    }
}

#[async_trait]
impl PresetStore for MongoStore {
    async fn create_preset(
        &self,
        user: &UserId,
        id: &str,
        preset: &NewPreset,
        max_per_user: u32,
    ) -> StoreResult<Option<Preset>> {
        let max = u64::from(max_per_user);
        if self.count_presets(user).await? >= max {
            return Ok(None);
        }
        let (at, created_at) = now();
        let mut d = doc! {
            "_id": id,
            "user_id": user.as_ref(),
            "name": preset.name.as_str(),
            "created_at": at,
        };
        if let Some(model) = &preset.model {
            d.insert("model", model.as_str());
        }
        if let Some(prompt) = &preset.system_prompt {
            d.insert("system_prompt", prompt.as_str());
        }
        if let Some(temperature) = preset.temperature {
            d.insert("temperature", f64::from(temperature));
        }
        let presets = self.presets_collection();
        presets.insert_one(d).await.map_err(|e| self.err(e))?;
        // Creates racing on several instances: each counts after its own
        // insert, so the survivors are never more than `max`.
        if self.count_presets(user).await? > max {
            presets
                .delete_one(doc! {"_id": id, "user_id": user.as_ref()})
                .await
                .map_err(|e| self.err(e))?;
            return Ok(None);
        }
        Ok(Some(Preset {
            preset_id: id.to_string(),
            name: preset.name.clone(),
            model: preset.model.clone(),
            system_prompt: preset.system_prompt.clone(),
            temperature: preset.temperature,
            created_at,
        }))
    }

    async fn presets(&self, user: &UserId) -> StoreResult<Vec<Preset>> {
        let docs: Vec<Document> = self
            .presets_collection()
            .find(doc! {"user_id": user.as_ref()})
            .sort(doc! {"created_at": 1, "_id": 1})
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        docs.iter()
            .map(preset_from_doc)
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(StoreError::Backend)
    }

    async fn preset(&self, user: &UserId, id: &str) -> StoreResult<Option<Preset>> {
        let found = self
            .presets_collection()
            .find_one(doc! {"_id": id, "user_id": user.as_ref()})
            .await
            .map_err(|e| self.err(e))?;
        found
            .as_ref()
            .map(preset_from_doc)
            .transpose()
            .map_err(StoreError::Backend)
    }

    async fn presets_for_copy(&self) -> StoreResult<Vec<(UserId, Preset)>> {
        let docs: Vec<Document> = self
            .presets_collection()
            .find(doc! {})
            .sort(doc! {"created_at": 1, "_id": 1})
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        docs.iter()
            .map(|d| {
                let user = d
                    .get_str("user_id")
                    .map_err(|_| anyhow!("a preset without a string user_id"))?;
                Ok((UserId::from_stored(user.to_string()), preset_from_doc(d)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(StoreError::Backend)
    }

    async fn import_preset(&self, user: &UserId, preset: &Preset) -> StoreResult<bool> {
        let mut d = doc! {
            "_id": preset.preset_id.as_str(),
            "user_id": user.as_ref(),
            "name": preset.name.as_str(),
            "created_at": to_bson_time(&preset.created_at),
        };
        if let Some(model) = &preset.model {
            d.insert("model", model.as_str());
        }
        if let Some(prompt) = &preset.system_prompt {
            d.insert("system_prompt", prompt.as_str());
        }
        if let Some(temperature) = preset.temperature {
            d.insert("temperature", f64::from(temperature));
        }
        match self.presets_collection().insert_one(d).await {
            Ok(_) => Ok(true),
            Err(e) if command_code(&e) == Some(code::DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn delete_preset(&self, user: &UserId, id: &str) -> StoreResult<bool> {
        let result = self
            .presets_collection()
            .delete_one(doc! {"_id": id, "user_id": user.as_ref()})
            .await
            .map_err(|e| self.err(e))?;
        Ok(result.deleted_count > 0)
    }
}
