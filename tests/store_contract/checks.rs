//! The contract every `ConversationStore` keeps, written once and run
//! against each backend (see the `contract!` list in `main.rs`).

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use llm_chat_server::domain::{conversation_text, ChatMessage, ConversationId, Role, UserId};
use llm_chat_server::store::{
    Conversation, ConversationMeta, ConversationStore, NewMessage, StoreError, StoreResult,
    StoredMessage, Summary,
};

use crate::fixture::{Fixture, Kind};
use llm_chat_server::config::ConversationLimits;

/// The default cap's sentence (10 000 messages, 6 MiB of text).
pub const TOO_LARGE: &str =
    "This conversation is full (at most 10000 messages / 6 MB of text). Start a new conversation.";

pub fn msg(role: Role, content: &str) -> NewMessage {
    NewMessage {
        role,
        content: content.to_string(),
        tokens: Some(3),
    }
}

pub fn contents(conversation: &Conversation) -> Vec<String> {
    conversation
        .messages
        .iter()
        .map(|m| m.message.content.to_string())
        .collect()
}

#[track_caller]
pub fn assert_not_found<T: Debug>(result: StoreResult<T>) {
    match result {
        Err(StoreError::NotFound) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

fn ids(metas: &[ConversationMeta]) -> Vec<ConversationId> {
    metas.iter().map(|m| m.conversation_id.clone()).collect()
}

/// A pause longer than every backend's time resolution (MongoDB: 1 ms).
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

pub async fn create_load_meta(f: &Fixture) {
    let store = f.store.clone();
    let (user, id) = (UserId::new(), ConversationId::new());

    let meta = store.create(&user, &id).await.unwrap();

    assert_eq!(meta.conversation_id, id);
    assert_eq!((meta.message_count, meta.title.clone()), (0, None));
    assert_eq!(meta.created_at, meta.updated_at);
    assert!((Utc::now() - meta.created_at).num_seconds().abs() < 5);
    let loaded = store.load(&user, &id).await.unwrap();
    assert_eq!(loaded.meta, meta);
    assert!(loaded.messages.is_empty() && loaded.summary.is_none());
    assert_eq!(store.meta(&user, &id).await.unwrap(), meta);
    assert_eq!(store.list(&user, 10, 0).await.unwrap(), vec![meta.clone()]);
    assert_not_found(store.load(&user, &ConversationId::new()).await);
    assert_not_found(store.meta(&user, &ConversationId::new()).await);
    assert!(
        store.create(&user, &id).await.is_err(),
        "creating an existing id must fail"
    );
    assert_eq!(store.meta(&user, &id).await.unwrap(), meta);
    store.ping().await.unwrap();
    let expected = match f.kind {
        Kind::Sqlite => "sqlite",
        Kind::Mongo => "mongodb",
    };
    assert_eq!(store.backend(), expected);
}

pub async fn append_order_and_title(f: &Fixture) {
    let store = f.store.clone();
    let (user, id) = (UserId::new(), ConversationId::new());
    let created = store.create(&user, &id).await.unwrap();
    tick().await;

    let first = store
        .append(&user, &id, vec![msg(Role::Assistant, "hello there")])
        .await
        .unwrap();
    assert_eq!(first.title, None, "only a user message makes a title");
    assert!(first.updated_at > created.updated_at);
    tick().await;
    let second = store
        .append(
            &user,
            &id,
            vec![
                msg(Role::User, "  first\n question "),
                NewMessage {
                    role: Role::Assistant,
                    content: "answer".into(),
                    tokens: None,
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(second.title.as_deref(), Some("first question"));
    assert_eq!(second.message_count, 3);
    assert!(second.updated_at > first.updated_at);
    assert_eq!(second.created_at, created.created_at);
    let third = store
        .append(&user, &id, vec![msg(Role::User, "second")])
        .await
        .unwrap();
    assert_eq!(third.title.as_deref(), Some("first question"));

    // Text that means something to a query language is stored verbatim.
    let odd = [
        "$where: {$gt: 1}",
        "$$ROOT",
        "{\"$set\": {\"user_id\": \"x\"}}",
        "a.b*(c)|d\\e",
        "naïve 日本語 🦀",
        "line one\nline two",
        "",
    ];
    store
        .append(
            &user,
            &id,
            odd.iter().map(|c| msg(Role::Assistant, c)).collect(),
        )
        .await
        .unwrap();
    let empty = store.append(&user, &id, Vec::new()).await.unwrap();
    assert_eq!(empty.message_count, 4 + odd.len() as u64);

    let loaded = store.load(&user, &id).await.unwrap();
    let mut expected = vec!["hello there", "  first\n question ", "answer", "second"];
    expected.extend(odd);
    assert_eq!(contents(&loaded), expected);
    assert_eq!(loaded.messages[0].message.role, Role::Assistant);
    assert_eq!(loaded.messages[1].message.role, Role::User);
    assert_eq!(loaded.messages[1].tokens, Some(3));
    assert_eq!(loaded.messages[2].tokens, None);
    assert_eq!(loaded.meta.message_count, expected.len() as u64);
    assert_eq!(loaded.meta, store.meta(&user, &id).await.unwrap());

    let titled = store.set_title(&user, &id, "Zebra facts").await.unwrap();
    assert_eq!(titled.title.as_deref(), Some("Zebra facts"));
    let after = store
        .append(&user, &id, vec![msg(Role::User, "more")])
        .await
        .unwrap();
    assert_eq!(after.title.as_deref(), Some("Zebra facts"));
    assert_not_found(store.set_title(&user, &ConversationId::new(), "x").await);
    assert_not_found(
        store
            .append(&user, &ConversationId::new(), vec![msg(Role::User, "x")])
            .await,
    );
}

pub async fn concurrent_appends(f: &Fixture) {
    let store = f.store.clone();
    let (user, id) = (UserId::new(), ConversationId::new());
    store.create(&user, &id).await.unwrap();

    let tasks: Vec<_> = ["left", "right"]
        .into_iter()
        .map(|tag| {
            let (store, user, id) = (store.clone(), user.clone(), id.clone());
            tokio::spawn(async move {
                for i in 0..25 {
                    store
                        .append(
                            &user,
                            &id,
                            vec![msg(Role::User, &format!("{tag} message {i}"))],
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    let loaded = store.load(&user, &id).await.unwrap();
    assert_eq!(loaded.messages.len(), 50);
    assert_eq!(loaded.meta.message_count, 50);
    assert_eq!(store.meta(&user, &id).await.unwrap().message_count, 50);
    for tag in ["left", "right"] {
        let own: Vec<String> = contents(&loaded)
            .into_iter()
            .filter(|c| c.starts_with(tag))
            .collect();
        let expected: Vec<String> = (0..25).map(|i| format!("{tag} message {i}")).collect();
        assert_eq!(own, expected, "{tag}'s messages lost or reordered");
    }
    assert_eq!(
        loaded.meta.title.as_deref(),
        Some(&*loaded.messages[0].message.content)
    );
    if let Some(raw) = f.raw_document(&user, &id).await {
        let text = raw.get_str("conversation_text").unwrap();
        assert_eq!(text, conversation_text(&loaded.history()));
        assert_eq!(text.lines().count(), 50);
    }
}

pub async fn reset_empties_everything(f: &Fixture) {
    let store = f.store.clone();
    let (user, id) = (UserId::new(), ConversationId::new());
    let created = store.create(&user, &id).await.unwrap();
    store
        .append(
            &user,
            &id,
            vec![msg(Role::User, "secret plans"), msg(Role::Assistant, "ok")],
        )
        .await
        .unwrap();
    let summary = Summary {
        text: "plans".into(),
        covers: 1,
        tokens: 1,
    };
    store.set_summary(&user, &id, summary).await.unwrap();
    tick().await;

    let meta = store.reset(&user, &id).await.unwrap();

    assert_eq!((meta.message_count, meta.title.clone()), (0, None));
    assert_eq!(meta.created_at, created.created_at);
    assert!(meta.updated_at > created.updated_at);
    let loaded = store.load(&user, &id).await.unwrap();
    assert!(loaded.messages.is_empty() && loaded.summary.is_none());
    assert!(store.search(&user, "plans", 10).await.unwrap().is_empty());
    let again = store
        .append(&user, &id, vec![msg(Role::User, "a new start")])
        .await
        .unwrap();
    assert_eq!(again.title.as_deref(), Some("a new start"));
    assert_eq!(again.message_count, 1);
    assert_not_found(store.reset(&user, &ConversationId::new()).await);
    if let Some(raw) = f.raw_document(&user, &id).await {
        assert_eq!(
            raw.get_str("conversation_text").unwrap(),
            "User: a new start"
        );
        assert_eq!(raw.get_array("conversation_history").unwrap().len(), 1);
    }
}

pub async fn delete_removes(f: &Fixture) {
    let store = f.store.clone();
    let user = UserId::new();
    let (gone, kept) = (ConversationId::new(), ConversationId::new());
    store.create(&user, &gone).await.unwrap();
    store.create(&user, &kept).await.unwrap();
    store
        .append(&user, &gone, vec![msg(Role::User, "doomed words")])
        .await
        .unwrap();

    store.delete(&user, &gone).await.unwrap();

    assert_not_found(store.meta(&user, &gone).await);
    assert_not_found(store.load(&user, &gone).await);
    assert_not_found(store.delete(&user, &gone).await);
    assert_eq!(ids(&store.list(&user, 10, 0).await.unwrap()), vec![kept]);
    assert!(store.search(&user, "doomed", 10).await.unwrap().is_empty());
}

pub async fn list_order_and_paging(f: &Fixture) {
    let store = f.store.clone();
    let user = UserId::new();
    let mut created = Vec::new();
    for _ in 0..5 {
        let id = ConversationId::new();
        store.create(&user, &id).await.unwrap();
        created.push(id);
        tick().await;
    }
    store
        .create(&UserId::new(), &ConversationId::new())
        .await
        .unwrap();

    let all = store.list(&user, 10, 0).await.unwrap();

    let newest_first: Vec<_> = created.iter().rev().cloned().collect();
    assert_eq!(ids(&all), newest_first);
    let mut paged = Vec::new();
    for offset in [0, 2, 4] {
        paged.extend(store.list(&user, 2, offset).await.unwrap());
    }
    assert_eq!(paged, all);
    assert_eq!(store.list(&user, 2, 4).await.unwrap().len(), 1);
    assert!(store.list(&user, 10, 5).await.unwrap().is_empty());
    assert!(store.list(&user, 0, 0).await.unwrap().is_empty());

    // Equal creation times: ordered by conversation id.
    let other = UserId::new();
    let at: DateTime<Utc> = "2024-05-01T10:00:00.123Z".parse().unwrap();
    let mut same: Vec<ConversationId> = (0..3).map(|_| ConversationId::new()).collect();
    for id in &same {
        store
            .import(&other, &conversation(id, at, at, Vec::new()))
            .await
            .unwrap();
    }
    same.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    assert_eq!(ids(&store.list(&other, 10, 0).await.unwrap()), same);
}

pub async fn summary_set_and_load(f: &Fixture) {
    let store = f.store.clone();
    let (user, id) = (UserId::new(), ConversationId::new());
    store.create(&user, &id).await.unwrap();
    store
        .append(
            &user,
            &id,
            vec![msg(Role::User, "hi"), msg(Role::Assistant, "hello")],
        )
        .await
        .unwrap();
    let before = store.meta(&user, &id).await.unwrap();
    let first = Summary {
        text: "They greeted each other.".into(),
        covers: 2,
        tokens: 6,
    };

    store.set_summary(&user, &id, first.clone()).await.unwrap();

    assert_eq!(store.load(&user, &id).await.unwrap().summary, Some(first));
    let second = Summary {
        text: "Greetings, then more.".into(),
        covers: 4,
        tokens: 5,
    };
    store.set_summary(&user, &id, second.clone()).await.unwrap();
    let loaded = store.load(&user, &id).await.unwrap();
    assert_eq!(loaded.summary, Some(second));
    assert_eq!(loaded.meta, before, "a summary changes no metadata");
    assert_eq!(contents(&loaded), ["hi", "hello"]);
    let third = Summary {
        text: "x".into(),
        covers: 1,
        tokens: 1,
    };
    assert_not_found(
        store
            .set_summary(&user, &ConversationId::new(), third)
            .await,
    );
}

pub async fn search_ranks_and_is_scoped(f: &Fixture) {
    let store = f.store.clone();
    let (alice, bob) = (UserId::new(), UserId::new());
    let (once, twice, none, unicode, other) = (
        ConversationId::new(),
        ConversationId::new(),
        ConversationId::new(),
        ConversationId::new(),
        ConversationId::new(),
    );
    for id in [&once, &twice, &none, &unicode] {
        store.create(&alice, id).await.unwrap();
    }
    store.create(&bob, &other).await.unwrap();
    store
        .append(&alice, &once, vec![msg(Role::User, "tell me about zebras")])
        .await
        .unwrap();
    store
        .append(
            &alice,
            &twice,
            vec![
                msg(Role::User, "zebras again"),
                msg(Role::Assistant, "zebras have stripes"),
            ],
        )
        .await
        .unwrap();
    store
        .append(&alice, &none, vec![msg(Role::User, "nothing to see")])
        .await
        .unwrap();
    store
        .append(&alice, &unicode, vec![msg(Role::User, "Grüße aus Köln")])
        .await
        .unwrap();
    store
        .append(&bob, &other, vec![msg(Role::User, "zebras zebras zebras")])
        .await
        .unwrap();

    let hits = store.search(&alice, "Zebras!", 10).await.unwrap();

    let found: Vec<_> = hits
        .iter()
        .map(|h| h.meta.conversation_id.clone())
        .collect();
    assert_eq!(
        found,
        vec![twice.clone(), once.clone()],
        "more mentions first"
    );
    assert!(hits.iter().all(|h| h.score > 0.0));
    assert!(hits[0].score >= hits[1].score);
    assert_eq!(hits[0].meta, store.meta(&alice, &twice).await.unwrap());
    let upper = store.search(&alice, "ZEBRAS", 10).await.unwrap();
    assert_eq!(
        upper
            .iter()
            .map(|h| h.meta.conversation_id.clone())
            .collect::<Vec<_>>(),
        found
    );
    let first = store.search(&alice, "zebras", 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].meta.conversation_id, twice);
    assert!(store.search(&alice, "zebras", 0).await.unwrap().is_empty());

    let bobs = store.search(&bob, "zebras", 10).await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].meta.conversation_id, other);
    assert!(store
        .search(&UserId::new(), "zebras", 10)
        .await
        .unwrap()
        .is_empty());

    let accented = store.search(&alice, "KÖLN", 10).await.unwrap();
    assert_eq!(accented.len(), 1);
    assert_eq!(accented[0].meta.conversation_id, unicode);

    // Query syntax of any backend is harmless.
    for query in ["\"(*", ".*", "$", "{$gt: ''}", "   ", "\\", "[", ""] {
        let hits = store.search(&alice, query, 10).await.unwrap();
        assert!(hits.is_empty(), "{query:?} found {hits:?}");
    }
    let noisy = store
        .search(&alice, "zebras* AND \"\" -( $where .* \\", 10)
        .await
        .unwrap();
    assert_eq!(
        noisy
            .iter()
            .map(|h| h.meta.conversation_id.clone())
            .collect::<Vec<_>>(),
        found
    );
    assert!(store
        .search(&alice, "giraffe", 10)
        .await
        .unwrap()
        .is_empty());
}

/// A user's scores come from that user's text alone: with a score over
/// every user's text (SQLite's bm25 did) how common a word is in other
/// people's conversations leaks through it.
pub async fn scores_ignore_other_users_text(f: &Fixture) {
    let store = f.store.clone();
    let (alice, bob) = (UserId::new(), UserId::new());
    for text in ["okapis and zebras", "an okapi? okapis! OKAPIS", "no match"] {
        let id = ConversationId::new();
        store.create(&alice, &id).await.unwrap();
        store
            .append(&alice, &id, vec![msg(Role::User, text)])
            .await
            .unwrap();
    }
    let scores = |hits: Vec<llm_chat_server::store::SearchHit>| {
        hits.into_iter()
            .map(|h| (h.meta.conversation_id, h.score))
            .collect::<Vec<_>>()
    };
    let before = scores(store.search(&alice, "okapis zebras", 10).await.unwrap());
    assert_eq!(before.len(), 2, "{before:?}");

    for n in 0..30 {
        let id = ConversationId::new();
        store.create(&bob, &id).await.unwrap();
        let text = if n % 2 == 0 {
            "okapis okapis okapis zebras"
        } else {
            "nothing in common"
        };
        store
            .append(&bob, &id, vec![msg(Role::User, text)])
            .await
            .unwrap();
    }
    let after = scores(store.search(&alice, "okapis zebras", 10).await.unwrap());
    assert_eq!(after, before, "Bob's text moved Alice's scores");
    assert_eq!(store.search(&bob, "okapis", 100).await.unwrap().len(), 15);
}

/// Searches running all along do not hold up appends, nor lose or reorder
/// them, and every appended message is found.
pub async fn searches_and_appends_interleave(f: &Fixture) {
    let store = f.store.clone();
    let (user, id) = (UserId::new(), ConversationId::new());
    store.create(&user, &id).await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let searching = {
        let (store, user, done) = (store.clone(), user.clone(), done.clone());
        tokio::spawn(async move {
            let mut searches = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || searches == 0 {
                store.search(&user, "wombat", 10).await.unwrap();
                searches += 1;
            }
            searches
        })
    };
    for i in 0..30 {
        store
            .append(&user, &id, vec![msg(Role::User, &format!("wombat {i}"))])
            .await
            .unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(searching.await.unwrap() > 0);

    let loaded = store.load(&user, &id).await.unwrap();
    let expected: Vec<String> = (0..30).map(|i| format!("wombat {i}")).collect();
    assert_eq!(contents(&loaded), expected);
    let hits = store.search(&user, "wombat", 10).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].meta.conversation_id, id);
    assert_eq!(hits[0].meta.message_count, 30);
}

pub async fn every_operation_is_scoped_to_the_owner(f: &Fixture) {
    let store = f.store.clone();
    let (alice, mallory) = (UserId::new(), UserId::new());
    let id = ConversationId::new();
    store.create(&alice, &id).await.unwrap();
    store
        .append(&alice, &id, vec![msg(Role::User, "private matters")])
        .await
        .unwrap();
    let before = store.load(&alice, &id).await.unwrap();
    let summary = Summary {
        text: "stolen".into(),
        covers: 1,
        tokens: 1,
    };

    assert_not_found(store.load(&mallory, &id).await);
    assert_not_found(store.meta(&mallory, &id).await);
    assert_not_found(
        store
            .append(&mallory, &id, vec![msg(Role::User, "injected")])
            .await,
    );
    assert_not_found(store.reset(&mallory, &id).await);
    assert_not_found(store.set_summary(&mallory, &id, summary).await);
    assert_not_found(store.set_title(&mallory, &id, "pwned").await);
    assert_not_found(store.delete(&mallory, &id).await);
    assert!(store.list(&mallory, 10, 0).await.unwrap().is_empty());
    assert!(store
        .search(&mallory, "private", 10)
        .await
        .unwrap()
        .is_empty());

    let after = store.load(&alice, &id).await.unwrap();
    assert_eq!(after.meta, before.meta);
    assert_eq!(after.messages, before.messages);
    assert!(after.summary.is_none());
}

pub async fn size_limit_refuses_without_writing(f: &Fixture) {
    let store = f.store.clone();
    let (user, id) = (UserId::new(), ConversationId::new());
    store.create(&user, &id).await.unwrap();
    let big = "x".repeat(1024 * 1024);
    let mut accepted = 0;
    let mut refused = false;
    for i in 0..10 {
        let before = store.meta(&user, &id).await.unwrap();
        match store
            .append(&user, &id, vec![msg(Role::User, &format!("{i} {big}"))])
            .await
        {
            Ok(_) => accepted += 1,
            Err(StoreError::TooLarge(why)) => {
                assert_eq!(why, TOO_LARGE);
                let after = store.load(&user, &id).await.unwrap();
                assert_eq!(after.meta, before, "a refused write changed the metadata");
                assert_eq!(after.messages.len(), accepted);
                refused = true;
                break;
            }
            Err(other) => panic!("append {i}: {other:?}"),
        }
    }
    let loaded = store.load(&user, &id).await.unwrap();
    assert_eq!(loaded.messages.len(), accepted);
    for (i, m) in loaded.messages.iter().enumerate() {
        assert_eq!(&*m.message.content, format!("{i} {big}"));
    }
    // The default cap, 6 MiB of text, comes first in every store (on
    // MongoDB, before its 15 MiB guard: each MiB is stored twice there).
    assert!(refused, "the default cap must refuse the sixth MiB");
    assert_eq!(accepted, 5, "accepted {accepted} MiB");
    // A small message still fits.
    store
        .append(&user, &id, vec![msg(Role::Assistant, "short")])
        .await
        .unwrap();
    if let Some(raw) = f.raw_document(&user, &id).await {
        let history = store.load(&user, &id).await.unwrap().history();
        assert_eq!(
            raw.get_str("conversation_text").unwrap(),
            conversation_text(&history)
        );
    }
}

/// The small cap the next check sets: 4 messages, 100 bytes of text.
pub const SMALL_CAP: &str =
    "This conversation is full (at most 4 messages / 100 bytes of text). Start a new conversation.";

#[track_caller]
fn assert_full<T: Debug>(result: StoreResult<T>) {
    match result {
        Err(StoreError::TooLarge(why)) => assert_eq!(why, SMALL_CAP),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

pub async fn the_cap_counts_messages_and_bytes_and_refuses_atomically(f: &Fixture) {
    let store = f
        .with_limits(ConversationLimits {
            max_messages: 4,
            max_bytes: 100,
        })
        .await;
    let (user, id) = (UserId::new(), ConversationId::new());
    store.create(&user, &id).await.unwrap();
    store
        .append(
            &user,
            &id,
            vec![
                msg(Role::User, &"a".repeat(20)),
                msg(Role::Assistant, &"b".repeat(20)),
            ],
        )
        .await
        .unwrap();
    let before = store.load(&user, &id).await.unwrap();

    // Three more messages: five in all.
    assert_full(
        store
            .append(
                &user,
                &id,
                vec![
                    msg(Role::User, "c"),
                    msg(Role::Assistant, "d"),
                    msg(Role::User, "e"),
                ],
            )
            .await,
    );
    // 40 + 61 bytes ("é" is two).
    assert_full(
        store
            .append(
                &user,
                &id,
                vec![msg(Role::User, &format!("{}x", "é".repeat(30)))],
            )
            .await,
    );
    let after = store.load(&user, &id).await.unwrap();
    assert_eq!(
        after.meta, before.meta,
        "a refused append changed the metadata"
    );
    assert_eq!(contents(&after), contents(&before));

    // Exactly at the cap is fine; one byte more is not.
    store
        .append(&user, &id, vec![msg(Role::User, &"é".repeat(30))])
        .await
        .unwrap();
    assert_full(
        store
            .append(&user, &id, vec![msg(Role::Assistant, "f")])
            .await,
    );
    // Removing the last message makes room for as much again.
    store.delete_last_message(&user, &id).await.unwrap();
    store
        .append(&user, &id, vec![msg(Role::User, &"g".repeat(60))])
        .await
        .unwrap();
    // A reset empties it.
    store.reset(&user, &id).await.unwrap();
    store
        .append(
            &user,
            &id,
            (0..4).map(|i| msg(Role::User, &format!("{i}"))).collect(),
        )
        .await
        .unwrap();
    assert_full(store.append(&user, &id, vec![msg(Role::User, "5")]).await);

    // Another user's or a missing conversation is not found, not full.
    assert_not_found(
        store
            .append(&UserId::new(), &id, vec![msg(Role::User, &"h".repeat(500))])
            .await,
    );
    // An import past the cap is refused and leaves nothing.
    let big = ConversationId::new();
    let messages = (0..5)
        .map(|i| StoredMessage {
            message: ChatMessage::new(Role::User, format!("{i}")),
            tokens: None,
        })
        .collect();
    assert_full(
        store
            .import(&user, &conversation(&big, Utc::now(), Utc::now(), messages))
            .await,
    );
    assert_not_found(store.meta(&user, &big).await);
}

pub async fn a_page_of_the_history_is_read_from_the_end_backwards(f: &Fixture) {
    let store = f.store.clone();
    let (user, id) = (UserId::new(), ConversationId::new());
    store.create(&user, &id).await.unwrap();
    let texts: Vec<String> = (0..7).map(|i| format!("m{i}")).collect();
    let roles = [Role::User, Role::Assistant];
    store
        .append(
            &user,
            &id,
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| msg(roles[i % 2], t))
                .collect(),
        )
        .await
        .unwrap();
    let page_texts = |page: &llm_chat_server::store::HistoryPage| -> Vec<String> {
        page.messages
            .iter()
            .map(|m| m.content.to_string())
            .collect()
    };

    let last = store.load_page(&user, &id, None, 3).await.unwrap();
    let middle = store.load_page(&user, &id, Some(4), 3).await.unwrap();
    let start = store.load_page(&user, &id, Some(2), 3).await.unwrap();
    let past = store.load_page(&user, &id, Some(99), 2).await.unwrap();
    let all = store.load_page(&user, &id, None, 100).await.unwrap();

    assert_eq!((page_texts(&last), last.first), (texts[4..7].to_vec(), 4));
    assert_eq!(last.meta.message_count, 7);
    assert_eq!(last.meta.title.as_deref(), Some("m0"));
    assert_eq!(
        (page_texts(&middle), middle.first),
        (texts[1..4].to_vec(), 1)
    );
    assert_eq!(middle.messages[0].role, Role::Assistant);
    assert_eq!((page_texts(&start), start.first), (texts[0..2].to_vec(), 0));
    assert_eq!((page_texts(&past), past.first), (texts[5..7].to_vec(), 5));
    assert_eq!((page_texts(&all), all.first), (texts.clone(), 0));
    let empty = store.load_page(&user, &id, Some(0), 5).await.unwrap();
    assert!(empty.messages.is_empty() && empty.first == 0);
    assert_not_found(store.load_page(&UserId::new(), &id, None, 3).await);
}

/// A conversation to import.
pub fn conversation(
    id: &ConversationId,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    messages: Vec<StoredMessage>,
) -> Conversation {
    Conversation {
        meta: ConversationMeta {
            conversation_id: id.clone(),
            created_at,
            updated_at,
            title: messages
                .iter()
                .find(|m| m.message.role == Role::User)
                .map(|m| m.message.content.to_string()),
            message_count: messages.len() as u64,
        },
        messages: messages.into(),
        summary: None,
        settings: Default::default(),
    }
}

/// Copies every conversation of `source` into `target`, page by page;
/// returns how many were inserted and how many exported.
pub async fn copy_all(
    source: &Arc<dyn ConversationStore>,
    target: &Arc<dyn ConversationStore>,
    page_size: u32,
) -> (usize, usize) {
    let mut after: Option<(UserId, ConversationId)> = None;
    let (mut inserted, mut exported) = (0, 0);
    let mut seen = HashSet::new();
    loop {
        let page = source.export_page(after.clone(), page_size).await.unwrap();
        assert!(page.len() <= page_size as usize);
        let Some(last) = page.last() else {
            break;
        };
        for item in &page {
            let (user, conversation) = (&item.user, &item.conversation);
            let key = (
                user.to_string(),
                conversation.meta.conversation_id.to_string(),
            );
            if let Some((u, c)) = &after {
                assert!(key > (u.to_string(), c.to_string()), "pages out of order");
            }
            assert!(seen.insert(key), "exported twice");
            exported += 1;
            inserted += target.import(user, conversation).await.unwrap() as usize;
        }
        after = Some((
            last.user.clone(),
            last.conversation.meta.conversation_id.clone(),
        ));
    }
    (inserted, exported)
}

pub async fn export_import_round_trip(f: &Fixture) {
    let source = f.store.clone();
    let target_fixture = f.another().await;
    let target = target_fixture.store.clone();
    let users = [UserId::new(), UserId::new()];
    for user in &users {
        for n in 0..3 {
            let id = ConversationId::new();
            source.create(user, &id).await.unwrap();
            source
                .append(
                    user,
                    &id,
                    vec![
                        msg(Role::User, &format!("hello number {n}")),
                        NewMessage {
                            role: Role::Assistant,
                            content: "hi".into(),
                            tokens: None,
                        },
                    ],
                )
                .await
                .unwrap();
            let summary = Summary {
                text: "greeting".into(),
                covers: 2,
                tokens: 1,
            };
            source.set_summary(user, &id, summary).await.unwrap();
            tick().await;
        }
    }
    let empty = ConversationId::new();
    source.create(&users[0], &empty).await.unwrap();

    let (inserted, exported) = copy_all(&source, &target, 3).await;
    assert_eq!((inserted, exported), (7, 7));
    let (again, _) = copy_all(&source, &target, 4).await;
    assert_eq!(again, 0, "the second pass must insert nothing");

    for user in &users {
        let listed = target.list(user, 10, 0).await.unwrap();
        assert_eq!(listed, source.list(user, 10, 0).await.unwrap());
        for meta in &listed {
            let copy = target.load(user, &meta.conversation_id).await.unwrap();
            let original = source.load(user, &meta.conversation_id).await.unwrap();
            assert_eq!(copy.meta, original.meta);
            assert_eq!(copy.messages, original.messages);
            assert_eq!(copy.summary, original.summary);
        }
    }
    let copy = target
        .load(
            &users[1],
            &target.list(&users[1], 1, 0).await.unwrap()[0].conversation_id,
        )
        .await
        .unwrap();
    assert_eq!(copy.messages[0].tokens, Some(3));
    assert_eq!(copy.messages[1].tokens, None);
    assert_eq!(copy.summary.unwrap().text, "greeting");
    assert_eq!(copy.meta.title.as_deref(), Some("hello number 2"));
    assert_eq!(
        target.search(&users[0], "hello", 10).await.unwrap().len(),
        3
    );
    assert!(target.meta(&users[0], &empty).await.is_ok());
    // Importing over an existing conversation changes nothing.
    let changed = conversation(
        &copy.meta.conversation_id,
        Utc::now(),
        Utc::now(),
        vec![StoredMessage {
            message: ChatMessage::new(Role::User, "overwrite?"),
            tokens: None,
        }],
    );
    assert!(!target.import(&users[1], &changed).await.unwrap());
    assert_eq!(
        contents(
            &target
                .load(&users[1], &copy.meta.conversation_id)
                .await
                .unwrap()
        ),
        ["hello number 2", "hi"]
    );
    assert!(target.export_page(None, 0).await.unwrap().is_empty());
    target_fixture.finish().await;
}

pub async fn delete_last_message_removes_only_the_last(f: &Fixture) {
    let store = f.store.clone();
    let (user, id) = (UserId::new(), ConversationId::new());
    store.create(&user, &id).await.unwrap();
    store
        .append(
            &user,
            &id,
            vec![
                msg(Role::User, "first question"),
                msg(Role::Assistant, "first answer"),
                msg(Role::User, "second question"),
                msg(Role::Assistant, "a multi\nline answer about zebras"),
            ],
        )
        .await
        .unwrap();

    let removed = store.delete_last_message(&user, &id).await.unwrap();

    assert_eq!(
        removed,
        Some(ChatMessage::new(
            Role::Assistant,
            "a multi\nline answer about zebras"
        ))
    );
    let loaded = store.load(&user, &id).await.unwrap();
    assert_eq!(
        contents(&loaded),
        ["first question", "first answer", "second question"]
    );
    assert_eq!(loaded.meta.message_count, 3);
    assert!(store.search(&user, "zebras", 10).await.unwrap().is_empty());
    assert_eq!(
        store
            .delete_last_message(&UserId::new(), &id)
            .await
            .err()
            .map(|e| e.to_string()),
        Some("conversation not found".to_string())
    );
    for _ in 0..3 {
        assert!(store
            .delete_last_message(&user, &id)
            .await
            .unwrap()
            .is_some());
    }
    assert_eq!(store.delete_last_message(&user, &id).await.unwrap(), None);
    let again = store
        .append(&user, &id, vec![msg(Role::User, "fresh")])
        .await
        .unwrap();
    assert_eq!(again.message_count, 1);
    if let Some(raw) = f.raw_document(&user, &id).await {
        assert_eq!(raw.get_str("conversation_text").unwrap(), "User: fresh");
    }
}

/// A conversation's revision moves on with every write it is read as,
/// `append_revised` tells the revisions just around the append and
/// `load_revised` the one of what it read (what a conversation kept in
/// memory by one instance is checked against when others write too).
pub async fn every_write_moves_the_revision_on(f: &Fixture) {
    use llm_chat_server::store::SettingsChange;
    let store = f.store.clone();
    let (user, id) = (UserId::new(), ConversationId::new());
    store.create(&user, &id).await.unwrap();
    let revision = || async {
        store
            .revision(&user, &id)
            .await
            .unwrap()
            .expect("the store keeps revisions")
    };
    let first = revision().await;
    let (meta, around) = store
        .append_revised(
            &user,
            &id,
            vec![msg(Role::User, "q1"), msg(Role::Assistant, "a1")],
        )
        .await
        .unwrap();
    let (before, after) = around.expect("the store keeps revisions");
    assert_eq!(meta.message_count, 2);
    assert_eq!(before, first, "the revision just before the append");
    assert_ne!(after, before);
    assert_eq!(revision().await, after);
    let (loaded, at) = store.load_revised(&user, &id).await.unwrap();
    assert_eq!(
        (contents(&loaded), at),
        (vec!["q1".to_owned(), "a1".to_owned()], Some(after))
    );

    let mut seen = vec![first, after];
    store
        .append(&user, &id, vec![msg(Role::User, "q2")])
        .await
        .unwrap();
    seen.push(revision().await);
    store.set_title(&user, &id, "named").await.unwrap();
    seen.push(revision().await);
    let summary = Summary {
        text: "s".into(),
        covers: 1,
        tokens: 1,
    };
    store.set_summary(&user, &id, summary).await.unwrap();
    seen.push(revision().await);
    let change = SettingsChange {
        system_prompt: Some(Some("Be brief.".into())),
        ..Default::default()
    };
    store.change_settings(&user, &id, &change).await.unwrap();
    seen.push(revision().await);
    store
        .set_settings(&user, &id, &Default::default())
        .await
        .unwrap();
    seen.push(revision().await);
    store
        .fork(&user, &id, 2, vec![msg(Role::User, "q2 edited")])
        .await
        .unwrap();
    seen.push(revision().await);
    store.switch_branch(&user, &id, 2, 1).await.unwrap();
    seen.push(revision().await);
    store.delete_last_message(&user, &id).await.unwrap();
    seen.push(revision().await);
    store.reset(&user, &id).await.unwrap();
    seen.push(revision().await);
    let distinct: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "each write a new revision: {seen:?}"
    );

    // Another user's view: nothing there.
    assert_not_found(store.revision(&UserId::new(), &id).await);
    store.delete(&user, &id).await.unwrap();
    assert_not_found(store.revision(&user, &id).await);
}
