//! Full-text search: FTS5 over message text, ranked by bm25 summed per
//! conversation. What is not indexed yet is indexed first (`index`), so
//! every stored message is found, however recent.

use rusqlite::params;

use super::db::SqliteDb;
use super::exec::backend;
use super::index::index_pending;
use super::rows::{meta_from_row, META_COLUMNS};
use crate::domain::UserId;
use crate::store::{search_terms, SearchHit, StoreResult};

/// The user's conversations whose messages match any of the query's terms,
/// best first.
pub(super) async fn hits(
    db: &SqliteDb,
    user: &UserId,
    query: &str,
    limit: u32,
) -> StoreResult<Vec<SearchHit>> {
    let terms = search_terms(query);
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    // Each term quoted: FTS5 syntax in the user's text cannot take effect.
    let fts_query = terms
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(" OR ");
    let user = user.to_string();
    db.call(move |conn| {
        // Every stored message is searchable, however recent.
        index_pending(conn).map_err(backend)?;
        // bm25() only works in a plain FTS query, so the hits are
        // materialised before the join. It is lower for better matches; a conversation's score
        // is the sum over its matching messages, so more mentions rank
        // higher, as MongoDB's textScore does.
        let mut stmt = conn
            .prepare_cached(&format!(
                "WITH hits AS MATERIALIZED (SELECT rowid AS id, -bm25(messages_fts) AS rank \
                                       FROM messages_fts WHERE messages_fts MATCH ?1), \
                              scored AS (SELECT m.conversation_id AS cid, SUM(hits.rank) AS score \
                                         FROM hits JOIN messages m ON m.id = hits.id \
                                         WHERE m.user_id = ?2 GROUP BY m.conversation_id) \
                         SELECT {cols}, scored.score FROM scored \
                         JOIN conversations c ON c.user_id = ?2 AND c.conversation_id = scored.cid \
                         ORDER BY scored.score DESC LIMIT ?3",
                cols = META_COLUMNS
                    .split(", ")
                    .map(|c| format!("c.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![fts_query, user, limit], |row| {
                Ok(SearchHit {
                    meta: meta_from_row(row)?,
                    // Tiny positive floor: a hit always scores above 0.
                    score: row.get::<_, f64>(5)?.max(1e-6),
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::tests::{msg, store};
    use super::*;
    use crate::domain::{ConversationId, Role};
    use crate::store::ConversationStore;

    #[tokio::test]
    async fn search_ranks_more_mentions_first_and_ignores_other_users() {
        let (_dir, store) = store();
        let (alice, bob) = (UserId::new(), UserId::new());
        let (once, twice, other) = (
            ConversationId::new(),
            ConversationId::new(),
            ConversationId::new(),
        );
        for id in [&once, &twice] {
            store.create(&alice, id).await.unwrap();
        }
        store.create(&bob, &other).await.unwrap();
        store
            .append(&alice, &once, vec![msg(Role::User, "tell me about zebras")])
            .await
            .unwrap();
        store
            .append(
                &alice,
                &twice,
                vec![
                    msg(Role::User, "zebras again"),
                    msg(Role::Assistant, "zebras have stripes"),
                ],
            )
            .await
            .unwrap();
        store
            .append(&bob, &other, vec![msg(Role::User, "zebras zebras")])
            .await
            .unwrap();

        let hits = store.search(&alice, "Zebras!", 10).await.unwrap();

        let ids: Vec<_> = hits
            .iter()
            .map(|h| h.meta.conversation_id.clone())
            .collect();
        assert_eq!(ids, vec![twice, once]);
        assert!(hits.iter().all(|h| h.score > 0.0));
        assert!(store.search(&alice, "\"(*", 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn messages_are_indexed_in_the_background_and_deleting_an_unindexed_one_is_safe() {
        let (_dir, store) = store();
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        store
            .append(&user, &id, vec![msg(Role::User, "quokka facts")])
            .await
            .unwrap();
        // Removed before any indexing ran: no delete marker for a row the
        // index never had (that would corrupt FTS5's external content).
        assert_eq!(
            store
                .delete_last_message(&user, &id)
                .await
                .unwrap()
                .unwrap()
                .content
                .as_ref(),
            "quokka facts"
        );
        store
            .append(&user, &id, vec![msg(Role::User, "quokka again")])
            .await
            .unwrap();

        // The database thread indexes pending rows about once a second.
        let mut pending = i64::MAX;
        for _ in 0..50 {
            pending = store
                .db
                .call(|conn| {
                    conn.query_row("SELECT COUNT(*) FROM messages WHERE indexed = 0", [], |r| {
                        r.get(0)
                    })
                    .map_err(backend)
                })
                .await
                .unwrap();
            if pending == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(pending, 0, "nothing indexed the new message");
        let hits = store.search(&user, "quokka", 10).await.unwrap();
        assert_eq!(hits.len(), 1);
        let integrity: String = store
            .db
            .call(|conn| {
                conn.execute(
                    "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)",
                    [],
                )
                .map_err(backend)?;
                Ok("ok".to_string())
            })
            .await
            .unwrap();
        assert_eq!(integrity, "ok");
    }
}
