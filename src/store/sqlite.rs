//! The embedded store: one SQLite file (WAL) holding conversations, their
//! messages (one row each, with a cached token count), an FTS5 index over
//! message text, and the HTTP sessions (`crate::sessions::sqlite`).
//!
//! rusqlite is blocking, so every call runs on the blocking pool through
//! [`SqliteDb::call`]. One connection serialises writers, which SQLite does
//! anyway; reads are short.

use std::path::Path;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    rfc3339, search_terms, title_from, Conversation, ConversationMeta, ConversationStore,
    NewMessage, SearchHit, StoreError, StoreResult, StoredMessage, Summary,
};
use crate::domain::{ChatMessage, ConversationId, Role, UserId};

const SCHEMA: &str = r#"
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

/// Full-text indexing is deferred: a turn's messages are written with
/// `indexed = 0` and [`index_pending`] adds them to `messages_fts` in bulk
/// (about once a second, and before every search), so a turn does not pay
/// for an FTS5 flush. Until version 2 a trigger indexed each insert: those
/// rows are all indexed, hence the column's default of 1 when it is added.
const FTS_MIGRATION: &str = r#"
DROP TRIGGER IF EXISTS messages_ai;
DROP TRIGGER IF EXISTS messages_ad;
CREATE TRIGGER messages_ad AFTER DELETE ON messages WHEN old.indexed = 1 BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE INDEX IF NOT EXISTS messages_unindexed ON messages (id) WHERE indexed = 0;
"#;

/// Adds the messages not yet in the full-text index; returns how many.
fn index_pending(conn: &mut Connection) -> rusqlite::Result<usize> {
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
const INDEX_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Brings an older database to the current schema (idempotent).
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let has_indexed = tx
        .prepare("SELECT 1 FROM pragma_table_info('messages') WHERE name = 'indexed'")?
        .exists([])?;
    if !has_indexed {
        tx.execute_batch("ALTER TABLE messages ADD COLUMN indexed INTEGER NOT NULL DEFAULT 1")?;
    }
    tx.execute_batch(FTS_MIGRATION)?;
    tx.commit()
}

/// The SQLite connection, owned by one thread that runs the store's calls
/// in order. Calls that queue up while one runs are committed together:
/// each in a savepoint of its own (a failing call undoes only itself), the
/// batch in one transaction, so under load many turns share one WAL commit
/// and one full-text index flush. A call's result is handed back only once
/// its batch is committed.
#[derive(Clone)]
pub struct SqliteDb {
    jobs: std::sync::mpsc::Sender<Job>,
}

/// One call: runs on the connection, returns what finishes it once the
/// batch's commit is known (`Some` error when the commit failed).
type Job = Box<dyn FnOnce(&mut Connection) -> Finish + Send>;
type Finish = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;

/// Calls committed together at most.
const MAX_BATCH: usize = 64;

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteDb")
    }
}

impl SqliteDb {
    /// Opens (creating the file and its folder) and migrates the database,
    /// and starts the thread that owns the connection.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating the folder {}", parent.display()))?;
        }
        let mut conn = Connection::open(path)
            .with_context(|| format!("opening the database {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .context("setting database pragmas")?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("creating the schema in {}", path.display()))?;
        migrate(&mut conn).with_context(|| format!("updating the schema in {}", path.display()))?;
        conn.set_prepared_statement_cache_capacity(64);
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || {
                // Ends when every SqliteDb handle is dropped.
                let mut indexed_at = std::time::Instant::now();
                loop {
                    let first = match queue.recv_timeout(INDEX_EVERY) {
                        Ok(job) => Some(job),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    if let Some(first) = first {
                        let mut batch = vec![first];
                        while batch.len() < MAX_BATCH {
                            match queue.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                        run_batch(&mut conn, batch);
                    }
                    if indexed_at.elapsed() >= INDEX_EVERY {
                        indexed_at = std::time::Instant::now();
                        let index: Job = Box::new(|conn| {
                            if let Err(err) = index_pending(conn) {
                                tracing::warn!(error = %err, "could not update the search index; retrying later");
                            }
                            Box::new(|_| {})
                        });
                        run_batch(&mut conn, vec![index]);
                    }
                }
            })
            .context("starting the database thread")?;
        Ok(Self { jobs })
    }

    /// Runs `work` with the connection on the database thread.
    pub async fn call<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = work(conn);
            Box::new(move |commit: Option<&rusqlite::Error>| {
                let result = match (result, commit) {
                    (Ok(_), Some(err)) => Err(commit_failure(err)),
                    (result, _) => result,
                };
                let _ = tx.send(result);
            })
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Backend(anyhow::anyhow!("the database thread has stopped")))?;
        rx.await.map_err(|_| {
            StoreError::Backend(anyhow::anyhow!("a database call failed (it panicked)"))
        })?
    }
}

/// Runs queued calls in one transaction, then finishes each.
fn run_batch(conn: &mut Connection, batch: Vec<Job>) {
    // IMMEDIATE: the write lock is taken (waiting up to busy_timeout) now,
    // not on the first write, where another process sharing the file (a
    // second instance in tests, `migrate`) would make it fail at once.
    // Without the outer transaction (BEGIN failed) each call still runs in
    // its own savepoint, which SQLite commits on release.
    let outer = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
    let mut finishes = Vec::with_capacity(batch.len());
    for job in batch {
        // A panicking call drops its sender (its caller gets an error); its
        // savepoint rolls back as it unwinds; the others go on.
        if let Ok(finish) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn))) {
            finishes.push(finish);
        }
    }
    let commit = if outer {
        conn.execute_batch("COMMIT").err()
    } else {
        None
    };
    if commit.is_some() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for finish in finishes {
        finish(commit.as_ref());
    }
}

/// The error every call of a batch whose commit failed gets.
fn commit_failure(err: &rusqlite::Error) -> StoreError {
    if is_busy(err) {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Backend(anyhow::anyhow!("commit failed: {err}"))
    }
}

/// Another connection holds the lock (retryable).
fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(
                code.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
    )
}

/// Runs a statement through the statement cache.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> StoreResult<usize> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute(params))
        .map_err(backend)
}

fn backend(err: rusqlite::Error) -> StoreError {
    if is_busy(&err) {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Backend(err.into())
    }
}

fn parse_time(raw: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })
}

const META_COLUMNS: &str = "conversation_id, created_at, updated_at, title, message_count";

fn meta_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ConversationMeta> {
    let id: String = row.get(0)?;
    let created: String = row.get(1)?;
    let updated: String = row.get(2)?;
    Ok(ConversationMeta {
        conversation_id: ConversationId::parse(&id).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })?,
        created_at: parse_time(&created)?,
        updated_at: parse_time(&updated)?,
        title: row.get(3)?,
        message_count: row.get::<_, i64>(4)?.max(0) as u64,
    })
}

fn read_meta(conn: &Connection, user: &str, id: &str) -> StoreResult<ConversationMeta> {
    conn.prepare_cached(
        "SELECT conversation_id, created_at, updated_at, title, message_count \
         FROM conversations WHERE user_id = ?1 AND conversation_id = ?2",
    )
    .and_then(|mut stmt| stmt.query_row(params![user, id], meta_from_row).optional())
    .map_err(backend)?
    .ok_or(StoreError::NotFound)
}

/// A whole conversation, read inside the caller's transaction.
fn read_conversation(
    conn: &Connection,
    user: &str,
    id: &ConversationId,
) -> StoreResult<Conversation> {
    let meta = read_meta(conn, user, id.as_ref())?;
    let summary = conn
        .prepare_cached(
            "SELECT summary, summary_covers, summary_tokens FROM conversations WHERE user_id = ?1 AND conversation_id = ?2",
        )
        .and_then(|mut stmt| stmt.query_row(
            params![user, id.as_ref()],
            |row| {
                let text: Option<String> = row.get(0)?;
                Ok(text.map(|text| Summary {
                    text,
                    covers: row.get::<_, i64>(1).unwrap_or(0).max(0) as usize,
                    tokens: row.get::<_, i64>(2).unwrap_or(0).max(0) as u32,
                }))
            },
        ))
        .map_err(backend)?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT role, content, tokens FROM messages WHERE user_id = ?1 AND conversation_id = ?2 ORDER BY seq",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![user, id.as_ref()], |row| {
            let role: String = row.get(0)?;
            Ok(StoredMessage {
                message: ChatMessage::new(
                    Role::parse(&role).unwrap_or(Role::User),
                    row.get_ref(1)?.as_str()?,
                ),
                tokens: row.get::<_, Option<i64>>(2)?.map(|t| t.max(0) as u32),
            })
        })
        .map_err(backend)?;
    let messages = rows.collect::<Result<Vec<_>, _>>().map_err(backend)?;
    Ok(Conversation {
        meta,
        messages: messages.into(),
        summary,
    })
}

/// The SQLite conversation store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    db: SqliteDb,
}

impl SqliteStore {
    pub fn new(db: SqliteDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl ConversationStore for SqliteStore {
    async fn create(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let now = rfc3339::format(&Utc::now());
                exec(
                    conn,
                    "INSERT INTO conversations (user_id, conversation_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                    params![user, id.as_ref(), now],
                )?;
                read_meta(conn, &user, id.as_ref())
            })
            .await
    }

    async fn load(&self, user: &UserId, id: &ConversationId) -> StoreResult<Conversation> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let tx = conn.savepoint().map_err(backend)?;
                read_conversation(&tx, &user, &id)
            })
            .await
    }

    async fn meta(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| read_meta(conn, &user, id.as_ref()))
            .await
    }

    async fn list(
        &self,
        user: &UserId,
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<ConversationMeta>> {
        let user = user.to_string();
        self.db
            .call(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {META_COLUMNS} FROM conversations WHERE user_id = ?1 \
                         ORDER BY created_at DESC, conversation_id LIMIT ?2 OFFSET ?3"
                    ))
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![user, limit, offset], meta_from_row)
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn append(
        &self,
        user: &UserId,
        id: &ConversationId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<ConversationMeta> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let tx = conn.savepoint().map_err(backend)?;
                let meta = read_meta(&tx, &user, id.as_ref())?;
                let now = rfc3339::format(&Utc::now());
                let mut seq = meta.message_count as i64;
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO messages (user_id, conversation_id, seq, role, content, tokens, created_at, indexed) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
                        )
                        .map_err(backend)?;
                    for message in &messages {
                        insert
                            .execute(params![
                                user,
                                id.as_ref(),
                                seq,
                                message.role.as_str(),
                                message.content,
                                message.tokens,
                                now
                            ])
                            .map_err(backend)?;
                        seq += 1;
                    }
                }
                let title = if meta.title.is_none() {
                    messages
                        .iter()
                        .find(|m| m.role == Role::User)
                        .and_then(|m| title_from(&m.content))
                } else {
                    None
                };
                exec(
                    &tx,
                    "UPDATE conversations SET message_count = ?3, updated_at = ?4, title = COALESCE(title, ?5) \
                     WHERE user_id = ?1 AND conversation_id = ?2",
                    params![user, id.as_ref(), seq, now, title],
                )?;
                let meta = read_meta(&tx, &user, id.as_ref())?;
                tx.commit().map_err(backend)?;
                Ok(meta)
            })
            .await
    }

    async fn delete_last_message(
        &self,
        user: &UserId,
        id: &ConversationId,
    ) -> StoreResult<Option<ChatMessage>> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let tx = conn.savepoint().map_err(backend)?;
                read_meta(&tx, &user, id.as_ref())?;
                let last = tx
                    .query_row(
                        "SELECT id, role, content FROM messages WHERE user_id = ?1 AND conversation_id = ?2 \
                         ORDER BY seq DESC LIMIT 1",
                        params![user, id.as_ref()],
                        |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?)),
                    )
                    .optional()
                    .map_err(backend)?;
                let Some((row, role, content)) = last else {
                    return Ok(None);
                };
                tx.execute("DELETE FROM messages WHERE id = ?1", params![row])
                    .map_err(backend)?;
                tx.execute(
                    "UPDATE conversations SET message_count = message_count - 1, updated_at = ?3 \
                     WHERE user_id = ?1 AND conversation_id = ?2",
                    params![user, id.as_ref(), rfc3339::format(&Utc::now())],
                )
                .map_err(backend)?;
                tx.commit().map_err(backend)?;
                Ok(Some(ChatMessage::new(Role::parse(&role).unwrap_or(Role::User), content)))
            })
            .await
    }

    async fn reset(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let tx = conn.savepoint().map_err(backend)?;
                read_meta(&tx, &user, id.as_ref())?;
                tx.execute(
                    "DELETE FROM messages WHERE user_id = ?1 AND conversation_id = ?2",
                    params![user, id.as_ref()],
                )
                .map_err(backend)?;
                tx.execute(
                    "UPDATE conversations SET message_count = 0, title = NULL, summary = NULL, \
                     summary_covers = 0, summary_tokens = 0, updated_at = ?3 \
                     WHERE user_id = ?1 AND conversation_id = ?2",
                    params![user, id.as_ref(), rfc3339::format(&Utc::now())],
                )
                .map_err(backend)?;
                let meta = read_meta(&tx, &user, id.as_ref())?;
                tx.commit().map_err(backend)?;
                Ok(meta)
            })
            .await
    }

    async fn delete(&self, user: &UserId, id: &ConversationId) -> StoreResult<()> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let tx = conn.savepoint().map_err(backend)?;
                let removed = tx
                    .execute(
                        "DELETE FROM conversations WHERE user_id = ?1 AND conversation_id = ?2",
                        params![user, id.as_ref()],
                    )
                    .map_err(backend)?;
                if removed == 0 {
                    return Err(StoreError::NotFound);
                }
                tx.execute(
                    "DELETE FROM messages WHERE user_id = ?1 AND conversation_id = ?2",
                    params![user, id.as_ref()],
                )
                .map_err(backend)?;
                tx.commit().map_err(backend)
            })
            .await
    }

    async fn set_summary(
        &self,
        user: &UserId,
        id: &ConversationId,
        summary: Summary,
    ) -> StoreResult<()> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let changed = conn
                    .execute(
                        "UPDATE conversations SET summary = ?3, summary_covers = ?4, summary_tokens = ?5 \
                         WHERE user_id = ?1 AND conversation_id = ?2",
                        params![user, id.as_ref(), summary.text, summary.covers as i64, summary.tokens],
                    )
                    .map_err(backend)?;
                if changed == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            })
            .await
    }

    async fn set_title(
        &self,
        user: &UserId,
        id: &ConversationId,
        title: &str,
    ) -> StoreResult<ConversationMeta> {
        let (user, id, title) = (user.to_string(), id.clone(), title.to_string());
        self.db
            .call(move |conn| {
                conn.execute(
                    "UPDATE conversations SET title = ?3 WHERE user_id = ?1 AND conversation_id = ?2",
                    params![user, id.as_ref(), title],
                )
                .map_err(backend)?;
                read_meta(conn, &user, id.as_ref())
            })
            .await
    }

    async fn search(&self, user: &UserId, query: &str, limit: u32) -> StoreResult<Vec<SearchHit>> {
        let terms = search_terms(query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        // Each term quoted: FTS5 syntax in the user's text cannot take effect.
        let fts_query = terms
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(" OR ");
        let user = user.to_string();
        self.db
            .call(move |conn| {
                // Every stored message is searchable, however recent.
                index_pending(conn).map_err(backend)?;
                // bm25() only works in a plain FTS query, so the hits are
                // materialised before the join. It is lower for better matches; a conversation's score
                // is the sum over its matching messages, so more mentions rank
                // higher, as MongoDB's textScore does.
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "WITH hits AS MATERIALIZED (SELECT rowid AS id, -bm25(messages_fts) AS rank \
                                       FROM messages_fts WHERE messages_fts MATCH ?1), \
                              scored AS (SELECT m.conversation_id AS cid, SUM(hits.rank) AS score \
                                         FROM hits JOIN messages m ON m.id = hits.id \
                                         WHERE m.user_id = ?2 GROUP BY m.conversation_id) \
                         SELECT {cols}, scored.score FROM scored \
                         JOIN conversations c ON c.user_id = ?2 AND c.conversation_id = scored.cid \
                         ORDER BY scored.score DESC LIMIT ?3",
                        cols = META_COLUMNS
                            .split(", ")
                            .map(|c| format!("c.{c}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![fts_query, user, limit], |row| {
                        Ok(SearchHit {
                            meta: meta_from_row(row)?,
                            // Tiny positive floor: a hit always scores above 0.
                            score: row.get::<_, f64>(5)?.max(1e-6),
                        })
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn count_all(&self) -> StoreResult<u64> {
        self.db
            .call(|conn| {
                conn.query_row("SELECT COUNT(*) FROM conversations", [], |row| {
                    row.get::<_, i64>(0)
                })
                .map(|n| n.max(0) as u64)
                .map_err(backend)
            })
            .await
    }

    async fn export_page(
        &self,
        after: Option<(UserId, ConversationId)>,
        limit: u32,
    ) -> StoreResult<Vec<(UserId, Conversation)>> {
        let (after_user, after_id) = after
            .map(|(u, c)| (u.to_string(), c.to_string()))
            .unwrap_or_default();
        self.db
            .call(move |conn| {
                let tx = conn.savepoint().map_err(backend)?;
                let keys = {
                    let mut stmt = tx
                        .prepare_cached(
                            "SELECT user_id, conversation_id FROM conversations \
                             WHERE (user_id, conversation_id) > (?1, ?2) \
                             ORDER BY user_id, conversation_id LIMIT ?3",
                        )
                        .map_err(backend)?;
                    let rows = stmt
                        .query_map(params![after_user, after_id, limit], |row| {
                            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                        })
                        .map_err(backend)?;
                    rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
                };
                let mut page = Vec::with_capacity(keys.len());
                for (user, raw_id) in keys {
                    let Ok(id) = ConversationId::parse(&raw_id) else {
                        tracing::warn!(conversation = %raw_id, "skipping a row with a malformed id");
                        continue;
                    };
                    let conversation = read_conversation(&tx, &user, &id)?;
                    page.push((UserId::from_stored(user), conversation));
                }
                Ok(page)
            })
            .await
    }

    async fn import(&self, user: &UserId, conversation: &Conversation) -> StoreResult<bool> {
        let (user, conversation) = (user.to_string(), conversation.clone());
        self.db
            .call(move |conn| {
                let tx = conn.savepoint().map_err(backend)?;
                let meta = &conversation.meta;
                let summary = conversation.summary.as_ref();
                let inserted = tx
                    .execute(
                        "INSERT OR IGNORE INTO conversations (user_id, conversation_id, title, summary, \
                         summary_covers, summary_tokens, message_count, created_at, updated_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
                        ],
                    )
                    .map_err(backend)?;
                if inserted == 0 {
                    return Ok(false);
                }
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO messages (user_id, conversation_id, seq, role, content, tokens, created_at, indexed) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
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
                tx.commit().map_err(backend)?;
                Ok(true)
            })
            .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db
            .call(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
            .await
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("nested/chat.db")).unwrap();
        (dir, SqliteStore::new(db))
    }

    fn msg(role: Role, content: &str) -> NewMessage {
        NewMessage {
            role,
            content: content.to_string(),
            tokens: Some(3),
        }
    }

    #[tokio::test]
    async fn append_keeps_order_sets_title_and_is_scoped_to_the_owner() {
        let (_dir, store) = store();
        let (alice, bob) = (UserId::new(), UserId::new());
        let id = ConversationId::new();
        store.create(&alice, &id).await.unwrap();

        let meta = store
            .append(
                &alice,
                &id,
                vec![
                    msg(Role::User, "first question"),
                    msg(Role::Assistant, "answer"),
                ],
            )
            .await
            .unwrap();
        store
            .append(&alice, &id, vec![msg(Role::User, "second")])
            .await
            .unwrap();

        assert_eq!(meta.title.as_deref(), Some("first question"));
        let loaded = store.load(&alice, &id).await.unwrap();
        let contents: Vec<_> = loaded
            .messages
            .iter()
            .map(|m| &*m.message.content)
            .collect();
        assert_eq!(contents, ["first question", "answer", "second"]);
        assert_eq!(loaded.meta.message_count, 3);
        assert!(matches!(
            store.load(&bob, &id).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.append(&bob, &id, vec![msg(Role::User, "x")]).await,
            Err(StoreError::NotFound)
        ));
        assert!(store.list(&bob, 10, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn search_ranks_more_mentions_first_and_ignores_other_users() {
        let (_dir, store) = store();
        let (alice, bob) = (UserId::new(), UserId::new());
        let (once, twice, other) = (
            ConversationId::new(),
            ConversationId::new(),
            ConversationId::new(),
        );
        for id in [&once, &twice] {
            store.create(&alice, id).await.unwrap();
        }
        store.create(&bob, &other).await.unwrap();
        store
            .append(&alice, &once, vec![msg(Role::User, "tell me about zebras")])
            .await
            .unwrap();
        store
            .append(
                &alice,
                &twice,
                vec![
                    msg(Role::User, "zebras again"),
                    msg(Role::Assistant, "zebras have stripes"),
                ],
            )
            .await
            .unwrap();
        store
            .append(&bob, &other, vec![msg(Role::User, "zebras zebras")])
            .await
            .unwrap();

        let hits = store.search(&alice, "Zebras!", 10).await.unwrap();

        let ids: Vec<_> = hits
            .iter()
            .map(|h| h.meta.conversation_id.clone())
            .collect();
        assert_eq!(ids, vec![twice, once]);
        assert!(hits.iter().all(|h| h.score > 0.0));
        assert!(store.search(&alice, "\"(*", 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn reset_empties_history_and_summary_and_delete_removes() {
        let (_dir, store) = store();
        let user = UserId::new();
        let id = ConversationId::new();
        store.create(&user, &id).await.unwrap();
        store
            .append(&user, &id, vec![msg(Role::User, "secret plans")])
            .await
            .unwrap();
        store
            .set_summary(
                &user,
                &id,
                Summary {
                    text: "s".into(),
                    covers: 1,
                    tokens: 1,
                },
            )
            .await
            .unwrap();

        store.reset(&user, &id).await.unwrap();

        let loaded = store.load(&user, &id).await.unwrap();
        assert!(loaded.messages.is_empty() && loaded.summary.is_none());
        assert!(store.search(&user, "plans", 10).await.unwrap().is_empty());
        store.delete(&user, &id).await.unwrap();
        assert!(matches!(
            store.meta(&user, &id).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn export_then_import_copies_everything_once() {
        let (_dir, source) = store();
        let (_dir2, target) = store();
        let users = [UserId::new(), UserId::new()];
        for user in &users {
            for _ in 0..3 {
                let id = ConversationId::new();
                source.create(user, &id).await.unwrap();
                source
                    .append(
                        user,
                        &id,
                        vec![msg(Role::User, "hello"), msg(Role::Assistant, "hi")],
                    )
                    .await
                    .unwrap();
                source
                    .set_summary(
                        user,
                        &id,
                        Summary {
                            text: "greeting".into(),
                            covers: 2,
                            tokens: 1,
                        },
                    )
                    .await
                    .unwrap();
            }
        }

        let mut inserted = 0;
        for _ in 0..2 {
            let mut after = None;
            loop {
                let page = source.export_page(after.clone(), 4).await.unwrap();
                let Some((user, last)) = page.last() else {
                    break;
                };
                after = Some((user.clone(), last.meta.conversation_id.clone()));
                for (user, conversation) in &page {
                    inserted += target.import(user, conversation).await.unwrap() as usize;
                }
            }
        }

        assert_eq!(inserted, 6, "the second pass must insert nothing");
        for user in &users {
            let listed = target.list(user, 10, 0).await.unwrap();
            assert_eq!(listed, source.list(user, 10, 0).await.unwrap());
            let copy = target.load(user, &listed[0].conversation_id).await.unwrap();
            assert_eq!(
                copy.history(),
                source
                    .load(user, &listed[0].conversation_id)
                    .await
                    .unwrap()
                    .history()
            );
            assert_eq!(copy.summary.unwrap().text, "greeting");
            assert_eq!(copy.messages[0].tokens, Some(3));
        }
        assert_eq!(
            target.search(&users[0], "hello", 10).await.unwrap().len(),
            3
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

    #[tokio::test]
    async fn messages_are_indexed_in_the_background_and_deleting_an_unindexed_one_is_safe() {
        let (_dir, store) = store();
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        store
            .append(&user, &id, vec![msg(Role::User, "quokka facts")])
            .await
            .unwrap();
        // Removed before any indexing ran: no delete marker for a row the
        // index never had (that would corrupt FTS5's external content).
        assert_eq!(
            store
                .delete_last_message(&user, &id)
                .await
                .unwrap()
                .unwrap()
                .content
                .as_ref(),
            "quokka facts"
        );
        store
            .append(&user, &id, vec![msg(Role::User, "quokka again")])
            .await
            .unwrap();

        // The database thread indexes pending rows about once a second.
        let mut pending = i64::MAX;
        for _ in 0..50 {
            pending = store
                .db
                .call(|conn| {
                    conn.query_row("SELECT COUNT(*) FROM messages WHERE indexed = 0", [], |r| {
                        r.get(0)
                    })
                    .map_err(backend)
                })
                .await
                .unwrap();
            if pending == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(pending, 0, "nothing indexed the new message");
        let hits = store.search(&user, "quokka", 10).await.unwrap();
        assert_eq!(hits.len(), 1);
        let integrity: String = store
            .db
            .call(|conn| {
                conn.execute(
                    "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)",
                    [],
                )
                .map_err(backend)?;
                Ok("ok".to_string())
            })
            .await
            .unwrap();
        assert_eq!(integrity, "ok");
    }
}
