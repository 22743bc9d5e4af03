//! One store under test: SQLite on a temporary file, or MongoDB in its own
//! database `t_<uuid>` on the shared SecantusDB server. Each store is both
//! a `ConversationStore` and an `AccountStore`; `reopen` opens a second
//! store on the same file or database, as a second process would.

use std::path::PathBuf;
use std::sync::Arc;

use llm_chat_server::config::ConversationLimits;
use llm_chat_server::domain::{ConversationId, UserId};
use llm_chat_server::sessions::{Sessions, SqliteSessionStore};
use llm_chat_server::store::accounts::AccountStore;
use llm_chat_server::store::mongo::{MongoStore, META, USERS};
use llm_chat_server::store::presets::PresetStore;
use llm_chat_server::store::sqlite::{SqliteDb, SqliteStore};
use llm_chat_server::store::ConversationStore;
use mongodb::bson::{doc, Document};
use mongodb::{Client, Collection};

use crate::server;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Mongo,
}

pub struct Fixture {
    pub kind: Kind,
    pub store: Arc<dyn ConversationStore>,
    /// The same store, as an `AccountStore`.
    pub accounts: Arc<dyn AccountStore>,
    /// The same store, as a `PresetStore`.
    pub presets: Arc<dyn PresetStore>,
    pub mongo: Option<MongoFixture>,
    /// The SQLite file (in `_dir`).
    sqlite_path: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

pub struct MongoFixture {
    pub store: MongoStore,
    pub client: Client,
    pub database: String,
}

impl MongoFixture {
    /// The raw `conversations` collection.
    pub fn conversations(&self) -> Collection<Document> {
        self.client
            .database(&self.database)
            .collection("conversations")
    }

    /// The raw `users` collection (accounts).
    pub fn users(&self) -> Collection<Document> {
        self.client.database(&self.database).collection(USERS)
    }

    /// The raw `meta` collection (the first-account marker).
    pub fn meta(&self) -> Collection<Document> {
        self.client.database(&self.database).collection(META)
    }
}

/// A fresh database name.
pub fn database_name() -> String {
    format!("t_{}", uuid::Uuid::new_v4().simple())
}

/// A raw driver client on the shared server.
pub async fn raw_client() -> Client {
    let server = shared_server().await;
    Client::with_uri_str(server.uri())
        .await
        .expect("a raw MongoDB client")
}

/// The shared SecantusDB server (started on first use, off the runtime's
/// threads since it blocks).
pub async fn shared_server() -> &'static server::Server {
    tokio::task::spawn_blocking(server::shared)
        .await
        .expect("starting SecantusDB")
}

impl Fixture {
    pub async fn new(kind: Kind) -> Fixture {
        match kind {
            Kind::Sqlite => Self::sqlite(),
            Kind::Mongo => Self::mongo(&database_name()).await,
        }
    }

    pub fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("chat.db");
        let store = Arc::new(SqliteStore::new(
            SqliteDb::open(&path).expect("opening SQLite"),
        ));
        Fixture {
            kind: Kind::Sqlite,
            store: store.clone(),
            presets: store.clone(),
            accounts: store,
            mongo: None,
            sqlite_path: Some(path),
            _dir: Some(dir),
        }
    }

    /// A MongoStore on `database` (which may already hold data).
    pub async fn mongo(database: &str) -> Fixture {
        let server = shared_server().await;
        let store = MongoStore::connect(&server.uri(), database)
            .await
            .expect("MongoStore::connect");
        let client = Client::with_uri_str(server.uri())
            .await
            .expect("a raw MongoDB client");
        Fixture {
            kind: Kind::Mongo,
            store: Arc::new(store.clone()),
            accounts: Arc::new(store.clone()),
            presets: Arc::new(store.clone()),
            mongo: Some(MongoFixture {
                store,
                client,
                database: database.to_string(),
            }),
            sqlite_path: None,
            _dir: None,
        }
    }

    /// This fixture's store (the same file or database) with another
    /// conversation cap.
    pub async fn with_limits(&self, limits: ConversationLimits) -> Arc<dyn ConversationStore> {
        match (&self.sqlite_path, &self.mongo) {
            (Some(path), _) => Arc::new(
                SqliteStore::new(SqliteDb::open(path).expect("opening SQLite again"))
                    .with_limits(limits),
            ),
            (None, Some(mongo)) => Arc::new(mongo.store.clone().with_limits(limits)),
            (None, None) => unreachable!("a fixture is SQLite or MongoDB"),
        }
    }

    /// Another, empty store of the same backend.
    pub async fn another(&self) -> Fixture {
        Fixture::new(self.kind).await
    }

    /// A second store on this fixture's SQLite file (its own connection) or
    /// MongoDB database (its own client), as another process or server
    /// instance sharing the data would have.
    pub async fn reopen(&self) -> Arc<dyn AccountStore> {
        match (&self.sqlite_path, &self.mongo) {
            (Some(path), _) => Arc::new(SqliteStore::new(
                SqliteDb::open(path).expect("opening SQLite again"),
            )),
            (None, Some(mongo)) => {
                let server = shared_server().await;
                Arc::new(
                    MongoStore::connect(&server.uri(), &mongo.database)
                        .await
                        .expect("MongoStore::connect again"),
                )
            }
            (None, None) => unreachable!("a fixture is SQLite or MongoDB"),
        }
    }

    /// The session store beside this store's data (the same SQLite file,
    /// through its own connection, or the same MongoDB database).
    pub fn sessions(&self) -> Sessions {
        match (&self.sqlite_path, &self.mongo) {
            (Some(path), _) => Sessions::Sqlite(SqliteSessionStore::new(
                SqliteDb::open(path).expect("opening SQLite for sessions"),
            )),
            (None, Some(mongo)) => Sessions::Mongo(mongo.store.session_store()),
            (None, None) => unreachable!("a fixture is SQLite or MongoDB"),
        }
    }

    /// The stored `conversation_text` (MongoDB only).
    pub async fn raw_document(&self, user: &UserId, id: &ConversationId) -> Option<Document> {
        let mongo = self.mongo.as_ref()?;
        mongo
            .conversations()
            .find_one(doc! {"user_id": user.as_ref(), "conversation_id": id.as_ref()})
            .await
            .expect("reading the raw document")
    }

    /// Drops the test's database.
    pub async fn finish(self) {
        if let Some(mongo) = &self.mongo {
            mongo
                .client
                .database(&mongo.database)
                .drop()
                .await
                .expect("dropping the test database");
        }
    }
}
