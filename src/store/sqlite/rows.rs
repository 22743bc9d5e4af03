//! Reading conversations back: a conversation's metadata from its row, and
//! a whole conversation (metadata, summary, messages in order).

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::exec::backend;
use crate::domain::{ChatMessage, ConversationId, Role};
use crate::store::{
    page_range, Conversation, ConversationMeta, HistoryPage, StoreError, StoreResult,
    StoredMessage, Summary,
};

pub(super) fn parse_time(raw: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })
}

pub(super) const META_COLUMNS: &str =
    "conversation_id, created_at, updated_at, title, message_count";

pub(super) fn meta_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ConversationMeta> {
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

pub(super) fn read_meta(conn: &Connection, user: &str, id: &str) -> StoreResult<ConversationMeta> {
    conn.prepare_cached(
        "SELECT conversation_id, created_at, updated_at, title, message_count \
         FROM conversations WHERE user_id = ?1 AND conversation_id = ?2",
    )
    .and_then(|mut stmt| stmt.query_row(params![user, id], meta_from_row).optional())
    .map_err(backend)?
    .ok_or(StoreError::NotFound)
}

/// A whole conversation, read inside the caller's transaction.
pub(super) fn read_conversation(
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
    let settings = super::settings::read_settings(conn, user, id.as_ref())?;
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
        settings,
    })
}

/// A page of the history (`page_range`), reading only its rows.
pub(super) fn read_page(
    conn: &Connection,
    user: &str,
    id: &ConversationId,
    before: Option<u64>,
    limit: u64,
) -> StoreResult<HistoryPage> {
    let meta = read_meta(conn, user, id.as_ref())?;
    let range = page_range(meta.message_count, before, limit);
    let mut stmt = conn
        .prepare_cached(
            "SELECT role, content FROM messages WHERE user_id = ?1 AND conversation_id = ?2 \
             AND seq >= ?3 AND seq < ?4 ORDER BY seq",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(
            params![user, id.as_ref(), range.start as i64, range.end as i64],
            |row| {
                let role: String = row.get(0)?;
                Ok(ChatMessage::new(
                    Role::parse(&role).unwrap_or(Role::User),
                    row.get_ref(1)?.as_str()?,
                ))
            },
        )
        .map_err(backend)?;
    let messages = rows.collect::<Result<Vec<_>, _>>().map_err(backend)?;
    let settings = super::settings::read_settings(conn, user, id.as_ref())?;
    Ok(HistoryPage {
        meta,
        first: range.start,
        messages,
        settings,
    })
}
