//! The deferred search indexing that keeps a turn from paying for an FTS5
//! flush: messages are written unindexed and added to `search_fts` in bulk
//! by the database thread, about once a second (see `schema` for the
//! layout). A leaf: it imports no sibling.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use crate::store::push_words;

/// Messages indexed per statement batch.
const BATCH: usize = 500;

/// How long one round of indexing may hold the database thread: a backlog
/// (a migrated file is indexed again) is worked off over several rounds,
/// with the calls that queued up meanwhile in between.
const ROUND: Duration = Duration::from_millis(200);

/// How often the database thread indexes new messages when it can.
pub(super) const INDEX_EVERY: Duration = Duration::from_secs(1);

/// A message's words as `search_fts` holds them: each prefixed with its
/// user's key, so a user's search can only ever read that user's postings.
pub(super) fn user_term(key: i64, word: &str) -> String {
    format!("{key}_{word}")
}

/// Indexes pending messages for up to [`ROUND`]; returns how many.
pub(super) fn index_pending(conn: &mut Connection) -> rusqlite::Result<usize> {
    let started = Instant::now();
    let mut total = 0;
    loop {
        let added = index_batch(conn)?;
        total += added;
        if added < BATCH || started.elapsed() >= ROUND {
            return Ok(total);
        }
    }
}

/// Indexes up to [`BATCH`] pending messages, all or none.
fn index_batch(conn: &mut Connection) -> rusqlite::Result<usize> {
    // A message indexed but still marked pending would be counted twice.
    let tx = conn.savepoint()?;
    let pending = tx
        .prepare_cached(
            "SELECT id, user_id, content FROM messages WHERE indexed = 0 ORDER BY id LIMIT ?1",
        )?
        .query_map([BATCH as i64], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // Each user's term prefix (`user_term(key, "")`), made once per batch.
    let mut prefixes: HashMap<String, String> = HashMap::new();
    let mut terms = String::new();
    for (id, user, content) in &pending {
        if !prefixes.contains_key(user) {
            let prefix = user_term(user_key(&tx, user)?, "");
            prefixes.insert(user.clone(), prefix);
        }
        terms.clear();
        push_words(content, &prefixes[user], &mut terms);
        tx.prepare_cached("INSERT INTO search_fts (rowid, terms) VALUES (?1, ?2)")?
            .execute(params![id, terms])?;
        tx.prepare_cached("UPDATE messages SET indexed = 1 WHERE id = ?1")?
            .execute([id])?;
    }
    tx.commit()?;
    Ok(pending.len())
}

/// The user's key in `search_users`, given on first use.
fn user_key(conn: &Connection, user: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("INSERT INTO search_users (user_id) VALUES (?1) ON CONFLICT DO NOTHING")?
        .execute([user])?;
    conn.prepare_cached("SELECT key FROM search_users WHERE user_id = ?1")?
        .query_row([user], |row| row.get(0))
}
