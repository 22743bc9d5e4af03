//! Local accounts in MongoDB: [`AccountStore`] for [`MongoStore`], one
//! document per account in `users` (`{user_id, email, name, password_hash,
//! is_admin, disabled, created_at}`, unique on `email` and `user_id`, see
//! `schema`), the first-account marker in `meta`, and moving an anonymous
//! user's conversations to an account.
//!
//! "First" holds across any number of server instances: the sign-up that
//! inserts the marker `{_id: "first_account"}` is the first; every other
//! one gets a duplicate key. A sign-up that took the marker but then failed
//! (a taken email, an error) removes it again, so the next one can be first;
//! a marker left by a sign-up that never finished (the process died between
//! the two inserts) is removed once it is [`STALE_MARKER`] old and its
//! account does not exist.

use anyhow::anyhow;
use async_trait::async_trait;
use chrono::Utc;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};

use super::base::{code, command_code, MongoStore};
use super::documents::{from_bson_time, now};
use crate::domain::UserId;
use crate::store::accounts::{Account, AccountStore, Created, NewAccount, Signup};
use crate::store::{StoreError, StoreResult};

/// The `_id` of the first-account marker in `meta`.
const FIRST_ACCOUNT: &str = "first_account";

/// How old a marker without its account must be to count as abandoned
/// (a sign-up takes milliseconds between its two inserts).
const STALE_MARKER: chrono::Duration = chrono::Duration::minutes(1);

fn account_from_doc(d: &Document) -> anyhow::Result<Account> {
    let text = |key: &str| {
        d.get_str(key)
            .map(str::to_string)
            .map_err(|_| anyhow!("an account without a string {key}"))
    };
    Ok(Account {
        user_id: UserId::from_stored(text("user_id")?),
        email: text("email")?,
        name: text("name")?,
        password_hash: text("password_hash")?,
        is_admin: d.get_bool("is_admin").unwrap_or(false),
        disabled: d.get_bool("disabled").unwrap_or(false),
        created_at: d
            .get_datetime("created_at")
            .map(|at| from_bson_time(*at))
            .map_err(|_| anyhow!("an account without a created_at date"))?,
    })
}

/// A duplicate key on the `user_id` index rather than on `email`: the
/// server names the index before the key's value ("... index:
/// users_user_id_idx dup key: { user_id: ... }").
fn is_user_id_duplicate(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w
            .message
            .split("dup key")
            .next()
            .is_some_and(|index| index.contains("user_id")),
        _ => false,
    }
}

impl MongoStore {
    /// Inserts the first-account marker for `user`: `true` when this
    /// sign-up is the store's first.
    async fn claim_first(&self, user: &UserId) -> StoreResult<bool> {
        // A second try only after removing an abandoned marker.
        for _ in 0..2 {
            let (at, _) = now();
            let marker = doc! {"_id": FIRST_ACCOUNT, "user_id": user.as_ref(), "created_at": at};
            match self.meta.insert_one(marker).await {
                Ok(_) => return Ok(true),
                Err(e) if command_code(&e) == Some(code::DUPLICATE_KEY) => {}
                Err(e) => return Err(self.err(e)),
            }
            if !self.remove_abandoned_marker().await? {
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// Removes the marker when the sign-up that inserted it never made its
    /// account; `true` when the marker is gone (worth trying again).
    async fn remove_abandoned_marker(&self) -> StoreResult<bool> {
        let Some(marker) = self
            .meta
            .find_one(doc! {"_id": FIRST_ACCOUNT})
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(true);
        };
        let young = marker
            .get_datetime("created_at")
            .is_ok_and(|at| Utc::now() - from_bson_time(*at) < STALE_MARKER);
        if young {
            return Ok(false);
        }
        let owner = marker.get("user_id").cloned().unwrap_or(Bson::Null);
        let account = self
            .users
            .find_one(doc! {"user_id": owner.clone()})
            .projection(doc! {"_id": 1})
            .await
            .map_err(|e| self.err(e))?;
        if account.is_some() {
            return Ok(false);
        }
        // Only that marker: another sign-up may have replaced it meanwhile.
        let removed = self
            .meta
            .delete_one(doc! {"_id": FIRST_ACCOUNT, "user_id": owner})
            .await
            .map_err(|e| self.err(e))?;
        if removed.deleted_count > 0 {
            tracing::warn!("removed a first-account marker whose sign-up never finished");
        }
        Ok(true)
    }

    /// Gives the marker back after `user`'s sign-up failed.
    async fn release_first(&self, user: &UserId) {
        if let Err(e) = self
            .meta
            .delete_one(doc! {"_id": FIRST_ACCOUNT, "user_id": user.as_ref()})
            .await
        {
            tracing::warn!(
                error = %self.redactor.clean(&e.kind.to_string()),
                "could not remove the first-account marker of a failed sign-up"
            );
        }
    }

    async fn find_account(&self, filter: Document) -> StoreResult<Option<Account>> {
        self.users
            .find_one(filter)
            .projection(doc! {"_id": 0})
            .await
            .map_err(|e| self.err(e))?
            .map(|d| account_from_doc(&d).map_err(StoreError::Backend))
            .transpose()
    }
}

#[async_trait]
impl AccountStore for MongoStore {
    async fn create_account(&self, account: NewAccount, signup: Signup) -> StoreResult<Created> {
        let first = self.claim_first(&account.user_id).await?;
        if !first && signup == Signup::FirstOnly {
            return Ok(Created::Closed);
        }
        let (at, created_at) = now();
        let d = doc! {
            "user_id": account.user_id.as_ref(),
            "email": &account.email,
            "name": &account.name,
            "password_hash": &account.password_hash,
            "is_admin": first,
            "disabled": false,
            "created_at": at,
        };
        if let Err(e) = self.users.insert_one(d).await {
            if first {
                self.release_first(&account.user_id).await;
            }
            if command_code(&e) == Some(code::DUPLICATE_KEY) && !is_user_id_duplicate(&e) {
                return Ok(Created::EmailTaken);
            }
            return Err(self.err(e));
        }
        Ok(Created::Account(Account {
            user_id: account.user_id,
            email: account.email,
            name: account.name,
            password_hash: account.password_hash,
            is_admin: first,
            disabled: false,
            created_at,
        }))
    }

    async fn account_by_email(&self, email: &str) -> StoreResult<Option<Account>> {
        self.find_account(doc! {"email": email}).await
    }

    async fn has_accounts(&self) -> StoreResult<bool> {
        let any = self
            .users
            .find_one(doc! {})
            .projection(doc! {"_id": 1})
            .await
            .map_err(|e| self.err(e))?;
        Ok(any.is_some())
    }

    async fn account(&self, user: &UserId) -> StoreResult<Option<Account>> {
        self.find_account(doc! {"user_id": user.as_ref()}).await
    }

    async fn set_password(&self, user: &UserId, password_hash: &str) -> StoreResult<bool> {
        let result = self
            .users
            .update_one(
                doc! {"user_id": user.as_ref()},
                doc! {"$set": {"password_hash": password_hash}},
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(result.matched_count > 0)
    }

    async fn transfer_conversations(&self, from: &UserId, to: &UserId) -> StoreResult<u64> {
        if from == to {
            return Ok(0);
        }
        // Search needs nothing more: `$text` and the scan both filter on the
        // document's `user_id`.
        let result = self
            .conversations
            .update_many(
                doc! {"user_id": from.as_ref()},
                doc! {"$set": {"user_id": to.as_ref()}},
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(result.modified_count)
    }
}

#[cfg(test)]
mod tests {
    //! Against a real server: set `TEST_MONGODB_URI` (each test uses its
    //! own database `t_<uuid>` and drops it); skipped otherwise.

    use std::sync::Arc;

    use super::*;
    use crate::domain::{ConversationId, Role};
    use crate::store::{ConversationStore, NewMessage};

    /// A store on a fresh database, or `None` (skip) without a server.
    async fn store(test: &str) -> Option<MongoStore> {
        let Ok(uri) = std::env::var("TEST_MONGODB_URI") else {
            eprintln!("{test}: skipped, TEST_MONGODB_URI is not set");
            return None;
        };
        let database = format!("t_{}", uuid::Uuid::new_v4().simple());
        Some(MongoStore::connect(&uri, &database).await.unwrap())
    }

    async fn finish(store: MongoStore) {
        store.db.drop().await.unwrap();
    }

    fn new_account(email: &str) -> NewAccount {
        NewAccount {
            user_id: UserId::new(),
            email: email.to_string(),
            name: format!("name of {email}"),
            password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt${email}"),
        }
    }

    async fn sign_up(store: &MongoStore, email: &str, signup: Signup) -> Created {
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

    fn msg(role: Role, content: &str) -> NewMessage {
        NewMessage {
            role,
            content: content.to_string(),
            tokens: Some(3),
        }
    }

    #[tokio::test]
    async fn the_first_account_is_admin_and_the_next_is_not() {
        let Some(store) = store("the_first_account_is_admin_and_the_next_is_not").await else {
            return;
        };
        let first = created(sign_up(&store, "ada@example.com", Signup::Open).await);
        let second = created(sign_up(&store, "bob@example.com", Signup::Open).await);

        assert!(first.is_admin && !first.disabled);
        assert!(!second.is_admin && !second.disabled);
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
        let raw = store
            .users
            .find_one(doc! {"email": "ada@example.com"})
            .await
            .unwrap()
            .unwrap();
        assert!(raw.get_datetime("created_at").is_ok());
        assert_eq!(raw.get_bool("is_admin"), Ok(true));
        finish(store).await;
    }

    #[tokio::test]
    async fn first_only_refuses_a_second_account_and_stores_nothing() {
        let Some(store) = store("first_only_refuses_a_second_account_and_stores_nothing").await
        else {
            return;
        };
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
        assert_eq!(store.account(&refused_id).await.unwrap(), None);
        assert_eq!(store.users.count_documents(doc! {}).await.unwrap(), 1);
        finish(store).await;
    }

    #[tokio::test]
    async fn a_taken_email_is_reported_and_gives_the_first_place_back() {
        let Some(store) = store("a_taken_email_is_reported_and_gives_the_first_place_back").await
        else {
            return;
        };
        // An account that is there without having been first (copied in).
        let (at, _) = now();
        store
            .users
            .insert_one(doc! {
                "user_id": UserId::new().as_ref(), "email": "ada@example.com", "name": "Ada",
                "password_hash": "h", "is_admin": false, "disabled": false, "created_at": at,
            })
            .await
            .unwrap();

        let again = new_account("ada@example.com");
        let again_id = again.user_id.clone();
        assert_eq!(
            store
                .create_account(again, Signup::FirstOnly)
                .await
                .unwrap(),
            Created::EmailTaken
        );
        assert_eq!(store.account(&again_id).await.unwrap(), None);
        assert_eq!(
            store
                .account_by_email("ada@example.com")
                .await
                .unwrap()
                .unwrap()
                .name,
            "Ada"
        );
        // The marker was given back: the next sign-up is the first.
        let next = created(sign_up(&store, "bob@example.com", Signup::FirstOnly).await);
        assert!(next.is_admin);
        assert_eq!(
            sign_up(&store, "bob@example.com", Signup::Open).await,
            Created::EmailTaken
        );

        // The same user id again is a bug, not a taken email.
        let mut same_id = new_account("carol@example.com");
        same_id.user_id = next.user_id.clone();
        assert!(matches!(
            store.create_account(same_id, Signup::Open).await,
            Err(StoreError::Backend(_))
        ));
        finish(store).await;
    }

    #[tokio::test]
    async fn a_marker_whose_sign_up_never_finished_is_removed_once_old() {
        let Some(store) = store("a_marker_whose_sign_up_never_finished_is_removed_once_old").await
        else {
            return;
        };
        let abandoned = |age: chrono::Duration| {
            let at = mongodb::bson::DateTime::from_millis((Utc::now() - age).timestamp_millis());
            doc! {"_id": FIRST_ACCOUNT, "user_id": UserId::new().as_ref(), "created_at": at}
        };
        // Young: a sign-up may be between its two inserts.
        store
            .meta
            .insert_one(abandoned(chrono::Duration::seconds(5)))
            .await
            .unwrap();
        assert_eq!(
            sign_up(&store, "ada@example.com", Signup::FirstOnly).await,
            Created::Closed
        );
        store.meta.delete_many(doc! {}).await.unwrap();
        store
            .meta
            .insert_one(abandoned(chrono::Duration::minutes(5)))
            .await
            .unwrap();
        let first = created(sign_up(&store, "ada@example.com", Signup::FirstOnly).await);
        assert!(first.is_admin);
        // Its own marker is not abandoned, however old: its account exists.
        store
            .meta
            .update_one(
                doc! {"_id": FIRST_ACCOUNT},
                doc! {"$set": {"created_at": mongodb::bson::DateTime::from_millis(0)}},
            )
            .await
            .unwrap();
        assert_eq!(
            sign_up(&store, "bob@example.com", Signup::FirstOnly).await,
            Created::Closed
        );
        finish(store).await;
    }

    #[tokio::test]
    async fn only_one_of_many_sign_ups_at_once_on_several_instances_is_the_first() {
        let Some(store) =
            store("only_one_of_many_sign_ups_at_once_on_several_instances_is_the_first").await
        else {
            return;
        };
        // A second instance on the same database.
        let uri = std::env::var("TEST_MONGODB_URI").unwrap();
        let other = MongoStore::connect(&uri, store.db.name()).await.unwrap();
        let instances = [Arc::new(store.clone()), Arc::new(other)];
        let mut tasks = Vec::new();
        for i in 0..12 {
            let instance = instances[i % 2].clone();
            let signup = if i % 3 == 0 {
                Signup::FirstOnly
            } else {
                Signup::Open
            };
            tasks.push(tokio::spawn(async move {
                instance
                    .create_account(new_account(&format!("u{i}@example.com")), signup)
                    .await
                    .unwrap()
            }));
        }
        let mut admins = 0;
        for task in tasks {
            if let Created::Account(account) = task.await.unwrap() {
                admins += account.is_admin as usize;
            }
        }
        assert_eq!(admins, 1);
        assert_eq!(
            store
                .users
                .count_documents(doc! {"is_admin": true})
                .await
                .unwrap(),
            1
        );
        finish(store).await;
    }

    #[tokio::test]
    async fn set_password_replaces_the_hash_of_an_existing_account_only() {
        let Some(store) = store("set_password_replaces_the_hash_of_an_existing_account_only").await
        else {
            return;
        };
        let account = created(sign_up(&store, "ada@example.com", Signup::Open).await);
        assert!(store
            .set_password(&account.user_id, "$argon2id$new")
            .await
            .unwrap());
        // The same hash again still names an existing account.
        assert!(store
            .set_password(&account.user_id, "$argon2id$new")
            .await
            .unwrap());
        assert_eq!(
            store.account(&account.user_id).await.unwrap().unwrap(),
            Account {
                password_hash: "$argon2id$new".into(),
                ..account
            }
        );
        assert!(!store
            .set_password(&UserId::new(), "$argon2id$x")
            .await
            .unwrap());
        finish(store).await;
    }

    #[tokio::test]
    async fn transfer_moves_conversations_and_search_to_the_account() {
        let Some(store) = store("transfer_moves_conversations_and_search_to_the_account").await
        else {
            return;
        };
        let (anon, owner, bystander) = (UserId::new(), UserId::new(), UserId::new());
        let (one, two, own, theirs) = (
            ConversationId::new(),
            ConversationId::new(),
            ConversationId::new(),
            ConversationId::new(),
        );
        for (user, id, text) in [
            (&anon, &one, "platypus habits"),
            (&anon, &two, "platypus eggs"),
            (&owner, &own, "wombat"),
            (&bystander, &theirs, "platypus"),
        ] {
            store.create(user, id).await.unwrap();
            store
                .append(user, id, vec![msg(Role::User, text)])
                .await
                .unwrap();
        }

        assert_eq!(
            store.transfer_conversations(&anon, &owner).await.unwrap(),
            2
        );

        let sorted = |mut ids: Vec<ConversationId>| {
            ids.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
            ids
        };
        let listed = store.list(&owner, 10, 0).await.unwrap();
        assert_eq!(
            sorted(listed.into_iter().map(|m| m.conversation_id).collect()),
            sorted(vec![one.clone(), two.clone(), own.clone()])
        );
        assert!(store.list(&anon, 10, 0).await.unwrap().is_empty());
        assert_eq!(
            &*store.load(&owner, &two).await.unwrap().messages[0]
                .message
                .content,
            "platypus eggs"
        );
        assert!(matches!(
            store.load(&anon, &two).await,
            Err(StoreError::NotFound)
        ));
        let found = store.search(&owner, "platypus", 10).await.unwrap();
        assert_eq!(
            sorted(found.into_iter().map(|h| h.meta.conversation_id).collect()),
            sorted(vec![one, two])
        );
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
        assert_eq!(
            store.transfer_conversations(&anon, &owner).await.unwrap(),
            0
        );
        assert_eq!(
            store.transfer_conversations(&owner, &owner).await.unwrap(),
            0
        );
        finish(store).await;
    }
}
