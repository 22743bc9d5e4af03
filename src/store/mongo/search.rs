//! Search: `$text` on the server's text index, best `textScore` first, or
//! on servers without text indexes (SecantusDB, some MongoDB-compatible
//! services) the fallback scan: a case-insensitive regex over the user's
//! messages, scored by how often the terms occur. Either way only the
//! user's documents are read (the text index starts with `user_id`, see
//! `schema`) and a score depends on its document alone: MongoDB's
//! `textScore` weighs a term's frequency in the document by the document's
//! length, with no statistics over the collection.

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};

use super::base::{code, command_code, MongoStore};
use super::documents::{hit_from_doc, meta_projection};
use crate::domain::UserId;
use crate::store::{SearchHit, StoreError, StoreResult};

impl MongoStore {
    pub(super) async fn text_index_search(
        &self,
        user: &UserId,
        terms: &[String],
        limit: u32,
    ) -> StoreResult<Vec<SearchHit>> {
        let (filter, projection, sort) = text_search_query(user, terms);
        let found = self
            .conversations
            .find(filter)
            .projection(projection)
            .sort(sort)
            .limit(i64::from(limit))
            .await;
        let mut cursor = match found {
            Ok(cursor) => cursor,
            // The text index was dropped since start: scan instead.
            Err(e) if command_code(&e) == Some(code::INDEX_NOT_FOUND) => {
                tracing::warn!("the text index is gone: this search falls back to a scan");
                return self.scan_search(user, terms, limit).await;
            }
            Err(e) => return Err(self.err(e)),
        };
        let mut hits = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(|e| self.err(e))? {
            hits.push(hit_from_doc(&d).map_err(StoreError::Backend)?);
        }
        Ok(hits)
    }

    pub(super) async fn scan_search(
        &self,
        user: &UserId,
        terms: &[String],
        limit: u32,
    ) -> StoreResult<Vec<SearchHit>> {
        let mut cursor = self
            .conversations
            .aggregate(scan_search_pipeline(user, terms, limit))
            .await
            .map_err(|e| self.err(e))?;
        let mut hits = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(|e| self.err(e))? {
            match hit_from_doc(&d) {
                Ok(hit) => hits.push(hit),
                Err(e) => tracing::warn!(error = %e, "skipping a malformed conversation"),
            }
        }
        Ok(hits)
    }
}

/// A term as a regex matching it literally.
fn escape_regex(term: &str) -> String {
    let mut out = String::with_capacity(term.len());
    for c in term.chars() {
        if c.is_ascii_punctuation() || c.is_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unique_terms(terms: &[String]) -> Vec<String> {
    let mut unique: Vec<String> = Vec::new();
    for term in terms {
        if !unique.contains(term) {
            unique.push(term.clone());
        }
    }
    unique
}

/// `$text` search: filter, projection and sort (best `textScore` first).
fn text_search_query(user: &UserId, terms: &[String]) -> (Document, Document, Document) {
    // Terms are letters and digits only: no phrase or negation syntax.
    let filter = doc! {"user_id": user.as_ref(), "$text": {"$search": terms.join(" ")}};
    let mut projection = meta_projection();
    projection.insert("score", doc! {"$meta": "textScore"});
    let sort = doc! {"score": {"$meta": "textScore"}};
    (filter, projection, sort)
}

/// The fallback search: the user's conversations whose messages mention a
/// term (case-insensitive), scored by how many times the terms occur in the
/// messages' text, best first.
fn scan_search_pipeline(user: &UserId, terms: &[String], limit: u32) -> Vec<Document> {
    let terms = unique_terms(terms);
    let patterns: Vec<String> = terms.iter().map(|t| escape_regex(t)).collect();
    let counts: Vec<Bson> = patterns
        .iter()
        .map(|p| {
            Bson::Document(doc! {"$size": {"$regexFindAll": {
                "input": {"$ifNull": ["$$m.content", ""]},
                "regex": p.as_str(),
                "options": "i",
            }}})
        })
        .collect();
    let mut project = meta_projection();
    project.insert(
        "score",
        doc! {"$sum": {"$map": {
            "input": {"$ifNull": ["$conversation_history", []]},
            "as": "m",
            "in": {"$add": counts},
        }}},
    );
    vec![
        doc! {"$match": {
            "user_id": user.as_ref(),
            "conversation_history.content": {"$regex": patterns.join("|"), "$options": "i"},
        }},
        doc! {"$project": project},
        doc! {"$match": {"score": {"$gt": 0}}},
        doc! {"$sort": {"score": -1, "updated_at": -1, "conversation_id": 1}},
        doc! {"$limit": i64::from(limit)},
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::search_terms;

    #[test]
    fn text_search_uses_only_the_terms_and_sorts_by_text_score() {
        let user = UserId::from_stored("alice".into());
        let terms = search_terms("\"rust\" -tokio (async*)");
        let (filter, projection, sort) = text_search_query(&user, &terms);
        assert_eq!(
            filter,
            doc! {"user_id": "alice", "$text": {"$search": "rust tokio async"}}
        );
        assert_eq!(
            projection.get_document("score").unwrap(),
            &doc! {"$meta": "textScore"}
        );
        assert_eq!(projection.get_i32("_id").unwrap(), 0);
        assert!(projection.contains_key("message_count"));
        assert_eq!(sort, doc! {"score": {"$meta": "textScore"}});
    }

    #[test]
    fn the_scan_search_is_scoped_escaped_and_ranked() {
        let user = UserId::from_stored("alice".into());
        let terms = vec!["zebra".to_string(), "zebra".to_string(), "c".to_string()];
        let pipeline = scan_search_pipeline(&user, &terms, 5);
        let first = pipeline[0].get_document("$match").unwrap();
        assert_eq!(first.get_str("user_id").unwrap(), "alice");
        assert_eq!(
            first
                .get_document("conversation_history.content")
                .unwrap()
                .get_str("$regex")
                .unwrap(),
            "zebra|c"
        );
        assert_eq!(
            pipeline[3],
            doc! {"$sort": {"score": -1, "updated_at": -1, "conversation_id": 1}}
        );
        assert_eq!(pipeline[4], doc! {"$limit": 5_i64});
        assert_eq!(escape_regex("a.b*(c)$"), "a\\.b\\*\\(c\\)\\$");
        assert_eq!(escape_regex("été"), "été");
    }
}
