//! What only the MongoDB store has: the original app's validator and data,
//! the size limit on documents the original wrote, sessions, and how it
//! reports an unreachable server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use llm_chat_server::domain::{conversation_text, ChatMessage, ConversationId, Role, UserId};
use llm_chat_server::sessions::SessionWrites;
use llm_chat_server::store::accounts::{Created, Signup};
use llm_chat_server::store::mongo::MongoStore;
use llm_chat_server::store::{
    Conversation, ConversationMeta, ConversationStore, NewMessage, StoreError, StoredMessage,
};
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::SessionStore;

use crate::accounts::{created, new_account, sign_up};
use crate::checks::{self, assert_not_found, contents, msg, TOO_LARGE};
use crate::fixture::{database_name, raw_client, shared_server, Fixture};
use crate::server::Server;
use llm_chat_server::config::ConversationLimits;

/// The original app's `validation_schema`, as it wrote it.
fn original_schema() -> Document {
    doc! {
        "$jsonSchema": {
            "bsonType": "object",
            "required": ["conversation_id", "user_id", "conversation_history", "created_at"],
            "properties": {
                "conversation_id": {"bsonType": "string"},
                "user_id": {"bsonType": "string"},
                "conversation_history": {
                    "bsonType": "array",
                    "items": {
                        "bsonType": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"enum": ["user", "assistant"]},
                            "content": {"bsonType": "string"}
                        }
                    }
                },
                "conversation_text": {"bsonType": "string"},
                "created_at": {"bsonType": "date"},
                "updated_at": {"bsonType": "date"}
            }
        }
    }
}

/// A document as the original app wrote it (`generate_conversation_text`
/// included): no title, no token counts, no counters.
fn original_doc(
    user: &str,
    id: &str,
    history: &[(&str, &str)],
    created: DateTime<Utc>,
) -> Document {
    let items: Vec<Bson> = history
        .iter()
        .map(|(role, content)| Bson::Document(doc! {"role": *role, "content": *content}))
        .collect();
    let text = history
        .iter()
        .map(|(role, content)| {
            let mut capitalized = role.to_string();
            capitalized[..1].make_ascii_uppercase();
            format!("{capitalized}: {content}")
        })
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string();
    let at = bson::DateTime::from_millis(created.timestamp_millis());
    doc! {
        "conversation_id": id,
        "user_id": user,
        "conversation_history": items,
        "conversation_text": text,
        "created_at": at,
        "updated_at": at,
    }
}

/// What the original's `initialize_db` did (its text index aside, which
/// SecantusDB refuses).
async fn initialize_db_like_the_original(database: &mongodb::Database) {
    database
        .create_collection("conversations")
        .validator(original_schema())
        .await
        .unwrap();
    let conversations = database.collection::<Document>("conversations");
    let unique = IndexOptions::builder()
        .name("conversation_user_idx".to_string())
        .unique(true)
        .build();
    conversations
        .create_index(
            IndexModel::builder()
                .keys(doc! {"conversation_id": 1, "user_id": 1})
                .options(unique)
                .build(),
        )
        .await
        .unwrap();
    let created = IndexOptions::builder()
        .name("created_at_idx".to_string())
        .build();
    conversations
        .create_index(
            IndexModel::builder()
                .keys(doc! {"created_at": -1})
                .options(created)
                .build(),
        )
        .await
        .unwrap();
}

fn write_code(err: &mongodb::error::Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

fn mongo(f: &Fixture) -> &crate::fixture::MongoFixture {
    f.mongo.as_ref().expect("a MongoDB fixture")
}

/// The original fields keep the original's BSON types.
fn assert_original_shape(d: &Document) {
    assert!(
        matches!(d.get("conversation_id"), Some(Bson::String(_))),
        "{d}"
    );
    assert!(matches!(d.get("user_id"), Some(Bson::String(_))), "{d}");
    assert!(
        matches!(d.get("conversation_text"), Some(Bson::String(_))),
        "{d}"
    );
    assert!(
        matches!(d.get("created_at"), Some(Bson::DateTime(_))),
        "{d}"
    );
    assert!(
        matches!(d.get("updated_at"), Some(Bson::DateTime(_))),
        "{d}"
    );
    let history = d
        .get_array("conversation_history")
        .expect("an array history");
    for item in history {
        let item = item.as_document().expect("history items are documents");
        assert!(
            matches!(item.get_str("role"), Ok("user" | "assistant")),
            "{item}"
        );
        assert!(item.get_str("content").is_ok(), "{item}");
    }
    let messages: Vec<ChatMessage> = history
        .iter()
        .map(|i| {
            let i = i.as_document().unwrap();
            ChatMessage::new(
                Role::parse(i.get_str("role").unwrap()).unwrap(),
                i.get_str("content").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        d.get_str("conversation_text").unwrap(),
        conversation_text(&messages),
        "conversation_text must be the original's generate_conversation_text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validator_rejects_what_the_original_rejects() {
    let f = Fixture::new(crate::fixture::Kind::Mongo).await;
    let raw = mongo(&f).conversations();
    let now = bson::DateTime::now();

    let no_user = raw
        .insert_one(doc! {"conversation_id": "x", "conversation_history": [], "created_at": now})
        .await
        .expect_err("a document without user_id must be refused");
    let system = raw
        .insert_one(doc! {
            "conversation_id": "y", "user_id": "u", "created_at": now,
            "conversation_history": [{"role": "system", "content": "x"}],
        })
        .await
        .expect_err("a system message must be refused");

    assert_eq!(write_code(&no_user), Some(121), "{no_user}");
    assert_eq!(write_code(&system), Some(121), "{system}");
    // The fields this port adds are allowed.
    raw.insert_one(doc! {
        "conversation_id": "z", "user_id": "u", "created_at": now, "updated_at": now,
        "conversation_history": [{"role": "user", "content": "x", "tokens": 1_i64}],
        "conversation_text": "User: x", "title": "x", "message_count": 1_i64,
        "size_bytes": 600_i64, "summary": {"text": "s", "covers": 1_i64, "tokens": 1_i64},
    })
    .await
    .unwrap();
    // And a store refuses a system message too (the original's enum).
    let (user, id) = (UserId::new(), ConversationId::new());
    f.store.create(&user, &id).await.unwrap();
    let refused = f
        .store
        .append(&user, &id, vec![msg(Role::System, "no")])
        .await;
    assert!(
        matches!(refused, Err(StoreError::Backend(_))),
        "{refused:?}"
    );
    assert_eq!(f.store.meta(&user, &id).await.unwrap().message_count, 0);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_validates_an_existing_collection_and_is_idempotent() {
    let client = raw_client().await;
    let name = database_name();
    let database = client.database(&name);
    database.create_collection("conversations").await.unwrap();

    let first = MongoStore::connect(&shared_server().await.uri(), &name)
        .await
        .unwrap();
    let second = MongoStore::connect(&shared_server().await.uri(), &name)
        .await
        .unwrap();

    let refused = database
        .collection::<Document>("conversations")
        .insert_one(doc! {"conversation_id": "x", "conversation_history": [], "created_at": bson::DateTime::now()})
        .await
        .expect_err("collMod must have applied the validator");
    assert_eq!(write_code(&refused), Some(121));
    assert!(
        !first.text_search() && !second.text_search(),
        "SecantusDB has no text indexes"
    );
    let indexes: Vec<IndexModel> = database
        .collection::<Document>("conversations")
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let find = |name: &str| {
        indexes
            .iter()
            .find(|i| i.options.as_ref().and_then(|o| o.name.as_deref()) == Some(name))
            .unwrap_or_else(|| panic!("no index {name}: {indexes:?}"))
    };
    let unique = find("conversation_user_idx");
    assert_eq!(unique.keys, doc! {"conversation_id": 1, "user_id": 1});
    assert_eq!(unique.options.as_ref().unwrap().unique, Some(true));
    assert_eq!(find("created_at_idx").keys, doc! {"created_at": -1});
    find("user_created_idx");
    find("user_conversation_idx");
    let sessions: Vec<IndexModel> = database
        .collection::<Document>("sessions")
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ttl = sessions
        .iter()
        .find(|i| i.keys == doc! {"expires_at": 1})
        .expect("a TTL index on sessions.expires_at");
    assert_eq!(
        ttl.options.as_ref().unwrap().expire_after,
        Some(Duration::ZERO)
    );
    second.ping().await.unwrap();
    database.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_of_the_original_app_work_and_keep_their_shape() {
    let client = raw_client().await;
    let name = database_name();
    let database = client.database(&name);
    initialize_db_like_the_original(&database).await;
    let raw = database.collection::<Document>("conversations");
    let t0: DateTime<Utc> = "2024-03-01T09:30:00.250Z".parse().unwrap();
    let ids: Vec<String> = (0..4).map(|_| ConversationId::new().to_string()).collect();
    let hour = chrono::Duration::hours(1);
    let originals = [
        original_doc(
            "anonymous",
            &ids[0],
            &[
                ("user", "How do zebras sleep?"),
                ("assistant", "Standing up, mostly."),
            ],
            t0,
        ),
        original_doc(
            "anonymous",
            &ids[1],
            &[
                ("user", "zebras and zebras: tell me about zebra stripes"),
                ("assistant", "Zebras have stripes."),
            ],
            t0 + hour,
        ),
        original_doc("anonymous", &ids[2], &[], t0 + hour * 2),
        original_doc(
            "someone-else",
            &ids[3],
            &[("user", "zebras zebras zebras")],
            t0,
        ),
    ];
    raw.insert_many(originals.clone()).await.unwrap();
    let snapshot = |id: &str| {
        let raw = raw.clone();
        let id = id.to_string();
        async move {
            let mut d = raw
                .find_one(doc! {"conversation_id": id})
                .await
                .unwrap()
                .unwrap();
            d.remove("_id");
            d
        }
    };

    let f = Fixture::mongo(&name).await;
    let store = f.store.clone();
    let anonymous = UserId::from_stored("anonymous".into());
    let id = |i: usize| ConversationId::parse(&ids[i]).unwrap();

    let listed = store.list(&anonymous, 10, 0).await.unwrap();
    assert_eq!(
        listed,
        vec![
            ConversationMeta {
                conversation_id: id(2),
                created_at: t0 + hour * 2,
                updated_at: t0 + hour * 2,
                title: None,
                message_count: 0,
            },
            ConversationMeta {
                conversation_id: id(1),
                created_at: t0 + hour,
                updated_at: t0 + hour,
                title: Some("zebras and zebras: tell me about zebra stripes".into()),
                message_count: 2,
            },
            ConversationMeta {
                conversation_id: id(0),
                created_at: t0,
                updated_at: t0,
                title: Some("How do zebras sleep?".into()),
                message_count: 2,
            },
        ]
    );
    let loaded = store.load(&anonymous, &id(0)).await.unwrap();
    assert_eq!(loaded.meta, listed[2]);
    assert_eq!(
        *loaded.messages,
        vec![
            StoredMessage {
                message: ChatMessage::new(Role::User, "How do zebras sleep?"),
                tokens: None,
            },
            StoredMessage {
                message: ChatMessage::new(Role::Assistant, "Standing up, mostly."),
                tokens: None,
            },
        ]
    );
    assert!(loaded.summary.is_none());
    let hits = store.search(&anonymous, "zebras", 10).await.unwrap();
    let found: Vec<_> = hits
        .iter()
        .map(|h| h.meta.conversation_id.clone())
        .collect();
    assert_eq!(found, vec![id(1), id(0)]);
    // Reading wrote nothing.
    for (i, original) in originals.iter().enumerate() {
        assert_eq!(&snapshot(&ids[i]).await, original);
    }

    let appended = store
        .append(
            &anonymous,
            &id(0),
            vec![
                NewMessage {
                    role: Role::User,
                    content: "And horses?".into(),
                    tokens: Some(4),
                },
                NewMessage {
                    role: Role::Assistant,
                    content: "Also standing.".into(),
                    tokens: None,
                },
            ],
        )
        .await
        .unwrap();

    assert_eq!(appended.message_count, 4);
    assert_eq!(appended.title.as_deref(), Some("How do zebras sleep?"));
    assert!(appended.updated_at > t0);
    let after = snapshot(&ids[0]).await;
    assert_original_shape(&after);
    assert_eq!(after.get("created_at"), originals[0].get("created_at"));
    assert_eq!(
        after.get_str("conversation_text").unwrap(),
        "User: How do zebras sleep?\nAssistant: Standing up, mostly.\nUser: And horses?\nAssistant: Also standing."
    );
    assert_eq!(after.get_i64("message_count"), Ok(4));
    let history = after.get_array("conversation_history").unwrap();
    assert_eq!(history[2].as_document().unwrap().get_i64("tokens"), Ok(4));
    assert!(history[0].as_document().unwrap().get("tokens").is_none());
    assert_eq!(
        contents(&store.load(&anonymous, &id(0)).await.unwrap()),
        [
            "How do zebras sleep?",
            "Standing up, mostly.",
            "And horses?",
            "Also standing."
        ]
    );
    let horses = store.search(&anonymous, "horses", 10).await.unwrap();
    assert_eq!(horses.len(), 1);
    assert_eq!(horses[0].meta.conversation_id, id(0));
    // The empty original conversation gets its title from its first message.
    let titled = store
        .append(&anonymous, &id(2), vec![msg(Role::User, "Hello again")])
        .await
        .unwrap();
    assert_eq!(titled.title.as_deref(), Some("Hello again"));
    assert_original_shape(&snapshot(&ids[2]).await);
    // Another user's original conversation is out of reach and untouched.
    assert_not_found(store.load(&anonymous, &id(3)).await);
    assert_eq!(&snapshot(&ids[3]).await, &originals[3]);
    // A conversation written here is readable by the original app.
    let (user, new) = (UserId::new(), ConversationId::new());
    store.create(&user, &new).await.unwrap();
    assert_original_shape(&f.raw_document(&user, &new).await.unwrap());
    store
        .append(
            &user,
            &new,
            vec![msg(Role::User, "hi"), msg(Role::Assistant, "hello")],
        )
        .await
        .unwrap();
    assert_original_shape(&f.raw_document(&user, &new).await.unwrap());
    store.reset(&user, &new).await.unwrap();
    assert_original_shape(&f.raw_document(&user, &new).await.unwrap());
    // Everything exports.
    assert_eq!(store.export_page(None, 100).await.unwrap().len(), 5);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_document_near_the_limit_is_refused_and_left_intact() {
    let client = raw_client().await;
    let name = database_name();
    let database = client.database(&name);
    initialize_db_like_the_original(&database).await;
    let raw = database.collection::<Document>("conversations");
    let id = ConversationId::new();
    let big = "y".repeat(7 * 1024 * 1024 + 200 * 1024);
    raw.insert_one(original_doc(
        "anonymous",
        id.as_ref(),
        &[("user", big.as_str())],
        Utc::now(),
    ))
    .await
    .unwrap();
    let before = raw.find_one(doc! {}).await.unwrap().unwrap();
    let f = Fixture::mongo(&name).await;
    let user = UserId::from_stored("anonymous".into());
    // A cap above what a document holds: the 15 MiB guard behind it
    // refuses, with the cap's sentence.
    let limits = ConversationLimits {
        max_messages: 10_000,
        max_bytes: 64 * 1024 * 1024,
    };
    let store = f.with_limits(limits).await;

    let refused = store
        .append(
            &user,
            &id,
            vec![msg(Role::Assistant, &"z".repeat(400 * 1024))],
        )
        .await;

    match refused {
        Err(StoreError::TooLarge(why)) => assert_eq!(why, limits.full_message()),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(raw.find_one(doc! {}).await.unwrap().unwrap(), before);
    // Under the default cap (6 MiB) the same document is full already.
    match f
        .store
        .append(&user, &id, vec![msg(Role::Assistant, "a short answer")])
        .await
    {
        Err(StoreError::TooLarge(why)) => assert_eq!(why, TOO_LARGE),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let meta = store
        .append(&user, &id, vec![msg(Role::Assistant, "a short answer")])
        .await
        .unwrap();
    assert_eq!(meta.message_count, 2);
    let after = raw.find_one(doc! {}).await.unwrap().unwrap();
    let mut encoded = Vec::new();
    after.to_writer(&mut encoded).unwrap();
    let counted = after
        .get_i64("size_bytes")
        .expect("a size counter after a write");
    assert!(
        counted >= encoded.len() as i64,
        "the counter ({counted}) must not under-count the document ({})",
        encoded.len()
    );
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_over_the_document_limit_is_refused() {
    let f = Fixture::new(crate::fixture::Kind::Mongo).await;
    let (user, id) = (UserId::new(), ConversationId::new());
    let half = "w".repeat(4 * 1024 * 1024 + 512 * 1024);
    let messages = (0..2)
        .map(|_| StoredMessage {
            message: ChatMessage::new(Role::User, half.clone()),
            tokens: None,
        })
        .collect();
    let conversation = checks::conversation(&id, Utc::now(), Utc::now(), messages);

    let refused = f.store.import(&user, &conversation).await;

    assert!(
        matches!(refused, Err(StoreError::TooLarge(_))),
        "{refused:?}"
    );
    assert_not_found(f.store.meta(&user, &id).await);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conversations_copy_into_mongodb() {
    let source = Fixture::sqlite();
    let target = Fixture::new(crate::fixture::Kind::Mongo).await;
    let user = UserId::new();
    for n in 0..3 {
        let id = ConversationId::new();
        source.store.create(&user, &id).await.unwrap();
        source
            .store
            .append(
                &user,
                &id,
                vec![
                    msg(Role::User, &format!("copy me {n}")),
                    msg(Role::Assistant, "ok"),
                ],
            )
            .await
            .unwrap();
    }

    let (inserted, _) = checks::copy_all(&source.store, &target.store, 2).await;
    let (again, _) = checks::copy_all(&source.store, &target.store, 2).await;

    assert_eq!((inserted, again), (3, 0));
    let millis = |t: DateTime<Utc>| DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap();
    let mut expected: Vec<ConversationMeta> = source
        .store
        .list(&user, 10, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|m| ConversationMeta {
            created_at: millis(m.created_at),
            updated_at: millis(m.updated_at),
            ..m
        })
        .collect();
    // Conversations made in the same millisecond tie once truncated; both
    // stores then order by id.
    expected.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.conversation_id.as_ref().cmp(b.conversation_id.as_ref()))
    });
    assert_eq!(target.store.list(&user, 10, 0).await.unwrap(), expected);
    for meta in &expected {
        let copy: Conversation = target
            .store
            .load(&user, &meta.conversation_id)
            .await
            .unwrap();
        let original = source
            .store
            .load(&user, &meta.conversation_id)
            .await
            .unwrap();
        assert_eq!(copy.messages, original.messages);
        let raw = target
            .raw_document(&user, &meta.conversation_id)
            .await
            .unwrap();
        assert_original_shape(&raw);
    }
    source.finish().await;
    target.finish().await;
}

fn record(data: &[(&str, &str)], expires_in: time::Duration) -> Record {
    Record {
        id: Id::default(),
        data: data
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect::<HashMap<_, _>>(),
        expiry_date: OffsetDateTime::now_utc() + expires_in,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_documents_with_a_date_and_the_first_holds_the_marker() {
    let f = Fixture::new(crate::fixture::Kind::Mongo).await;
    let first = created(sign_up(&*f.accounts, "ada@example.com", Signup::Open).await);
    let second = created(sign_up(&*f.accounts, "bob@example.com", Signup::Open).await);

    for account in [&first, &second] {
        let raw = mongo(&f)
            .users()
            .find_one(doc! {"user_id": account.user_id.as_ref()})
            .await
            .unwrap()
            .expect("the account's document");
        assert_eq!(raw.get_str("email"), Ok(account.email.as_str()));
        assert_eq!(raw.get_str("name"), Ok(account.name.as_str()));
        assert_eq!(
            raw.get_str("password_hash"),
            Ok(account.password_hash.as_str())
        );
        assert_eq!(raw.get_bool("is_admin"), Ok(account.is_admin));
        assert_eq!(raw.get_bool("disabled"), Ok(false));
        assert_eq!(
            raw.get_datetime("created_at").unwrap().timestamp_millis(),
            account.created_at.timestamp_millis()
        );
    }
    let marker = mongo(&f)
        .meta()
        .find_one(doc! {"_id": "first_account"})
        .await
        .unwrap()
        .expect("the first-account marker");
    assert_eq!(marker.get_str("user_id"), Ok(first.user_id.as_ref()));
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_email_gives_the_first_account_marker_back() {
    let f = Fixture::new(crate::fixture::Kind::Mongo).await;
    let accounts = &*f.accounts;
    // An account that is there without having been first (copied in).
    mongo(&f)
        .users()
        .insert_one(doc! {
            "user_id": UserId::new().as_ref(), "email": "ada@example.com", "name": "Ada",
            "password_hash": "h", "is_admin": false, "disabled": false,
            "created_at": bson::DateTime::now(),
        })
        .await
        .unwrap();

    let again = new_account("ada@example.com");
    let again_id = again.user_id.clone();
    assert_eq!(
        accounts
            .create_account(again, Signup::FirstOnly)
            .await
            .unwrap(),
        Created::EmailTaken
    );
    assert_eq!(accounts.account(&again_id).await.unwrap(), None);
    let ada = accounts.account_by_email("ada@example.com").await.unwrap();
    assert_eq!(ada.map(|a| a.name), Some("Ada".to_string()));
    assert!(mongo(&f)
        .meta()
        .find_one(doc! {"_id": "first_account"})
        .await
        .unwrap()
        .is_none());
    // The marker was given back: the next sign-up is the first.
    let next = created(sign_up(accounts, "bob@example.com", Signup::FirstOnly).await);
    assert!(next.is_admin);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_whose_sign_up_never_finished_is_removed_once_old() {
    let f = Fixture::new(crate::fixture::Kind::Mongo).await;
    let (accounts, meta) = (&*f.accounts, mongo(&f).meta());
    let abandoned = |age: chrono::Duration| {
        let at = bson::DateTime::from_millis((Utc::now() - age).timestamp_millis());
        doc! {"_id": "first_account", "user_id": UserId::new().as_ref(), "created_at": at}
    };
    // Young: a sign-up may be between its two inserts.
    meta.insert_one(abandoned(chrono::Duration::seconds(5)))
        .await
        .unwrap();
    assert_eq!(
        sign_up(accounts, "ada@example.com", Signup::FirstOnly).await,
        Created::Closed
    );
    assert!(!accounts.has_accounts().await.unwrap());

    meta.delete_many(doc! {}).await.unwrap();
    meta.insert_one(abandoned(chrono::Duration::minutes(5)))
        .await
        .unwrap();
    let first = created(sign_up(accounts, "ada@example.com", Signup::FirstOnly).await);
    assert!(first.is_admin);

    // Its own marker is not abandoned, however old: its account exists.
    meta.update_one(
        doc! {"_id": "first_account"},
        doc! {"$set": {"created_at": bson::DateTime::from_millis(0)}},
    )
    .await
    .unwrap();
    assert_eq!(
        sign_up(accounts, "bob@example.com", Signup::FirstOnly).await,
        Created::Closed
    );
    let bob = created(sign_up(accounts, "bob@example.com", Signup::Open).await);
    assert!(!bob.is_admin);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_stored_without_overwriting_and_expire() {
    let f = Fixture::new(crate::fixture::Kind::Mongo).await;
    let sessions = mongo(&f).store.session_store();
    let mut first = record(&[("user_id", "alice")], time::Duration::hours(1));

    sessions.create(&mut first).await.unwrap();

    let loaded = sessions
        .load(&first.id)
        .await
        .unwrap()
        .expect("a stored session");
    assert_eq!(loaded.data, first.data);
    assert_eq!(
        loaded.expiry_date.unix_timestamp(),
        first.expiry_date.unix_timestamp()
    );
    // Creating with an id that exists picks another id.
    let mut clash = record(&[("user_id", "mallory")], time::Duration::hours(1));
    clash.id = first.id;
    sessions.create(&mut clash).await.unwrap();
    assert_ne!(clash.id, first.id);
    assert_eq!(
        sessions.load(&first.id).await.unwrap().unwrap().data,
        first.data
    );
    assert_eq!(
        sessions.load(&clash.id).await.unwrap().unwrap().data,
        clash.data
    );
    // Save replaces, and creates nothing when missing (the first write, `put`, does).
    let mut changed = first.clone();
    changed
        .data
        .insert("conversation_id".into(), serde_json::json!("c1"));
    sessions.save(&changed).await.unwrap();
    assert_eq!(
        sessions.load(&first.id).await.unwrap().unwrap().data,
        changed.data
    );
    let fresh = record(&[("user_id", "bob")], time::Duration::minutes(5));
    sessions.save(&fresh).await.unwrap();
    assert!(sessions.load(&fresh.id).await.unwrap().is_none());
    sessions.put(&fresh).await.unwrap();
    assert_eq!(
        sessions.load(&fresh.id).await.unwrap().unwrap().data,
        fresh.data
    );
    // Expired sessions are not loaded.
    let expired = record(&[("user_id", "old")], time::Duration::seconds(-60));
    sessions.put(&expired).await.unwrap();
    assert!(sessions.load(&expired.id).await.unwrap().is_none());
    // Delete.
    sessions.delete(&first.id).await.unwrap();
    assert!(sessions.load(&first.id).await.unwrap().is_none());
    sessions.delete(&first.id).await.unwrap();
    assert!(sessions.load(&Id::default()).await.unwrap().is_none());
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named_without_the_password() {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();

    let err = MongoStore::connect(
        &format!("mongodb://chat:hunter2secret@127.0.0.1:{port}/?authSource=admin"),
        "chatbot_db",
    )
    .await
    .expect_err("nothing listens there");

    let message = format!("{err:#}");
    assert!(
        message.contains("MONGODB_URI could not be reached"),
        "{message}"
    );
    assert!(!message.contains("hunter2secret"), "{message}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(20),
        "waited {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_makes_the_store_unavailable() {
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let store: Arc<dyn ConversationStore> = Arc::new(
        MongoStore::connect(&server.uri(), "chatbot_db")
            .await
            .unwrap(),
    );
    let (user, id) = (UserId::new(), ConversationId::new());
    store.create(&user, &id).await.unwrap();

    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();

    let ping = store.ping().await;
    assert!(matches!(ping, Err(StoreError::Unavailable(_))), "{ping:?}");
    let load = store.load(&user, &id).await;
    assert!(matches!(load, Err(StoreError::Unavailable(_))), "{load:?}");
}

/// A document the original app wrote, under its validator, takes branches:
/// `conversation_history` stays a plain list of `{role, content}` items (plus
/// the token count this port adds to new ones), `conversation_text` follows
/// the path shown, and the branches sit in the optional `branches` field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_of_an_original_document_leave_its_history_in_the_original_shape() {
    let client = raw_client().await;
    let name = database_name();
    let database = client.database(&name);
    initialize_db_like_the_original(&database).await;
    let raw = database.collection::<Document>("conversations");
    let id = ConversationId::new();
    let t0: DateTime<Utc> = "2024-03-01T09:30:00.250Z".parse().unwrap();
    raw.insert_one(original_doc(
        "anonymous",
        id.as_ref(),
        &[("user", "Which bird?"), ("assistant", "A heron.")],
        t0,
    ))
    .await
    .unwrap();
    let f = Fixture::mongo(&name).await;
    let store = f.store.clone();
    let anonymous = UserId::from_stored("anonymous".into());

    store
        .fork(&anonymous, &id, 1, vec![msg(Role::Assistant, "A stork.")])
        .await
        .unwrap();

    let stored = raw
        .find_one(doc! {"conversation_id": id.as_ref()})
        .await
        .unwrap()
        .unwrap();
    let items = stored.get_array("conversation_history").unwrap();
    assert_eq!(
        items[0].as_document().unwrap(),
        &doc! {"role": "user", "content": "Which bird?"},
        "an untouched item keeps its exact shape"
    );
    assert_eq!(
        items[1].as_document().unwrap(),
        &doc! {"role": "assistant", "content": "A stork.", "tokens": 3_i64}
    );
    assert_eq!(
        stored.get_str("conversation_text").unwrap(),
        "User: Which bird?\nAssistant: A stork."
    );
    let nodes = stored
        .get_document("branches")
        .unwrap()
        .get_array("nodes")
        .unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        nodes[0].as_document().unwrap().get_str("content").unwrap(),
        "A heron."
    );
    assert_eq!(stored.get_i64("branch_messages").unwrap(), 1);

    store.switch_branch(&anonymous, &id, 1, 1).await.unwrap();
    let stored = raw
        .find_one(doc! {"conversation_id": id.as_ref()})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.get_str("conversation_text").unwrap(),
        "User: Which bird?\nAssistant: A heron."
    );
    assert_eq!(
        contents(&store.load(&anonymous, &id).await.unwrap()),
        ["Which bird?", "A heron."]
    );
    // Reset: no trace of the branches is left.
    store.reset(&anonymous, &id).await.unwrap();
    let stored = raw
        .find_one(doc! {"conversation_id": id.as_ref()})
        .await
        .unwrap()
        .unwrap();
    assert!(stored.get("branches").is_none() && stored.get("branch_messages").is_none());
    f.finish().await;
}

/// The original app knows no revision, but each of its writes changes the
/// history's length, which the revision is read with: an instance keeping
/// the conversation in memory sees it changed, and an append of ours after
/// it does not look like the next write after the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_of_the_original_app_changes_the_revision_too() {
    let name = database_name();
    let f = Fixture::mongo(&name).await;
    let store = f.store.clone();
    let (user, id) = (UserId::new(), ConversationId::new());
    store.create(&user, &id).await.unwrap();
    let (_, around) = store
        .append_revised(&user, &id, vec![msg(Role::User, "ours")])
        .await
        .unwrap();
    let (_, kept) = around.unwrap();

    // What the original's send_message does: push the turn, set the text and time.
    f.mongo
        .as_ref()
        .unwrap()
        .conversations()
        .update_one(
            doc! {"user_id": user.as_ref(), "conversation_id": id.as_ref()},
            doc! {
                "$push": {"conversation_history": {"$each": [
                    {"role": "user", "content": "theirs"},
                    {"role": "assistant", "content": "reply"},
                ]}},
                "$set": {"updated_at": bson::DateTime::now()},
            },
        )
        .await
        .unwrap();

    let now = store.revision(&user, &id).await.unwrap().unwrap();
    assert_ne!(now, kept, "the original's write is a new revision");
    let (_, around) = store
        .append_revised(&user, &id, vec![msg(Role::User, "ours again")])
        .await
        .unwrap();
    let (before, after) = around.unwrap();
    assert_ne!(
        before, kept,
        "the copy before their write is not the one just before ours"
    );
    assert_eq!(before, now);
    let (loaded, at) = store.load_revised(&user, &id).await.unwrap();
    assert_eq!(contents(&loaded), ["ours", "theirs", "reply", "ours again"]);
    assert_eq!(at, Some(after));
    f.finish().await;
}
