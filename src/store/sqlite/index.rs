//! The deferred full-text indexing that keeps a turn from paying for an
//! FTS5 flush: messages are written unindexed and added to `messages_fts` in
//! bulk, by the database thread about once a second and before every
//! search. A leaf: it imports no sibling.

use rusqlite::Connection;

/// Adds the messages not yet in the full-text index; returns how many.
pub(super) fn index_pending(conn: &mut Connection) -> rusqlite::Result<usize> {
    // Both statements or neither: a row indexed twice would count twice.
    let tx = conn.savepoint()?;
    let added = tx
        .prepare_cached(
            "INSERT INTO messages_fts (rowid, content) \
             SELECT id, content FROM messages WHERE indexed = 0",
        )?
        .execute([])?;
    if added > 0 {
        tx.prepare_cached("UPDATE messages SET indexed = 1 WHERE indexed = 0")?
            .execute([])?;
    }
    tx.commit()?;
    Ok(added)
}

/// How often the database thread indexes new messages when it can.
pub(super) const INDEX_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
