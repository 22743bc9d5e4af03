//! The database's layout: the tables (conversations, messages, the FTS5
//! index, sessions, accounts, access tokens, token usage and quotas)
//! created on open, and the migrations that bring a file written by an
//! older version up to date.

use rusqlite::Connection;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS conversations (
    user_id         TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    title           TEXT,
    summary         TEXT,
    summary_covers  INTEGER NOT NULL DEFAULT 0,
    summary_tokens  INTEGER NOT NULL DEFAULT 0,
    message_count   INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    -- UTF-8 bytes of the messages' text (NULL: not counted yet, see `TEXT_BYTES`).
    text_bytes      INTEGER,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversations_by_created ON conversations (user_id, created_at DESC);

CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY,
    user_id         TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content         TEXT NOT NULL,
    tokens          INTEGER,
    created_at      TEXT NOT NULL,
    -- 1 once the row is in messages_fts (see `index_pending`).
    indexed         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (user_id, conversation_id, seq)
);

CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
    content, content='messages', content_rowid='id', tokenize='unicode61'
);

CREATE TABLE IF NOT EXISTS sessions (
    id          TEXT PRIMARY KEY,
    data        TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at);
"#;

/// Local accounts (`AUTH_MODE=local`, `super::accounts`); `created_at` is
/// RFC 3339 text like every other time here. [`migrate`] creates it on
/// every open, so a file written by a version without accounts gets it too.
const USERS_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS users (
    user_id       TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    is_admin      INTEGER NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL
);
"#;

/// Identities from providers (OIDC, a trusted proxy) linked to accounts:
/// one row per `(provider, subject)`. Created by [`migrate`] on every open.
const IDENTITIES_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS identities (
    provider    TEXT NOT NULL,
    subject     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (provider, subject)
);
"#;

/// Personal access tokens (`super::tokens`): only the token's SHA-256 is
/// kept, unique, and found by it; a user's are listed through the index.
/// Created by [`migrate`] on every open, like `users`.
const TOKENS_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens (user_id, created_at DESC);
"#;

/// Token metering (`super::usage`): one row per user and UTC day, grown by
/// `INSERT .. ON CONFLICT DO UPDATE` (atomic), and the per-user daily quotas
/// an admin set. Created by [`migrate`] on every open, like `users`.
const USAGE_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS usage (
    user_id           TEXT NOT NULL,
    day               TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_day ON usage (day);
CREATE TABLE IF NOT EXISTS quotas (
    user_id        TEXT PRIMARY KEY,
    tokens_per_day INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Full-text indexing is deferred: a turn's messages are written with
/// `indexed = 0` and [`index_pending`](super::index::index_pending) adds
/// them to `messages_fts` in bulk (about once a second, and before every
/// search), so a turn does not pay for an FTS5 flush. Until version 2 a trigger indexed each insert: those
/// rows are all indexed, hence the column's default of 1 when it is added.
const FTS_MIGRATION: &str = r#"
DROP TRIGGER IF EXISTS messages_ai;
DROP TRIGGER IF EXISTS messages_ad;
CREATE TRIGGER messages_ad AFTER DELETE ON messages WHEN old.indexed = 1 BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE INDEX IF NOT EXISTS messages_unindexed ON messages (id) WHERE indexed = 0;
"#;

/// Each signed-in session names its account in `user_id` (NULL for an
/// anonymous browser), so signing out everywhere finds them all
/// (`SqliteSessionStore::revoke_user`). Sessions stored before the column
/// existed get it from their data.
const SESSIONS_BY_USER: &str = r#"
ALTER TABLE sessions ADD COLUMN user_id TEXT;
UPDATE sessions SET user_id = json_extract(data, '$.user_id')
    WHERE json_extract(data, '$.auth') IS NOT NULL;
"#;

/// The size counter of the conversation cap (`MAX_CONVERSATION_BYTES`):
/// rows written before it existed get NULL, and the next append counts
/// their text once (`super::limits`).
const TEXT_BYTES: &str = "ALTER TABLE conversations ADD COLUMN text_bytes INTEGER;";

/// Brings an older database to the current schema (idempotent).
pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    // IMMEDIATE: the write lock is taken (waiting up to busy_timeout) before
    // anything is read. A deferred transaction that reads first and then
    // writes fails at once with "database is locked" when another process
    // (a second instance starting beside this one) wrote meanwhile.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let has_indexed = tx
        .prepare("SELECT 1 FROM pragma_table_info('messages') WHERE name = 'indexed'")?
        .exists([])?;
    if !has_indexed {
        tx.execute_batch("ALTER TABLE messages ADD COLUMN indexed INTEGER NOT NULL DEFAULT 1")?;
    }
    let sessions_have_users = tx
        .prepare("SELECT 1 FROM pragma_table_info('sessions') WHERE name = 'user_id'")?
        .exists([])?;
    if !sessions_have_users {
        tx.execute_batch(SESSIONS_BY_USER)?;
    }
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id) WHERE user_id IS NOT NULL;",
    )?;
    let has_text_bytes = tx
        .prepare("SELECT 1 FROM pragma_table_info('conversations') WHERE name = 'text_bytes'")?
        .exists([])?;
    if !has_text_bytes {
        tx.execute_batch(TEXT_BYTES)?;
    }
    tx.execute_batch(FTS_MIGRATION)?;
    tx.execute_batch(USERS_SCHEMA)?;
    tx.execute_batch(TOKENS_SCHEMA)?;
    tx.execute_batch(IDENTITIES_SCHEMA)?;
    tx.execute_batch(USAGE_SCHEMA)?;
    tx.commit()
}

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use super::super::exec::backend;
    use super::super::tests::msg;
    use super::super::{SqliteDb, SqliteStore};
    use super::*;

    /// Several instances started at once on one new file (the cluster
    /// tests, a deployment's replicas) all open it: the schema update waits
    /// for the write lock instead of failing with "database is locked".
    #[test]
    fn instances_opening_one_new_file_at_once_all_get_the_schema() {
        for round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("shared-{round}.db"));
            let opened: Vec<_> = (0..6)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || SqliteDb::open(&path).map(|_| ()))
                })
                .collect();
            for handle in opened {
                if let Err(err) = handle.join().unwrap() {
                    panic!("round {round}: {err:#}");
                }
            }
        }
    }
    use crate::domain::{ConversationId, Role, UserId};
    use crate::store::ConversationStore;

    #[tokio::test]
    async fn a_database_of_the_trigger_indexed_version_is_migrated_and_stays_searchable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let (user, old_id) = (UserId::new(), ConversationId::new());
        {
            // The schema as it was: no `indexed` column, a trigger per insert.
            let conn = Connection::open(&path).unwrap();
            let old_schema = SCHEMA.replace(
                "    -- 1 once the row is in messages_fts (see `index_pending`).\n    indexed         INTEGER NOT NULL DEFAULT 0,\n",
                "",
            );
            assert!(!old_schema.contains("indexed "));
            conn.execute_batch(&old_schema).unwrap();
            conn.execute_batch(
                "CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
                     INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
                 END;
                 CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
                     INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
                 END;",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO conversations (user_id, conversation_id, message_count, created_at, updated_at) \
                 VALUES (?1, ?2, 1, '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
                params![user.as_ref(), old_id.as_ref()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO messages (user_id, conversation_id, seq, role, content, created_at) \
                 VALUES (?1, ?2, 0, 'user', 'ancient walrus', '2026-01-01T00:00:00.000000Z')",
                params![user.as_ref(), old_id.as_ref()],
            )
            .unwrap();
        }

        let store = SqliteStore::new(SqliteDb::open(&path).unwrap());
        let new_id = ConversationId::new();
        store.create(&user, &new_id).await.unwrap();
        store
            .append(&user, &new_id, vec![msg(Role::User, "modern walrus")])
            .await
            .unwrap();

        // Both found exactly once: the old row was not indexed a second time.
        let hits = store.search(&user, "walrus", 10).await.unwrap();
        let mut found: Vec<_> = hits
            .iter()
            .map(|h| h.meta.conversation_id.clone())
            .collect();
        found.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        let mut expected = vec![old_id.clone(), new_id.clone()];
        expected.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        assert_eq!(found, expected);
        let ancient = store.search(&user, "ancient", 10).await.unwrap();
        assert_eq!(ancient.len(), 1);

        // Deleting takes the old row out of the index too.
        store.delete(&user, &old_id).await.unwrap();
        assert!(store.search(&user, "ancient", 10).await.unwrap().is_empty());
        let rows: i64 = store
            .db
            .call(|conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM messages_fts WHERE messages_fts MATCH 'walrus'",
                    [],
                    |r| r.get(0),
                )
                .map_err(backend)
            })
            .await
            .unwrap();
        assert_eq!(rows, 1, "the index holds a stale or doubled row");
    }
}
