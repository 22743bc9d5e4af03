//! What the server is told about the collections at start: the original
//! app's `$jsonSchema` validator on `conversations`, and the indexes (the
//! unique key, list and export order, the sessions' TTL and account, the accounts'
//! unique email and user id, the access tokens' and share links' unique hash and per-user
//! order, the per-user text index that decides between `$text` search and
//! the scan).

use std::time::Duration;

use anyhow::anyhow;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::base::{code, command_code, MongoStore, CONVERSATIONS, SHARES, TOKENS, USERS};

/// The original app's `validation_schema`, verbatim.
pub fn validation_schema() -> Document {
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

impl MongoStore {
    pub(super) async fn apply_validator(&self) -> anyhow::Result<()> {
        match self
            .db
            .create_collection(CONVERSATIONS)
            .validator(validation_schema())
            .await
        {
            Ok(()) => {
                tracing::info!("created the collection 'conversations' with schema validation");
                Ok(())
            }
            Err(e) if command_code(&e) == Some(code::NAMESPACE_EXISTS) => {
                let coll_mod = doc! {"collMod": CONVERSATIONS, "validator": validation_schema()};
                if let Err(e) = self.db.run_command(coll_mod).await {
                    // A readWrite-only user may not run collMod: the
                    // collection still works, as it did for the original.
                    tracing::warn!(
                        error = %self.redactor.clean(&e.kind.to_string()),
                        "could not apply the schema validator to 'conversations'"
                    );
                }
                Ok(())
            }
            Err(e) => Err(anyhow!(
                "creating the collection 'conversations': {}",
                self.redactor.clean(&e.kind.to_string())
            )),
        }
    }

    /// Creates the indexes; returns whether a text index is available.
    pub(super) async fn create_indexes(&self) -> anyhow::Result<bool> {
        let index = |keys: Document, options: IndexOptions| {
            IndexModel::builder().keys(keys).options(options).build()
        };
        let named = |name: &str| IndexOptions::builder().name(name.to_string()).build();

        // Required: import idempotence and user scoping rely on it.
        let unique = IndexOptions::builder()
            .name("conversation_user_idx".to_string())
            .unique(true)
            .build();
        self.conversations
            .create_index(index(doc! {"conversation_id": 1, "user_id": 1}, unique))
            .await
            .map_err(|e| {
                anyhow!(
                    "creating the unique index conversation_user_idx: {}",
                    self.redactor.clean(&e.kind.to_string())
                )
            })?;

        // Required: sign-up relies on them (a taken email is a duplicate
        // key); creating them again is a no-op.
        for (name, keys) in [
            ("users_email_idx", doc! {"email": 1}),
            ("users_user_id_idx", doc! {"user_id": 1}),
        ] {
            let unique = IndexOptions::builder()
                .name(name.to_string())
                .unique(true)
                .build();
            self.users
                .create_index(index(keys, unique))
                .await
                .map_err(|e| {
                    anyhow!(
                        "creating the unique index {name} on '{USERS}': {}",
                        self.redactor.clean(&e.kind.to_string())
                    )
                })?;
        }

        // Required: a token is found by its hash, which must name one
        // token; creating it again is a no-op.
        let unique = IndexOptions::builder()
            .name("tokens_token_hash_idx".to_string())
            .unique(true)
            .build();
        self.tokens
            .create_index(index(doc! {"token_hash": 1}, unique))
            .await
            .map_err(|e| {
                anyhow!(
                    "creating the unique index tokens_token_hash_idx on '{TOKENS}': {}",
                    self.redactor.clean(&e.kind.to_string())
                )
            })?;
        // A user's tokens: counted on every create, listed newest first.
        if let Err(e) = self
            .tokens
            .create_index(index(
                doc! {"user_id": 1, "created_at": -1},
                named("tokens_user_created_idx"),
            ))
            .await
        {
            tracing::warn!(index = "tokens_user_created_idx", error = %self.redactor.clean(&e.kind.to_string()), "could not create an index");
        }

        // A user's presets, oldest first.
        if let Err(e) = self
            .presets_collection()
            .create_index(index(
                doc! {"user_id": 1, "created_at": 1},
                named("presets_user_created_idx"),
            ))
            .await
        {
            tracing::warn!(index = "presets_user_created_idx", error = %self.redactor.clean(&e.kind.to_string()), "could not create an index");
        }

        // Required: a share link is found by its token's hash, which must
        // name one share.
        let unique = IndexOptions::builder()
            .name("shares_token_hash_idx".to_string())
            .unique(true)
            .build();
        self.shares
            .create_index(index(doc! {"token_hash": 1}, unique))
            .await
            .map_err(|e| {
                anyhow!(
                    "creating the unique index shares_token_hash_idx on '{SHARES}': {}",
                    self.redactor.clean(&e.kind.to_string())
                )
            })?;
        // A user's shares: counted on every create, listed newest first;
        // and those of one conversation, deleted with it.
        for (name, keys) in [
            (
                "shares_user_created_idx",
                doc! {"user_id": 1, "created_at": -1},
            ),
            (
                "shares_user_conversation_idx",
                doc! {"user_id": 1, "conversation_id": 1},
            ),
        ] {
            if let Err(e) = self.shares.create_index(index(keys, named(name))).await {
                tracing::warn!(index = name, error = %self.redactor.clean(&e.kind.to_string()), "could not create an index");
            }
        }

        // The admin's view of a day: most tokens first.
        if let Err(e) = self
            .usage
            .create_index(index(
                doc! {"day": 1, "total_tokens": -1},
                named("usage_day_total_idx"),
            ))
            .await
        {
            tracing::warn!(index = "usage_day_total_idx", error = %self.redactor.clean(&e.kind.to_string()), "could not create an index");
        }

        let optional = [
            // The original's.
            ("created_at_idx", doc! {"created_at": -1}),
            // A user's list, newest first.
            ("user_created_idx", doc! {"user_id": 1, "created_at": -1}),
            // Export order.
            (
                "user_conversation_idx",
                doc! {"user_id": 1, "conversation_id": 1},
            ),
        ];
        for (name, keys) in optional {
            if let Err(e) = self
                .conversations
                .create_index(index(keys, named(name)))
                .await
            {
                tracing::warn!(index = name, error = %self.redactor.clean(&e.kind.to_string()), "could not create an index");
            }
        }

        let ttl = IndexOptions::builder()
            .name("expires_at_ttl".to_string())
            .expire_after(Duration::ZERO)
            .build();
        if let Err(e) = self
            .sessions
            .create_index(index(doc! {"expires_at": 1}, ttl))
            .await
        {
            tracing::warn!(error = %self.redactor.clean(&e.kind.to_string()), "could not create the sessions TTL index");
        }
        // An account's sessions, all ended at once (sign out everywhere).
        if let Err(e) = self
            .sessions
            .create_index(index(doc! {"user_id": 1}, named("sessions_user_idx")))
            .await
        {
            tracing::warn!(index = "sessions_user_idx", error = %self.redactor.clean(&e.kind.to_string()), "could not create an index");
        }

        self.create_text_index().await
    }

    /// The text index, compound with `user_id` first: a `$text` search
    /// (always given one `user_id`) reads only that user's entries. A
    /// collection has one text index at most, so an earlier one (the
    /// original's `conversation_text_index` over every user's text) is
    /// dropped first. Returns whether a text index is there for `$text`.
    async fn create_text_index(&self) -> anyhow::Result<bool> {
        for name in self.text_indexes().await {
            if name == TEXT_INDEX {
                continue;
            }
            match self.conversations.drop_index(name.as_str()).await {
                Ok(()) => {
                    tracing::info!(index = %name, "dropped the text index over every user's text")
                }
                // Another instance starting beside this one dropped it.
                Err(e) if command_code(&e) == Some(code::INDEX_NOT_FOUND) => {}
                Err(e) => tracing::warn!(
                    index = %name,
                    error = %self.redactor.clean(&e.kind.to_string()),
                    "could not drop the old text index: searches keep using it"
                ),
            }
        }
        let text = IndexOptions::builder()
            .name(TEXT_INDEX.to_string())
            .default_language("english".to_string())
            .build();
        let keys = doc! {"user_id": 1, "conversation_text": "text"};
        let model = IndexModel::builder().keys(keys).options(text).build();
        match self.conversations.create_index(model).await {
            Ok(_) => Ok(true),
            Err(e) => {
                // A text index under another name still serves `$text`.
                if !self.text_indexes().await.is_empty() {
                    return Ok(true);
                }
                tracing::warn!(
                    error = %self.redactor.clean(&e.kind.to_string()),
                    "the MongoDB server refused a text index: search falls back to a case-insensitive scan"
                );
                Ok(false)
            }
        }
    }

    /// The names of the collection's text indexes.
    async fn text_indexes(&self) -> Vec<String> {
        let mut names = Vec::new();
        let Ok(mut cursor) = self.conversations.list_indexes().await else {
            return names;
        };
        while let Ok(Some(model)) = cursor.try_next().await {
            if model.keys.values().any(|v| v.as_str() == Some("text"))
                || model.keys.contains_key("_fts")
            {
                if let Some(name) = model.options.and_then(|o| o.name) {
                    names.push(name);
                }
            }
        }
        names
    }
}

/// The text index's name (`{user_id: 1, conversation_text: "text"}`).
const TEXT_INDEX: &str = "user_conversation_text_idx";
