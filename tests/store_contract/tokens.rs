//! The `TokenStore` contract (personal access tokens), written once and run
//! against each backend like `checks`: `tokens::sqlite::<check>` and
//! `tokens::mongo::<check>` (see the `token_contract!` list at the end),
//! plus what only the MongoDB collection has.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::TryStreamExt;
use llm_chat_server::domain::UserId;
use llm_chat_server::store::mongo::MongoStore;
use llm_chat_server::store::sqlite::{SqliteDb, SqliteStore};
use llm_chat_server::store::tokens::{AccessToken, TokenStore};
use mongodb::bson::doc;

use crate::fixture::{database_name, shared_server, Fixture, Kind};

/// A token store under test: SQLite on a temporary file, or MongoDB in its
/// own database (a [`Fixture`], which drops it at the end).
pub struct Tokens {
    pub kind: Kind,
    pub store: Arc<dyn TokenStore>,
    mongo: Option<Fixture>,
    dir: Option<tempfile::TempDir>,
}

impl Tokens {
    pub async fn new(kind: Kind) -> Tokens {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary folder");
                let db = SqliteDb::open(&dir.path().join("chat.db")).expect("opening SQLite");
                Tokens {
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
                Tokens {
                    kind,
                    store: Arc::new(store),
                    mongo: Some(fixture),
                    dir: None,
                }
            }
        }
    }

    /// A second instance on the same data: another connection to the same
    /// SQLite file, another client of the same MongoDB database.
    pub async fn second_instance(&self) -> Arc<dyn TokenStore> {
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

/// A fresh token id and hash, as the routes make them.
fn fresh() -> (String, String) {
    (
        uuid::Uuid::new_v4().to_string(),
        format!("{:064x}", uuid::Uuid::new_v4().as_u128()),
    )
}

/// Creates a token that must fit; returns it and its hash.
async fn made(store: &dyn TokenStore, user: &UserId, name: &str) -> (AccessToken, String) {
    let (id, hash) = fresh();
    let token = store
        .create_token(user, &id, name, &hash, 10)
        .await
        .unwrap()
        .expect("below the limit, the token is made");
    (token, hash)
}

fn ids(tokens: &[AccessToken]) -> Vec<&str> {
    tokens.iter().map(|t| t.id.as_str()).collect()
}

pub async fn create_list_delete(t: &Tokens) {
    let store = &*t.store;
    let user = UserId::new();
    assert!(store.tokens(&user).await.unwrap().is_empty());
    let (id, hash) = fresh();

    let token = store
        .create_token(&user, &id, "laptop", &hash, 10)
        .await
        .unwrap()
        .unwrap();

    assert_eq!((token.id.as_str(), token.name.as_str()), (&*id, "laptop"));
    assert_eq!(token.user_id, user);
    assert!((Utc::now() - token.created_at).num_seconds().abs() < 5);
    // Read back exactly as returned (times at the backend's precision).
    assert_eq!(store.tokens(&user).await.unwrap(), vec![token.clone()]);
    assert!(store.delete_token(&user, &id).await.unwrap());
    assert!(store.tokens(&user).await.unwrap().is_empty());
    assert_eq!(store.token_owner(&hash).await.unwrap(), None);
    assert!(!store.delete_token(&user, &id).await.unwrap());
    assert!(!store.delete_token(&user, "no-such-token").await.unwrap());
}

pub async fn tokens_are_listed_newest_first(t: &Tokens) {
    let store = &*t.store;
    let user = UserId::new();
    let mut created = Vec::new();
    for name in ["first", "second", "third"] {
        created.push(made(store, &user, name).await.0);
        tick().await;
    }

    let listed = store.tokens(&user).await.unwrap();

    created.reverse();
    assert_eq!(listed, created);
    assert!(listed
        .windows(2)
        .all(|pair| pair[0].created_at > pair[1].created_at));
    // Deleting the middle one keeps the order of the rest.
    store.delete_token(&user, &created[1].id).await.unwrap();
    assert_eq!(
        ids(&store.tokens(&user).await.unwrap()),
        [created[0].id.as_str(), created[2].id.as_str()]
    );
}

pub async fn the_limit_refuses_without_storing_and_frees_on_delete(t: &Tokens) {
    let store = &*t.store;
    let (user, other) = (UserId::new(), UserId::new());
    let mut kept = Vec::new();
    for i in 0..3 {
        let (id, hash) = fresh();
        let token = store
            .create_token(&user, &id, &format!("t{i}"), &hash, 3)
            .await
            .unwrap();
        kept.push(token.expect("below the limit"));
    }

    let (id, hash) = fresh();
    let refused = store.create_token(&user, &id, "fourth", &hash, 3).await;

    assert_eq!(refused.unwrap(), None);
    assert_eq!(store.token_owner(&hash).await.unwrap(), None);
    assert!(!store.delete_token(&user, &id).await.unwrap());
    assert_eq!(store.tokens(&user).await.unwrap().len(), 3);
    // The limit is per user.
    let (other_id, other_hash) = fresh();
    assert!(store
        .create_token(&other, &other_id, "theirs", &other_hash, 3)
        .await
        .unwrap()
        .is_some());
    // A lower limit than there are tokens refuses too; zero refuses all.
    assert_eq!(
        store.create_token(&user, &id, "x", &hash, 2).await.unwrap(),
        None
    );
    let (zero_id, zero_hash) = fresh();
    assert_eq!(
        store
            .create_token(&UserId::new(), &zero_id, "x", &zero_hash, 0)
            .await
            .unwrap(),
        None
    );

    // After a delete, one more fits, and then no more.
    assert!(store.delete_token(&user, &kept[0].id).await.unwrap());
    let again = store.create_token(&user, &id, "fourth", &hash, 3).await;
    assert_eq!(again.unwrap().map(|t| t.id), Some(id));
    assert_eq!(store.token_owner(&hash).await.unwrap(), Some(user.clone()));
    let (fifth_id, fifth_hash) = fresh();
    assert_eq!(
        store
            .create_token(&user, &fifth_id, "fifth", &fifth_hash, 3)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.tokens(&user).await.unwrap().len(), 3);
}

pub async fn token_owner_finds_the_owner_by_hash(t: &Tokens) {
    let store = &*t.store;
    let (ada, bob) = (UserId::new(), UserId::new());
    let (_, ada_hash) = made(store, &ada, "ada's").await;
    let (bob_token, bob_hash) = made(store, &bob, "bob's").await;

    assert_eq!(store.token_owner(&ada_hash).await.unwrap(), Some(ada));
    assert_eq!(
        store.token_owner(&bob_hash).await.unwrap(),
        Some(bob.clone())
    );
    assert_eq!(store.token_owner(&fresh().1).await.unwrap(), None);
    // Only the whole hash finds it.
    assert_eq!(store.token_owner(&bob_hash[..32]).await.unwrap(), None);
    assert_eq!(store.token_owner("").await.unwrap(), None);
    // Nor does a token's id.
    assert_eq!(store.token_owner(&bob_token.id).await.unwrap(), None);
}

pub async fn one_user_cannot_list_or_delete_anothers_token(t: &Tokens) {
    let store = &*t.store;
    let (ada, eve) = (UserId::new(), UserId::new());
    let (token, hash) = made(store, &ada, "ada's").await;
    let (own, _) = made(store, &eve, "eve's").await;

    assert_eq!(store.tokens(&eve).await.unwrap(), vec![own]);
    assert!(!store.delete_token(&eve, &token.id).await.unwrap());

    assert_eq!(store.tokens(&ada).await.unwrap(), vec![token]);
    assert_eq!(store.token_owner(&hash).await.unwrap(), Some(ada));
}

pub async fn concurrent_creates_keep_the_limit(t: &Tokens) {
    const MAX: u32 = 3;
    let instances = [t.store.clone(), t.second_instance().await];
    let user = UserId::new();

    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, user) = (instances[i % 2].clone(), user.clone());
            tokio::spawn(async move {
                let (id, hash) = fresh();
                store
                    .create_token(&user, &id, &format!("t{i}"), &hash, MAX)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut made = HashSet::new();
    for task in tasks {
        if let Some(token) = task.await.unwrap() {
            made.insert(token.id);
        }
    }

    let listed = t.store.tokens(&user).await.unwrap();
    assert!(listed.len() <= MAX as usize, "{} tokens kept", listed.len());
    // Every token reported made is kept, and only those.
    assert_eq!(
        listed.iter().map(|t| t.id.clone()).collect::<HashSet<_>>(),
        made
    );
    if t.kind == Kind::Sqlite {
        // One writer at a time: exactly the first three fit.
        assert_eq!(made.len(), MAX as usize);
    }
    // Nothing was left behind: creating one at a time fills it up exactly.
    let mut count = made.len();
    loop {
        let (id, hash) = fresh();
        match instances[1]
            .create_token(&user, &id, "later", &hash, MAX)
            .await
        {
            Ok(Some(_)) => count += 1,
            Ok(None) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(count, MAX as usize);
    assert_eq!(t.store.tokens(&user).await.unwrap().len(), MAX as usize);
}

/// One test per check and backend: `tokens::sqlite::<check>` and
/// `tokens::mongo::<check>`.
/// `migrate`'s side of the store: every token read out with its hash, and
/// written back as it is into another store, once.
pub async fn imported_tokens_keep_every_field_once(t: &Tokens) {
    let (ann, bob) = (UserId::new(), UserId::new());
    let (first, first_hash) = made(&*t.store, &ann, "laptop").await;
    tick().await;
    let (second, second_hash) = made(&*t.store, &bob, "ci").await;
    let exported = t.store.tokens_for_copy().await.unwrap();
    let target = Tokens::new(t.kind).await;

    let imported: Vec<bool> = futures_util::future::join_all(
        exported
            .iter()
            .map(|token| target.store.import_token(token)),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    let mut again = Vec::new();
    for token in &exported {
        again.push(target.store.import_token(token).await.unwrap());
    }

    assert_eq!(
        exported
            .iter()
            .map(|s| (s.token.clone(), s.token_hash.clone()))
            .collect::<Vec<_>>(),
        vec![
            (first.clone(), first_hash.clone()),
            (second.clone(), second_hash)
        ],
        "oldest first, with their hashes"
    );
    assert_eq!(imported, [true, true]);
    assert_eq!(again, [false, false]);
    assert_eq!(target.store.tokens(&ann).await.unwrap(), vec![first]);
    assert_eq!(target.store.tokens(&bob).await.unwrap(), vec![second]);
    assert_eq!(
        target.store.token_owner(&first_hash).await.unwrap(),
        Some(ann)
    );
    target.finish().await;
}

macro_rules! token_contract {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let tokens = super::Tokens::new(crate::fixture::Kind::Sqlite).await;
                    super::$check(&tokens).await;
                    tokens.finish().await;
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let tokens = super::Tokens::new(crate::fixture::Kind::Mongo).await;
                    super::$check(&tokens).await;
                    tokens.finish().await;
                }
            )*
        }
    };
}

token_contract!(
    create_list_delete,
    imported_tokens_keep_every_field_once,
    tokens_are_listed_newest_first,
    the_limit_refuses_without_storing_and_frees_on_delete,
    token_owner_finds_the_owner_by_hash,
    one_user_cannot_list_or_delete_anothers_token,
    concurrent_creates_keep_the_limit,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_keeps_the_hash_never_the_token_under_unique_indexes() {
    let t = Tokens::new(Kind::Mongo).await;
    let mongo = t.mongo.as_ref().and_then(|f| f.mongo.as_ref()).unwrap();
    let raw = mongo
        .client
        .database(&mongo.database)
        .collection::<mongodb::bson::Document>("tokens");
    let user = UserId::new();
    let (token, hash) = made(&*t.store, &user, "laptop").await;

    let stored = raw.find_one(doc! {}).await.unwrap().unwrap();
    let mut keys: Vec<&str> = stored.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["_id", "created_at", "name", "token_hash", "user_id"]);
    assert_eq!(stored.get_str("_id"), Ok(token.id.as_str()));
    assert_eq!(stored.get_str("token_hash"), Ok(hash.as_str()));
    assert!(stored.get_datetime("created_at").is_ok());
    let names: Vec<String> = raw
        .list_indexes()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|model| model.options.and_then(|o| o.name))
        .collect();
    assert!(
        names.iter().any(|n| n == "tokens_token_hash_idx"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "tokens_user_created_idx"),
        "{names:?}"
    );
    // The same hash for another token, even another user's, is refused.
    let (id, _) = fresh();
    assert!(t
        .store
        .create_token(&UserId::new(), &id, "copy", &hash, 10)
        .await
        .is_err());
    // Connecting again (indexes created again) changes nothing.
    let again = t.second_instance().await;
    assert_eq!(again.tokens(&user).await.unwrap(), vec![token]);
    t.finish().await;
}
