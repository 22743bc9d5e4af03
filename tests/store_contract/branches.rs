//! Branches (`fork`, `switch_branch`, `branches`): an edit or a regenerate
//! sets the active suffix aside, a switch brings a sibling back, and the
//! history stays the active path for everything else (search, summary, cap).

use llm_chat_server::config::ConversationLimits;
use llm_chat_server::domain::{ChatMessage, ConversationId, Role, UserId};
use llm_chat_server::store::branches::{BranchNode, Mark};
use llm_chat_server::store::{
    BranchPool, Conversation, ConversationStore, StoreError, StoredMessage, Summary,
};

use crate::checks::{assert_not_found, contents, msg};
use crate::fixture::Fixture;

/// (index, position, count) of every message of the history with siblings.
async fn siblings(
    store: &dyn ConversationStore,
    user: &UserId,
    id: &ConversationId,
) -> Vec<(u64, u64, u64)> {
    let len = store.meta(user, id).await.unwrap().message_count;
    store
        .branches(user, id)
        .await
        .unwrap()
        .siblings(len)
        .into_iter()
        .map(|s| (s.index, s.position, s.count))
        .collect()
}

async fn history(store: &dyn ConversationStore, user: &UserId, id: &ConversationId) -> Vec<String> {
    contents(&store.load(user, id).await.unwrap())
}

#[track_caller]
fn assert_no_branch<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    match result {
        Err(StoreError::NoSuchBranch) => {}
        other => panic!("expected NoSuchBranch, got {other:?}"),
    }
}

pub async fn forks_set_the_suffix_aside_and_switches_bring_siblings_back(f: &Fixture) {
    let store = &*f.store;
    let (user, id) = (UserId::new(), ConversationId::new());
    store.create(&user, &id).await.unwrap();
    store
        .append(
            &user,
            &id,
            vec![
                msg(Role::User, "alpha question"),
                msg(Role::Assistant, "alpha answer"),
                msg(Role::User, "bravo question"),
                msg(Role::Assistant, "weak walrus"),
            ],
        )
        .await
        .unwrap();
    let summary = Summary {
        text: "the start".into(),
        covers: 4,
        tokens: 2,
    };
    store.set_summary(&user, &id, summary).await.unwrap();

    // A regenerate: the reply at 3 gets a sibling.
    let meta = store
        .fork(&user, &id, 3, vec![msg(Role::Assistant, "strong heron")])
        .await
        .unwrap();

    assert_eq!(meta.message_count, 4);
    assert_eq!(
        history(store, &user, &id).await,
        [
            "alpha question",
            "alpha answer",
            "bravo question",
            "strong heron"
        ]
    );
    assert_eq!(siblings(store, &user, &id).await, [(3, 2, 2)]);
    let loaded = store.load(&user, &id).await.unwrap();
    assert!(
        loaded.summary.is_none(),
        "a summary of the old reply must go"
    );
    assert_eq!(loaded.messages[3].tokens, Some(3));
    // Search sees the active path only.
    assert_eq!(store.search(&user, "heron", 10).await.unwrap().len(), 1);
    assert!(store.search(&user, "walrus", 10).await.unwrap().is_empty());

    // Back to the first reply, and forward again.
    let meta = store.switch_branch(&user, &id, 3, 1).await.unwrap();
    assert_eq!(meta.message_count, 4);
    assert_eq!(history(store, &user, &id).await[3], "weak walrus");
    assert_eq!(siblings(store, &user, &id).await, [(3, 1, 2)]);
    assert_eq!(store.search(&user, "walrus", 10).await.unwrap().len(), 1);
    assert!(store.search(&user, "heron", 10).await.unwrap().is_empty());
    store.switch_branch(&user, &id, 3, 2).await.unwrap();
    assert_eq!(history(store, &user, &id).await[3], "strong heron");
    // The active one: nothing changes.
    store.switch_branch(&user, &id, 3, 2).await.unwrap();
    assert_eq!(history(store, &user, &id).await[3], "strong heron");

    // An edit of the message at 2: it and what followed become a branch.
    store
        .fork(
            &user,
            &id,
            2,
            vec![
                msg(Role::User, "charlie question"),
                msg(Role::Assistant, "charlie answer"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        history(store, &user, &id).await,
        [
            "alpha question",
            "alpha answer",
            "charlie question",
            "charlie answer"
        ]
    );
    assert_eq!(siblings(store, &user, &id).await, [(2, 2, 2)]);
    // Back to the old question: below it the reply shown last.
    store.switch_branch(&user, &id, 2, 1).await.unwrap();
    assert_eq!(
        history(store, &user, &id).await,
        [
            "alpha question",
            "alpha answer",
            "bravo question",
            "strong heron"
        ]
    );
    assert_eq!(siblings(store, &user, &id).await, [(2, 1, 2), (3, 2, 2)]);

    // Nothing that is not there.
    assert_no_branch(store.switch_branch(&user, &id, 2, 3).await);
    assert_no_branch(store.switch_branch(&user, &id, 2, 0).await);
    assert_no_branch(store.switch_branch(&user, &id, 9, 1).await);
    assert_no_branch(store.switch_branch(&user, &id, 1, 2).await);
    assert_no_branch(store.fork(&user, &id, 5, vec![msg(Role::User, "x")]).await);
    assert_eq!(history(store, &user, &id).await.len(), 4);
    // Another user's conversation is not there at all.
    let stranger = UserId::new();
    assert_not_found(store.branches(&stranger, &id).await);
    assert_not_found(store.switch_branch(&stranger, &id, 2, 2).await);
    assert_not_found(
        store
            .fork(&stranger, &id, 0, vec![msg(Role::User, "x")])
            .await,
    );
    assert_eq!(siblings(store, &user, &id).await, [(2, 1, 2), (3, 2, 2)]);

    // A reset drops the branches with the history.
    store.reset(&user, &id).await.unwrap();
    assert!(store.branches(&user, &id).await.unwrap().is_empty());
}

pub async fn a_summary_before_the_branch_point_is_kept(f: &Fixture) {
    let store = &*f.store;
    let (user, id) = (UserId::new(), ConversationId::new());
    store.create(&user, &id).await.unwrap();
    store
        .append(
            &user,
            &id,
            vec![
                msg(Role::User, "one"),
                msg(Role::Assistant, "two"),
                msg(Role::User, "three"),
                msg(Role::Assistant, "four"),
            ],
        )
        .await
        .unwrap();
    let summary = Summary {
        text: "one and two".into(),
        covers: 2,
        tokens: 3,
    };
    store
        .set_summary(&user, &id, summary.clone())
        .await
        .unwrap();

    store
        .fork(&user, &id, 2, vec![msg(Role::User, "five")])
        .await
        .unwrap();
    store.switch_branch(&user, &id, 2, 1).await.unwrap();

    let loaded = store.load(&user, &id).await.unwrap();
    assert_eq!(loaded.summary, Some(summary));
    assert_eq!(contents(&loaded), ["one", "two", "three", "four"]);
}

/// The small cap: 4 messages, 100 bytes of text.
const SMALL_CAP: &str =
    "This conversation is full (at most 4 messages / 100 bytes of text). Start a new conversation.";

pub async fn the_cap_counts_the_branches_set_aside(f: &Fixture) {
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
            vec![msg(Role::User, "q"), msg(Role::Assistant, "a1")],
        )
        .await
        .unwrap();
    store
        .fork(&user, &id, 1, vec![msg(Role::Assistant, "a2")])
        .await
        .unwrap();
    store
        .fork(&user, &id, 1, vec![msg(Role::Assistant, "a3")])
        .await
        .unwrap();

    // Two on the path and two set aside: four stored.
    let refused_fork = store
        .fork(&user, &id, 1, vec![msg(Role::Assistant, "a4")])
        .await;
    let refused_append = store
        .append(&user, &id, vec![msg(Role::User, "more")])
        .await;

    for refused in [refused_fork.map(|_| ()), refused_append.map(|_| ())] {
        match refused {
            Err(StoreError::TooLarge(why)) => assert_eq!(why, SMALL_CAP),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
    assert_eq!(history(&*store, &user, &id).await, ["q", "a3"]);
    assert_eq!(siblings(&*store, &user, &id).await, [(1, 3, 3)]);
    // A switch stores nothing new: always allowed.
    store.switch_branch(&user, &id, 1, 1).await.unwrap();
    assert_eq!(history(&*store, &user, &id).await, ["q", "a1"]);
}

/// A conversation to import with one reply set aside: history `q`, `a2`;
/// the older reply `a1` its sibling.
fn with_a_sibling(id: &ConversationId) -> (Conversation, BranchPool) {
    let at = chrono::Utc::now();
    let messages: Vec<StoredMessage> = ["q", "a2"]
        .iter()
        .enumerate()
        .map(|(i, text)| StoredMessage {
            message: ChatMessage::new(if i == 0 { Role::User } else { Role::Assistant }, *text),
            tokens: None,
        })
        .collect();
    let conversation = crate::checks::conversation(id, at, at, messages);
    let pool = BranchPool {
        next: 2,
        nodes: vec![BranchNode {
            id: 1,
            parent: None,
            depth: 1,
            role: Role::Assistant,
            content: "a1".into(),
            tokens: None,
            left: 0,
        }],
        marks: vec![Mark { index: 1, id: 2 }],
    };
    (conversation, pool)
}

pub async fn an_import_carries_its_branches_once_and_the_cap_counts_them(f: &Fixture) {
    let store = &*f.store;
    let (user, id) = (UserId::new(), ConversationId::new());
    let (conversation, pool) = with_a_sibling(&id);

    assert!(store
        .import_branched(&user, &conversation, &pool)
        .await
        .unwrap());

    assert_eq!(store.branches(&user, &id).await.unwrap(), pool);
    assert_eq!(history(store, &user, &id).await, ["q", "a2"]);
    assert_eq!(siblings(store, &user, &id).await, [(1, 2, 2)]);
    // Imported again (without branches): nothing changes.
    assert!(!store.import(&user, &conversation).await.unwrap());
    assert_eq!(store.branches(&user, &id).await.unwrap(), pool);
    store.switch_branch(&user, &id, 1, 1).await.unwrap();
    assert_eq!(history(store, &user, &id).await, ["q", "a1"]);
    assert_eq!(siblings(store, &user, &id).await, [(1, 1, 2)]);
    // Another user has none of it.
    assert_not_found(store.branches(&UserId::new(), &id).await);

    // Two on the path and one set aside: over a cap of two, nothing stored.
    let small = f
        .with_limits(ConversationLimits {
            max_messages: 2,
            max_bytes: 100,
        })
        .await;
    let big = ConversationId::new();
    let (conversation, pool) = with_a_sibling(&big);
    match small.import_branched(&user, &conversation, &pool).await {
        Err(StoreError::TooLarge(_)) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_not_found(small.load(&user, &big).await);
    assert_not_found(small.branches(&user, &big).await);
}
