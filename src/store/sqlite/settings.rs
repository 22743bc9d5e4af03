//! A conversation's settings (model, system prompt, temperature: three
//! nullable columns of `conversations`), and the migration that adds them
//! and the `presets` table to a file written by an older version. A leaf
//! of the store's files: it imports only `exec`.

use rusqlite::{params, Connection, OptionalExtension};

use super::exec::{backend, exec};
use crate::store::{ConversationSettings, StoreError, StoreResult};

/// Presets, one row each, listed per user in the order they were made.
const PRESETS_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS presets (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    name          TEXT NOT NULL,
    model         TEXT,
    system_prompt TEXT,
    temperature   REAL,
    created_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS presets_by_user ON presets (user_id, created_at);
"#;

/// Adds the conversation settings' columns (NULL: the defaults, which is
/// what every conversation written before them had) and the presets table;
/// idempotent, run on every open inside the schema's transaction.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (column, kind) in [
        ("model", "TEXT"),
        ("system_prompt", "TEXT"),
        ("temperature", "REAL"),
    ] {
        let present = conn
            .prepare("SELECT 1 FROM pragma_table_info('conversations') WHERE name = ?1")?
            .exists([column])?;
        if !present {
            conn.execute_batch(&format!(
                "ALTER TABLE conversations ADD COLUMN {column} {kind};"
            ))?;
        }
    }
    conn.execute_batch(PRESETS_SCHEMA)
}

/// The conversation's settings; `NotFound` when the user has no such
/// conversation.
pub(super) fn read_settings(
    conn: &Connection,
    user: &str,
    id: &str,
) -> StoreResult<ConversationSettings> {
    conn.prepare_cached(
        "SELECT model, system_prompt, temperature FROM conversations \
         WHERE user_id = ?1 AND conversation_id = ?2",
    )
    .and_then(|mut stmt| {
        stmt.query_row(params![user, id], |row| {
            Ok(ConversationSettings {
                model: row.get(0)?,
                system_prompt: row.get(1)?,
                temperature: row.get::<_, Option<f64>>(2)?.map(|t| t as f32),
            })
        })
        .optional()
    })
    .map_err(backend)?
    .ok_or(StoreError::NotFound)
}

/// Replaces the conversation's settings; `NotFound` when the user has no
/// such conversation.
pub(super) fn write_settings(
    conn: &Connection,
    user: &str,
    id: &str,
    settings: &ConversationSettings,
) -> StoreResult<()> {
    let changed = exec(
        conn,
        "UPDATE conversations SET model = ?3, system_prompt = ?4, temperature = ?5 \
         WHERE user_id = ?1 AND conversation_id = ?2",
        params![
            user,
            id,
            settings.model,
            settings.system_prompt,
            settings.temperature.map(f64::from)
        ],
    )?;
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}
