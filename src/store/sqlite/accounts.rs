//! Local accounts in SQLite: [`AccountStore`] for [`SqliteStore`] over the
//! `users` table (see `schema`), and moving an anonymous user's
//! conversations, messages and their search rows to an account.

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};

use super::exec::{backend, exec};
use super::rows::parse_time;
use super::SqliteStore;
use crate::domain::UserId;
use crate::store::accounts::{Account, AccountStore, Created, NewAccount, Signup};
use crate::store::{rfc3339, StoreResult};

const BY_EMAIL: &str =
    "SELECT user_id, email, name, password_hash, is_admin, disabled, created_at \
                        FROM users WHERE email = ?1";
const BY_USER_ID: &str =
    "SELECT user_id, email, name, password_hash, is_admin, disabled, created_at \
                          FROM users WHERE user_id = ?1";

fn account_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        user_id: UserId::from_stored(row.get(0)?),
        email: row.get(1)?,
        name: row.get(2)?,
        password_hash: row.get(3)?,
        is_admin: row.get::<_, i64>(4)? != 0,
        disabled: row.get::<_, i64>(5)? != 0,
        created_at: parse_time(row.get_ref(6)?.as_str()?)?,
    })
}

/// The account `query` (one of the `BY_` statements) finds for `key`.
fn read_account(conn: &Connection, query: &str, key: &str) -> StoreResult<Option<Account>> {
    conn.prepare_cached(query)
        .and_then(|mut stmt| stmt.query_row(params![key], account_from_row).optional())
        .map_err(backend)
}

/// The `UNIQUE` constraint of `users.email` failed (the primary key, the
/// user id, fails with `SQLITE_CONSTRAINT_PRIMARYKEY` instead).
fn is_email_taken(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(&self, account: NewAccount, signup: Signup) -> StoreResult<Created> {
        self.db
            .call(move |conn| {
                // The check and the insert are one transaction, on the one
                // connection's thread, inside the batch's `BEGIN IMMEDIATE`
                // (which also holds off another process sharing the file).
                let tx = conn.savepoint().map_err(backend)?;
                let any = tx
                    .query_row("SELECT EXISTS (SELECT 1 FROM users)", [], |row| {
                        row.get::<_, bool>(0)
                    })
                    .map_err(backend)?;
                if any && signup == Signup::FirstOnly {
                    return Ok(Created::Closed);
                }
                let created_at = rfc3339::format(&Utc::now());
                let inserted = tx
                    .prepare_cached(
                        "INSERT INTO users (user_id, email, name, password_hash, is_admin, disabled, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            account.user_id.as_ref(),
                            account.email,
                            account.name,
                            account.password_hash,
                            !any,
                            created_at
                        ])
                    });
                match inserted {
                    Ok(_) => {}
                    Err(err) if is_email_taken(&err) => return Ok(Created::EmailTaken),
                    Err(err) => return Err(backend(err)),
                }
                tx.commit().map_err(backend)?;
                Ok(Created::Account(Account {
                    user_id: account.user_id,
                    email: account.email,
                    name: account.name,
                    password_hash: account.password_hash,
                    is_admin: !any,
                    disabled: false,
                    // As stored (microseconds), so a later read is equal.
                    created_at: parse_time(&created_at).map_err(backend)?,
                }))
            })
            .await
    }

    async fn account_by_email(&self, email: &str) -> StoreResult<Option<Account>> {
        let email = email.to_string();
        self.db
            .call(move |conn| read_account(conn, BY_EMAIL, &email))
            .await
    }

    async fn has_accounts(&self) -> StoreResult<bool> {
        self.db
            .call(|conn| {
                conn.query_row("SELECT EXISTS (SELECT 1 FROM users)", [], |row| row.get(0))
                    .map_err(backend)
            })
            .await
    }

    async fn account(&self, user: &UserId) -> StoreResult<Option<Account>> {
        let user = user.to_string();
        self.db
            .call(move |conn| read_account(conn, BY_USER_ID, &user))
            .await
    }

    async fn set_password(&self, user: &UserId, password_hash: &str) -> StoreResult<bool> {
        let (user, hash) = (user.to_string(), password_hash.to_string());
        self.db
            .call(move |conn| {
                exec(
                    conn,
                    "UPDATE users SET password_hash = ?2 WHERE user_id = ?1",
                    params![user, hash],
                )
                .map(|changed| changed > 0)
            })
            .await
    }

    async fn transfer_conversations(&self, from: &UserId, to: &UserId) -> StoreResult<u64> {
        if from == to {
            return Ok(0);
        }
        let (from, to) = (from.to_string(), to.to_string());
        self.db
            .call(move |conn| {
                let tx = conn.savepoint().map_err(backend)?;
                // The messages first, while `conversations` still says which
                // are `from`'s; a conversation id `to` has already (never, with
                // random ids) stays where it is, with its messages. The
                // full-text rows need nothing: `messages_fts` holds only the
                // text, keyed by the message's row id, and search scopes by
                // `messages.user_id`, so it now finds them for `to` alone.
                exec(
                    &tx,
                    "UPDATE messages SET user_id = ?2 WHERE user_id = ?1 \
                     AND conversation_id IN (SELECT conversation_id FROM conversations WHERE user_id = ?1) \
                     AND conversation_id NOT IN (SELECT conversation_id FROM conversations WHERE user_id = ?2)",
                    params![from, to],
                )?;
                let moved = exec(
                    &tx,
                    "UPDATE OR IGNORE conversations SET user_id = ?2 WHERE user_id = ?1",
                    params![from, to],
                )?;
                tx.commit().map_err(backend)?;
                Ok(moved as u64)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::schema::SCHEMA;
    use super::super::tests::{msg, store};
    use super::super::SqliteDb;
    use super::*;
    use crate::domain::{ConversationId, Role};
    use crate::store::{ConversationStore, StoreError};

    fn new_account(email: &str) -> NewAccount {
        NewAccount {
            user_id: UserId::new(),
            email: email.to_string(),
            name: format!("name of {email}"),
            password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt${email}"),
        }
    }

    async fn sign_up(store: &SqliteStore, email: &str, signup: Signup) -> Created {
        store
            .create_account(new_account(email), signup)
            .await
            .unwrap()
    }

    fn created(result: Created) -> Account {
        match result {
            Created::Account(account) => account,
            other => panic!("expected an account, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_first_account_is_admin_and_the_next_is_not() {
        let (_dir, store) = store();
        let first = created(sign_up(&store, "ada@example.com", Signup::Open).await);
        let second = created(sign_up(&store, "bob@example.com", Signup::Open).await);

        assert!(first.is_admin && !first.disabled);
        assert!(!second.is_admin && !second.disabled);
        assert_eq!(first.email, "ada@example.com");
        assert_eq!(first.name, "name of ada@example.com");
        assert_eq!(
            store.account_by_email("ada@example.com").await.unwrap(),
            Some(first.clone())
        );
        assert_eq!(
            store.account(&second.user_id).await.unwrap(),
            Some(second.clone())
        );
        assert_eq!(
            store.account_by_email("eve@example.com").await.unwrap(),
            None
        );
        assert_eq!(store.account(&UserId::new()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn first_only_refuses_a_second_account_and_stores_nothing() {
        let (_dir, store) = store();
        let first = created(sign_up(&store, "ada@example.com", Signup::FirstOnly).await);
        assert!(first.is_admin);

        let refused = new_account("bob@example.com");
        let refused_id = refused.user_id.clone();
        assert_eq!(
            store
                .create_account(refused, Signup::FirstOnly)
                .await
                .unwrap(),
            Created::Closed
        );
        assert_eq!(
            store.account_by_email("bob@example.com").await.unwrap(),
            None
        );
        assert_eq!(store.account(&refused_id).await.unwrap(), None);
        let count: i64 = store
            .db
            .call(|conn| {
                conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
                    .map_err(backend)
            })
            .await
            .unwrap();
        assert_eq!(count, 1);
    }

    #[tokio::test]
    async fn a_taken_email_is_reported_and_changes_nothing() {
        let (_dir, store) = store();
        let first = created(sign_up(&store, "ada@example.com", Signup::Open).await);
        let again = new_account("ada@example.com");
        let again_id = again.user_id.clone();
        assert_eq!(
            store.create_account(again, Signup::Open).await.unwrap(),
            Created::EmailTaken
        );
        assert_eq!(
            store.account_by_email("ada@example.com").await.unwrap(),
            Some(first.clone())
        );
        assert_eq!(store.account(&again_id).await.unwrap(), None);

        // A second account with the same user id is a bug, not a taken email.
        let mut same_id = new_account("other@example.com");
        same_id.user_id = first.user_id.clone();
        assert!(matches!(
            store.create_account(same_id, Signup::Open).await,
            Err(StoreError::Backend(_))
        ));
    }

    #[tokio::test]
    async fn only_one_of_many_sign_ups_at_once_becomes_the_first_even_across_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        // Two connections on one file, as two processes would have.
        let stores = [
            Arc::new(SqliteStore::new(SqliteDb::open(&path).unwrap())),
            Arc::new(SqliteStore::new(SqliteDb::open(&path).unwrap())),
        ];
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = stores[i % 2].clone();
            let signup = if i % 4 == 0 {
                Signup::FirstOnly
            } else {
                Signup::Open
            };
            tasks.push(tokio::spawn(async move {
                store
                    .create_account(new_account(&format!("u{i}@example.com")), signup)
                    .await
            }));
        }
        let mut admins = 0;
        let mut accounts = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(Created::Account(account)) => {
                    accounts += 1;
                    admins += account.is_admin as usize;
                }
                Ok(Created::Closed) => {}
                // Busy for longer than the timeout: retryable, not wrong.
                Err(StoreError::Unavailable(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(accounts >= 1);
        assert_eq!(admins, 1);
    }

    #[tokio::test]
    async fn set_password_replaces_the_hash_of_an_existing_account_only() {
        let (_dir, store) = store();
        let account = created(sign_up(&store, "ada@example.com", Signup::Open).await);
        assert!(store
            .set_password(&account.user_id, "$argon2id$new")
            .await
            .unwrap());
        let read = store.account(&account.user_id).await.unwrap().unwrap();
        assert_eq!(read.password_hash, "$argon2id$new");
        assert_eq!(
            read,
            Account {
                password_hash: "$argon2id$new".into(),
                ..account
            }
        );
        assert!(!store
            .set_password(&UserId::new(), "$argon2id$x")
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn transfer_moves_conversations_messages_and_search_to_the_account() {
        let (_dir, store) = store();
        let (anon, owner, bystander) = (UserId::new(), UserId::new(), UserId::new());
        let (early, late, own, theirs) = (
            ConversationId::new(),
            ConversationId::new(),
            ConversationId::new(),
            ConversationId::new(),
        );
        for (user, id) in [(&anon, &early), (&anon, &late), (&owner, &own)] {
            store.create(user, id).await.unwrap();
        }
        store.create(&bystander, &theirs).await.unwrap();
        store
            .append(&anon, &early, vec![msg(Role::User, "platypus habits")])
            .await
            .unwrap();
        // Searching indexes what is there: `early` is in the index, `late`
        // (appended next) is not yet when it moves.
        assert_eq!(store.search(&anon, "platypus", 10).await.unwrap().len(), 1);
        store
            .append(
                &anon,
                &late,
                vec![
                    msg(Role::User, "platypus eggs"),
                    msg(Role::Assistant, "they lay them"),
                ],
            )
            .await
            .unwrap();
        store
            .append(&owner, &own, vec![msg(Role::User, "wombat")])
            .await
            .unwrap();
        store
            .append(&bystander, &theirs, vec![msg(Role::User, "platypus")])
            .await
            .unwrap();

        assert_eq!(
            store.transfer_conversations(&anon, &owner).await.unwrap(),
            2
        );

        let mut listed: Vec<_> = store
            .list(&owner, 10, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.conversation_id)
            .collect();
        listed.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        let mut expected = vec![early.clone(), late.clone(), own.clone()];
        expected.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        assert_eq!(listed, expected);
        assert!(store.list(&anon, 10, 0).await.unwrap().is_empty());
        let moved = store.load(&owner, &late).await.unwrap();
        assert_eq!(moved.meta.message_count, 2);
        assert_eq!(&*moved.messages[1].message.content, "they lay them");
        assert!(matches!(
            store.load(&anon, &late).await,
            Err(StoreError::NotFound)
        ));

        let mut found: Vec<_> = store
            .search(&owner, "platypus", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.meta.conversation_id)
            .collect();
        found.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        let mut expected = vec![early.clone(), late.clone()];
        expected.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        assert_eq!(found, expected);
        assert!(store
            .search(&anon, "platypus", 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .search(&bystander, "platypus", 10)
                .await
                .unwrap()
                .len(),
            1
        );

        // The moved conversations go on as the owner's.
        store
            .append(&owner, &early, vec![msg(Role::User, "more")])
            .await
            .unwrap();
        store.delete(&owner, &late).await.unwrap();
        assert_eq!(store.search(&owner, "eggs", 10).await.unwrap().len(), 0);
        assert_eq!(
            store.transfer_conversations(&anon, &owner).await.unwrap(),
            0
        );
        assert_eq!(
            store.transfer_conversations(&owner, &owner).await.unwrap(),
            0
        );
        store
            .db
            .call(|conn| {
                conn.execute(
                    "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)",
                    [],
                )
                .map_err(backend)
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_conversation_id_the_account_has_already_stays_with_its_owner() {
        let (_dir, store) = store();
        let (anon, owner) = (UserId::new(), UserId::new());
        let (shared, other) = (ConversationId::new(), ConversationId::new());
        for (user, id, text) in [
            (&anon, &shared, "anon text"),
            (&owner, &shared, "owner text"),
            (&anon, &other, "other text"),
        ] {
            store.create(user, id).await.unwrap();
            store
                .append(user, id, vec![msg(Role::User, text)])
                .await
                .unwrap();
        }

        assert_eq!(
            store.transfer_conversations(&anon, &owner).await.unwrap(),
            1
        );

        let history = |c: crate::store::Conversation| c.messages[0].message.content.to_string();
        assert_eq!(
            history(store.load(&owner, &shared).await.unwrap()),
            "owner text"
        );
        assert_eq!(
            history(store.load(&anon, &shared).await.unwrap()),
            "anon text"
        );
        assert_eq!(
            history(store.load(&owner, &other).await.unwrap()),
            "other text"
        );
    }

    #[tokio::test]
    async fn a_file_of_a_version_without_accounts_gets_the_users_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            let has_users = conn
                .prepare("SELECT 1 FROM sqlite_master WHERE name = 'users'")
                .unwrap()
                .exists([])
                .unwrap();
            assert!(!has_users);
        }
        let store = SqliteStore::new(SqliteDb::open(&path).unwrap());
        let account = created(sign_up(&store, "ada@example.com", Signup::FirstOnly).await);
        assert!(account.is_admin);
    }
}
