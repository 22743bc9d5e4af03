//! Users' presets in SQLite: [`PresetStore`] for [`SqliteStore`] over the
//! `presets` table (created by `settings::migrate`).

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::{params, OptionalExtension};

use super::exec::{backend, exec};
use super::rows::parse_time;
use super::SqliteStore;
use crate::domain::UserId;
use crate::store::presets::{NewPreset, Preset, PresetStore};
use crate::store::{rfc3339, StoreResult};

const PRESET_COLUMNS: &str = "id, name, model, system_prompt, temperature, created_at";

fn preset_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Preset> {
    Ok(Preset {
        preset_id: row.get(0)?,
        name: row.get(1)?,
        model: row.get(2)?,
        system_prompt: row.get(3)?,
        temperature: row.get::<_, Option<f64>>(4)?.map(|t| t as f32),
        created_at: parse_time(row.get_ref(5)?.as_str()?)?,
    })
}

#[async_trait]
impl PresetStore for SqliteStore {
    async fn create_preset(
        &self,
        user: &UserId,
        id: &str,
        preset: &NewPreset,
        max_per_user: u32,
    ) -> StoreResult<Option<Preset>> {
        let (user, id, preset) = (user.clone(), id.to_string(), preset.clone());
        self.db
            .call(move |conn| {
                // The count and the insert are one transaction.
                let tx = conn.savepoint().map_err(backend)?;
                let count: i64 = tx
                    .prepare_cached("SELECT COUNT(*) FROM presets WHERE user_id = ?1")
                    .and_then(|mut stmt| stmt.query_row(params![user.as_ref()], |row| row.get(0)))
                    .map_err(backend)?;
                if count >= i64::from(max_per_user) {
                    return Ok(None);
                }
                let created_at = rfc3339::format(&Utc::now());
                exec(
                    &tx,
                    "INSERT INTO presets (id, user_id, name, model, system_prompt, temperature, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        id,
                        user.as_ref(),
                        preset.name,
                        preset.model,
                        preset.system_prompt,
                        preset.temperature.map(f64::from),
                        created_at
                    ],
                )?;
                tx.commit().map_err(backend)?;
                Ok(Some(Preset {
                    preset_id: id,
                    name: preset.name,
                    model: preset.model,
                    system_prompt: preset.system_prompt,
                    temperature: preset.temperature,
                    created_at: parse_time(&created_at).map_err(backend)?,
                }))
            })
            .await
    }

    async fn presets(&self, user: &UserId) -> StoreResult<Vec<Preset>> {
        let user = user.to_string();
        self.db
            .call(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {PRESET_COLUMNS} FROM presets WHERE user_id = ?1 \
                         ORDER BY created_at, rowid"
                    ))
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![user], preset_from_row)
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn preset(&self, user: &UserId, id: &str) -> StoreResult<Option<Preset>> {
        let (user, id) = (user.to_string(), id.to_string());
        self.db
            .call(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {PRESET_COLUMNS} FROM presets WHERE user_id = ?1 AND id = ?2"
                ))
                .and_then(|mut stmt| {
                    stmt.query_row(params![user, id], preset_from_row)
                        .optional()
                })
                .map_err(backend)
            })
            .await
    }

    async fn presets_for_copy(&self) -> StoreResult<Vec<(UserId, Preset)>> {
        self.db
            .call(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {PRESET_COLUMNS}, user_id FROM presets ORDER BY created_at, rowid"
                    ))
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok((UserId::from_stored(row.get(6)?), preset_from_row(row)?))
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn import_preset(&self, user: &UserId, preset: &Preset) -> StoreResult<bool> {
        let (user, preset) = (user.to_string(), preset.clone());
        self.db
            .call(move |conn| {
                exec(
                    conn,
                    "INSERT OR IGNORE INTO presets (id, user_id, name, model, system_prompt, temperature, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        preset.preset_id,
                        user,
                        preset.name,
                        preset.model,
                        preset.system_prompt,
                        preset.temperature.map(f64::from),
                        rfc3339::format(&preset.created_at)
                    ],
                )
                .map(|inserted| inserted > 0)
            })
            .await
    }

    async fn delete_preset(&self, user: &UserId, id: &str) -> StoreResult<bool> {
        let (user, id) = (user.to_string(), id.to_string());
        self.db
            .call(move |conn| {
                exec(
                    conn,
                    "DELETE FROM presets WHERE user_id = ?1 AND id = ?2",
                    params![user, id],
                )
                .map(|deleted| deleted > 0)
            })
            .await
    }
}
