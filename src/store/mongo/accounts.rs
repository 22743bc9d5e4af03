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
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};

use super::base::{code, command_code, MongoStore};
use super::documents::{from_bson_time, now, to_bson_time};
use crate::domain::UserId;
use crate::store::accounts::{
    Account, AccountStore, Created, External, ExternalIdentity, LinkedIdentity, NewAccount, Signup,
};
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

    /// Links `(provider, subject)` to `user`: `false` when it is linked
    /// already (another sign-in got there first).
    async fn link_identity(&self, key: &str, user: &UserId) -> StoreResult<bool> {
        let (at, _) = now();
        let link = doc! {"_id": key, "user_id": user.as_ref(), "created_at": at};
        match self.identities.insert_one(link).await {
            Ok(_) => Ok(true),
            Err(e) if command_code(&e) == Some(code::DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// One try of [`AccountStore::external_account`]; `None`: lost a race
    /// with a sign-in of the same person, try again.
    async fn external_once(&self, identity: &ExternalIdentity) -> StoreResult<Option<External>> {
        let key = format!("{}\n{}", identity.provider, identity.subject);
        if let Some(link) = self
            .identities
            .find_one(doc! {"_id": &key})
            .await
            .map_err(|e| self.err(e))?
        {
            let user = UserId::from_stored(link.get_str("user_id").unwrap_or_default().to_string());
            if let Some(account) = self.account(&user).await? {
                return Ok(Some(External::Account(account)));
            }
            // Linked to an account that is not there: one being created
            // right now (wait), or one whose creation never finished.
            let young = link
                .get_datetime("created_at")
                .is_ok_and(|at| Utc::now() - from_bson_time(*at) < STALE_MARKER);
            if young {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                return Ok(None);
            }
            self.identities
                .delete_one(doc! {"_id": &key, "user_id": user.as_ref()})
                .await
                .map_err(|e| self.err(e))?;
            return Ok(None);
        }
        if let Some(account) = self.account_by_email(&identity.email).await? {
            if !identity.email_verified {
                return Ok(Some(External::EmailTaken));
            }
            return Ok(self
                .link_identity(&key, &account.user_id)
                .await?
                .then_some(External::Account(account)));
        }
        // A new account: the link first, so a second sign-in of the same
        // identity waits for this account instead of making another.
        let user_id = UserId::new();
        if !self.link_identity(&key, &user_id).await? {
            return Ok(None);
        }
        let created = self
            .create_account(
                NewAccount {
                    user_id: user_id.clone(),
                    email: identity.email.clone(),
                    name: identity.name.clone(),
                    password_hash: String::new(),
                },
                Signup::Open,
            )
            .await;
        match created {
            Ok(Created::Account(account)) => Ok(Some(External::Account(account))),
            other => {
                // The email was taken meanwhile (or an error): unlink.
                self.identities
                    .delete_one(doc! {"_id": &key, "user_id": user_id.as_ref()})
                    .await
                    .map_err(|e| self.err(e))?;
                other.map(|_| None)
            }
        }
    }

    /// Sets one boolean field of `user`'s account; the account as it is
    /// after the change (one round trip), `None` when there is none.
    async fn update_flag(
        &self,
        user: &UserId,
        field: &'static str,
        value: bool,
    ) -> StoreResult<Option<Account>> {
        self.users
            .find_one_and_update(
                doc! {"user_id": user.as_ref()},
                doc! {"$set": {field: value}},
            )
            .return_document(mongodb::options::ReturnDocument::After)
            .projection(doc! {"_id": 0})
            .await
            .map_err(|e| self.err(e))?
            .map(|d| account_from_doc(&d).map_err(StoreError::Backend))
            .transpose()
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
    async fn identities_for_copy(&self) -> StoreResult<Vec<LinkedIdentity>> {
        let links: Vec<Document> = self
            .identities
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        Ok(links
            .iter()
            .filter_map(|d| {
                let (provider, subject) = d.get_str("_id").ok()?.split_once('\n')?;
                Some(LinkedIdentity {
                    provider: provider.to_string(),
                    subject: subject.to_string(),
                    user_id: UserId::from_stored(d.get_str("user_id").ok()?.to_string()),
                })
            })
            .collect())
    }

    async fn import_identity(&self, identity: &LinkedIdentity) -> StoreResult<bool> {
        let key = format!("{}\n{}", identity.provider, identity.subject);
        self.link_identity(&key, &identity.user_id).await
    }

    async fn external_account(
        &self,
        identity: ExternalIdentity,
        admin: Option<bool>,
    ) -> StoreResult<External> {
        for _ in 0..50 {
            let Some(found) = self.external_once(&identity).await? else {
                continue;
            };
            let External::Account(account) = found else {
                return Ok(found);
            };
            return Ok(External::Account(match admin {
                Some(is_admin) if is_admin != account.is_admin => {
                    self.users
                        .update_one(
                            doc! {"user_id": account.user_id.as_ref()},
                            doc! {"$set": {"is_admin": is_admin}},
                        )
                        .await
                        .map_err(|e| self.err(e))?;
                    Account {
                        is_admin,
                        ..account
                    }
                }
                _ => account,
            }));
        }
        Err(StoreError::Unavailable(
            "signing in with an identity provider kept racing; try again".to_string(),
        ))
    }

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

    async fn list_accounts(&self, limit: u32, offset: u32) -> StoreResult<Vec<Account>> {
        use futures_util::TryStreamExt;
        // MongoDB reads a limit of 0 as "no limit".
        if limit == 0 {
            return Ok(Vec::new());
        }
        let docs: Vec<Document> = self
            .users
            .find(doc! {})
            .projection(doc! {"_id": 0})
            .sort(doc! {"created_at": 1, "user_id": 1})
            .skip(u64::from(offset))
            .limit(i64::from(limit))
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        docs.iter()
            .map(|d| account_from_doc(d).map_err(StoreError::Backend))
            .collect()
    }

    async fn set_disabled(&self, user: &UserId, disabled: bool) -> StoreResult<Option<Account>> {
        self.update_flag(user, "disabled", disabled).await
    }

    async fn set_admin(&self, user: &UserId, is_admin: bool) -> StoreResult<Option<Account>> {
        self.update_flag(user, "is_admin", is_admin).await
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
                super::documents::revised(doc! {"$set": {"user_id": to.as_ref()}}),
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(result.modified_count)
    }

    async fn accounts_for_copy(&self) -> StoreResult<Vec<Account>> {
        let mut cursor = self
            .users
            .find(doc! {})
            .projection(doc! {"_id": 0})
            .sort(doc! {"created_at": 1, "user_id": 1})
            .await
            .map_err(|e| self.err(e))?;
        let mut list = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(|e| self.err(e))? {
            list.push(account_from_doc(&d).map_err(StoreError::Backend)?);
        }
        Ok(list)
    }

    async fn import_account(&self, account: &Account) -> StoreResult<bool> {
        let d = doc! {
            "user_id": account.user_id.as_ref(),
            "email": &account.email,
            "name": &account.name,
            "password_hash": &account.password_hash,
            "is_admin": account.is_admin,
            "disabled": account.disabled,
            "created_at": to_bson_time(&account.created_at),
        };
        let inserted = match self.users.insert_one(d).await {
            Ok(_) => true,
            Err(e) if command_code(&e) == Some(code::DUPLICATE_KEY) => false,
            Err(e) => return Err(self.err(e)),
        };
        // Sign-up under `first-only` stays closed: the store has an account.
        // The marker names an account that exists, so it is never taken
        // for an abandoned one.
        let (at, _) = now();
        let marker =
            doc! {"_id": FIRST_ACCOUNT, "user_id": account.user_id.as_ref(), "created_at": at};
        match self.meta.insert_one(marker).await {
            Ok(_) => {}
            Err(e) if command_code(&e) == Some(code::DUPLICATE_KEY) => {}
            Err(e) => return Err(self.err(e)),
        }
        Ok(inserted)
    }
}
