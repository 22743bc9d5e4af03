//! Branches in SQLite: the `branches` table (one row per forked
//! conversation: the pool as JSON, with its node count and text bytes for
//! the cap), and `fork` / `switch_branch`, each one transaction that rewrites
//! the active suffix in `messages` and the pool together.

use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};

use super::exec::{backend, exec, savepoint};
use super::limits;
use super::rows::read_meta;
use crate::config::ConversationLimits;
use crate::domain::Role;
use crate::store::branches::BranchError;
use crate::store::{rfc3339, BranchPool, ConversationMeta, NewMessage, StoreError, StoreResult};

/// The table (added by [`migrate`] on every open: a file written before it
/// gets it empty, and every conversation of it reads as never forked).
const BRANCHES_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS branches (
    user_id         TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    nodes           INTEGER NOT NULL,
    bytes           INTEGER NOT NULL,
    pool            TEXT NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
"#;

/// Creates the table (idempotent), inside the schema migration.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(BRANCHES_SCHEMA)
}

/// The conversation's pool (empty when it has none).
pub(super) fn read_pool(conn: &Connection, user: &str, id: &str) -> StoreResult<BranchPool> {
    let raw: Option<String> = conn
        .prepare_cached("SELECT pool FROM branches WHERE user_id = ?1 AND conversation_id = ?2")
        .and_then(|mut stmt| {
            stmt.query_row(params![user, id], |row| row.get(0))
                .optional()
        })
        .map_err(backend)?;
    match raw {
        None => Ok(BranchPool::default()),
        Some(raw) => serde_json::from_str(&raw)
            .map_err(|e| StoreError::Backend(anyhow::anyhow!("a malformed branch pool: {e}"))),
    }
}

/// How many messages and bytes of text the pool holds (for the cap).
pub(super) fn pool_size(conn: &Connection, user: &str, id: &str) -> StoreResult<(u64, u64)> {
    conn.prepare_cached(
        "SELECT nodes, bytes FROM branches WHERE user_id = ?1 AND conversation_id = ?2",
    )
    .and_then(|mut stmt| {
        stmt.query_row(params![user, id], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()
    })
    .map(|size| size.map_or((0, 0), |(n, b)| (n.max(0) as u64, b.max(0) as u64)))
    .map_err(backend)
}

pub(super) fn write_pool(
    conn: &Connection,
    user: &str,
    id: &str,
    pool: &BranchPool,
) -> StoreResult<()> {
    if pool.is_empty() {
        return drop_pool(conn, user, id);
    }
    let raw = serde_json::to_string(pool).map_err(|e| StoreError::Backend(e.into()))?;
    exec(
        conn,
        "INSERT INTO branches (user_id, conversation_id, nodes, bytes, pool) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (user_id, conversation_id) DO UPDATE SET nodes = ?3, bytes = ?4, pool = ?5",
        params![user, id, pool.nodes.len() as i64, pool.bytes() as i64, raw],
    )?;
    Ok(())
}

/// Removes the conversation's pool (a reset, a delete).
pub(super) fn drop_pool(conn: &Connection, user: &str, id: &str) -> StoreResult<()> {
    exec(
        conn,
        "DELETE FROM branches WHERE user_id = ?1 AND conversation_id = ?2",
        params![user, id],
    )?;
    Ok(())
}

/// The history from `at` on, as messages to set aside.
fn read_suffix(conn: &Connection, user: &str, id: &str, at: u64) -> StoreResult<Vec<NewMessage>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT role, content, tokens FROM messages WHERE user_id = ?1 AND conversation_id = ?2 \
             AND seq >= ?3 ORDER BY seq",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![user, id, at as i64], |row| {
            let role: String = row.get(0)?;
            Ok(NewMessage {
                role: Role::parse(&role).unwrap_or(Role::User),
                content: row.get(1)?,
                tokens: row.get::<_, Option<i64>>(2)?.map(|t| t.max(0) as u32),
            })
        })
        .map_err(backend)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(backend)
}

/// Replaces the history from `at` on with `suffix` and stores `pool`, in
/// the caller's transaction; drops a summary covering more than `at`.
fn rewrite(
    conn: &Connection,
    user: &str,
    id: &str,
    at: u64,
    suffix: &[NewMessage],
    pool: &BranchPool,
) -> StoreResult<ConversationMeta> {
    // The deleted rows leave the search index (trigger); the new ones wait
    // for the indexer like any appended message.
    exec(
        conn,
        "DELETE FROM messages WHERE user_id = ?1 AND conversation_id = ?2 AND seq >= ?3",
        params![user, id, at as i64],
    )?;
    let now = rfc3339::format(&Utc::now());
    let mut seq = at as i64;
    for message in suffix {
        exec(
            conn,
            "INSERT INTO messages (user_id, conversation_id, seq, role, content, tokens, created_at, indexed) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 2)",
            params![user, id, seq, message.role.as_str(), message.content, message.tokens, now],
        )?;
        seq += 1;
    }
    exec(
        conn,
        "UPDATE conversations SET message_count = ?3, updated_at = ?4, \
         text_bytes = (SELECT COALESCE(SUM(octet_length(content)), 0) FROM messages \
                       WHERE user_id = ?1 AND conversation_id = ?2), \
         summary = CASE WHEN summary_covers > ?5 THEN NULL ELSE summary END, \
         summary_tokens = CASE WHEN summary_covers > ?5 THEN 0 ELSE summary_tokens END, \
         summary_covers = CASE WHEN summary_covers > ?5 THEN 0 ELSE summary_covers END \
         WHERE user_id = ?1 AND conversation_id = ?2",
        params![user, id, seq, now, at as i64],
    )?;
    write_pool(conn, user, id, pool)?;
    read_meta(conn, user, id)
}

fn branch_error(err: BranchError, limits: &ConversationLimits) -> StoreError {
    match err {
        BranchError::NoSuchBranch => StoreError::NoSuchBranch,
        BranchError::Full => StoreError::TooLarge(limits.full_message()),
    }
}

/// `ConversationStore::fork`, in one transaction.
pub(super) fn fork(
    conn: &mut Connection,
    limits: &ConversationLimits,
    user: &str,
    id: &str,
    at: u64,
    messages: Vec<NewMessage>,
) -> StoreResult<ConversationMeta> {
    let tx = savepoint(conn)?;
    let meta = read_meta(&tx, user, id)?;
    if at > meta.message_count {
        return Err(StoreError::NoSuchBranch);
    }
    // Everything stays stored: the cap counts the pool, and what is added.
    let (nodes, pool_bytes) = pool_size(&tx, user, id)?;
    let bytes = limits::text_bytes(&tx, user, id)?;
    let added: u64 = messages.iter().map(|m| m.content.len() as u64).sum();
    limits::check_room(
        limits,
        (meta.message_count + nodes, bytes + pool_bytes),
        (messages.len() as u64, added),
    )?;
    let mut pool = read_pool(&tx, user, id)?;
    let removed = read_suffix(&tx, user, id, at)?;
    pool.fork(at, removed, messages.len())
        .map_err(|e| branch_error(e, limits))?;
    let meta = rewrite(&tx, user, id, at, &messages, &pool)?;
    tx.commit()?;
    Ok(meta)
}

/// `ConversationStore::switch_branch`, in one transaction.
pub(super) fn switch(
    conn: &mut Connection,
    limits: &ConversationLimits,
    user: &str,
    id: &str,
    index: u64,
    position: u64,
) -> StoreResult<ConversationMeta> {
    let tx = savepoint(conn)?;
    let meta = read_meta(&tx, user, id)?;
    let mut pool = read_pool(&tx, user, id)?;
    let Some(target) = pool
        .sibling_at(meta.message_count, index, position)
        .map_err(|e| branch_error(e, limits))?
    else {
        return Ok(meta);
    };
    let removed = read_suffix(&tx, user, id, index)?;
    let suffix = pool
        .switch(index, removed, target)
        .map_err(|e| branch_error(e, limits))?;
    let meta = rewrite(&tx, user, id, index, &suffix, &pool)?;
    tx.commit()?;
    Ok(meta)
}
