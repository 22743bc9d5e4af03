//! Keys led by what a turn's rows share with the other turns of the moment.
//!
//! Every turn writes a row of `conversations` (its counts), rows of
//! `messages` (through their unique index) and a row of `usage`. Keyed by
//! user first, with random user and conversation ids, each of those rows
//! lands on a page of its own in each B-tree, and every commit writes each
//! such page whole to the WAL: the `messages` index alone was about half of
//! what the WAL took under load (BENCHMARKS.md). Led by the conversation id
//! (time-ordered, version 7: `ConversationId::new`) and by the day, the rows
//! of the conversations in use sit together at the end of each B-tree.
//!
//! A file written before has its three tables rebuilt once, on open, in the
//! schema's transaction: the table is copied into one with the new key
//! (keeping every row id, which the search index refers to), the old one
//! dropped, the copy renamed, and the table's indexes made again. SQLite
//! cannot change a table's key in place. The triggers on `conversations`
//! and `messages` are dropped first (a rename checks every trigger against
//! the schema) and made again by the rest of the schema update.

use std::time::Instant;

use rusqlite::{params, Connection, OptionalExtension};

/// A table whose key changed: how its definition wrote the key before, and
/// how it writes it now (`schema`).
struct Rekey {
    table: &'static str,
    old: &'static str,
    new: &'static str,
}

const REKEYS: [Rekey; 3] = [
    Rekey {
        table: "conversations",
        old: "PRIMARY KEY (user_id, conversation_id)",
        new: "PRIMARY KEY (conversation_id, user_id)",
    },
    Rekey {
        table: "messages",
        old: "UNIQUE (user_id, conversation_id, seq)",
        new: "UNIQUE (conversation_id, user_id, seq)",
    },
    Rekey {
        table: "usage",
        old: "PRIMARY KEY (user_id, day)",
        new: "PRIMARY KEY (day, user_id)",
    },
];

/// Messages copied per statement, with a line in the log after each.
const COPY_SLICE: i64 = 200_000;

/// Rebuilds each table still keyed the old way (idempotent: a file done
/// before, or a new one, is left as it is).
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let mut pending = Vec::new();
    for rekey in &REKEYS {
        let sql: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [rekey.table],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(sql) = sql.filter(|sql| sql.contains(rekey.old)) {
            pending.push((rekey, sql));
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    drop_triggers(conn)?;
    for (rekey, sql) in pending {
        rebuild(conn, rekey, &sql)?;
    }
    Ok(())
}

/// Drops the triggers on `conversations` and `messages` (the schema update
/// makes them again).
fn drop_triggers(conn: &Connection) -> rusqlite::Result<()> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' \
             AND tbl_name IN ('conversations', 'messages')",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for name in names {
        conn.execute_batch(&format!("DROP TRIGGER \"{name}\";"))?;
    }
    Ok(())
}

/// Copies `rekey.table` (defined by `sql`) into a table with the new key
/// and puts the copy in its place, with the table's indexes.
fn rebuild(conn: &Connection, rekey: &Rekey, sql: &str) -> rusqlite::Result<()> {
    let table = rekey.table;
    let copy = format!("{table}_rekeyed");
    let started = Instant::now();
    let rows: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
        row.get(0)
    })?;
    tracing::info!(
        table,
        rows,
        "rebuilding a table of the database with its new key (once, on the first open by this version)"
    );
    // The definition as stored (every column added since included), from
    // its column list on, under the copy's name and with the new key.
    let columns = &sql[sql.find('(').unwrap_or(0)..];
    conn.execute_batch(&format!(
        "DROP TABLE IF EXISTS {copy}; CREATE TABLE {copy} {};",
        columns.replacen(rekey.old, rekey.new, 1)
    ))?;
    let indexes: Vec<String> = conn
        .prepare(
            "SELECT sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?1 \
             AND sql IS NOT NULL",
        )?
        .query_map([table], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    if table == "messages" {
        copy_messages(conn, &copy, rows)?;
    } else {
        conn.execute_batch(&format!("INSERT INTO {copy} SELECT * FROM {table};"))?;
    }
    conn.execute_batch(&format!(
        "DROP TABLE {table}; ALTER TABLE {copy} RENAME TO {table};"
    ))?;
    for index in indexes {
        conn.execute_batch(&index)?;
    }
    tracing::info!(
        table,
        rows,
        seconds = started.elapsed().as_secs_f64(),
        "rebuilt the table with its new key"
    );
    Ok(())
}

/// Copies `messages` into `copy` a slice of row ids at a time (each row
/// keeps its id), logging how far it got: a large file takes a while.
fn copy_messages(conn: &Connection, copy: &str, rows: i64) -> rusqlite::Result<()> {
    let last: i64 = conn.query_row("SELECT coalesce(max(id), 0) FROM messages", [], |row| {
        row.get(0)
    })?;
    let mut insert = conn.prepare(&format!(
        "INSERT INTO {copy} SELECT * FROM messages WHERE id > ?1 AND id <= ?2"
    ))?;
    let (mut from, mut copied) = (0_i64, 0_usize);
    while from < last {
        let to = from.saturating_add(COPY_SLICE);
        copied += insert.execute(params![from, to])?;
        from = to;
        if from < last {
            tracing::info!(copied, of = rows, "copying messages");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use super::super::schema::SCHEMA;
    use super::super::tests::msg;
    use super::super::{SqliteDb, SqliteStore};
    use super::*;
    use crate::domain::{ConversationId, Role, UserId};
    use crate::store::usage::{DayUsage, UsageStore};
    use crate::store::ConversationStore;

    /// The first column of the index SQLite made for `table`'s key.
    fn key_leads_with(path: &std::path::Path, table: &str) -> String {
        let conn = Connection::open(path).unwrap();
        conn.query_row(
            "SELECT i.name FROM pragma_index_list(?1) l, pragma_index_info(l.name) i \
             WHERE l.origin IN ('pk', 'u') AND i.seqno = 0",
            [table],
            |row| row.get(0),
        )
        .unwrap()
    }

    fn names(path: &std::path::Path, kind: &str) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = ?1 AND sql IS NOT NULL ORDER BY name",
            )
            .unwrap();
        let names = stmt
            .query_map([kind], |row| row.get(0))
            .unwrap()
            .collect::<Result<Vec<String>, _>>()
            .unwrap();
        names
    }

    /// Each table's name and first page (a rebuild gives it another).
    fn root_pages(path: &std::path::Path) -> Vec<(String, i64)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT name, rootpage FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap();
        let pages = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        pages
    }

    /// A file whose tables are keyed by user first, as every version
    /// before wrote them, with a conversation of two messages (not yet in
    /// the search index) and a day of usage.
    fn file_keyed_by_user(path: &std::path::Path, user: &UserId, id: &ConversationId) {
        let mut old = SCHEMA.to_string();
        for rekey in &REKEYS[..2] {
            old = old.replace(rekey.new, rekey.old);
        }
        // As every earlier version wrote them (not from `REKEYS`).
        assert!(old.contains("UNIQUE (user_id, conversation_id, seq)"));
        assert!(old.contains("PRIMARY KEY (user_id, conversation_id)"));
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(&old).unwrap();
        conn.execute_batch(
            "CREATE TABLE usage (
                 user_id TEXT NOT NULL, day TEXT NOT NULL,
                 prompt_tokens INTEGER NOT NULL DEFAULT 0,
                 completion_tokens INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (user_id, day)
             ) WITHOUT ROWID;
             CREATE INDEX usage_by_day ON usage (day);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO conversations (user_id, conversation_id, title, message_count, created_at, updated_at) \
             VALUES (?1, ?2, 'Okapis', 2, '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
            params![user.as_ref(), id.as_ref()],
        )
        .unwrap();
        for (seq, (row, role, text)) in [
            (40, "user", "where do okapis live"),
            (41, "assistant", "in the Ituri forest"),
        ]
        .into_iter()
        .enumerate()
        {
            conn.execute(
                "INSERT INTO messages (id, user_id, conversation_id, seq, role, content, created_at, indexed) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, '2026-01-01T00:00:00.000000Z', 0)",
                params![row, user.as_ref(), id.as_ref(), seq as i64, role, text],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO usage (user_id, day, prompt_tokens, completion_tokens) VALUES (?1, '2026-01-01', 7, 5)",
            [user.as_ref()],
        )
        .unwrap();
    }

    /// A file keyed by user first gets every key led by the conversation
    /// (or the day) on open, and keeps everything: the conversation, its
    /// messages with their row ids, search, the usage, the indexes and the
    /// triggers (a change moves the revision on). A second open changes
    /// nothing.
    #[tokio::test]
    async fn a_file_keyed_by_user_first_is_rekeyed_on_open_and_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyed-by-user.db");
        let (user, id) = (UserId::new(), ConversationId::new());
        file_keyed_by_user(&path, &user, &id);
        assert_eq!(key_leads_with(&path, "messages"), "user_id");

        let store = SqliteStore::new(SqliteDb::open(&path).unwrap());

        assert_eq!(key_leads_with(&path, "conversations"), "conversation_id");
        assert_eq!(key_leads_with(&path, "messages"), "conversation_id");
        assert_eq!(key_leads_with(&path, "usage"), "day");
        let indexes = names(&path, "index");
        assert!(indexes.contains(&"conversations_by_created".to_string()));
        assert!(indexes.contains(&"messages_unindexed".to_string()));
        assert!(!indexes.contains(&"usage_by_day".to_string()));
        assert_eq!(
            names(&path, "trigger"),
            [
                "conversations_revised",
                "messages_changed_revise",
                "messages_deleted_unindex",
                "messages_moved_unindex",
                "messages_removed_revise"
            ]
        );
        let ids: Vec<i64> = Connection::open(&path)
            .unwrap()
            .prepare("SELECT id FROM messages ORDER BY seq")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, [40, 41]);

        let loaded = store.load(&user, &id).await.unwrap();
        let texts: Vec<&str> = loaded
            .messages
            .iter()
            .map(|m| m.message.content.as_ref())
            .collect();
        assert_eq!(texts, ["where do okapis live", "in the Ituri forest"]);
        let listed = store.list(&user, 10, 0).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].title.as_deref(), Some("Okapis"));
        let hits = store.search(&user, "ituri", 10).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].meta.conversation_id, id);
        let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let spent = DayUsage {
            prompt_tokens: 1,
            completion_tokens: 1,
        };
        store.add_usage(&user, day, spent).await.unwrap();
        let standing = store.standing(&user, day).await.unwrap();
        assert_eq!(standing.used.prompt_tokens, 8);
        assert_eq!(standing.used.completion_tokens, 6);

        let before = store.revision(&user, &id).await.unwrap().unwrap();
        store
            .append(&user, &id, vec![msg(Role::User, "and what do they eat")])
            .await
            .unwrap();
        assert!(store.revision(&user, &id).await.unwrap().unwrap() > before);
        drop(store);

        // Not rebuilt again: every table keeps its root page.
        let before = root_pages(&path);
        let store = SqliteStore::new(SqliteDb::open(&path).unwrap());
        assert_eq!(root_pages(&path), before);
        assert_eq!(store.load(&user, &id).await.unwrap().messages.len(), 3);
    }

    /// A new file is keyed the new way from the start.
    #[test]
    fn a_new_file_has_its_keys_led_by_the_conversation_and_the_day() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        drop(SqliteDb::open(&path).unwrap());
        assert_eq!(key_leads_with(&path, "conversations"), "conversation_id");
        assert_eq!(key_leads_with(&path, "messages"), "conversation_id");
        assert_eq!(key_leads_with(&path, "usage"), "day");
    }
}
