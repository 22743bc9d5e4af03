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
use crate::store::accounts::{
    Account, AccountStore, Created, External, ExternalIdentity, LinkedIdentity, NewAccount, Signup,
};
use crate::store::{rfc3339, StoreError, StoreResult};

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

/// The account of an external identity, in one transaction (see
/// [`AccountStore::external_account`]).
fn external_account(
    conn: &mut Connection,
    identity: &ExternalIdentity,
    admin: Option<bool>,
) -> StoreResult<External> {
    let tx = conn.savepoint().map_err(backend)?;
    let linked: Option<String> = tx
        .prepare_cached("SELECT user_id FROM identities WHERE provider = ?1 AND subject = ?2")
        .and_then(|mut stmt| {
            stmt.query_row(params![identity.provider, identity.subject], |row| {
                row.get(0)
            })
            .optional()
        })
        .map_err(backend)?;
    let by_email = || read_account(&tx, BY_EMAIL, &identity.email);
    let account = match linked {
        Some(user) => read_account(&tx, BY_USER_ID, &user)?,
        None => None,
    };
    let account = match account {
        Some(account) => account,
        None => {
            let account = match by_email()? {
                Some(account) if identity.email_verified => account,
                Some(_) => return Ok(External::EmailTaken),
                None => {
                    let any = tx
                        .query_row("SELECT EXISTS (SELECT 1 FROM users)", [], |row| {
                            row.get::<_, bool>(0)
                        })
                        .map_err(backend)?;
                    let created_at = rfc3339::format(&Utc::now());
                    let user_id = UserId::new();
                    tx.prepare_cached(
                        "INSERT INTO users (user_id, email, name, password_hash, is_admin, disabled, created_at) \
                         VALUES (?1, ?2, ?3, '', ?4, 0, ?5)",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            user_id.as_ref(),
                            identity.email,
                            identity.name,
                            !any,
                            created_at
                        ])
                    })
                    .map_err(backend)?;
                    read_account(&tx, BY_USER_ID, user_id.as_ref())?.ok_or_else(|| {
                        StoreError::Backend(anyhow::anyhow!("the new account was not found"))
                    })?
                }
            };
            // A stale link (its account deleted) is replaced.
            exec(
                &tx,
                "INSERT OR REPLACE INTO identities (provider, subject, user_id, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    identity.provider,
                    identity.subject,
                    account.user_id.as_ref(),
                    rfc3339::format(&Utc::now())
                ],
            )?;
            account
        }
    };
    let account = match admin {
        Some(is_admin) if is_admin != account.is_admin => {
            exec(
                &tx,
                "UPDATE users SET is_admin = ?2 WHERE user_id = ?1",
                params![account.user_id.as_ref(), is_admin],
            )?;
            Account {
                is_admin,
                ..account
            }
        }
        _ => account,
    };
    tx.commit().map_err(backend)?;
    Ok(External::Account(account))
}

impl SqliteStore {
    /// Runs `update` (setting one flag column of `user` to `value`) and
    /// reads the account back, in one step on the database's thread.
    async fn update_flag(
        &self,
        user: &UserId,
        update: &'static str,
        value: bool,
    ) -> StoreResult<Option<Account>> {
        let user = user.to_string();
        self.db
            .call(move |conn| {
                if exec(conn, update, params![user, value])? == 0 {
                    return Ok(None);
                }
                read_account(conn, BY_USER_ID, &user)
            })
            .await
    }
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn identities_for_copy(&self) -> StoreResult<Vec<LinkedIdentity>> {
        self.db
            .call(|conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT provider, subject, user_id FROM identities ORDER BY provider, subject",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok(LinkedIdentity {
                            provider: row.get(0)?,
                            subject: row.get(1)?,
                            user_id: UserId::from_stored(row.get(2)?),
                        })
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn import_identity(&self, identity: &LinkedIdentity) -> StoreResult<bool> {
        let identity = identity.clone();
        self.db
            .call(move |conn| {
                exec(
                    conn,
                    "INSERT OR IGNORE INTO identities (provider, subject, user_id, created_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        identity.provider,
                        identity.subject,
                        identity.user_id.as_ref(),
                        rfc3339::format(&Utc::now())
                    ],
                )
                .map(|inserted| inserted > 0)
            })
            .await
    }

    async fn external_account(
        &self,
        identity: ExternalIdentity,
        admin: Option<bool>,
    ) -> StoreResult<External> {
        self.db
            .call(move |conn| external_account(conn, &identity, admin))
            .await
    }

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

    async fn list_accounts(&self, limit: u32, offset: u32) -> StoreResult<Vec<Account>> {
        self.db
            .call(move |conn| {
                conn.prepare_cached(
                    "SELECT user_id, email, name, password_hash, is_admin, disabled, created_at \
                     FROM users ORDER BY created_at, user_id LIMIT ?1 OFFSET ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_map(params![limit, offset], account_from_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)
            })
            .await
    }

    async fn set_disabled(&self, user: &UserId, disabled: bool) -> StoreResult<Option<Account>> {
        self.update_flag(
            user,
            "UPDATE users SET disabled = ?2 WHERE user_id = ?1",
            disabled,
        )
        .await
    }

    async fn set_admin(&self, user: &UserId, is_admin: bool) -> StoreResult<Option<Account>> {
        self.update_flag(
            user,
            "UPDATE users SET is_admin = ?2 WHERE user_id = ?1",
            is_admin,
        )
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
                // random ids) stays where it is, with its messages. A moved
                // message leaves `from`'s search index and is queued for
                // `to`'s (the `messages_moved` trigger, see `schema`).
                exec(
                    &tx,
                    "UPDATE messages SET user_id = ?2 WHERE user_id = ?1 \
                     AND conversation_id IN (SELECT conversation_id FROM conversations WHERE user_id = ?1) \
                     AND conversation_id NOT IN (SELECT conversation_id FROM conversations WHERE user_id = ?2)",
                    params![from, to],
                )?;
                // Their branches go with them (`to` never has the same id).
                exec(
                    &tx,
                    "UPDATE OR IGNORE branches SET user_id = ?2 WHERE user_id = ?1 \
                     AND conversation_id IN (SELECT conversation_id FROM conversations WHERE user_id = ?1)",
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

    async fn accounts_for_copy(&self) -> StoreResult<Vec<Account>> {
        self.db
            .call(|conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT user_id, email, name, password_hash, is_admin, disabled, created_at \
                         FROM users ORDER BY created_at, rowid",
                    )
                    .map_err(backend)?;
                let rows = stmt.query_map([], account_from_row).map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn import_account(&self, account: &Account) -> StoreResult<bool> {
        let account = account.clone();
        self.db
            .call(move |conn| {
                exec(
                    conn,
                    "INSERT OR IGNORE INTO users \
                     (user_id, email, name, password_hash, is_admin, disabled, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        account.user_id.as_ref(),
                        account.email,
                        account.name,
                        account.password_hash,
                        account.is_admin,
                        account.disabled,
                        rfc3339::format(&account.created_at)
                    ],
                )
                .map(|inserted| inserted > 0)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    //! What only SQLite has: its full-text index, its schema upgrade, and
    //! `UPDATE OR IGNORE` on a conversation id both users have. The
    //! `AccountStore` contract itself runs against SQLite and MongoDB in
    //! `tests/store_contract/accounts.rs`.

    use super::super::index::index_pending;
    use super::super::schema::SCHEMA;
    use super::super::tests::{msg, store};
    use super::super::SqliteDb;
    use super::*;
    use crate::domain::{ConversationId, Role};
    use crate::store::ConversationStore;

    fn new_account(email: &str) -> NewAccount {
        NewAccount {
            user_id: UserId::new(),
            email: email.to_string(),
            name: format!("name of {email}"),
            password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt${email}"),
        }
    }

    /// FTS5's own consistency check of `search_fts`, once the messages not
    /// yet indexed are.
    async fn assert_index_consistent(store: &SqliteStore) {
        store
            .db
            .call(|conn| {
                index_pending(conn).map_err(backend)?;
                conn.execute(
                    "INSERT INTO search_fts (search_fts, rank) VALUES ('integrity-check', 1)",
                    [],
                )
                .map_err(backend)
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn transfer_leaves_the_full_text_index_consistent() {
        let (_dir, store) = store();
        let (anon, owner) = (UserId::new(), UserId::new());
        let (indexed, pending) = (ConversationId::new(), ConversationId::new());
        for id in [&indexed, &pending] {
            store.create(&anon, id).await.unwrap();
        }
        store
            .append(&anon, &indexed, vec![msg(Role::User, "platypus habits")])
            .await
            .unwrap();
        // `indexed` is in the index, `pending` (appended next) is not yet
        // when it moves.
        assert_index_consistent(&store).await;
        assert_eq!(store.search(&anon, "platypus", 10).await.unwrap().len(), 1);
        store
            .append(&anon, &pending, vec![msg(Role::User, "platypus eggs")])
            .await
            .unwrap();

        assert_eq!(
            store.transfer_conversations(&anon, &owner).await.unwrap(),
            2
        );
        assert!(store
            .search(&anon, "platypus", 10)
            .await
            .unwrap()
            .is_empty());
        assert_index_consistent(&store).await;
        assert_eq!(store.search(&owner, "platypus", 10).await.unwrap().len(), 2);
        assert!(store
            .search(&anon, "platypus", 10)
            .await
            .unwrap()
            .is_empty());
        store
            .append(&owner, &indexed, vec![msg(Role::User, "more")])
            .await
            .unwrap();
        store.delete(&owner, &pending).await.unwrap();
        assert_eq!(store.search(&owner, "eggs", 10).await.unwrap().len(), 0);
        assert_index_consistent(&store).await;
    }

    /// MongoDB differs here (its unique `conversation_user_idx` makes the
    /// move fail), so this is not part of the contract; with random ids it
    /// does not happen.
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
        assert_index_consistent(&store).await;
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
        let created = store
            .create_account(new_account("ada@example.com"), Signup::FirstOnly)
            .await
            .unwrap();
        assert!(matches!(
            created,
            Created::Account(Account { is_admin: true, .. })
        ));
    }
}
