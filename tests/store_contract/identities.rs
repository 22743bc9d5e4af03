//! The contract of `AccountStore::external_account`: accounts of people an
//! identity provider or a trusted proxy names, run against each backend
//! (see the `contract!` list in `main.rs`).

use std::sync::Arc;

use llm_chat_server::store::accounts::{Account, AccountStore, External, ExternalIdentity, Signup};

use crate::accounts::{created, sign_up};
use crate::fixture::Fixture;

fn identity(provider: &str, subject: &str, email: &str, verified: bool) -> ExternalIdentity {
    ExternalIdentity {
        provider: provider.to_string(),
        subject: subject.to_string(),
        email: email.to_string(),
        email_verified: verified,
        name: format!("name of {subject}"),
    }
}

#[track_caller]
fn account(found: External) -> Account {
    match found {
        External::Account(account) => account,
        other => panic!("expected an account, got {other:?}"),
    }
}

async fn external(store: &dyn AccountStore, id: ExternalIdentity, admin: Option<bool>) -> External {
    store.external_account(id, admin).await.unwrap()
}

pub async fn a_new_identity_gets_an_account_without_a_password_and_keeps_it(f: &Fixture) {
    let accounts = &*f.accounts;
    let first = account(
        external(
            accounts,
            identity("oidc:a", "sub-1", "ada@example.com", true),
            None,
        )
        .await,
    );
    assert_eq!(first.email, "ada@example.com");
    assert_eq!(first.name, "name of sub-1");
    assert!(first.password_hash.is_empty(), "no password: {first:?}");
    assert!(first.is_admin, "the store's first account is the admin");
    assert!(!first.disabled);
    assert_eq!(
        accounts.account(&first.user_id).await.unwrap(),
        Some(first.clone())
    );

    // The same identity again, with another email and name: the same account.
    let again = account(
        external(
            accounts,
            identity("oidc:a", "sub-1", "other@example.com", true),
            None,
        )
        .await,
    );
    assert_eq!(again, first);

    // The same subject at another provider is another person.
    let other = account(
        external(
            accounts,
            identity("oidc:b", "sub-1", "bob@example.com", true),
            None,
        )
        .await,
    );
    assert_ne!(other.user_id, first.user_id);
    assert!(!other.is_admin, "only the first account is the admin");
}

pub async fn a_verified_email_links_the_existing_account_an_unverified_one_does_not(f: &Fixture) {
    let accounts = &*f.accounts;
    let local = created(sign_up(accounts, "ada@example.com", Signup::Open).await);

    let refused = external(
        accounts,
        identity("oidc:a", "sub-1", "ada@example.com", false),
        None,
    )
    .await;
    assert_eq!(refused, External::EmailTaken);
    // Refusing linked nothing: a verified sign-in of that identity links now.
    let linked = account(
        external(
            accounts,
            identity("oidc:a", "sub-1", "ada@example.com", true),
            None,
        )
        .await,
    );
    assert_eq!(linked, local, "the existing account, password and all");

    // Once linked, the identity finds the account even if it stops vouching
    // for the email or the email changes.
    let later = account(
        external(
            accounts,
            identity("oidc:a", "sub-1", "renamed@example.com", false),
            None,
        )
        .await,
    );
    assert_eq!(later.user_id, local.user_id);
}

pub async fn admin_is_set_when_asked_and_kept_otherwise(f: &Fixture) {
    let accounts = &*f.accounts;
    created(sign_up(accounts, "root@example.com", Signup::Open).await);
    let id = || identity("proxy", "ada@example.com", "ada@example.com", true);

    let plain = account(external(accounts, id(), None).await);
    assert!(!plain.is_admin);
    let promoted = account(external(accounts, id(), Some(true)).await);
    assert!(promoted.is_admin);
    assert_eq!(promoted.user_id, plain.user_id);
    let kept = account(external(accounts, id(), None).await);
    assert!(kept.is_admin, "None keeps what is stored");
    let stored = accounts.account(&plain.user_id).await.unwrap().unwrap();
    assert!(stored.is_admin);
    let demoted = account(external(accounts, id(), Some(false)).await);
    assert!(!demoted.is_admin);
    assert!(
        !accounts
            .account(&plain.user_id)
            .await
            .unwrap()
            .unwrap()
            .is_admin
    );
}

pub async fn an_identity_signing_in_at_once_on_two_stores_gets_one_account(f: &Fixture) {
    let stores: [Arc<dyn AccountStore>; 2] = [f.accounts.clone(), f.reopen().await];
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move {
                store
                    .external_account(identity("oidc:a", "sub-9", "zed@example.com", true), None)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut made = Vec::new();
    for task in tasks {
        made.push(account(task.await.unwrap()));
    }
    assert!(
        made.iter().all(|a| a.user_id == made[0].user_id),
        "{made:?}"
    );
    let stored = f
        .accounts
        .account_by_email("zed@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.user_id, made[0].user_id);
    assert!(stored.is_admin, "the first and only account");
}
