//! Personal access tokens in MongoDB: [`TokenStore`] for [`MongoStore`], one
//! document per token in `tokens` (`{_id: <token id>, user_id, name,
//! token_hash, created_at}`, unique on `token_hash`, listed through
//! `{user_id, created_at}`, see `schema`); never the token itself.
//!
//! The per-user limit holds across any number of server instances without
//! a transaction: a create inserts first and counts after (why that is
//! enough is said in `create_token`).

use anyhow::anyhow;
use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};

use super::base::{code, command_code, MongoStore};
use super::documents::{from_bson_time, now, to_bson_time};
use crate::domain::UserId;
use crate::store::tokens::{AccessToken, StoredToken, TokenStore};
use crate::store::{StoreError, StoreResult};

fn token_from_doc(d: &Document) -> anyhow::Result<AccessToken> {
    let text = |key: &str| {
        d.get_str(key)
            .map(str::to_string)
            .map_err(|_| anyhow!("an access token without a string {key}"))
    };
    Ok(AccessToken {
        id: text("_id")?,
        user_id: UserId::from_stored(text("user_id")?),
        name: text("name")?,
        created_at: d
            .get_datetime("created_at")
            .map(|at| from_bson_time(*at))
            .map_err(|_| anyhow!("an access token without a created_at date"))?,
    })
}

impl MongoStore {
    async fn count_tokens(&self, user: &UserId) -> StoreResult<u64> {
        self.tokens
            .count_documents(doc! {"user_id": user.as_ref()})
            .await
            .map_err(|e| self.err(e))
    }
}

#[async_trait]
impl TokenStore for MongoStore {
    async fn create_token(
        &self,
        user: &UserId,
        id: &str,
        name: &str,
        token_hash: &str,
        max_per_user: u32,
    ) -> StoreResult<Option<AccessToken>> {
        let max = u64::from(max_per_user);
        // At the limit already (the usual refusal): nothing is written.
        if self.count_tokens(user).await? >= max {
            return Ok(None);
        }
        // Insert, then count, and take the insert back when over the limit.
        // Why no more than `max` survive creates racing on any number of
        // instances: every create counts after its own insert, on the
        // primary, so the last of the surviving inserts counted every other
        // survivor (each inserted before it and never removed) and the
        // tokens there were before; it survived, so all of them together
        // are at most `max`. A create that sees another's insert that will
        // be taken back may refuse too: under contention a create can be
        // refused below the limit (the person tries again), never let past
        // it. A taken id or hash (random, so never, short of a bug) is a
        // duplicate key: `Backend`, like a taken user id.
        let (at, created_at) = now();
        let d = doc! {
            "_id": id,
            "user_id": user.as_ref(),
            "name": name,
            "token_hash": token_hash,
            "created_at": at,
        };
        self.tokens.insert_one(d).await.map_err(|e| self.err(e))?;
        if self.count_tokens(user).await? > max {
            // If this fails the token stays, unseen (its token was never
            // shown), until its owner deletes it from the list.
            self.tokens
                .delete_one(doc! {"_id": id, "user_id": user.as_ref()})
                .await
                .map_err(|e| self.err(e))?;
            return Ok(None);
        }
        Ok(Some(AccessToken {
            id: id.to_string(),
            user_id: user.clone(),
            name: name.to_string(),
            created_at,
        }))
    }

    async fn tokens(&self, user: &UserId) -> StoreResult<Vec<AccessToken>> {
        let mut cursor = self
            .tokens
            .find(doc! {"user_id": user.as_ref()})
            .projection(doc! {"token_hash": 0})
            .sort(doc! {"created_at": -1, "_id": -1})
            .await
            .map_err(|e| self.err(e))?;
        let mut list = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(|e| self.err(e))? {
            match token_from_doc(&d) {
                Ok(token) => list.push(token),
                Err(e) => tracing::warn!(error = %e, "skipping a malformed access token"),
            }
        }
        Ok(list)
    }

    async fn delete_token(&self, user: &UserId, id: &str) -> StoreResult<bool> {
        // Both keys: a user can never delete another's token.
        let result = self
            .tokens
            .delete_one(doc! {"_id": id, "user_id": user.as_ref()})
            .await
            .map_err(|e| self.err(e))?;
        Ok(result.deleted_count > 0)
    }

    async fn token_owner(&self, token_hash: &str) -> StoreResult<Option<UserId>> {
        let found = self
            .tokens
            .find_one(doc! {"token_hash": token_hash})
            .projection(doc! {"_id": 0, "user_id": 1})
            .await
            .map_err(|e| self.err(e))?;
        found
            .map(|d| {
                d.get_str("user_id")
                    .map(|user| UserId::from_stored(user.to_string()))
                    .map_err(|_| {
                        StoreError::Backend(anyhow!("an access token without a string user_id"))
                    })
            })
            .transpose()
    }

    async fn tokens_for_copy(&self) -> StoreResult<Vec<StoredToken>> {
        let mut cursor = self
            .tokens
            .find(doc! {})
            .sort(doc! {"created_at": 1, "_id": 1})
            .await
            .map_err(|e| self.err(e))?;
        let mut list = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(|e| self.err(e))? {
            let token = token_from_doc(&d).map_err(StoreError::Backend)?;
            let token_hash = d
                .get_str("token_hash")
                .map_err(|_| StoreError::Backend(anyhow!("an access token without a hash")))?
                .to_string();
            list.push(StoredToken { token, token_hash });
        }
        Ok(list)
    }

    async fn import_token(&self, stored: &StoredToken) -> StoreResult<bool> {
        let token = &stored.token;
        let d = doc! {
            "_id": &token.id,
            "user_id": token.user_id.as_ref(),
            "name": &token.name,
            "token_hash": &stored.token_hash,
            "created_at": to_bson_time(&token.created_at),
        };
        match self.tokens.insert_one(d).await {
            Ok(_) => Ok(true),
            Err(e) if command_code(&e) == Some(code::DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_document_reads_back_and_a_malformed_one_is_refused() {
        let (at, created_at) = now();
        let user = UserId::new();
        let d = doc! {
            "_id": "t1", "user_id": user.as_ref(), "name": "laptop", "created_at": at,
        };
        assert_eq!(
            token_from_doc(&d).unwrap(),
            AccessToken {
                id: "t1".into(),
                user_id: user,
                name: "laptop".into(),
                created_at,
            }
        );
        let mut no_date = d.clone();
        no_date.insert("created_at", "yesterday");
        assert!(token_from_doc(&no_date).is_err());
        let mut no_name = d;
        no_name.remove("name");
        assert!(token_from_doc(&no_name).is_err());
    }
}
