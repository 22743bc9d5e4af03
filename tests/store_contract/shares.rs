//! The `ShareStore` contract (share links and their snapshots), written once and run
//! against each backend like `tokens`: `shares::sqlite::<check>` and
//! `shares::mongo::<check>` (see the `share_contract!` list at the end), plus what only
//! the MongoDB collection has.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use llm_chat_server::domain::{ChatMessage, ConversationId, Role, UserId};
use llm_chat_server::store::mongo::MongoStore;
use llm_chat_server::store::shares::{NewShare, Share, ShareStore, StoredShare};
use llm_chat_server::store::sqlite::{SqliteDb, SqliteStore};
use mongodb::bson::doc;

use crate::fixture::{database_name, shared_server, Fixture, Kind};

/// A share store under test: SQLite on a temporary file, or MongoDB in its own database.
pub struct Shares {
    pub kind: Kind,
    pub store: Arc<dyn ShareStore>,
    mongo: Option<Fixture>,
    dir: Option<tempfile::TempDir>,
}

impl Shares {
    pub async fn new(kind: Kind) -> Shares {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary folder");
                let db = SqliteDb::open(&dir.path().join("chat.db")).expect("opening SQLite");
                Shares {
                    kind,
                    store: Arc::new(SqliteStore::new(db)),
                    mongo: None,
                    dir: Some(dir),
                }
            }
            Kind::Mongo => {
                let fixture = Fixture::mongo(&database_name()).await;
                let store = fixture
                    .mongo
                    .as_ref()
                    .expect("a MongoDB fixture")
                    .store
                    .clone();
                Shares {
                    kind,
                    store: Arc::new(store),
                    mongo: Some(fixture),
                    dir: None,
                }
            }
        }
    }

    /// A second instance on the same data.
    pub async fn second_instance(&self) -> Arc<dyn ShareStore> {
        if let Some(dir) = &self.dir {
            let db = SqliteDb::open(&dir.path().join("chat.db")).expect("opening SQLite again");
            return Arc::new(SqliteStore::new(db));
        }
        let mongo = self.mongo.as_ref().and_then(|f| f.mongo.as_ref()).unwrap();
        let store = MongoStore::connect(&shared_server().await.uri(), &mongo.database)
            .await
            .expect("MongoStore::connect again");
        Arc::new(store)
    }

    pub async fn finish(self) {
        if let Some(fixture) = self.mongo {
            fixture.finish().await;
        }
    }
}

/// A pause longer than every backend's time resolution (MongoDB: 1 ms).
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

fn snapshot() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::User, "What is **Rust**? <script>x</script>"),
        ChatMessage::new(
            Role::Assistant,
            "A *language* — ünïcödé, \"quoted\"\nand $x^2$.",
        ),
    ]
}

/// A fresh share of `conversation` with the standard snapshot; returns it with its hash.
fn fresh(conversation: &ConversationId) -> (NewShare, String) {
    let hash = format!("{:064x}", uuid::Uuid::new_v4().as_u128());
    (
        NewShare {
            id: uuid::Uuid::new_v4().to_string(),
            token_hash: hash.clone(),
            conversation_id: conversation.clone(),
            title: Some("What is Rust?".to_string()),
            messages: snapshot(),
        },
        hash,
    )
}

async fn made(
    store: &dyn ShareStore,
    user: &UserId,
    conversation: &ConversationId,
) -> (Share, String) {
    let (new, hash) = fresh(conversation);
    let share = store
        .create_share(user, new, 10)
        .await
        .unwrap()
        .expect("below the limit, the share is made");
    (share, hash)
}

fn ids(shares: &[Share]) -> Vec<&str> {
    shares.iter().map(|s| s.id.as_str()).collect()
}

pub async fn create_read_list_delete(s: &Shares) {
    let store = &*s.store;
    let (user, conversation) = (UserId::new(), ConversationId::new());
    assert!(store.shares(&user).await.unwrap().is_empty());
    let (new, hash) = fresh(&conversation);
    let id = new.id.clone();

    let share = store.create_share(&user, new, 10).await.unwrap().unwrap();

    assert_eq!(share.id, id);
    assert_eq!(share.user_id, user);
    assert_eq!(share.conversation_id, conversation);
    assert_eq!(share.title.as_deref(), Some("What is Rust?"));
    assert_eq!(share.message_count, 2);
    assert!((Utc::now() - share.created_at).num_seconds().abs() < 5);
    assert_eq!(store.shares(&user).await.unwrap(), vec![share.clone()]);
    let shared = store
        .shared(&hash)
        .await
        .unwrap()
        .expect("found by its hash");
    assert_eq!(shared.owner, user);
    assert_eq!(shared.title.as_deref(), Some("What is Rust?"));
    assert_eq!(shared.messages, snapshot(), "every byte of every message");
    assert_eq!(shared.created_at, share.created_at);
    // Only the whole hash finds it; nor does its id.
    assert_eq!(store.shared(&hash[..32]).await.unwrap(), None);
    assert_eq!(store.shared(&id).await.unwrap(), None);
    assert_eq!(store.shared("").await.unwrap(), None);

    assert!(store.delete_share(&user, &id).await.unwrap());
    assert!(store.shares(&user).await.unwrap().is_empty());
    assert_eq!(store.shared(&hash).await.unwrap(), None);
    assert!(!store.delete_share(&user, &id).await.unwrap());
}

pub async fn an_untitled_snapshot_reads_back_without_a_title(s: &Shares) {
    let store = &*s.store;
    let user = UserId::new();
    let (mut new, hash) = fresh(&ConversationId::new());
    new.title = None;

    let share = store.create_share(&user, new, 10).await.unwrap().unwrap();

    assert_eq!(share.title, None);
    assert_eq!(store.shares(&user).await.unwrap()[0].title, None);
    assert_eq!(store.shared(&hash).await.unwrap().unwrap().title, None);
}

pub async fn shares_are_listed_newest_first(s: &Shares) {
    let store = &*s.store;
    let user = UserId::new();
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(made(store, &user, &ConversationId::new()).await.0);
        tick().await;
    }

    let listed = store.shares(&user).await.unwrap();

    created.reverse();
    assert_eq!(listed, created);
    store.delete_share(&user, &created[1].id).await.unwrap();
    assert_eq!(
        ids(&store.shares(&user).await.unwrap()),
        [created[0].id.as_str(), created[2].id.as_str()]
    );
}

pub async fn one_user_cannot_list_delete_or_move_anothers_share(s: &Shares) {
    let store = &*s.store;
    let (ada, eve) = (UserId::new(), UserId::new());
    let conversation = ConversationId::new();
    let (share, hash) = made(store, &ada, &conversation).await;
    let (own, _) = made(store, &eve, &ConversationId::new()).await;

    assert_eq!(store.shares(&eve).await.unwrap(), vec![own]);
    assert!(!store.delete_share(&eve, &share.id).await.unwrap());
    assert_eq!(
        store
            .delete_conversation_shares(&eve, &conversation)
            .await
            .unwrap(),
        0
    );

    assert_eq!(store.shares(&ada).await.unwrap(), vec![share]);
    assert_eq!(store.shared(&hash).await.unwrap().unwrap().owner, ada);
}

pub async fn deleting_a_conversations_shares_leaves_the_others(s: &Shares) {
    let store = &*s.store;
    let user = UserId::new();
    let (doomed, kept) = (ConversationId::new(), ConversationId::new());
    let (_, first) = made(store, &user, &doomed).await;
    let (_, second) = made(store, &user, &doomed).await;
    let (other, other_hash) = made(store, &user, &kept).await;

    let deleted = store
        .delete_conversation_shares(&user, &doomed)
        .await
        .unwrap();

    assert_eq!(deleted, 2);
    assert_eq!(store.shared(&first).await.unwrap(), None);
    assert_eq!(store.shared(&second).await.unwrap(), None);
    assert!(store.shared(&other_hash).await.unwrap().is_some());
    assert_eq!(store.shares(&user).await.unwrap(), vec![other]);
    assert_eq!(
        store
            .delete_conversation_shares(&user, &doomed)
            .await
            .unwrap(),
        0
    );
}

pub async fn transfer_moves_every_share_to_the_new_owner(s: &Shares) {
    let store = &*s.store;
    let (anonymous, account, bystander) = (UserId::new(), UserId::new(), UserId::new());
    let (one, one_hash) = made(store, &anonymous, &ConversationId::new()).await;
    tick().await;
    let (two, _) = made(store, &anonymous, &ConversationId::new()).await;
    let (theirs, _) = made(store, &bystander, &ConversationId::new()).await;

    let moved = store.transfer_shares(&anonymous, &account).await.unwrap();

    assert_eq!(moved, 2);
    assert!(store.shares(&anonymous).await.unwrap().is_empty());
    assert_eq!(
        ids(&store.shares(&account).await.unwrap()),
        [two.id.as_str(), one.id.as_str()]
    );
    assert_eq!(
        store.shared(&one_hash).await.unwrap().unwrap().owner,
        account
    );
    assert_eq!(store.shares(&bystander).await.unwrap(), vec![theirs]);
    assert!(store.delete_share(&account, &one.id).await.unwrap());
    assert_eq!(
        store.transfer_shares(&anonymous, &account).await.unwrap(),
        0
    );
}

pub async fn the_limit_refuses_without_storing_and_frees_on_delete(s: &Shares) {
    let store = &*s.store;
    let (user, other) = (UserId::new(), UserId::new());
    let conversation = ConversationId::new();
    let mut kept = Vec::new();
    for _ in 0..3 {
        let (new, _) = fresh(&conversation);
        kept.push(
            store
                .create_share(&user, new, 3)
                .await
                .unwrap()
                .expect("below the limit"),
        );
    }

    let (new, hash) = fresh(&conversation);
    let refused = store.create_share(&user, new.clone(), 3).await.unwrap();

    assert_eq!(refused, None);
    assert_eq!(store.shared(&hash).await.unwrap(), None);
    assert_eq!(store.shares(&user).await.unwrap().len(), 3);
    let (theirs, _) = fresh(&conversation);
    assert!(store
        .create_share(&other, theirs, 3)
        .await
        .unwrap()
        .is_some());
    assert!(store.delete_share(&user, &kept[0].id).await.unwrap());
    let again = store.create_share(&user, new, 3).await.unwrap();
    assert!(again.is_some());
    assert!(store.shared(&hash).await.unwrap().is_some());
    let (fifth, _) = fresh(&conversation);
    assert_eq!(store.create_share(&user, fifth, 3).await.unwrap(), None);
}

pub async fn concurrent_creates_keep_the_limit(s: &Shares) {
    const MAX: u32 = 3;
    let instances = [s.store.clone(), s.second_instance().await];
    let user = UserId::new();

    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, user) = (instances[i % 2].clone(), user.clone());
            tokio::spawn(async move {
                let (new, _) = fresh(&ConversationId::new());
                store.create_share(&user, new, MAX).await.unwrap()
            })
        })
        .collect();
    let mut made = HashSet::new();
    for task in tasks {
        if let Some(share) = task.await.unwrap() {
            made.insert(share.id);
        }
    }

    let listed = s.store.shares(&user).await.unwrap();
    assert!(listed.len() <= MAX as usize, "{} shares kept", listed.len());
    assert_eq!(
        listed.iter().map(|s| s.id.clone()).collect::<HashSet<_>>(),
        made
    );
    if s.kind == Kind::Sqlite {
        assert_eq!(made.len(), MAX as usize);
    }
}

/// `migrate`'s side of the store: every share read out, a page at a time, with its hash
/// and snapshot, and written back as it is into another store, once.
pub async fn imported_shares_keep_every_field_once(s: &Shares) {
    let (ann, bob) = (UserId::new(), UserId::new());
    let mut made_ids = Vec::new();
    let mut hashes = Vec::new();
    for user in [&ann, &bob, &ann] {
        let (share, hash) = made(&*s.store, user, &ConversationId::new()).await;
        made_ids.push(share.id);
        hashes.push(hash);
    }
    let mut exported: Vec<StoredShare> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.store.shares_for_copy(after.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.share.id.clone());
        exported.extend(page);
    }
    let target = Shares::new(s.kind).await;

    let mut imported = Vec::new();
    for share in &exported {
        imported.push(target.store.import_share(share).await.unwrap());
    }
    let mut again = Vec::new();
    for share in &exported {
        again.push(target.store.import_share(share).await.unwrap());
    }

    made_ids.sort();
    assert_eq!(
        exported
            .iter()
            .map(|e| e.share.id.clone())
            .collect::<Vec<_>>(),
        made_ids,
        "ordered by id"
    );
    assert_eq!(imported, [true, true, true]);
    assert_eq!(again, [false, false, false]);
    assert_eq!(
        target.store.shares(&ann).await.unwrap(),
        s.store.shares(&ann).await.unwrap()
    );
    assert_eq!(
        target.store.shares(&bob).await.unwrap(),
        s.store.shares(&bob).await.unwrap()
    );
    for hash in &hashes {
        assert_eq!(
            target.store.shared(hash).await.unwrap(),
            s.store.shared(hash).await.unwrap()
        );
        assert_eq!(
            target.store.shared(hash).await.unwrap().unwrap().messages,
            snapshot()
        );
    }
    target.finish().await;
}

macro_rules! share_contract {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let shares = super::Shares::new(crate::fixture::Kind::Sqlite).await;
                    super::$check(&shares).await;
                    shares.finish().await;
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let shares = super::Shares::new(crate::fixture::Kind::Mongo).await;
                    super::$check(&shares).await;
                    shares.finish().await;
                }
            )*
        }
    };
}

share_contract!(
    create_read_list_delete,
    an_untitled_snapshot_reads_back_without_a_title,
    shares_are_listed_newest_first,
    one_user_cannot_list_delete_or_move_anothers_share,
    deleting_a_conversations_shares_leaves_the_others,
    transfer_moves_every_share_to_the_new_owner,
    the_limit_refuses_without_storing_and_frees_on_delete,
    concurrent_creates_keep_the_limit,
    imported_shares_keep_every_field_once,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_keeps_the_hash_never_the_token_in_a_collection_of_its_own() {
    let s = Shares::new(Kind::Mongo).await;
    let mongo = s.mongo.as_ref().and_then(|f| f.mongo.as_ref()).unwrap();
    let db = mongo.client.database(&mongo.database);
    let raw = db.collection::<mongodb::bson::Document>("shares");
    let user = UserId::new();
    let (share, hash) = made(&*s.store, &user, &ConversationId::new()).await;

    let stored = raw.find_one(doc! {}).await.unwrap().unwrap();
    let mut keys: Vec<&str> = stored.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "_id",
            "conversation_id",
            "created_at",
            "message_count",
            "messages",
            "title",
            "token_hash",
            "user_id"
        ]
    );
    assert_eq!(stored.get_str("_id"), Ok(share.id.as_str()));
    assert_eq!(stored.get_str("token_hash"), Ok(hash.as_str()));
    let messages = stored.get_array("messages").unwrap();
    assert_eq!(messages.len(), 2);
    // The original app's collection holds nothing of it.
    assert_eq!(
        db.collection::<mongodb::bson::Document>("conversations")
            .count_documents(doc! {})
            .await
            .unwrap(),
        0
    );
    let names: Vec<String> = raw.list_index_names().await.unwrap();
    assert!(
        names.iter().any(|n| n == "shares_token_hash_idx"),
        "{names:?}"
    );
    s.finish().await;
}
