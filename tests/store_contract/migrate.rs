//! `llm-chat-server migrate`: the real binary copies a SQLite database to
//! MongoDB (SecantusDB), a second run copies nothing, and a user who comes
//! back with their old cookie to a server on MongoDB sees their
//! conversations; accounts, access tokens, sign-in identities, token usage and
//! quotas and share links go both ways, once.

use std::path::Path;
use std::time::Duration;

use chrono::NaiveDate;
use llm_chat_server::auth::{hash_password, new_token, token_hash};
use llm_chat_server::domain::{ConversationId, Role, UserId};
use llm_chat_server::sessions::sqlite::SqliteSessionStore;
use llm_chat_server::sessions::SessionWrites;
use llm_chat_server::store::accounts::{
    Account, AccountStore, Created, External, ExternalIdentity, LinkedIdentity, NewAccount, Signup,
};
use llm_chat_server::store::mongo::MongoStore;
use llm_chat_server::store::presets::{NewPreset, PresetStore};
use llm_chat_server::store::shares::{NewShare, ShareStore};
use llm_chat_server::store::sqlite::{SqliteDb, SqliteStore};
use llm_chat_server::store::tokens::TokenStore;
use llm_chat_server::store::usage::{DayUsage, UsageStore};
use llm_chat_server::store::{ConversationStore, NewMessage, Siblings};
use testkit::server::{env_with_path, Env, ServerProcess};
use tower_sessions::session::{Id, Record};

use crate::fixture::{database_name, shared_server};

const BIN: &str = env!("CARGO_BIN_EXE_llm-chat-server");

/// The binary's environment: the SQLite file in `dir`, MongoDB at `uri`.
fn env(dir: &Path, uri: &str, database: &str) -> Env {
    env_with_path([
        ("DATABASE_PATH", dir.join("chat.db").display().to_string()),
        ("MONGODB_URI", uri.to_owned()),
        ("MONGODB_DB", database.to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ])
}

async fn migrate(dir: &Path, uri: &str, database: &str) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        testkit::server::command(Path::new(BIN), &env(dir, uri, database), dir)
            .args(["migrate", "--from", "sqlite", "--to", "mongodb"])
            .output(),
    )
    .await
    .expect("migrate finished in time")
    .expect("migrate ran");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "migrate failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("100% 3/3 conversations"),
        "no progress bar:\n{stderr}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_sqlite_to_mongodb_once_and_users_keep_their_conversations() {
    let server = shared_server().await;
    let (uri, database) = (server.uri(), database_name());
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("chat.db")).unwrap();
    let sqlite = SqliteStore::new(db.clone());
    let user = UserId::new();
    let mut ids = Vec::new();
    for topic in ["volcanoes", "glaciers", "deserts"] {
        let id = ConversationId::new();
        sqlite.create(&user, &id).await.unwrap();
        sqlite
            .append(
                &user,
                &id,
                vec![
                    NewMessage {
                        role: Role::User,
                        content: format!("tell me about {topic}"),
                        tokens: Some(4),
                    },
                    NewMessage {
                        role: Role::Assistant,
                        content: format!("{topic} are remarkable"),
                        tokens: Some(3),
                    },
                ],
            )
            .await
            .unwrap();
        ids.push(id);
    }
    let session_id = Id::default();
    let mut data = std::collections::HashMap::new();
    data.insert("user_id".to_string(), serde_json::json!(user.as_ref()));
    let record = Record {
        id: session_id,
        data,
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::days(1),
    };
    SqliteSessionStore::new(db).put(&record).await.unwrap();

    let first = migrate(dir.path(), &uri, &database).await;
    let second = migrate(dir.path(), &uri, &database).await;

    assert!(
        first.contains("3 conversations read: 3 copied, 0 already there"),
        "{first}"
    );
    assert!(first.contains("1 sessions copied"), "{first}");
    assert!(
        second.contains("3 conversations read: 0 copied, 3 already there"),
        "{second}"
    );
    let mongo = MongoStore::connect(&uri, &database).await.unwrap();
    for id in &ids {
        let copy = mongo.load(&user, id).await.unwrap();
        assert_eq!(
            copy.history(),
            sqlite.load(&user, id).await.unwrap().history()
        );
    }
    assert_eq!(mongo.search(&user, "glaciers", 10).await.unwrap().len(), 1);

    // The user comes back with the same cookie to a server on MongoDB.
    let mut env = env(dir.path(), &uri, &database);
    env.insert("HOST".to_owned(), "127.0.0.1".to_owned());
    env.insert("PORT".to_owned(), "0".to_owned());
    let mut server = ServerProcess::start(Path::new(BIN), &env, dir.path())
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    let base = server.base_url();
    let listed: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/list_conversations"))
        .header("cookie", format!("chat_session={session_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut titles: Vec<&str> = listed["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["title"].as_str().unwrap())
        .collect();
    titles.sort();
    assert_eq!(
        titles,
        [
            "tell me about deserts",
            "tell me about glaciers",
            "tell me about volcanoes"
        ]
    );
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_leaves_out_a_conversation_over_the_targets_cap_and_copies_the_rest() {
    let server = shared_server().await;
    let (uri, database) = (server.uri(), database_name());
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::new(SqliteDb::open(&dir.path().join("chat.db")).unwrap());
    let user = UserId::new();
    let mut ids = Vec::new();
    for turns in [1, 3, 2] {
        let id = ConversationId::new();
        sqlite.create(&user, &id).await.unwrap();
        for turn in 0..turns {
            let messages = [Role::User, Role::Assistant]
                .into_iter()
                .map(|role| NewMessage {
                    role,
                    content: format!("turn {turn}"),
                    tokens: None,
                })
                .collect();
            sqlite.append(&user, &id, messages).await.unwrap();
        }
        ids.push(id);
    }
    let mut env = env(dir.path(), &uri, &database);
    env.insert("MAX_CONVERSATION_MESSAGES".to_owned(), "4".to_owned());

    let output = tokio::time::timeout(
        Duration::from_secs(60),
        testkit::server::command(Path::new(BIN), &env, dir.path())
            .args(["migrate", "--from", "sqlite", "--to", "mongodb"])
            .output(),
    )
    .await
    .expect("migrate finished in time")
    .expect("migrate ran");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "3 conversations read: 2 copied, 0 already there, 1 too large for the target (left out)"
        ),
        "{stdout}"
    );
    let mongo = MongoStore::connect(&uri, &database).await.unwrap();
    assert_eq!(mongo.load(&user, &ids[0]).await.unwrap().messages.len(), 2);
    assert!(
        mongo.meta(&user, &ids[1]).await.is_err(),
        "six messages are over the cap of 4"
    );
    assert_eq!(mongo.load(&user, &ids[2]).await.unwrap().messages.len(), 4);
}

/// `migrate --from <from> --to <to>` with the SQLite file in `dir`: its stdout.
async fn migrate_between(dir: &Path, uri: &str, database: &str, from: &str, to: &str) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        testkit::server::command(Path::new(BIN), &env(dir, uri, database), dir)
            .args(["migrate", "--from", from, "--to", to])
            .output(),
    )
    .await
    .expect("migrate finished in time")
    .expect("migrate ran");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "migrate failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// An account as another store holds it: every field, the date to MongoDB's milliseconds.
fn same_account(a: &Account, b: &Account) -> bool {
    let millis = |at: &chrono::DateTime<chrono::Utc>| at.timestamp_millis();
    (
        &a.user_id,
        &a.email,
        &a.name,
        &a.password_hash,
        a.is_admin,
        a.disabled,
    ) == (
        &b.user_id,
        &b.email,
        &b.name,
        &b.password_hash,
        b.is_admin,
        b.disabled,
    ) && millis(&a.created_at) == millis(&b.created_at)
}

async fn new_account(store: &dyn AccountStore, email: &str, password: &str) -> Account {
    let account = NewAccount {
        user_id: UserId::new(),
        email: email.to_owned(),
        name: format!("name of {email}"),
        password_hash: hash_password(password.to_owned()).await.unwrap(),
    };
    match store.create_account(account, Signup::Open).await.unwrap() {
        Created::Account(account) => account,
        other => panic!("no account made: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_accounts_and_tokens_both_ways_once_and_they_keep_working() {
    let server = shared_server().await;
    let (uri, database) = (server.uri(), database_name());
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::new(SqliteDb::open(&dir.path().join("chat.db")).unwrap());
    let ann = new_account(&sqlite, "ann@example.org", "ann's long password").await;
    let bob = new_account(&sqlite, "bob@example.org", "bob's long password").await;
    let token = new_token();
    sqlite
        .create_token(&ann.user_id, "tok-ann", "laptop", &token_hash(&token), 20)
        .await
        .unwrap()
        .unwrap();
    sqlite
        .create_token(&bob.user_id, "tok-bob", "ci", &token_hash(&new_token()), 20)
        .await
        .unwrap()
        .unwrap();

    let first = migrate_between(dir.path(), &uri, &database, "sqlite", "mongodb").await;
    let second = migrate_between(dir.path(), &uri, &database, "sqlite", "mongodb").await;

    assert!(
        first.contains(
            "2 accounts copied, 0 already there; 2 access tokens copied, 0 already there"
        ),
        "{first}"
    );
    assert!(
        second.contains(
            "0 accounts copied, 2 already there; 0 access tokens copied, 2 already there"
        ),
        "{second}"
    );
    let mongo = MongoStore::connect(&uri, &database).await.unwrap();
    let copied = mongo.accounts_for_copy().await.unwrap();
    assert_eq!(copied.len(), 2, "{copied:?}");
    for original in [&ann, &bob] {
        let copy = mongo.account(&original.user_id).await.unwrap().unwrap();
        assert!(same_account(&copy, original), "{copy:?} != {original:?}");
    }
    assert!(
        ann.is_admin && !bob.is_admin,
        "the first account is the admin"
    );
    assert_eq!(mongo.tokens_for_copy().await.unwrap().len(), 2);
    assert_eq!(
        mongo.token_owner(&token_hash(&token)).await.unwrap(),
        Some(ann.user_id.clone())
    );
    let listed = mongo.tokens(&ann.user_id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.as_str(), listed[0].name.as_str()),
        ("tok-ann", "laptop")
    );
    // Sign-up under `first-only` is closed on the target too.
    let late = NewAccount {
        user_id: UserId::new(),
        email: "late@example.org".into(),
        name: "late".into(),
        password_hash: "x".into(),
    };
    assert_eq!(
        mongo.create_account(late, Signup::FirstOnly).await.unwrap(),
        Created::Closed
    );

    // A server on MongoDB: Ann signs in with her password, and her token works.
    let mut env = env(dir.path(), &uri, &database);
    for (key, value) in [("HOST", "127.0.0.1"), ("PORT", "0"), ("AUTH_MODE", "local")] {
        env.insert(key.to_owned(), value.to_owned());
    }
    let mut process = ServerProcess::start(Path::new(BIN), &env, dir.path())
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    let base = process.base_url();
    let http = reqwest::Client::new();
    let login = http
        .post(format!("{base}/auth/login"))
        .json(&serde_json::json!({"email": "ann@example.org", "password": "ann's long password"}))
        .send()
        .await
        .unwrap();
    let me = http
        .get(format!("{base}/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me["email"], "ann@example.org");
    process.kill().await;

    // And back: an account and a token made on MongoDB reach a new SQLite file.
    let cy = new_account(&mongo, "cy@example.org", "cy's long password").await;
    let cy_token = new_token();
    mongo
        .create_token(&cy.user_id, "tok-cy", "phone", &token_hash(&cy_token), 20)
        .await
        .unwrap()
        .unwrap();
    let back = tempfile::tempdir().unwrap();
    let there = migrate_between(back.path(), &uri, &database, "mongodb", "sqlite").await;
    let again = migrate_between(back.path(), &uri, &database, "mongodb", "sqlite").await;

    assert!(
        there.contains(
            "3 accounts copied, 0 already there; 3 access tokens copied, 0 already there"
        ),
        "{there}"
    );
    assert!(
        again.contains(
            "0 accounts copied, 3 already there; 0 access tokens copied, 3 already there"
        ),
        "{again}"
    );
    let returned = SqliteStore::new(SqliteDb::open(&back.path().join("chat.db")).unwrap());
    for original in [&ann, &bob, &cy] {
        let copy = returned.account(&original.user_id).await.unwrap().unwrap();
        assert!(same_account(&copy, original), "{copy:?} != {original:?}");
    }
    assert_eq!(
        returned.token_owner(&token_hash(&cy_token)).await.unwrap(),
        Some(cy.user_id.clone())
    );
    assert_eq!(
        returned.token_owner(&token_hash(&token)).await.unwrap(),
        Some(ann.user_id.clone())
    );
    assert_eq!(returned.tokens_for_copy().await.unwrap().len(), 3);
}

/// A proxy identity's account, signed in with an address its provider does not vouch for,
/// so that finding it again on the target needs the copied link (not the email).
fn unverified(subject: &str) -> ExternalIdentity {
    ExternalIdentity {
        provider: "oidc:corp".into(),
        subject: subject.into(),
        email: format!("{subject}@example.org"),
        email_verified: false,
        name: subject.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_sign_in_identities_usage_and_quotas_both_ways_once() {
    let server = shared_server().await;
    let (uri, database) = (server.uri(), database_name());
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::new(SqliteDb::open(&dir.path().join("chat.db")).unwrap());
    let External::Account(dee) = sqlite
        .external_account(unverified("dee"), None)
        .await
        .unwrap()
    else {
        panic!("no account for dee");
    };
    let (monday, tuesday) = (
        NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
        NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
    );
    let spent = |prompt, completion| DayUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
    };
    sqlite
        .add_usage(&dee.user_id, monday, spent(120, 30))
        .await
        .unwrap();
    sqlite
        .add_usage(&dee.user_id, tuesday, spent(7, 5))
        .await
        .unwrap();
    sqlite.set_quota(&dee.user_id, Some(4321)).await.unwrap();
    let preset = sqlite
        .create_preset(
            &dee.user_id,
            &uuid::Uuid::new_v4().to_string(),
            &NewPreset {
                name: "Terse".into(),
                model: Some("small".into()),
                system_prompt: Some("Answer in one word.".into()),
                temperature: Some(0.5),
            },
            10,
        )
        .await
        .unwrap()
        .expect("a preset");

    let first = migrate_between(dir.path(), &uri, &database, "sqlite", "mongodb").await;
    let second = migrate_between(dir.path(), &uri, &database, "sqlite", "mongodb").await;

    assert!(
        first.contains("1 sign-in identities, 2 days of usage and 1 quotas copied"),
        "{first}"
    );
    assert!(
        second.contains("0 sign-in identities, 0 days of usage and 0 quotas copied"),
        "{second}"
    );
    assert!(first.contains("; 1 presets copied"), "{first}");
    assert!(second.contains("; 0 presets copied"), "{second}");
    let mongo = MongoStore::connect(&uri, &database).await.unwrap();
    let copied = mongo.presets(&dee.user_id).await.unwrap();
    assert_eq!(copied.len(), 1);
    assert_eq!(
        (
            &copied[0].preset_id,
            &copied[0].name,
            &copied[0].model,
            &copied[0].system_prompt,
            copied[0].temperature
        ),
        (
            &preset.preset_id,
            &preset.name,
            &preset.model,
            &preset.system_prompt,
            preset.temperature
        )
    );
    let External::Account(again) = mongo
        .external_account(unverified("dee"), None)
        .await
        .unwrap()
    else {
        panic!("the link was not copied: the unverified email is refused");
    };
    assert!(same_account(&again, &dee), "{again:?} != {dee:?}");
    let standing = mongo.standing(&dee.user_id, monday).await.unwrap();
    assert_eq!(standing.used, spent(120, 30));
    assert_eq!(standing.quota_override, Some(4321));
    assert_eq!(
        mongo.usage_for_copy().await.unwrap(),
        sqlite.usage_for_copy().await.unwrap()
    );

    // And back to a new SQLite file, with a day spent on MongoDB meanwhile.
    mongo
        .add_usage(&dee.user_id, tuesday, spent(1, 1))
        .await
        .unwrap();
    let back = tempfile::tempdir().unwrap();
    let there = migrate_between(back.path(), &uri, &database, "mongodb", "sqlite").await;
    assert!(
        there.contains("1 sign-in identities, 2 days of usage and 1 quotas copied"),
        "{there}"
    );
    let returned = SqliteStore::new(SqliteDb::open(&back.path().join("chat.db")).unwrap());
    let External::Account(back_again) = returned
        .external_account(unverified("dee"), None)
        .await
        .unwrap()
    else {
        panic!("the link did not come back");
    };
    assert!(same_account(&back_again, &dee), "{back_again:?} != {dee:?}");
    let tuesday_back = returned.standing(&dee.user_id, tuesday).await.unwrap();
    assert_eq!(tuesday_back.used, spent(8, 6));
    assert_eq!(tuesday_back.quota_override, Some(4321));
    assert_eq!(
        returned.identities_for_copy().await.unwrap(),
        vec![LinkedIdentity {
            provider: "oidc:corp".into(),
            subject: "dee".into(),
            user_id: dee.user_id.clone(),
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_share_links_both_ways_once_and_they_keep_working() {
    let server = shared_server().await;
    let (uri, database) = (server.uri(), database_name());
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::new(SqliteDb::open(&dir.path().join("chat.db")).unwrap());
    let (user, conversation) = (UserId::new(), ConversationId::new());
    let messages = vec![
        llm_chat_server::domain::ChatMessage::new(Role::User, "shared question"),
        llm_chat_server::domain::ChatMessage::new(Role::Assistant, "shared answer"),
    ];
    let token = llm_chat_server::auth::new_share_token();
    let made = sqlite
        .create_share(
            &user,
            NewShare {
                id: uuid::Uuid::new_v4().to_string(),
                token_hash: token_hash(&token),
                conversation_id: conversation,
                title: Some("shared question".into()),
                messages: messages.clone(),
            },
            50,
        )
        .await
        .unwrap()
        .unwrap();

    let first = migrate_between(dir.path(), &uri, &database, "sqlite", "mongodb").await;
    let second = migrate_between(dir.path(), &uri, &database, "sqlite", "mongodb").await;

    assert!(
        first.contains("1 share links copied, 0 already there"),
        "{first}"
    );
    assert!(
        second.contains("0 share links copied, 1 already there"),
        "{second}"
    );
    let mongo = MongoStore::connect(&uri, &database).await.unwrap();
    let shared = mongo.shared(&token_hash(&token)).await.unwrap().unwrap();
    assert_eq!(shared.owner, user);
    assert_eq!(shared.messages, messages);
    // MongoDB keeps milliseconds, SQLite microseconds: the rest is equal.
    let at_millis = |share: &llm_chat_server::store::shares::Share| {
        let mut share = share.clone();
        share.created_at =
            chrono::DateTime::from_timestamp_millis(share.created_at.timestamp_millis()).unwrap();
        share
    };
    let on_mongo = mongo.shares(&user).await.unwrap();
    assert_eq!(
        on_mongo.iter().map(at_millis).collect::<Vec<_>>(),
        vec![at_millis(&made)]
    );

    let back = tempfile::tempdir().unwrap();
    let there = migrate_between(back.path(), &uri, &database, "mongodb", "sqlite").await;
    assert!(
        there.contains("1 share links copied, 0 already there"),
        "{there}"
    );
    let returned = SqliteStore::new(SqliteDb::open(&back.path().join("chat.db")).unwrap());
    assert_eq!(returned.shares(&user).await.unwrap(), on_mongo);
    assert_eq!(
        returned
            .shared(&token_hash(&token))
            .await
            .unwrap()
            .unwrap()
            .messages,
        messages
    );
}

fn said(role: Role, content: &str) -> NewMessage {
    NewMessage {
        role,
        content: content.to_owned(),
        tokens: Some(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_an_edited_conversation_with_its_branches_both_ways() {
    let server = shared_server().await;
    let (uri, database) = (server.uri(), database_name());
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::new(SqliteDb::open(&dir.path().join("chat.db")).unwrap());
    let (user, id) = (UserId::new(), ConversationId::new());
    sqlite.create(&user, &id).await.unwrap();
    sqlite
        .append(
            &user,
            &id,
            vec![
                said(Role::User, "first words"),
                said(Role::Assistant, "first reply"),
            ],
        )
        .await
        .unwrap();
    // An edit of the first message: the old pair is set aside as a sibling.
    sqlite
        .fork(
            &user,
            &id,
            0,
            vec![
                said(Role::User, "better words"),
                said(Role::Assistant, "better reply"),
            ],
        )
        .await
        .unwrap();
    let pool = sqlite.branches(&user, &id).await.unwrap();
    let edited = sqlite.load(&user, &id).await.unwrap().history();
    assert_eq!(pool.siblings(2).len(), 1, "{pool:?}");

    let first = migrate_between(dir.path(), &uri, &database, "sqlite", "mongodb").await;

    assert!(first.contains("1 conversations read: 1 copied"), "{first}");
    let mongo = MongoStore::connect(&uri, &database).await.unwrap();
    assert_eq!(mongo.load(&user, &id).await.unwrap().history(), edited);
    let copied = mongo.branches(&user, &id).await.unwrap();
    assert_eq!(copied, pool);
    assert_eq!(
        copied.siblings(2),
        vec![Siblings {
            index: 0,
            position: 2,
            count: 2
        }]
    );
    // The old words are there to switch back to on the target.
    mongo.switch_branch(&user, &id, 0, 1).await.unwrap();
    let switched: Vec<String> = mongo
        .load(&user, &id)
        .await
        .unwrap()
        .history()
        .into_iter()
        .map(|m| m.content.to_string())
        .collect();
    assert_eq!(switched, ["first words", "first reply"]);

    // And back to a new SQLite file: the switched path and its sibling.
    let back = tempfile::tempdir().unwrap();
    migrate_between(back.path(), &uri, &database, "mongodb", "sqlite").await;
    let returned = SqliteStore::new(SqliteDb::open(&back.path().join("chat.db")).unwrap());
    assert_eq!(
        returned.branches(&user, &id).await.unwrap(),
        mongo.branches(&user, &id).await.unwrap()
    );
    assert_eq!(
        returned.load(&user, &id).await.unwrap().history(),
        mongo.load(&user, &id).await.unwrap().history()
    );
    returned.switch_branch(&user, &id, 0, 2).await.unwrap();
    assert_eq!(returned.load(&user, &id).await.unwrap().history(), edited);
}
