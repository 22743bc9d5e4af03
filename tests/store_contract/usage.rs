//! The `UsageStore` contract (token usage per user and day, per-user quotas), written once
//! and run against each backend like `tokens`: `usage::sqlite::<check>` and
//! `usage::mongo::<check>` (see the `usage_contract!` list at the end).

use std::sync::Arc;

use chrono::NaiveDate;
use llm_chat_server::domain::UserId;
use llm_chat_server::store::mongo::MongoStore;
use llm_chat_server::store::sqlite::{SqliteDb, SqliteStore};
use llm_chat_server::store::usage::{DayUsage, Standing, UsageStore, UserUsage};

use crate::fixture::{database_name, shared_server, Fixture, Kind};

/// A usage store under test: SQLite on a temporary file, or MongoDB in its own database.
pub struct Usage {
    pub store: Arc<dyn UsageStore>,
    mongo: Option<Fixture>,
    dir: Option<tempfile::TempDir>,
}

impl Usage {
    pub async fn new(kind: Kind) -> Usage {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary folder");
                let db = SqliteDb::open(&dir.path().join("chat.db")).expect("opening SQLite");
                Usage {
                    store: Arc::new(SqliteStore::new(db)),
                    mongo: None,
                    dir: Some(dir),
                }
            }
            Kind::Mongo => {
                let fixture = Fixture::mongo(&database_name()).await;
                let store = fixture.mongo.as_ref().unwrap().store.clone();
                Usage {
                    store: Arc::new(store),
                    mongo: Some(fixture),
                    dir: None,
                }
            }
        }
    }

    /// A second instance on the same data: another connection to the same SQLite file,
    /// another client of the same MongoDB database.
    pub async fn second_instance(&self) -> Arc<dyn UsageStore> {
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

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, d).unwrap()
}

fn spent(prompt_tokens: u64, completion_tokens: u64) -> DayUsage {
    DayUsage {
        prompt_tokens,
        completion_tokens,
    }
}

pub async fn usage_adds_up_per_user_and_day(u: &Usage) {
    let store = &*u.store;
    let (ann, bob) = (UserId::new(), UserId::new());

    let nothing = store.standing(&ann, day(6)).await.unwrap();
    store.add_usage(&ann, day(6), spent(100, 20)).await.unwrap();
    store.add_usage(&ann, day(6), spent(5, 1)).await.unwrap();
    store.add_usage(&ann, day(7), spent(9, 9)).await.unwrap();
    store.add_usage(&bob, day(6), spent(1, 0)).await.unwrap();

    assert_eq!(nothing, Standing::default());
    assert_eq!(
        store.standing(&ann, day(6)).await.unwrap().used,
        spent(105, 21)
    );
    assert_eq!(
        store.standing(&ann, day(7)).await.unwrap().used,
        spent(9, 9)
    );
    assert_eq!(
        store.standing(&ann, day(8)).await.unwrap().used,
        spent(0, 0)
    );
    assert_eq!(
        store.standing(&bob, day(6)).await.unwrap().used,
        spent(1, 0)
    );
    assert_eq!(spent(105, 21).total(), 126);
}

pub async fn a_quota_is_set_replaced_and_cleared_for_its_user_only(u: &Usage) {
    let store = &*u.store;
    let (ann, bob) = (UserId::new(), UserId::new());

    store.set_quota(&ann, Some(5000)).await.unwrap();
    let set = store.standing(&ann, day(6)).await.unwrap();
    store.set_quota(&ann, Some(0)).await.unwrap();
    let replaced = store.standing(&ann, day(6)).await.unwrap();
    let bobs = store.standing(&bob, day(6)).await.unwrap();
    store.set_quota(&ann, None).await.unwrap();
    store.set_quota(&bob, None).await.unwrap();
    let cleared = store.standing(&ann, day(6)).await.unwrap();

    assert_eq!(set.quota_override, Some(5000));
    assert_eq!(replaced.quota_override, Some(0));
    assert_eq!(bobs.quota_override, None);
    assert_eq!(cleared.quota_override, None);
    assert_eq!(cleared.used, spent(0, 0));
}

pub async fn usage_on_lists_a_day_most_first_bounded_with_own_quotas(u: &Usage) {
    let store = &*u.store;
    let mut users: Vec<UserId> = (0..5).map(|_| UserId::new()).collect();
    for (i, user) in users.iter().enumerate() {
        let tokens = 10 * (i as u64 + 1);
        store
            .add_usage(user, day(6), spent(tokens, tokens))
            .await
            .unwrap();
    }
    store
        .add_usage(&UserId::new(), day(5), spent(1000, 0))
        .await
        .unwrap();
    store.set_quota(&users[4], Some(77)).await.unwrap();

    let top = store.usage_on(day(6), 3).await.unwrap();
    let all = store.usage_on(day(6), 100).await.unwrap();
    let empty = store.usage_on(day(1), 100).await.unwrap();

    users.reverse();
    assert_eq!(
        top,
        vec![
            UserUsage {
                user_id: users[0].clone(),
                used: spent(50, 50),
                quota_override: Some(77),
            },
            UserUsage {
                user_id: users[1].clone(),
                used: spent(40, 40),
                quota_override: None,
            },
            UserUsage {
                user_id: users[2].clone(),
                used: spent(30, 30),
                quota_override: None,
            },
        ]
    );
    assert_eq!(
        all.iter().map(|r| r.user_id.clone()).collect::<Vec<_>>(),
        users
    );
    assert!(empty.is_empty());
}

pub async fn concurrent_increments_from_two_instances_are_all_counted(u: &Usage) {
    const EACH: u64 = 25;
    let instances = [u.store.clone(), u.second_instance().await];
    let user = UserId::new();

    let tasks: Vec<_> = (0..2 * EACH as usize)
        .map(|i| {
            let (store, user) = (instances[i % 2].clone(), user.clone());
            tokio::spawn(async move { store.add_usage(&user, day(6), spent(3, 1)).await.unwrap() })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    for store in &instances {
        assert_eq!(
            store.standing(&user, day(6)).await.unwrap().used,
            spent(6 * EACH, 2 * EACH)
        );
    }
    assert_eq!(
        u.store.usage_on(day(6), 10).await.unwrap().len(),
        1,
        "one record per user and day"
    );
}

/// One test per check and backend: `usage::sqlite::<check>` and `usage::mongo::<check>`.
macro_rules! usage_contract {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let usage = super::Usage::new(crate::fixture::Kind::Sqlite).await;
                    super::$check(&usage).await;
                    usage.finish().await;
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let usage = super::Usage::new(crate::fixture::Kind::Mongo).await;
                    super::$check(&usage).await;
                    usage.finish().await;
                }
            )*
        }
    };
}

usage_contract!(
    usage_adds_up_per_user_and_day,
    a_quota_is_set_replaced_and_cleared_for_its_user_only,
    usage_on_lists_a_day_most_first_bounded_with_own_quotas,
    concurrent_increments_from_two_instances_are_all_counted,
);
