//! The conversation cap in SQLite: the text size kept per conversation
//! (`text_bytes`, counted once for rows written before it existed) and the
//! check an append or an import makes inside its transaction.

use rusqlite::{params, Connection};

use super::exec::backend;
use crate::config::ConversationLimits;
use crate::store::{StoreError, StoreResult};

/// The conversation's text size in bytes: the counter, or for a row
/// written before it existed, the sum of its messages (computed once; the
/// append that follows stores it).
pub(super) fn text_bytes(conn: &Connection, user: &str, id: &str) -> StoreResult<u64> {
    conn.prepare_cached(
        "SELECT COALESCE(c.text_bytes, (SELECT COALESCE(SUM(octet_length(m.content)), 0) \
         FROM messages m WHERE m.user_id = c.user_id AND m.conversation_id = c.conversation_id)) \
         FROM conversations c WHERE c.user_id = ?1 AND c.conversation_id = ?2",
    )
    .and_then(|mut stmt| stmt.query_row(params![user, id], |row| row.get::<_, i64>(0)))
    .map(|n| n.max(0) as u64)
    .map_err(backend)
}

/// `TooLarge` with the limits' sentence unless a conversation of `count`
/// messages and `bytes` bytes may take `more` messages of `more_bytes`.
pub(super) fn check_room(
    limits: &ConversationLimits,
    (count, bytes): (u64, u64),
    (more, more_bytes): (u64, u64),
) -> StoreResult<()> {
    if limits.has_room(count, bytes, more, more_bytes) {
        Ok(())
    } else {
        Err(StoreError::TooLarge(limits.full_message()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SqliteDb, SqliteStore};
    use super::*;
    use crate::domain::{ConversationId, Role, UserId};
    use crate::store::{ConversationStore, NewMessage};

    fn msg(content: &str) -> NewMessage {
        NewMessage {
            role: Role::User,
            content: content.to_string(),
            tokens: None,
        }
    }

    #[tokio::test]
    async fn a_row_written_before_the_counter_is_counted_from_its_messages() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("chat.db")).unwrap();
        let store = SqliteStore::new(db.clone()).with_limits(ConversationLimits {
            max_messages: 100,
            max_bytes: 50,
        });
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        store
            .append(&user, &id, vec![msg(&"a".repeat(40))])
            .await
            .unwrap();
        // As a file from before the counter has it.
        db.call(|conn| {
            conn.execute("UPDATE conversations SET text_bytes = NULL", [])
                .map_err(backend)
        })
        .await
        .unwrap();

        let refused = store.append(&user, &id, vec![msg(&"b".repeat(11))]).await;
        store
            .append(&user, &id, vec![msg(&"c".repeat(10))])
            .await
            .unwrap();

        assert!(
            matches!(refused, Err(StoreError::TooLarge(_))),
            "{refused:?}"
        );
        let counted = db
            .call(move |conn| text_bytes(conn, user.as_ref(), id.as_ref()))
            .await
            .unwrap();
        assert_eq!(counted, 50);
    }
}
