//! A conversation's revision (`conversations.revision`): triggers move it
//! on with every write to the conversation's row or to one of its
//! messages, whichever process (instance) writes, in the write's own
//! transaction, so a copy of the conversation kept in memory can be checked
//! against the file with one small read (`crate::store::cache`, Redis mode,
//! where several instances write one file). Writes that change nothing a
//! conversation is read as (the search indexer marking rows indexed) leave
//! it. A leaf of the store's files: it imports only `exec`.

use rusqlite::{params, Connection, OptionalExtension};

use super::exec::backend;
use crate::store::{StoreError, StoreResult};

/// The triggers. `conversations_revised` moves the revision on when an
/// update of the row did not (an update that did is one of the others, or
/// already counted); SQLite does not run a trigger again from its own
/// update (`recursive_triggers` is off), and its `WHEN` would stop it.
///
/// Inserted messages have no trigger: every write that inserts them
/// updates the conversation's row in the same transaction (an append and a
/// branch switch set its `message_count`; an import writes the row with its
/// messages), and that moves the revision on. A trigger per inserted row
/// (`messages_added_revise`, dropped here) rewrote the row once more for
/// each message: as many instructions as the insert itself.
const TRIGGERS: &str = r#"
CREATE TRIGGER IF NOT EXISTS conversations_revised AFTER UPDATE ON conversations
    WHEN new.revision IS old.revision BEGIN
    UPDATE conversations SET revision = old.revision + 1
        WHERE user_id = new.user_id AND conversation_id = new.conversation_id;
END;
DROP TRIGGER IF EXISTS messages_added_revise;
CREATE TRIGGER IF NOT EXISTS messages_removed_revise AFTER DELETE ON messages BEGIN
    UPDATE conversations SET revision = revision + 1
        WHERE user_id = old.user_id AND conversation_id = old.conversation_id;
END;
CREATE TRIGGER IF NOT EXISTS messages_changed_revise
    AFTER UPDATE OF user_id, conversation_id, seq, role, content, tokens ON messages BEGIN
    UPDATE conversations SET revision = revision + 1
        WHERE (user_id = old.user_id AND conversation_id = old.conversation_id)
           OR (user_id = new.user_id AND conversation_id = new.conversation_id);
END;
"#;

/// Adds the column (0 for conversations written before it) and the
/// triggers; idempotent, run on every open inside the schema's transaction.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let present = conn
        .prepare("SELECT 1 FROM pragma_table_info('conversations') WHERE name = 'revision'")?
        .exists([])?;
    if !present {
        conn.execute_batch(
            "ALTER TABLE conversations ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    conn.execute_batch(TRIGGERS)
}

/// The conversation's revision; `NotFound` when the user has no such
/// conversation.
pub(super) fn read_revision(conn: &Connection, user: &str, id: &str) -> StoreResult<u64> {
    conn.prepare_cached(
        "SELECT revision FROM conversations WHERE user_id = ?1 AND conversation_id = ?2",
    )
    .and_then(|mut stmt| {
        stmt.query_row(params![user, id], |row| row.get::<_, i64>(0))
            .optional()
    })
    .map_err(backend)?
    .map(|revision| revision as u64)
    .ok_or(StoreError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::super::exec::backend;
    use super::super::tests::{msg, store};
    use super::super::SqliteStore;
    use crate::domain::{ConversationId, Role, UserId};
    use crate::store::accounts::AccountStore;
    use crate::store::{ConversationStore, StoreError};

    async fn rev(store: &SqliteStore, user: &UserId, id: &ConversationId) -> u64 {
        store
            .revision(user, id)
            .await
            .unwrap()
            .expect("SQLite keeps revisions")
    }

    /// The store contract checks that every write moves the revision on;
    /// here, what only SQLite has: the search indexer's writes (the index,
    /// its mark, the flags of moved rows) leave it, and a conversation moved
    /// to another account (a sign-in) has a new one there and none under
    /// its old owner.
    #[tokio::test]
    async fn indexing_leaves_the_revision_and_a_move_to_another_account_moves_it_on() {
        let (_dir, store) = store();
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        store
            .append(
                &user,
                &id,
                vec![msg(Role::User, "q1"), msg(Role::Assistant, "a1")],
            )
            .await
            .unwrap();
        let written = rev(&store, &user, &id).await;

        let indexed = store
            .db
            .call(|conn| super::super::index::index_pending(conn).map_err(backend))
            .await
            .unwrap();
        assert_eq!(indexed, 2);
        assert_eq!(
            rev(&store, &user, &id).await,
            written,
            "indexing is not a change"
        );

        let account = UserId::new();
        store.transfer_conversations(&user, &account).await.unwrap();
        assert!(matches!(
            store.revision(&user, &id).await,
            Err(StoreError::NotFound)
        ));
        assert!(rev(&store, &account, &id).await > written);
    }
}
