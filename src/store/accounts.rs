//! People with accounts (`AUTH_MODE=local`): one record per person, found
//! by their email (kept lowercase, unique) or their user id, which is the
//! id their conversations are stored under. Passwords arrive here already
//! hashed (argon2id PHC strings); this layer never sees one in clear.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;
use crate::domain::UserId;

/// A stored account.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub user_id: UserId,
    /// Lowercase.
    pub email: String,
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub is_admin: bool,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

/// An account to create.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub user_id: UserId,
    /// Lowercase, already checked.
    pub email: String,
    pub name: String,
    pub password_hash: String,
}

/// Whether sign-up may create an account now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signup {
    /// Anyone may sign up.
    Open,
    /// Only while there is no account at all (that one becomes admin).
    FirstOnly,
}

/// What creating an account did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// Created; `is_admin` is true for the first account of the store.
    Account(Account),
    /// An account with that email exists.
    EmailTaken,
    /// `Signup::FirstOnly` and an account exists already.
    Closed,
}

/// Who an identity provider (or a trusted proxy) says the person is.
#[derive(Debug, Clone)]
pub struct ExternalIdentity {
    /// `proxy`, or `oidc:<provider id>`.
    pub provider: String,
    /// The provider's stable id of the person (OIDC `sub`; for a proxy,
    /// the lowercase email it sends).
    pub subject: String,
    /// Lowercase, already checked.
    pub email: String,
    /// Whether the provider vouches for the email: only then may the
    /// identity be linked to an existing account with that email.
    pub email_verified: bool,
    pub name: String,
}

/// What signing in with an external identity found.
#[derive(Debug, Clone, PartialEq)]
pub enum External {
    /// The linked account (found, linked by email, or created).
    Account(Account),
    /// An account has the email, and the provider does not vouch for it.
    EmailTaken,
}

/// Storage of accounts.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Creates the account; the first account of the store is the admin.
    /// Deciding "first" and inserting are one atomic step, so two sign-ups
    /// at once cannot both become the first.
    async fn create_account(&self, account: NewAccount, signup: Signup) -> StoreResult<Created>;
    /// The account with that (lowercase) email.
    async fn account_by_email(&self, email: &str) -> StoreResult<Option<Account>>;
    /// Whether any account exists (sign-up `first-only` is open until one does).
    async fn has_accounts(&self) -> StoreResult<bool>;
    /// The account with that user id.
    async fn account(&self, user: &UserId) -> StoreResult<Option<Account>>;
    /// Replaces the password hash; `false` when there is no such account.
    async fn set_password(&self, user: &UserId, password_hash: &str) -> StoreResult<bool>;
    /// The account of an external identity: the one linked to
    /// `(provider, subject)`; else, when the email is verified, the account
    /// with that email, now linked; else a new account (without a password;
    /// the store's first account is the admin), linked. `admin: Some(b)`
    /// sets `is_admin` to `b` (a provider's groups decide it at each
    /// sign-in); `None` keeps it. Linking is atomic: the same identity
    /// signing in twice at once gets one account.
    async fn external_account(
        &self,
        identity: ExternalIdentity,
        admin: Option<bool>,
    ) -> StoreResult<External>;
    /// Moves every conversation of `from` (an anonymous browser user) to
    /// `to` (the account it signed in to); returns how many moved.
    async fn transfer_conversations(&self, from: &UserId, to: &UserId) -> StoreResult<u64>;

    /// Every account, oldest first, for `migrate` (it reads them all at
    /// once: accounts are people, not messages).
    async fn accounts_for_copy(&self) -> StoreResult<Vec<Account>>;

    /// Writes `account` as it is (user id, password hash, flags, date), for
    /// `migrate`: `false` when its user id or email is already there (that
    /// account is left as it is). An imported account closes `first-only`
    /// sign-up like a created one.
    async fn import_account(&self, account: &Account) -> StoreResult<bool>;
    /// At most `limit` accounts after the first `offset`, oldest first
    /// (ties by user id, so pages neither repeat nor skip one).
    async fn list_accounts(&self, limit: u32, offset: u32) -> StoreResult<Vec<Account>>;
    /// Disables or enables the account; the account as it is now, or
    /// `None` when there is no such account.
    async fn set_disabled(&self, user: &UserId, disabled: bool) -> StoreResult<Option<Account>>;
    /// Makes the account an administrator or not; the account as it is
    /// now, or `None` when there is no such account.
    async fn set_admin(&self, user: &UserId, is_admin: bool) -> StoreResult<Option<Account>>;
}

/// A short per-process memory of which accounts may act (exist and are
/// not disabled), so a signed-in request or socket event does not pay a
/// store read each time.
///
/// An answer is kept for [`ACTIVE_FOR`]: a busy person costs one read a
/// second instead of one per request. Disabling on this instance forgets
/// the account at once ([`ActiveAccounts::forget`]); on another instance
/// the answer is at most that old, and disabling also revokes the
/// account's sessions and disconnects its sockets everywhere, so this is
/// only the second line of defence. Refusals are not kept: a re-enabled
/// account works at its next request.
pub struct ActiveAccounts {
    store: Arc<dyn AccountStore>,
    seen: Mutex<HashMap<UserId, Instant>>,
}

/// How long "this account may act" is believed without asking the store.
pub const ACTIVE_FOR: Duration = Duration::from_secs(1);
/// Entries kept at most (then the memory starts over: a bound, not an LRU).
const MAX_REMEMBERED: usize = 10_000;

impl ActiveAccounts {
    pub fn new(store: Arc<dyn AccountStore>) -> Self {
        Self {
            store,
            seen: Default::default(),
        }
    }

    /// Whether `user` has an account that is not disabled.
    pub async fn is_active(&self, user: &UserId) -> StoreResult<bool> {
        let now = Instant::now();
        if let Some(at) = self.lock().get(user) {
            if now.duration_since(*at) < ACTIVE_FOR {
                return Ok(true);
            }
        }
        let active = self
            .store
            .account(user)
            .await?
            .is_some_and(|account| !account.disabled);
        let mut seen = self.lock();
        if active {
            if seen.len() >= MAX_REMEMBERED {
                seen.clear();
            }
            seen.insert(user.clone(), now);
        } else {
            seen.remove(user);
        }
        Ok(active)
    }

    /// Forgets what was known of `user` (it was just disabled).
    pub fn forget(&self, user: &UserId) {
        self.lock().remove(user);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, Instant>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
