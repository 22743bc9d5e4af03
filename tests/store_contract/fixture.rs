//! One store under test: SQLite on a temporary file, or MongoDB in its own
//! database `t_<uuid>` on the shared SecantusDB server.

use std::sync::Arc;

use llm_chat_server::domain::{ConversationId, UserId};
use llm_chat_server::store::mongo::MongoStore;
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
    pub mongo: Option<MongoFixture>,
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
        let db = SqliteDb::open(&dir.path().join("chat.db")).expect("opening SQLite");
        Fixture {
            kind: Kind::Sqlite,
            store: Arc::new(SqliteStore::new(db)),
            mongo: None,
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
            mongo: Some(MongoFixture {
                store,
                client,
                database: database.to_string(),
            }),
            _dir: None,
        }
    }

    /// Another, empty store of the same backend.
    pub async fn another(&self) -> Fixture {
        Fixture::new(self.kind).await
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
