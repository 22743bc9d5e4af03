//! `llm-chat-server migrate`: the real binary copies a SQLite database to
//! MongoDB (SecantusDB), a second run copies nothing, and a user who comes
//! back with their old cookie to a server on MongoDB sees their
//! conversations.

use std::path::Path;
use std::time::Duration;

use llm_chat_server::domain::{ConversationId, Role, UserId};
use llm_chat_server::sessions::sqlite::SqliteSessionStore;
use llm_chat_server::store::mongo::MongoStore;
use llm_chat_server::store::sqlite::{SqliteDb, SqliteStore};
use llm_chat_server::store::{ConversationStore, NewMessage};
use testkit::server::{env_with_path, Env, ServerProcess};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::SessionStore;

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
    SqliteSessionStore::new(db).save(&record).await.unwrap();

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
