//! The conversation cap in SQLite: the text size kept per conversation
//! (`text_bytes`, counted once for rows written before it existed) and the
//! check an append or an import makes inside its transaction.

use rusqlite::{params, Connection};

use super::exec::backend;
use crate::config::ConversationLimits;
use crate::store::{StoreError, StoreResult};

/// The conversation's text size in bytes: the counter, or for a row
/// written before it existed, the sum of its messages (computed once; the
/// append that follows stores it).
pub(super) fn text_bytes(conn: &Connection, user: &str, id: &str) -> StoreResult<u64> {
    conn.prepare_cached(
        "SELECT COALESCE(c.text_bytes, (SELECT COALESCE(SUM(octet_length(m.content)), 0) \
         FROM messages m WHERE m.user_id = c.user_id AND m.conversation_id = c.conversation_id)) \
         FROM conversations c WHERE c.user_id = ?1 AND c.conversation_id = ?2",
    )
    .and_then(|mut stmt| stmt.query_row(params![user, id], |row| row.get::<_, i64>(0)))
    .map(|n| n.max(0) as u64)
    .map_err(backend)
}

/// `TooLarge` with the limits' sentence unless a conversation of `count`
/// messages and `bytes` bytes may take `more` messages of `more_bytes`.
pub(super) fn check_room(
    limits: &ConversationLimits,
    (count, bytes): (u64, u64),
    (more, more_bytes): (u64, u64),
) -> StoreResult<()> {
    if limits.has_room(count, bytes, more, more_bytes) {
        Ok(())
    } else {
        Err(StoreError::TooLarge(limits.full_message()))
    }
}
