//! The contract every `AccountStore` keeps, written once and run against
//! each backend (see the `contract!` list in `main.rs`). Moving
//! conversations to an account is checked through the `ConversationStore`
//! of the same store.

use std::sync::Arc;

use chrono::Utc;
use llm_chat_server::domain::{ConversationId, Role, UserId};
use llm_chat_server::store::accounts::{Account, AccountStore, Created, NewAccount, Signup};
use llm_chat_server::store::{ConversationStore, StoreError};

use crate::checks::{assert_not_found, contents, msg};
use crate::fixture::Fixture;

pub fn new_account(email: &str) -> NewAccount {
    NewAccount {
        user_id: UserId::new(),
        email: email.to_string(),
        name: format!("name of {email}"),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt${email}"),
    }
}

pub async fn sign_up(accounts: &dyn AccountStore, email: &str, signup: Signup) -> Created {
    accounts
        .create_account(new_account(email), signup)
        .await
        .unwrap()
}

#[track_caller]
pub fn created(result: Created) -> Account {
    match result {
        Created::Account(account) => account,
        other => panic!("expected an account, got {other:?}"),
    }
}

fn sorted(mut ids: Vec<ConversationId>) -> Vec<ConversationId> {
    ids.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    ids
}

async fn listed(store: &dyn ConversationStore, user: &UserId) -> Vec<ConversationId> {
    let metas = store.list(user, 100, 0).await.unwrap();
    sorted(metas.into_iter().map(|m| m.conversation_id).collect())
}

async fn found(store: &dyn ConversationStore, user: &UserId, query: &str) -> Vec<ConversationId> {
    let hits = store.search(user, query, 100).await.unwrap();
    sorted(hits.into_iter().map(|h| h.meta.conversation_id).collect())
}

pub async fn the_first_account_is_the_admin_and_later_ones_are_not(f: &Fixture) {
    let accounts = &*f.accounts;
    let asked = new_account("ada@example.com");
    let first = created(
        accounts
            .create_account(asked.clone(), Signup::Open)
            .await
            .unwrap(),
    );
    let second = created(sign_up(accounts, "bob@example.com", Signup::Open).await);
    let third = created(sign_up(accounts, "cy@example.com", Signup::Open).await);

    assert!(first.is_admin, "the first account is the admin");
    assert!(!second.is_admin && !third.is_admin);
    assert!(!first.disabled && !second.disabled && !third.disabled);
    assert_eq!(
        (
            &first.user_id,
            &first.email,
            &first.name,
            &first.password_hash
        ),
        (
            &asked.user_id,
            &asked.email,
            &asked.name,
            &asked.password_hash
        )
    );
    assert!((Utc::now() - first.created_at).num_seconds().abs() < 5);
    // What creating returned is what reading gives, by email and by id.
    for account in [&first, &second, &third] {
        assert_eq!(
            accounts.account_by_email(&account.email).await.unwrap(),
            Some(account.clone())
        );
        assert_eq!(
            accounts.account(&account.user_id).await.unwrap(),
            Some(account.clone())
        );
    }
}

pub async fn first_only_signs_up_the_first_account_then_is_closed_and_stores_nothing(f: &Fixture) {
    let accounts = &*f.accounts;
    let first = created(sign_up(accounts, "ada@example.com", Signup::FirstOnly).await);
    assert!(first.is_admin);

    let refused = new_account("bob@example.com");
    let refused_id = refused.user_id.clone();
    assert_eq!(
        accounts
            .create_account(refused, Signup::FirstOnly)
            .await
            .unwrap(),
        Created::Closed
    );
    assert_eq!(
        accounts.account_by_email("bob@example.com").await.unwrap(),
        None
    );
    assert_eq!(accounts.account(&refused_id).await.unwrap(), None);
    // Closed wins over a taken email: sign-up is closed for everyone.
    assert_eq!(
        sign_up(accounts, "ada@example.com", Signup::FirstOnly).await,
        Created::Closed
    );
    assert_eq!(
        accounts.account_by_email("ada@example.com").await.unwrap(),
        Some(first.clone())
    );

    // The refused email is free: an open sign-up takes it, not as admin.
    let later = created(sign_up(accounts, "bob@example.com", Signup::Open).await);
    assert!(!later.is_admin);
    assert_eq!(accounts.account(&first.user_id).await.unwrap(), Some(first));
}

pub async fn a_taken_email_is_reported_and_changes_nothing(f: &Fixture) {
    let accounts = &*f.accounts;
    let first = created(sign_up(accounts, "ada@example.com", Signup::Open).await);
    let second = created(sign_up(accounts, "bob@example.com", Signup::Open).await);

    for taken in [&first, &second] {
        let again = NewAccount {
            name: "someone else".into(),
            password_hash: "$argon2id$other".into(),
            ..new_account(&taken.email)
        };
        let again_id = again.user_id.clone();
        assert_eq!(
            accounts.create_account(again, Signup::Open).await.unwrap(),
            Created::EmailTaken
        );
        assert_eq!(accounts.account(&again_id).await.unwrap(), None);
        assert_eq!(
            accounts.account_by_email(&taken.email).await.unwrap(),
            Some(taken.clone())
        );
    }

    // Refusing it took no one's place: the next account is not the admin.
    let next = created(sign_up(accounts, "cy@example.com", Signup::Open).await);
    assert!(!next.is_admin);
}

pub async fn a_second_account_with_a_user_id_in_use_is_an_error_not_a_taken_email(f: &Fixture) {
    let accounts = &*f.accounts;
    let first = created(sign_up(accounts, "ada@example.com", Signup::Open).await);

    let same_id = NewAccount {
        user_id: first.user_id.clone(),
        ..new_account("other@example.com")
    };
    match accounts.create_account(same_id, Signup::Open).await {
        Err(StoreError::Backend(_)) => {}
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert_eq!(
        accounts
            .account_by_email("other@example.com")
            .await
            .unwrap(),
        None
    );
    assert_eq!(accounts.account(&first.user_id).await.unwrap(), Some(first));
}

pub async fn has_accounts_is_false_until_the_first_sign_up(f: &Fixture) {
    let accounts = &*f.accounts;
    assert!(!accounts.has_accounts().await.unwrap());
    // Conversations are not accounts.
    f.store
        .create(&UserId::new(), &ConversationId::new())
        .await
        .unwrap();
    assert!(!accounts.has_accounts().await.unwrap());

    created(sign_up(accounts, "ada@example.com", Signup::FirstOnly).await);
    assert!(accounts.has_accounts().await.unwrap());
    created(sign_up(accounts, "bob@example.com", Signup::Open).await);
    assert!(accounts.has_accounts().await.unwrap());
}

pub async fn unknown_emails_and_user_ids_find_no_account(f: &Fixture) {
    let accounts = &*f.accounts;
    assert_eq!(
        accounts.account_by_email("ada@example.com").await.unwrap(),
        None
    );
    assert_eq!(accounts.account(&UserId::new()).await.unwrap(), None);

    let ada = created(sign_up(accounts, "ada@example.com", Signup::Open).await);
    for unknown in ["eve@example.com", "", "ada@example.co", "da@example.com"] {
        assert_eq!(
            accounts.account_by_email(unknown).await.unwrap(),
            None,
            "{unknown:?}"
        );
    }
    // Neither key finds an account by the other's value.
    assert_eq!(
        accounts
            .account_by_email(ada.user_id.as_ref())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        accounts
            .account(&UserId::from_stored(ada.email.clone()))
            .await
            .unwrap(),
        None
    );
    assert_eq!(accounts.account(&UserId::new()).await.unwrap(), None);
}

pub async fn set_password_replaces_the_hash_of_an_existing_account_only(f: &Fixture) {
    let accounts = &*f.accounts;
    let ada = created(sign_up(accounts, "ada@example.com", Signup::Open).await);
    let bob = created(sign_up(accounts, "bob@example.com", Signup::Open).await);

    assert!(accounts
        .set_password(&ada.user_id, "$argon2id$new")
        .await
        .unwrap());
    let changed = Account {
        password_hash: "$argon2id$new".into(),
        ..ada.clone()
    };
    assert_eq!(
        accounts.account(&ada.user_id).await.unwrap(),
        Some(changed.clone())
    );
    assert_eq!(
        accounts.account_by_email(&ada.email).await.unwrap(),
        Some(changed.clone())
    );
    // The same hash again still names an existing account.
    assert!(accounts
        .set_password(&ada.user_id, "$argon2id$new")
        .await
        .unwrap());
    assert_eq!(accounts.account(&bob.user_id).await.unwrap(), Some(bob));

    let nobody = UserId::new();
    assert!(!accounts.set_password(&nobody, "$argon2id$x").await.unwrap());
    assert_eq!(accounts.account(&nobody).await.unwrap(), None);
    assert_eq!(accounts.account(&ada.user_id).await.unwrap(), Some(changed));
}

pub async fn transfer_moves_conversations_with_messages_and_search_and_counts_them(f: &Fixture) {
    let (store, accounts) = (&*f.store, &*f.accounts);
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
    // A search before the move, so whatever a backend indexes as it
    // searches has seen `early` and not yet `late`.
    assert_eq!(found(store, &anon, "platypus").await, vec![early.clone()]);
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
    let early_meta = store.meta(&anon, &early).await.unwrap();
    let late_before = store.load(&anon, &late).await.unwrap();

    assert_eq!(
        accounts
            .transfer_conversations(&anon, &owner)
            .await
            .unwrap(),
        2
    );

    // Everything is the owner's now, as it was.
    assert_eq!(
        listed(store, &owner).await,
        sorted(vec![early.clone(), late.clone(), own.clone()])
    );
    assert_eq!(store.meta(&owner, &early).await.unwrap(), early_meta);
    let late_after = store.load(&owner, &late).await.unwrap();
    assert_eq!(late_after.meta, late_before.meta);
    assert_eq!(
        contents(&late_after),
        vec!["platypus eggs", "they lay them"]
    );
    assert_eq!(late_after.messages, late_before.messages);
    assert_eq!(
        found(store, &owner, "platypus").await,
        sorted(vec![early.clone(), late.clone()])
    );
    assert_eq!(found(store, &owner, "wombat").await, vec![own.clone()]);

    // And nothing is the anonymous user's any more.
    assert!(listed(store, &anon).await.is_empty());
    assert_not_found(store.load(&anon, &late).await);
    assert_not_found(store.meta(&anon, &early).await);
    assert!(found(store, &anon, "platypus").await.is_empty());
    assert_not_found(
        store
            .append(&anon, &early, vec![msg(Role::User, "x")])
            .await,
    );

    // Someone else's conversations did not move.
    assert_eq!(listed(store, &bystander).await, vec![theirs.clone()]);
    assert_eq!(found(store, &bystander, "platypus").await, vec![theirs]);

    // The moved conversations go on as the owner's.
    let appended = store
        .append(&owner, &early, vec![msg(Role::User, "echidna")])
        .await
        .unwrap();
    assert_eq!(appended.message_count, 2);
    assert_eq!(found(store, &owner, "echidna").await, vec![early.clone()]);
    store.delete(&owner, &late).await.unwrap();
    assert!(found(store, &owner, "eggs").await.is_empty());
    assert_eq!(listed(store, &owner).await, sorted(vec![early, own]));

    // Nothing left to move; nobody moves to themselves.
    assert_eq!(
        accounts
            .transfer_conversations(&anon, &owner)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        accounts
            .transfer_conversations(&owner, &owner)
            .await
            .unwrap(),
        0
    );
    assert_eq!(listed(store, &owner).await.len(), 2);
}

/// Starts `count` sign-ups at once, alternately on `f`'s store and on a
/// second store on the same file or database.
async fn sign_ups_at_once(f: &Fixture, count: usize, signup: Signup) -> Vec<Created> {
    let stores: [Arc<dyn AccountStore>; 2] = [f.accounts.clone(), f.reopen().await];
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move {
                store
                    .create_account(new_account(&format!("u{i}@example.com")), signup)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    // Both stores read the same accounts afterwards.
    for store in &stores {
        for result in &results {
            if let Created::Account(account) = result {
                assert_eq!(
                    store.account(&account.user_id).await.unwrap().as_ref(),
                    Some(account)
                );
            }
        }
    }
    results
}

pub async fn first_only_sign_ups_at_once_on_two_stores_make_exactly_one_account_the_admin(
    f: &Fixture,
) {
    let results = sign_ups_at_once(f, 12, Signup::FirstOnly).await;

    let made: Vec<&Account> = results
        .iter()
        .filter_map(|r| match r {
            Created::Account(account) => Some(account),
            _ => None,
        })
        .collect();
    assert_eq!(made.len(), 1, "{results:?}");
    assert!(made[0].is_admin);
    let closed = results.iter().filter(|r| **r == Created::Closed).count();
    assert_eq!(closed, 11, "{results:?}");
    let mut stored = 0;
    for i in 0..12 {
        stored += f
            .accounts
            .account_by_email(&format!("u{i}@example.com"))
            .await
            .unwrap()
            .is_some() as usize;
    }
    assert_eq!(stored, 1);
}

pub async fn open_sign_ups_at_once_on_two_stores_all_succeed_with_exactly_one_admin(f: &Fixture) {
    let results = sign_ups_at_once(f, 12, Signup::Open).await;

    let made: Vec<Account> = results.into_iter().map(created).collect();
    assert_eq!(made.len(), 12);
    assert_eq!(made.iter().filter(|a| a.is_admin).count(), 1);
    for account in &made {
        assert_eq!(
            f.accounts.account_by_email(&account.email).await.unwrap(),
            Some(account.clone())
        );
    }
}

/// `migrate`'s side of the store: every account read out, and written back as
/// it is into another store, once (a second import changes nothing).
pub async fn imported_accounts_keep_every_field_once_and_close_first_only_sign_up(f: &Fixture) {
    let source = &*f.accounts;
    let ann = created(sign_up(source, "ann@example.org", Signup::Open).await);
    let bob = created(sign_up(source, "bob@example.org", Signup::Open).await);
    let exported = source.accounts_for_copy().await.unwrap();
    assert_eq!(
        exported,
        vec![ann.clone(), bob.clone()],
        "oldest first, as stored"
    );
    let target = Fixture::new(f.kind).await;
    let mut disabled = bob.clone();
    disabled.disabled = true;

    let first = [
        target.accounts.import_account(&ann).await.unwrap(),
        target.accounts.import_account(&disabled).await.unwrap(),
    ];
    let again = [
        target.accounts.import_account(&ann).await.unwrap(),
        target.accounts.import_account(&bob).await.unwrap(),
    ];
    let mut same_email = new_account("ann@example.org");
    same_email.user_id = UserId::new();
    let other_id = Account {
        user_id: same_email.user_id.clone(),
        email: same_email.email.clone(),
        name: same_email.name.clone(),
        password_hash: same_email.password_hash.clone(),
        is_admin: false,
        disabled: false,
        created_at: Utc::now(),
    };

    assert_eq!(first, [true, true]);
    assert_eq!(again, [false, false]);
    assert!(!target.accounts.import_account(&other_id).await.unwrap());
    assert_eq!(
        target.accounts.accounts_for_copy().await.unwrap(),
        vec![ann.clone(), disabled.clone()]
    );
    assert_eq!(
        target.accounts.account(&ann.user_id).await.unwrap(),
        Some(ann)
    );
    assert_eq!(
        target
            .accounts
            .account_by_email("bob@example.org")
            .await
            .unwrap(),
        Some(disabled)
    );
    assert_eq!(
        target
            .accounts
            .create_account(new_account("late@example.org"), Signup::FirstOnly)
            .await
            .unwrap(),
        Created::Closed
    );
    target.finish().await;
}

pub async fn accounts_are_listed_oldest_first_in_pages(f: &Fixture) {
    let accounts = &*f.accounts;
    assert_eq!(accounts.list_accounts(10, 0).await.unwrap(), vec![]);
    let mut made = Vec::new();
    for email in ["ada@example.com", "bob@example.com", "cy@example.com"] {
        made.push(created(sign_up(accounts, email, Signup::Open).await));
    }

    let all = accounts.list_accounts(10, 0).await.unwrap();
    let first_two = accounts.list_accounts(2, 0).await.unwrap();
    let rest = accounts.list_accounts(2, 2).await.unwrap();
    let beyond = accounts.list_accounts(2, 3).await.unwrap();
    let none = accounts.list_accounts(0, 0).await.unwrap();

    // Oldest first; accounts made in the same instant keep one fixed order.
    let mut expected = made.clone();
    expected.sort_by(|a, b| {
        (a.created_at, a.user_id.as_ref()).cmp(&(b.created_at, b.user_id.as_ref()))
    });
    assert_eq!(all, expected);
    assert_eq!(first_two, expected[..2].to_vec());
    assert_eq!(rest, expected[2..].to_vec());
    assert_eq!(beyond, vec![]);
    assert_eq!(none, vec![]);
}

pub async fn disabling_and_enabling_changes_that_account_only(f: &Fixture) {
    let accounts = &*f.accounts;
    let ada = created(sign_up(accounts, "ada@example.com", Signup::Open).await);
    let bob = created(sign_up(accounts, "bob@example.com", Signup::Open).await);

    let disabled = accounts.set_disabled(&bob.user_id, true).await.unwrap();
    let stored = accounts.account(&bob.user_id).await.unwrap();
    let by_email = accounts.account_by_email(&bob.email).await.unwrap();
    let again = accounts.set_disabled(&bob.user_id, true).await.unwrap();
    let other = accounts.account(&ada.user_id).await.unwrap();

    let expected = Account {
        disabled: true,
        ..bob.clone()
    };
    assert_eq!(disabled, Some(expected.clone()), "the account as it is now");
    assert_eq!(stored, Some(expected.clone()));
    assert_eq!(by_email, Some(expected.clone()));
    assert_eq!(again, Some(expected), "disabling twice is no error");
    assert_eq!(other, Some(ada.clone()), "another account changed");

    let enabled = accounts.set_disabled(&bob.user_id, false).await.unwrap();
    assert_eq!(enabled, Some(bob.clone()));
    assert_eq!(accounts.account(&bob.user_id).await.unwrap(), Some(bob));

    let nobody = UserId::new();
    assert_eq!(accounts.set_disabled(&nobody, true).await.unwrap(), None);
    assert_eq!(accounts.account(&nobody).await.unwrap(), None);
    assert_eq!(accounts.list_accounts(10, 0).await.unwrap().len(), 2);
}

pub async fn admin_rights_are_given_and_taken_for_that_account_only(f: &Fixture) {
    let accounts = &*f.accounts;
    let ada = created(sign_up(accounts, "ada@example.com", Signup::Open).await);
    let bob = created(sign_up(accounts, "bob@example.com", Signup::Open).await);
    assert!(ada.is_admin && !bob.is_admin);

    let promoted = accounts.set_admin(&bob.user_id, true).await.unwrap();
    let demoted = accounts.set_admin(&ada.user_id, false).await.unwrap();

    let bob_admin = Account {
        is_admin: true,
        ..bob.clone()
    };
    let ada_plain = Account {
        is_admin: false,
        ..ada.clone()
    };
    assert_eq!(promoted, Some(bob_admin.clone()));
    assert_eq!(demoted, Some(ada_plain.clone()));
    assert_eq!(
        accounts.list_accounts(10, 0).await.unwrap(),
        vec![ada_plain, bob_admin]
    );
    assert_eq!(
        accounts.set_admin(&UserId::new(), true).await.unwrap(),
        None
    );
    assert_eq!(accounts.list_accounts(10, 0).await.unwrap().len(), 2);
}
