//! The deferred search indexing that keeps a turn from paying for an FTS5
//! flush: messages are written above the index's mark and added to
//! `search_fts` in bulk by the database thread, a slice at a time: once a
//! second, or with every batch of calls while it is behind (see `db` for
//! when, `schema` for the layout). A leaf: it imports no sibling.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{params, Connection};

use crate::store::push_words;

/// Messages the database thread indexes at a time ([`index_slice`]): about
/// 5 ms of work, which is what the calls of a batch that it joins wait for
/// it (rounds of up to 200 ms once a second made every turn that ended
/// meanwhile wait for the round under load). Each slice is a flush of
/// FTS5's postings; slices of 100 cost 4-6 % more instructions per turn,
/// 250 about 1 % (`BENCHMARKS.md`, session 15).
pub(super) const SLICE: usize = 250;

/// How often the database thread indexes new messages while it is not
/// behind; while it is (its last slice was full), a slice joins every batch
/// of calls, and runs on its own whenever no call is waiting.
pub(super) const INDEX_EVERY: Duration = Duration::from_secs(1);

/// A message's words as `search_fts` holds them: each prefixed with its
/// user's key, so a user's search can only ever read that user's postings.
pub(super) fn user_term(key: i64, word: &str) -> String {
    format!("{key}_{word}")
}

/// Indexes every pending message; returns how many (tests).
#[cfg(test)]
pub(super) fn index_pending(conn: &mut Connection) -> rusqlite::Result<usize> {
    let mut total = 0;
    loop {
        let added = index_slice(conn)?;
        total += added;
        if added < SLICE {
            return Ok(total);
        }
    }
}

/// Indexes up to [`SLICE`] pending messages, all or none, and returns how
/// many: first the flagged ones at or below the mark (moved to another
/// user, or left by a migration), then those above it, in id order, moving
/// the mark past them (see `SEARCH_SCHEMA`).
pub(super) fn index_slice(conn: &mut Connection) -> rusqlite::Result<usize> {
    // A message indexed but still counted as pending would be counted twice.
    let tx = conn.savepoint()?;
    // Read here, in the write transaction: another instance on the same
    // file may have moved it.
    let mark: i64 = tx
        .prepare_cached("SELECT mark FROM search_state WHERE id = 1")?
        .query_row([], |row| row.get(0))?;
    let read = |sql: &str, limit: usize| -> rusqlite::Result<Vec<(i64, String, String, i64)>> {
        tx.prepare_cached(sql)?
            .query_map(params![limit as i64, mark], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect()
    };
    let flagged = read(
        "SELECT id, user_id, content, indexed FROM messages INDEXED BY messages_unindexed \
         WHERE indexed = 0 AND id <= ?2 ORDER BY id LIMIT ?1",
        SLICE,
    )?;
    let above = if flagged.len() < SLICE {
        read(
            "SELECT id, user_id, content, indexed FROM messages NOT INDEXED \
             WHERE id > ?2 ORDER BY id LIMIT ?1",
            SLICE - flagged.len(),
        )?
    } else {
        Vec::new()
    };
    // Each user's term prefix (`user_term(key, "")`), made once per batch.
    let mut prefixes: HashMap<String, String> = HashMap::new();
    let mut terms = String::new();
    // 1 above the mark: an older version's indexer has added it already.
    for (id, user, content, _) in flagged.iter().chain(&above).filter(|row| row.3 != 1) {
        if !prefixes.contains_key(user) {
            let prefix = user_term(user_key(&tx, user)?, "");
            prefixes.insert(user.clone(), prefix);
        }
        terms.clear();
        push_words(content, &prefixes[user], &mut terms);
        tx.prepare_cached("INSERT INTO search_fts (rowid, terms) VALUES (?1, ?2)")?
            .execute(params![id, terms])?;
    }
    for (id, _, _, _) in &flagged {
        tx.prepare_cached("UPDATE messages SET indexed = 1 WHERE id = ?1")?
            .execute([id])?;
    }
    if let Some((last, _, _, _)) = above.last() {
        // Rows an older version wrote above the mark are flagged 0: set to 1
        // (indexed), or they would be taken as flagged below the new mark.
        tx.prepare_cached(
            "UPDATE messages SET indexed = 1 WHERE indexed = 0 AND id > ?1 AND id <= ?2",
        )?
        .execute(params![mark, last])?;
        tx.prepare_cached("UPDATE search_state SET mark = ?1 WHERE id = 1")?
            .execute([last])?;
    }
    tx.commit()?;
    Ok(flagged.len() + above.len())
}

/// The user's key in `search_users`, given on first use.
fn user_key(conn: &Connection, user: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("INSERT INTO search_users (user_id) VALUES (?1) ON CONFLICT DO NOTHING")?
        .execute([user])?;
    conn.prepare_cached("SELECT key FROM search_users WHERE user_id = ?1")?
        .query_row([user], |row| row.get(0))
}
