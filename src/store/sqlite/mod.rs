//! The embedded store: one SQLite file (WAL) holding conversations, their
//! messages (one row each, with a cached token count), a per-user FTS5
//! index over message text, local accounts, personal access tokens, and the HTTP
//! sessions (`crate::sessions::sqlite`).
//!
//! rusqlite is blocking, so every call runs on the database's own thread
//! through [`SqliteDb::call`]. One connection serialises writers, which
//! SQLite does anyway; reads are short. Searches, which can be long, run on
//! read-only connections of their own (`read`).
//!
//! The parts: `db` (the connection thread, batching, pragmas, the
//! checkpoint thread), `exec`
//! (statements and savepoints through the statement cache, busy
//! handling), `schema` (tables and migrations), `rekey` (the one-time
//! rebuild of a file whose keys led with the user),
//! `index` (the deferred full-text indexing), `read` (the read-only
//! connections), `search` (per-user FTS5 queries),
//! `rows` (reading conversations back), `accounts` (the `users` table:
//! `AccountStore`), `tokens` (the `tokens` table: `TokenStore`), `shares` (the `shares`
//! table: `ShareStore`), `usage`
//! (the `usage` and `quotas` tables: `UsageStore`); here,
//! [`SqliteStore`].

mod accounts;
mod branches;
mod db;
mod exec;
mod import;
mod index;
mod limits;
mod presets;
mod read;
mod rekey;
mod revision;
mod rows;
mod schema;
mod search;
mod settings;
mod shares;
mod tokens;
mod usage;

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};

pub use self::db::SqliteDb;
use self::exec::{backend, exec, savepoint};
use self::rows::{meta_from_row, read_conversation, read_meta, read_page, META_COLUMNS};
use super::{
    rfc3339, title_from, BranchPool, Conversation, ConversationMeta, ConversationSettings,
    ConversationStore, Exported, HistoryPage, NewMessage, SearchHit, SettingsChange, StoreError,
    StoreResult, Summary,
};
use crate::config::ConversationLimits;
use crate::domain::{ChatMessage, ConversationId, Role, UserId};

/// The SQLite conversation store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    db: SqliteDb,
    limits: ConversationLimits,
}

impl SqliteStore {
    /// The store on `db`, with the default conversation cap.
    pub fn new(db: SqliteDb) -> Self {
        Self {
            db,
            limits: ConversationLimits::default(),
        }
    }

    /// The same store with this conversation cap.
    pub fn with_limits(self, limits: ConversationLimits) -> Self {
        Self { limits, ..self }
    }
}

impl SqliteStore {
    /// `append`, with the revisions around it when `revised`.
    async fn append_to(
        &self,
        user: &UserId,
        id: &ConversationId,
        messages: Vec<NewMessage>,
        revised: bool,
    ) -> StoreResult<(ConversationMeta, Option<(u64, u64)>)> {
        let (user, id, limits) = (user.to_string(), id.clone(), self.limits);
        self.db
            .call(move |conn| {
                let tx = savepoint(conn)?;
                // One read of what the append needs: the row's meta, its
                // text size and revision, the branch pool's size.
                let Before {
                    meta,
                    bytes,
                    revision,
                    pool: (nodes, pool_bytes),
                } = read_before_append(&tx, &user, id.as_ref())?;
                let added: u64 = messages.iter().map(|m| m.content.len() as u64).sum();
                // The cap counts everything stored, branches set aside too.
                limits::check_room(
                    &limits,
                    (meta.message_count + nodes, bytes + pool_bytes),
                    (messages.len() as u64, added),
                )?;
                let now = rfc3339::format(&Utc::now());
                let seq = meta.message_count as i64;
                insert_messages(&tx, &user, id.as_ref(), seq, &messages, &now)?;
                let seq = seq + messages.len() as i64;
                let title = if meta.title.is_none() {
                    messages
                        .iter()
                        .find(|m| m.role == Role::User)
                        .and_then(|m| title_from(&m.content))
                } else {
                    None
                };
                // The update moves the revision on itself (the inserts do
                // not: see `revision`), which spares the
                // `conversations_revised` trigger's second update of the row.
                let update = params![user, id.as_ref(), seq, now, title, (bytes + added) as i64];
                let after = tx
                    .prepare_cached(APPEND_UPDATE)
                    .and_then(|mut stmt| stmt.query_row(update, |row| row.get::<_, i64>(0)))
                    .map_err(backend)? as u64;
                // The row as a read of it now would give (no trigger touches
                // these columns).
                let meta = ConversationMeta {
                    updated_at: rows::parse_time(&now).map_err(backend)?,
                    title: meta.title.or(title),
                    message_count: seq as u64,
                    ..meta
                };
                tx.commit()?;
                Ok((meta, revised.then_some((revision, after))))
            })
            .await
    }
}

/// The update an append ends with (see `append_to`), answering the
/// revision it leaves.
const APPEND_UPDATE: &str = "UPDATE conversations SET message_count = ?3, updated_at = ?4, \
     title = COALESCE(title, ?5), text_bytes = ?6, revision = revision + 1 \
     WHERE user_id = ?1 AND conversation_id = ?2 RETURNING revision";

/// Messages one INSERT of [`insert_messages`] writes at most.
const ROWS_PER_INSERT: usize = 4;

/// The INSERTs of 1 to [`ROWS_PER_INSERT`] messages: user ?1,
/// conversation ?2 and time ?3 shared, then each row's seq, role, content
/// and tokens.
static INSERT_MESSAGES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    (1..=ROWS_PER_INSERT)
        .map(|rows| {
            let values = (0..rows)
                .map(|row| {
                    let n = 4 + 4 * row;
                    format!("(?1, ?2, ?{n}, ?{}, ?{}, ?{}, ?3, 2)", n + 1, n + 2, n + 3)
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "INSERT INTO messages (user_id, conversation_id, seq, role, content, tokens, created_at, indexed) \
                 VALUES {values}"
            )
        })
        .collect()
});

/// Stores `messages` from `seq` on, unindexed, several rows per statement:
/// a turn's two messages in one INSERT, whose statement journal then
/// copies each page it changes once, not once per row.
fn insert_messages(
    conn: &Connection,
    user: &str,
    id: &str,
    seq: i64,
    messages: &[NewMessage],
    now: &str,
) -> StoreResult<()> {
    for (chunk, rows) in messages.chunks(ROWS_PER_INSERT).enumerate() {
        let first = seq + (chunk * ROWS_PER_INSERT) as i64;
        let seqs: Vec<i64> = (first..first + rows.len() as i64).collect();
        let roles: Vec<&str> = rows.iter().map(|m| m.role.as_str()).collect();
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&user, &id, &now];
        for ((message, seq), role) in rows.iter().zip(&seqs).zip(&roles) {
            values.extend([
                seq as &dyn rusqlite::ToSql,
                role,
                &message.content,
                &message.tokens,
            ]);
        }
        conn.prepare_cached(&INSERT_MESSAGES[rows.len() - 1])
            .and_then(|mut stmt| stmt.execute(values.as_slice()))
            .map_err(backend)?;
    }
    Ok(())
}

/// What an append reads of the conversation before writing.
struct Before {
    meta: ConversationMeta,
    /// Its messages' text size (`limits::text_bytes`).
    bytes: u64,
    revision: u64,
    /// Messages and bytes of text in its branch pool (`branches::pool_size`).
    pool: (u64, u64),
}

/// What [`read_before_append`] runs. The pool's size comes from
/// subqueries, not a LEFT JOIN: SQLite prepares that join again on every
/// run (its plan is tied to the bound values), the subqueries once.
const READ_BEFORE_APPEND: &str =
    "SELECT c.conversation_id, c.created_at, c.updated_at, c.title, c.message_count, \
     COALESCE(c.text_bytes, (SELECT COALESCE(SUM(octet_length(m.content)), 0) \
     FROM messages m WHERE m.user_id = c.user_id AND m.conversation_id = c.conversation_id)), \
     c.revision, \
     (SELECT nodes FROM branches WHERE user_id = ?1 AND conversation_id = ?2), \
     (SELECT bytes FROM branches WHERE user_id = ?1 AND conversation_id = ?2) \
     FROM conversations c WHERE c.user_id = ?1 AND c.conversation_id = ?2";

/// [`Before`] in one statement; `NotFound` when the user has no such
/// conversation.
fn read_before_append(conn: &Connection, user: &str, id: &str) -> StoreResult<Before> {
    conn.prepare_cached(READ_BEFORE_APPEND)
        .and_then(|mut stmt| {
            stmt.query_row(params![user, id], |row| {
                let count = |i| {
                    row.get::<_, Option<i64>>(i)
                        .map(|n| n.unwrap_or(0).max(0) as u64)
                };
                Ok(Before {
                    meta: meta_from_row(row)?,
                    bytes: count(5)?,
                    revision: row.get::<_, i64>(6)? as u64,
                    pool: (count(7)?, count(8)?),
                })
            })
            .optional()
        })
        .map_err(backend)?
        .ok_or(StoreError::NotFound)
}

#[async_trait]
impl ConversationStore for SqliteStore {
    async fn create_with(
        &self,
        user: &UserId,
        id: &ConversationId,
        settings: &ConversationSettings,
    ) -> StoreResult<ConversationMeta> {
        let (user, id, settings) = (user.to_string(), id.clone(), settings.clone());
        self.db
            .call(move |conn| {
                let now = rfc3339::format(&Utc::now());
                let tx = savepoint(conn)?;
                exec(
                    &tx,
                    "INSERT INTO conversations (user_id, conversation_id, created_at, updated_at, text_bytes) VALUES (?1, ?2, ?3, ?3, 0)",
                    params![user, id.as_ref(), now],
                )?;
                if !settings.is_default() {
                    settings::write_settings(&tx, &user, id.as_ref(), &settings)?;
                }
                let meta = read_meta(&tx, &user, id.as_ref())?;
                tx.commit()?;
                Ok(meta)
            })
            .await
    }

    async fn set_settings(
        &self,
        user: &UserId,
        id: &ConversationId,
        settings: &ConversationSettings,
    ) -> StoreResult<()> {
        let (user, id, settings) = (user.to_string(), id.clone(), settings.clone());
        self.db
            .call(move |conn| settings::write_settings(conn, &user, id.as_ref(), &settings))
            .await
    }

    async fn change_settings(
        &self,
        user: &UserId,
        id: &ConversationId,
        change: &SettingsChange,
    ) -> StoreResult<ConversationSettings> {
        let (user, id, change) = (user.to_string(), id.clone(), change.clone());
        self.db
            .call(move |conn| {
                let tx = savepoint(conn)?;
                let settings = change.apply(settings::read_settings(&tx, &user, id.as_ref())?);
                settings::write_settings(&tx, &user, id.as_ref(), &settings)?;
                tx.commit()?;
                Ok(settings)
            })
            .await
    }

    async fn load(&self, user: &UserId, id: &ConversationId) -> StoreResult<Conversation> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let tx = savepoint(conn)?;
                read_conversation(&tx, &user, &id)
            })
            .await
    }

    async fn revision(&self, user: &UserId, id: &ConversationId) -> StoreResult<Option<u64>> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| revision::read_revision(conn, &user, id.as_ref()).map(Some))
            .await
    }

    async fn load_revised(
        &self,
        user: &UserId,
        id: &ConversationId,
    ) -> StoreResult<(Conversation, Option<u64>)> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                // One read transaction: the revision is the one of what was read.
                let tx = savepoint(conn)?;
                let revision = revision::read_revision(&tx, &user, id.as_ref())?;
                Ok((read_conversation(&tx, &user, &id)?, Some(revision)))
            })
            .await
    }

    async fn load_page(
        &self,
        user: &UserId,
        id: &ConversationId,
        before: Option<u64>,
        limit: u64,
    ) -> StoreResult<HistoryPage> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let tx = savepoint(conn)?;
                read_page(&tx, &user, &id, before, limit)
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
        Ok(self.append_to(user, id, messages, false).await?.0)
    }

    async fn append_revised(
        &self,
        user: &UserId,
        id: &ConversationId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<(ConversationMeta, Option<(u64, u64)>)> {
        self.append_to(user, id, messages, true).await
    }

    async fn delete_last_message(
        &self,
        user: &UserId,
        id: &ConversationId,
    ) -> StoreResult<Option<ChatMessage>> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let tx = savepoint(conn)?;
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
                    "UPDATE conversations SET message_count = message_count - 1, updated_at = ?3, \
                     text_bytes = text_bytes - ?4 WHERE user_id = ?1 AND conversation_id = ?2",
                    params![user, id.as_ref(), rfc3339::format(&Utc::now()), content.len() as i64],
                )
                .map_err(backend)?;
                tx.commit()?;
                Ok(Some(ChatMessage::new(Role::parse(&role).unwrap_or(Role::User), content)))
            })
            .await
    }

    async fn branches(&self, user: &UserId, id: &ConversationId) -> StoreResult<BranchPool> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let tx = savepoint(conn)?;
                read_meta(&tx, &user, id.as_ref())?;
                branches::read_pool(&tx, &user, id.as_ref())
            })
            .await
    }

    async fn fork(
        &self,
        user: &UserId,
        id: &ConversationId,
        at: u64,
        messages: Vec<NewMessage>,
    ) -> StoreResult<ConversationMeta> {
        let (user, id, limits) = (user.to_string(), id.clone(), self.limits);
        self.db
            .call(move |conn| branches::fork(conn, &limits, &user, id.as_ref(), at, messages))
            .await
    }

    async fn switch_branch(
        &self,
        user: &UserId,
        id: &ConversationId,
        index: u64,
        position: u64,
    ) -> StoreResult<ConversationMeta> {
        let (user, id, limits) = (user.to_string(), id.clone(), self.limits);
        self.db
            .call(move |conn| branches::switch(conn, &limits, &user, id.as_ref(), index, position))
            .await
    }

    async fn reset(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let tx = savepoint(conn)?;
                read_meta(&tx, &user, id.as_ref())?;
                tx.execute(
                    "DELETE FROM messages WHERE user_id = ?1 AND conversation_id = ?2",
                    params![user, id.as_ref()],
                )
                .map_err(backend)?;
                branches::drop_pool(&tx, &user, id.as_ref())?;
                tx.execute(
                    "UPDATE conversations SET message_count = 0, title = NULL, summary = NULL, \
                     summary_covers = 0, summary_tokens = 0, text_bytes = 0, updated_at = ?3 \
                     WHERE user_id = ?1 AND conversation_id = ?2",
                    params![user, id.as_ref(), rfc3339::format(&Utc::now())],
                )
                .map_err(backend)?;
                let meta = read_meta(&tx, &user, id.as_ref())?;
                tx.commit()?;
                Ok(meta)
            })
            .await
    }

    async fn delete(&self, user: &UserId, id: &ConversationId) -> StoreResult<()> {
        let (user, id) = (user.to_string(), id.clone());
        self.db
            .call(move |conn| {
                let tx = savepoint(conn)?;
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
                branches::drop_pool(&tx, &user, id.as_ref())?;
                tx.commit()
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
        search::hits(&self.db, user, query, limit).await
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
    ) -> StoreResult<Vec<Exported>> {
        let (after_user, after_id) = after
            .map(|(u, c)| (u.to_string(), c.to_string()))
            .unwrap_or_default();
        self.db
            .call(move |conn| {
                let tx = savepoint(conn)?;
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
                    let branches = branches::read_pool(&tx, &user, id.as_ref())?;
                    page.push(Exported {
                        user: UserId::from_stored(user),
                        conversation,
                        branches,
                    });
                }
                Ok(page)
            })
            .await
    }

    async fn import_branched(
        &self,
        user: &UserId,
        conversation: &Conversation,
        pool: &BranchPool,
    ) -> StoreResult<bool> {
        let (user, conversation, pool) = (user.to_string(), conversation.clone(), pool.clone());
        let bytes: u64 = conversation
            .messages
            .iter()
            .map(|m| m.message.content.len() as u64)
            .sum();
        limits::check_room(
            &self.limits,
            (pool.nodes.len() as u64, pool.bytes()),
            (conversation.messages.len() as u64, bytes),
        )?;
        self.db
            .call(move |conn| import::insert(conn, &user, &conversation, bytes, &pool))
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

    pub(super) fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("nested/chat.db")).unwrap();
        (dir, SqliteStore::new(db))
    }

    /// Runs the search indexer now on the database thread (it otherwise
    /// runs about once a second); returns how many messages it passed.
    pub(super) async fn index_now(store: &SqliteStore) -> usize {
        store
            .db
            .call(|conn| super::index::index_pending(conn).map_err(backend))
            .await
            .unwrap()
    }

    pub(super) fn msg(role: Role, content: &str) -> NewMessage {
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

    /// An append answers the row as it stands after it without reading it
    /// back: the meta it returns is what a read gives (count, updated_at to
    /// the microsecond, a title set once and kept), and the revisions it
    /// reports are the ones read just before and after.
    #[tokio::test]
    async fn an_append_answers_what_a_read_of_the_row_gives() {
        let (_dir, store) = store();
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();

        let untitled = store
            .append(&user, &id, vec![msg(Role::Assistant, "hello there")])
            .await
            .unwrap();
        let read = store.meta(&user, &id).await.unwrap();
        assert_eq!(untitled, read);
        assert_eq!((untitled.title, untitled.message_count), (None, 1));

        let mut last = store.revision(&user, &id).await.unwrap().unwrap();
        for (question, count) in [("the first question", 3), ("a second one", 5)] {
            let (meta, revisions) = store
                .append_revised(
                    &user,
                    &id,
                    vec![msg(Role::User, question), msg(Role::Assistant, "answer")],
                )
                .await
                .unwrap();
            let read = store.meta(&user, &id).await.unwrap();
            let now = store.revision(&user, &id).await.unwrap().unwrap();
            assert_eq!(meta, read);
            assert_eq!(meta.message_count, count);
            assert_eq!(meta.title.as_deref(), Some("the first question"));
            assert_eq!(revisions, Some((last, now)));
            assert!(now > last, "the revision did not move on");
            last = now;
        }
    }

    /// An append writes its messages and the conversation's row once: no
    /// trigger writes the row again, per message (`revision` dropped that
    /// one) or after the update (`conversations_revised`), and the update
    /// moves the revision on by one.
    #[tokio::test]
    async fn an_append_writes_its_messages_and_the_conversation_row_once() {
        let (_dir, store) = store();
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        let before = store.revision(&user, &id).await.unwrap().unwrap();
        let db = store.db.clone();
        let total = move || {
            let db = db.clone();
            async move { db.call(|conn| Ok(conn.total_changes())).await.unwrap() }
        };

        let start = total().await;
        store
            .append(
                &user,
                &id,
                vec![msg(Role::User, "q"), msg(Role::Assistant, "a")],
            )
            .await
            .unwrap();
        let written = total().await - start;

        assert_eq!(written, 3, "two messages and the row");
        let after = store.revision(&user, &id).await.unwrap().unwrap();
        assert_eq!(after, before + 1);
    }

    /// The statements a turn runs are prepared once per connection: none is
    /// prepared again when run with other values (SQLite does that for a
    /// plan tied to the bound values, such as the branch pool LEFT JOINed
    /// onto the conversation's row).
    #[tokio::test]
    async fn a_turns_statements_are_not_prepared_again() {
        use crate::store::usage::{DayUsage, UsageStore};
        use rusqlite::StatementStatus;

        let (_dir, store) = store();
        let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        for _ in 0..3 {
            let (user, id) = (UserId::new(), ConversationId::new());
            store.create(&user, &id).await.unwrap();
            store.set_quota(&user, Some(1000)).await.unwrap();
            store.standing(&user, day).await.unwrap();
            store
                .append(&user, &id, vec![msg(Role::User, "q")])
                .await
                .unwrap();
            store
                .append_revised(&user, &id, vec![msg(Role::Assistant, "a")])
                .await
                .unwrap();
            let spent = DayUsage {
                prompt_tokens: 1,
                completion_tokens: 2,
            };
            store.add_usage(&user, day, spent).await.unwrap();
        }

        let counts = store
            .db
            .call(|conn| {
                [
                    READ_BEFORE_APPEND,
                    &INSERT_MESSAGES[0],
                    APPEND_UPDATE,
                    usage::STANDING,
                ]
                .into_iter()
                .map(|sql| {
                    let stmt = conn.prepare_cached(sql).map_err(backend)?;
                    Ok((
                        stmt.get_status(StatementStatus::Run),
                        stmt.get_status(StatementStatus::RePrepare),
                    ))
                })
                .collect::<StoreResult<Vec<_>>>()
            })
            .await
            .unwrap();

        assert!(counts.iter().all(|&(runs, _)| runs >= 3), "{counts:?}");
        assert_eq!(
            counts.iter().map(|&(_, again)| again).collect::<Vec<_>>(),
            [0; 4]
        );
    }

    /// Messages are written several to a statement: an append of more than
    /// one statement's worth keeps them all, in order, numbered on from
    /// what was there, searchable.
    #[tokio::test]
    async fn an_append_of_many_messages_keeps_them_in_order() {
        let (_dir, store) = store();
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        store
            .append(&user, &id, vec![msg(Role::User, "m0")])
            .await
            .unwrap();
        let texts: Vec<String> = (1..=2 * ROWS_PER_INSERT + 1)
            .map(|n| format!("m{n}"))
            .collect();
        let many = texts
            .iter()
            .enumerate()
            .map(|(n, text)| {
                let role = [Role::Assistant, Role::User][n % 2];
                NewMessage {
                    role,
                    content: text.clone(),
                    tokens: Some(n as u32),
                }
            })
            .collect();

        let meta = store.append(&user, &id, many).await.unwrap();

        let loaded = store.load(&user, &id).await.unwrap();
        let stored: Vec<_> = loaded
            .messages
            .iter()
            .map(|m| (m.message.role, m.message.content.to_string(), m.tokens))
            .collect();
        let expected: Vec<_> = std::iter::once((Role::User, "m0".to_string(), Some(3)))
            .chain(texts.iter().enumerate().map(|(n, text)| {
                (
                    [Role::Assistant, Role::User][n % 2],
                    text.clone(),
                    Some(n as u32),
                )
            }))
            .collect();
        assert_eq!(stored, expected);
        assert_eq!(meta.message_count, 2 * ROWS_PER_INSERT as u64 + 2);
        let page = store.load_page(&user, &id, None, 3).await.unwrap();
        assert_eq!(page.first, 2 * ROWS_PER_INSERT as u64 - 1);
        let last = format!("m{}", 2 * ROWS_PER_INSERT + 1);
        assert_eq!(store.search(&user, &last, 10).await.unwrap().len(), 1);
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
                let Some(last) = page.last() else {
                    break;
                };
                after = Some((
                    last.user.clone(),
                    last.conversation.meta.conversation_id.clone(),
                ));
                for exported in &page {
                    inserted += target
                        .import(&exported.user, &exported.conversation)
                        .await
                        .unwrap() as usize;
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
}
