//! Copying a whole conversation in (`ConversationStore::import`, for
//! `migrate`): its row and its messages in one transaction, unless one with
//! that id is already there.

use rusqlite::{params, Connection};

use super::exec::backend;
use crate::store::{rfc3339, BranchPool, Conversation, StoreResult};

/// Inserts `conversation` for `user` (`bytes`: its text size); `false`
/// when it was already there. Its revision starts at its message count,
/// where a row created empty and appended to one message at a time would
/// be at least.
pub(super) fn insert(
    conn: &mut Connection,
    user: &str,
    conversation: &Conversation,
    bytes: u64,
    pool: &BranchPool,
) -> StoreResult<bool> {
    let tx = conn.savepoint().map_err(backend)?;
    let meta = &conversation.meta;
    let summary = conversation.summary.as_ref();
    let inserted = tx
        .execute(
            "INSERT OR IGNORE INTO conversations (user_id, conversation_id, title, summary, \
             summary_covers, summary_tokens, message_count, created_at, updated_at, text_bytes, \
             revision) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?7)",
            params![
                user,
                meta.conversation_id.as_ref(),
                meta.title,
                summary.map(|s| s.text.clone()),
                summary.map_or(0, |s| s.covers as i64),
                summary.map_or(0, |s| s.tokens),
                conversation.messages.len() as i64,
                rfc3339::format(&meta.created_at),
                rfc3339::format(&meta.updated_at),
                bytes as i64,
            ],
        )
        .map_err(backend)?;
    if inserted == 0 {
        return Ok(false);
    }
    super::settings::write_settings(
        &tx,
        user,
        meta.conversation_id.as_ref(),
        &conversation.settings,
    )?;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO messages (user_id, conversation_id, seq, role, content, tokens, created_at, indexed) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 2)",
            )
            .map_err(backend)?;
        let at = rfc3339::format(&meta.updated_at);
        for (seq, m) in conversation.messages.iter().enumerate() {
            insert
                .execute(params![
                    user,
                    meta.conversation_id.as_ref(),
                    seq as i64,
                    m.message.role.as_str(),
                    &*m.message.content,
                    m.tokens,
                    at
                ])
                .map_err(backend)?;
        }
    }
    if !pool.is_empty() {
        super::branches::write_pool(&tx, user, meta.conversation_id.as_ref(), pool)?;
    }
    tx.commit().map_err(backend)?;
    Ok(true)
}
