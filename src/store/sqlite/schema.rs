//! The database's layout: the tables (conversations, messages, the
//! per-user search index, sessions, accounts, access tokens, token usage and quotas)
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
    PRIMARY KEY (conversation_id, user_id)
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
    -- 1: in search_fts; 2: written above search_state.mark, in search_fts
    -- once the mark passes it; 0: not in search_fts (see `SEARCH_SCHEMA`).
    indexed         INTEGER NOT NULL DEFAULT 1,
    UNIQUE (conversation_id, user_id, seq)
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

/// Share links (`super::shares`): only the link token's SHA-256 is kept,
/// unique, and found by it; the snapshot's messages are a JSON array of
/// `{role, content}`. A user's are listed (and counted) through the index.
/// Created by [`migrate`] on every open, like `tokens`.
const SHARES_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS shares (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    token_hash      TEXT NOT NULL UNIQUE,
    title           TEXT,
    messages        TEXT NOT NULL,
    message_count   INTEGER NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shares_by_user ON shares (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS shares_by_conversation ON shares (user_id, conversation_id);
"#;

/// Token metering (`super::usage`): one row per UTC day and user, grown by
/// `INSERT .. ON CONFLICT DO UPDATE` (atomic), and the per-user daily quotas
/// an admin set. Created by [`migrate`] on every open, like `users`. Keyed
/// by day first (`super::rekey`): the day's rows sit together, and the
/// admin's view of a day reads them in order (an index by day went with
/// that key).
const USAGE_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS usage (
    user_id           TEXT NOT NULL,
    day               TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, user_id)
) WITHOUT ROWID;
DROP INDEX IF EXISTS usage_by_day;
CREATE TABLE IF NOT EXISTS quotas (
    user_id        TEXT PRIMARY KEY,
    tokens_per_day INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// The search index (`super::index`, `super::search`): FTS5 holds, for each
/// message (its rowid is the message's), the message's words each prefixed
/// with its user's key from `search_users` (`12_zebra`), so a search reads
/// only its own user's postings, and counts them through `search_vocab`: no
/// other user's text can be matched, or move a score. Contentless (the text
/// is in `messages`), with deletes by rowid. Indexing is deferred and
/// writes nothing per message: new messages are written with `indexed` = 2
/// above `search_state.mark` (row ids grow), and
/// [`index_slice`](super::index::index_slice) adds them in bulk (a slice
/// once a second, or with every batch of calls while behind) and moves the
/// mark past them. A message is in the index
/// when its `indexed` is 1, or 2 at or below the mark. 0 is for the few rows
/// that are not: moved to another user (`transfer_conversations` takes them
/// out and queues them again), left by a migration, or written by an older
/// version (whose indexer sets 1 without moving the mark, which is why 1
/// above the mark counts as indexed). A search counts its user's pending
/// messages itself. Deleting a message takes it out, and lowers the mark
/// when the newest rows go, so that a reused row id is never taken as
/// indexed.
const SEARCH_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS search_users (
    key     INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL UNIQUE
);
CREATE VIRTUAL TABLE IF NOT EXISTS search_fts USING fts5(
    terms, content='', contentless_delete=1, tokenize="ascii tokenchars '_'"
);
CREATE VIRTUAL TABLE IF NOT EXISTS search_vocab USING fts5vocab(search_fts, instance);
DROP TRIGGER IF EXISTS messages_ai;
DROP TRIGGER IF EXISTS messages_ad;
CREATE TABLE IF NOT EXISTS search_state (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    mark INTEGER NOT NULL
);
-- A file from before the mark: every row there is indexed or flagged.
INSERT OR IGNORE INTO search_state (id, mark) SELECT 1, coalesce(max(id), 0) FROM messages;
DROP TRIGGER IF EXISTS messages_unindex;
DROP TRIGGER IF EXISTS messages_moved;
CREATE TRIGGER IF NOT EXISTS messages_deleted_unindex AFTER DELETE ON messages BEGIN
    DELETE FROM search_fts WHERE rowid = old.id AND (old.indexed = 1
        OR (old.indexed = 2 AND old.id <= (SELECT mark FROM search_state WHERE id = 1)));
    UPDATE search_state SET mark = (SELECT coalesce(max(id), 0) FROM messages)
        WHERE id = 1 AND mark > (SELECT coalesce(max(id), 0) FROM messages);
END;
CREATE TRIGGER IF NOT EXISTS messages_moved_unindex AFTER UPDATE OF user_id ON messages
    WHEN new.user_id IS NOT old.user_id AND (old.indexed = 1
        OR (old.indexed = 2 AND old.id <= (SELECT mark FROM search_state WHERE id = 1))) BEGIN
    DELETE FROM search_fts WHERE rowid = old.id;
    UPDATE messages SET indexed = 0 WHERE id = old.id;
END;
CREATE INDEX IF NOT EXISTS messages_unindexed ON messages (id) WHERE indexed = 0;
DROP INDEX IF EXISTS messages_unindexed_by_user;
"#;

/// Before the per-user index there was `messages_fts`, FTS5 over every user's
/// text ranked by bm25, whose corpus-wide statistics let other users' text
/// move a score. It goes; every message is indexed again, in the
/// background (searches count what is not indexed yet themselves).
const OLD_FTS_MIGRATION: &str = r#"
DROP TRIGGER IF EXISTS messages_ai;
DROP TRIGGER IF EXISTS messages_ad;
DROP TABLE messages_fts;
UPDATE messages SET indexed = 0;
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
    let has_old_fts = tx
        .prepare("SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'")?
        .exists([])?;
    if has_old_fts {
        tx.execute_batch(OLD_FTS_MIGRATION)?;
    }
    super::rekey::migrate(&tx)?;
    tx.execute_batch(SEARCH_SCHEMA)?;
    tx.execute_batch(USERS_SCHEMA)?;
    tx.execute_batch(TOKENS_SCHEMA)?;
    tx.execute_batch(SHARES_SCHEMA)?;
    tx.execute_batch(IDENTITIES_SCHEMA)?;
    tx.execute_batch(USAGE_SCHEMA)?;
    super::branches::migrate(&tx)?;
    super::settings::migrate(&tx)?;
    super::revision::migrate(&tx)?;
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

    /// An instance opening the file while another holds the write lock
    /// longer than the 5 s every other call waits (a schema update that
    /// rebuilds the tables of a large file, `rekey`) waits for it and
    /// opens, instead of failing with "database is locked".
    #[test]
    fn an_open_waits_for_a_long_schema_update_of_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long-update.db");
        drop(SqliteDb::open(&path).unwrap());
        let mut other = Connection::open(&path).unwrap();
        let update = other
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        update
            .execute_batch("CREATE TABLE pretend_rebuild (n INTEGER)")
            .unwrap();
        let opening = {
            let path = path.clone();
            std::thread::spawn(move || SqliteDb::open(&path).map(|_| ()))
        };
        std::thread::sleep(std::time::Duration::from_millis(6_000));
        assert!(!opening.is_finished(), "the open did not wait for the lock");
        update.commit().unwrap();
        if let Err(err) = opening.join().unwrap() {
            panic!("the open failed: {err:#}");
        }
    }

    /// A file from before the pending scan read every user's unindexed
    /// messages loses the index of them by user on open (each message paid
    /// two writes in it), and a search still finds a user's unindexed text.
    #[tokio::test]
    async fn the_index_of_unindexed_messages_by_user_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("by-user.db");
        let index_exists = |path: &std::path::Path| {
            Connection::open(path)
                .unwrap()
                .prepare("SELECT 1 FROM sqlite_master WHERE name = 'messages_unindexed_by_user'")
                .unwrap()
                .exists([])
                .unwrap()
        };
        drop(SqliteDb::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE INDEX messages_unindexed_by_user ON messages (user_id) WHERE indexed = 0",
            )
            .unwrap();
        assert!(index_exists(&path));

        let store = SqliteStore::new(SqliteDb::open(&path).unwrap());
        assert!(!index_exists(&path));
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        store
            .append(&user, &id, vec![msg(Role::User, "an unindexed okapi")])
            .await
            .unwrap();
        let hits = store.search(&user, "okapi", 10).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].meta.conversation_id, id);
    }

    /// A file written before conversations had settings (no `model`,
    /// `system_prompt`, `temperature` columns, no `presets` table) is
    /// brought up to date on open: its conversations load with the
    /// defaults and take settings; presets can be made.
    #[tokio::test]
    async fn a_database_from_before_conversation_settings_gets_them_on_open() {
        use crate::store::presets::{NewPreset, PresetStore};
        use crate::store::ConversationSettings;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("before-settings.db");
        let (user, id) = (UserId::new(), ConversationId::new());
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute(
                "INSERT INTO conversations (user_id, conversation_id, message_count, created_at, updated_at) \
                 VALUES (?1, ?2, 1, '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
                params![user.as_ref(), id.as_ref()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO messages (user_id, conversation_id, seq, role, content, created_at) \
                 VALUES (?1, ?2, 0, 'user', 'old text', '2026-01-01T00:00:00.000000Z')",
                params![user.as_ref(), id.as_ref()],
            )
            .unwrap();
        }

        let store = SqliteStore::new(SqliteDb::open(&path).unwrap());

        let loaded = store.load(&user, &id).await.unwrap();
        assert_eq!(loaded.settings, ConversationSettings::default());
        assert_eq!(loaded.messages[0].message.content.as_ref(), "old text");
        let settings = ConversationSettings {
            model: Some("small".into()),
            system_prompt: Some("Be brief.".into()),
            temperature: Some(0.5),
        };
        store.set_settings(&user, &id, &settings).await.unwrap();
        assert_eq!(store.load(&user, &id).await.unwrap().settings, settings);
        let preset = NewPreset {
            name: "p".into(),
            model: None,
            system_prompt: None,
            temperature: None,
        };
        assert!(store
            .create_preset(&user, ConversationId::new().as_ref(), &preset, 5)
            .await
            .unwrap()
            .is_some());
        // Opening again changes nothing.
        drop(store);
        let again = SqliteStore::new(SqliteDb::open(&path).unwrap());
        assert_eq!(again.load(&user, &id).await.unwrap().settings, settings);
        assert_eq!(again.presets(&user).await.unwrap().len(), 1);
    }

    /// The version before the per-user index: `messages_fts` over every
    /// user's text, fed in bulk (`indexed` = 1 once in it). Its messages,
    /// indexed or not, are all found afterwards, for their own user only.
    #[tokio::test]
    async fn a_database_of_the_shared_index_version_is_migrated_and_stays_searchable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bm25.db");
        let (alice, bob) = (UserId::new(), UserId::new());
        let (indexed, pending, bobs) = (
            ConversationId::new(),
            ConversationId::new(),
            ConversationId::new(),
        );
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(
                "CREATE VIRTUAL TABLE messages_fts USING fts5(
                     content, content='messages', content_rowid='id', tokenize='unicode61'
                 );
                 CREATE TRIGGER messages_ad AFTER DELETE ON messages WHEN old.indexed = 1 BEGIN
                     INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
                 END;",
            )
            .unwrap();
            for (user, id, text, done) in [
                (&alice, &indexed, "the heron waits", 1),
                (&alice, &pending, "a heron, a heron", 0),
                (&bob, &bobs, "heron heron heron", 1),
            ] {
                conn.execute(
                    "INSERT INTO conversations (user_id, conversation_id, message_count, created_at, updated_at) \
                     VALUES (?1, ?2, 1, '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
                    params![user.as_ref(), id.as_ref()],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO messages (user_id, conversation_id, seq, role, content, created_at, indexed) \
                     VALUES (?1, ?2, 0, 'user', ?3, '2026-01-01T00:00:00.000000Z', ?4)",
                    params![user.as_ref(), id.as_ref(), text, done],
                )
                .unwrap();
            }
            conn.execute_batch(
                "INSERT INTO messages_fts (rowid, content) SELECT id, content FROM messages WHERE indexed = 1",
            )
            .unwrap();
        }

        let store = SqliteStore::new(SqliteDb::open(&path).unwrap());
        let found = |hits: Vec<crate::store::SearchHit>| {
            hits.into_iter()
                .map(|h| (h.meta.conversation_id, h.score))
                .collect::<Vec<_>>()
        };
        let expected = vec![(pending.clone(), 2.0), (indexed.clone(), 1.0)];
        // Before the background indexing, and after it.
        assert_eq!(
            found(store.search(&alice, "heron", 10).await.unwrap()),
            expected
        );
        store
            .db
            .call(|conn| super::super::index::index_pending(conn).map_err(backend))
            .await
            .unwrap();
        assert_eq!(
            found(store.search(&alice, "heron", 10).await.unwrap()),
            expected
        );
        assert_eq!(
            found(store.search(&bob, "heron", 10).await.unwrap()),
            vec![(bobs.clone(), 3.0)]
        );
        store.delete(&alice, &indexed).await.unwrap();
        assert_eq!(
            found(store.search(&alice, "heron waits", 10).await.unwrap()),
            vec![(pending, 2.0)]
        );
    }

    #[tokio::test]
    async fn a_database_of_the_trigger_indexed_version_is_migrated_and_stays_searchable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let (user, old_id) = (UserId::new(), ConversationId::new());
        {
            // The schema as it was: no `indexed` column, a trigger per insert.
            let conn = Connection::open(&path).unwrap();
            let old_schema = SCHEMA.replace(
                "    -- 1: in search_fts; 2: written above search_state.mark, in search_fts\n    -- once the mark passes it; 0: not in search_fts (see `SEARCH_SCHEMA`).\n    indexed         INTEGER NOT NULL DEFAULT 1,\n",
                "",
            );
            assert!(!old_schema.contains("indexed "));
            conn.execute_batch(&old_schema).unwrap();
            conn.execute_batch(
                "CREATE VIRTUAL TABLE messages_fts USING fts5(
                     content, content='messages', content_rowid='id', tokenize='unicode61'
                 );",
            )
            .unwrap();
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

        // Deleting takes the old row out of the index too, once indexed.
        store
            .db
            .call(|conn| super::super::index::index_pending(conn).map_err(backend))
            .await
            .unwrap();
        store.delete(&user, &old_id).await.unwrap();
        assert!(store.search(&user, "ancient", 10).await.unwrap().is_empty());
        // The old index is gone; the new one holds the one message left.
        let (old_index, rows): (bool, i64) = store
            .db
            .call(|conn| {
                super::super::index::index_pending(conn).map_err(backend)?;
                let old_index = conn
                    .prepare("SELECT 1 FROM sqlite_master WHERE name LIKE 'messages_fts%'")
                    .and_then(|mut s| s.exists([]))
                    .map_err(backend)?;
                let rows = conn
                    .query_row(
                        "SELECT COUNT(*) FROM search_vocab WHERE term LIKE '%\\_walrus' ESCAPE '\\'",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                Ok((old_index, rows))
            })
            .await
            .unwrap();
        assert!(!old_index, "messages_fts was not dropped");
        assert_eq!(rows, 1, "the index holds a stale or doubled row");
    }
}
