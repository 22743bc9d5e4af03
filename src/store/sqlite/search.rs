//! Search over one user's messages only: the user's postings in the
//! per-user FTS5 index (see `schema`) and the user's messages not indexed
//! yet, on a read connection of its own. A conversation's score is how
//! many times the query's words occur in it: nothing another user wrote
//! can match, or move a score (FTS5's bm25 would: its statistics are
//! corpus-wide).

use std::collections::{HashMap, HashSet};

use rusqlite::{params, Connection, OptionalExtension};

use super::db::SqliteDb;
use super::exec::backend;
use super::index::user_term;
use super::rows::read_meta;
use crate::domain::UserId;
use crate::store::{search_terms, words, SearchHit, StoreError, StoreResult};

/// The user's conversations whose messages match any of the query's terms,
/// best first (then most recently updated).
pub(super) async fn hits(
    db: &SqliteDb,
    user: &UserId,
    query: &str,
    limit: u32,
) -> StoreResult<Vec<SearchHit>> {
    let mut terms = search_terms(query);
    terms.sort();
    terms.dedup();
    if terms.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let user = user.to_string();
    db.read(move |conn| {
        // One snapshot: a message being indexed meanwhile counts once.
        let tx = conn.unchecked_transaction().map_err(backend)?;
        let mut scores: Vec<(String, f64)> = scores(&tx, &user, &terms)
            .map_err(backend)?
            .into_iter()
            .collect();
        scores.sort_by(|a, b| b.1.total_cmp(&a.1));
        // Only the best `limit` and those tied with the last of them are
        // read: ties go to the most recently updated.
        let Some(&(_, lowest)) = scores.get(limit as usize - 1).or(scores.last()) else {
            return Ok(Vec::new());
        };
        let mut hits = Vec::new();
        for (id, score) in scores.into_iter().take_while(|(_, s)| *s >= lowest) {
            match read_meta(&tx, &user, &id) {
                Ok(meta) => hits.push(SearchHit { meta, score }),
                // Messages whose conversation is gone are not a result.
                Err(StoreError::NotFound) => {}
                Err(err) => return Err(err),
            }
        }
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(b.meta.updated_at.cmp(&a.meta.updated_at))
                .then(
                    a.meta
                        .conversation_id
                        .as_ref()
                        .cmp(b.meta.conversation_id.as_ref()),
                )
        });
        hits.truncate(limit as usize);
        Ok(hits)
    })
    .await
}

/// How many times the terms occur in each of the user's conversations
/// (only those where they do).
fn scores(
    conn: &Connection,
    user: &str,
    terms: &[String],
) -> rusqlite::Result<HashMap<String, f64>> {
    let mut scores: HashMap<String, f64> = HashMap::new();
    let key: Option<i64> = conn
        .prepare_cached("SELECT key FROM search_users WHERE user_id = ?1")?
        .query_row([user], |row| row.get(0))
        .optional()?;
    if let Some(key) = key {
        // The user's postings of each term, one row per occurrence (in
        // message order: a message's run is counted at once).
        let mut per_message: HashMap<i64, u32> = HashMap::new();
        let mut postings = conn.prepare_cached("SELECT doc FROM search_vocab WHERE term = ?1")?;
        for term in terms {
            let mut run: Option<(i64, u32)> = None;
            let mut rows = postings.query([user_term(key, term)])?;
            while let Some(row) = rows.next()? {
                let doc: i64 = row.get(0)?;
                match &mut run {
                    Some((last, count)) if *last == doc => *count += 1,
                    _ => {
                        if let Some((doc, count)) = run.replace((doc, 1)) {
                            *per_message.entry(doc).or_default() += count;
                        }
                    }
                }
            }
            if let Some((doc, count)) = run {
                *per_message.entry(doc).or_default() += count;
            }
        }
        for (id, count) in conversations_of(conn, user, per_message)? {
            *scores.entry(id).or_default() += f64::from(count);
        }
    }
    // What the database thread has not indexed yet: about a second's worth
    // of every user's messages, the rows above the mark (a range of row ids,
    // less any an older version's indexer added) and the few flagged below
    // it, filtered here (a migrated file's backlog makes this a longer scan
    // until it is worked off). An index of them by user would cost every
    // message a write at random in it, and another when it is indexed.
    let wanted: HashSet<&str> = terms.iter().map(String::as_str).collect();
    let mut stmt = conn.prepare_cached(
        "SELECT conversation_id, content FROM messages NOT INDEXED \
         WHERE id > (SELECT mark FROM search_state WHERE id = 1) AND indexed <> 1 AND user_id = ?1 \
         UNION ALL \
         SELECT conversation_id, content FROM messages INDEXED BY messages_unindexed \
         WHERE indexed = 0 AND id <= (SELECT mark FROM search_state WHERE id = 1) AND user_id = ?1",
    )?;
    let rows = stmt.query_map([user], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    for row in rows {
        let (id, content) = row?;
        let count = words(&content)
            .filter(|word| wanted.contains(word.as_str()))
            .count();
        if count > 0 {
            *scores.entry(id).or_default() += count as f64;
        }
    }
    Ok(scores)
}

/// The messages' counts summed per conversation. Many messages are mapped
/// by one read of the user's conversations and, for each, of its entries
/// in the `(conversation_id, user_id, seq)` index (which holds each row
/// id), few by their row ids.
fn conversations_of(
    conn: &Connection,
    user: &str,
    per_message: HashMap<i64, u32>,
) -> rusqlite::Result<HashMap<String, u32>> {
    let mut counts: HashMap<String, u32> = HashMap::new();
    if per_message.len() > 256 {
        let mut stmt =
            conn.prepare_cached(
                "SELECT m.id, m.conversation_id FROM conversations c \
                 JOIN messages m ON m.conversation_id = c.conversation_id AND m.user_id = c.user_id \
                 WHERE c.user_id = ?1",
            )?;
        let mut rows = stmt.query([user])?;
        while let Some(row) = rows.next()? {
            if let Some(count) = per_message.get(&row.get::<_, i64>(0)?) {
                *counts.entry(row.get(1)?).or_default() += count;
            }
        }
    } else {
        let mut stmt = conn.prepare_cached(
            "SELECT conversation_id FROM messages WHERE id = ?1 AND user_id = ?2",
        )?;
        for (doc, count) in per_message {
            let id: Option<String> = stmt
                .query_row(params![doc, user], |row| row.get(0))
                .optional()?;
            if let Some(id) = id {
                *counts.entry(id).or_default() += count;
            }
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::super::index::index_pending;
    use super::super::tests::{index_now, msg, store};
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

    /// bm25 over every user's text made Alice's scores move with Bob's
    /// conversations: how common a word is elsewhere leaked through them.
    #[tokio::test]
    async fn a_score_counts_the_users_own_text_only_indexed_or_not() {
        let (_dir, store) = store();
        let (alice, bob) = (UserId::new(), UserId::new());
        let (once, twice) = (ConversationId::new(), ConversationId::new());
        for id in [&once, &twice] {
            store.create(&alice, id).await.unwrap();
        }
        store
            .append(&alice, &once, vec![msg(Role::User, "an okapi, a zebra")])
            .await
            .unwrap();
        store
            .append(
                &alice,
                &twice,
                vec![
                    msg(Role::User, "okapi"),
                    msg(Role::Assistant, "OKAPI okapi!"),
                ],
            )
            .await
            .unwrap();
        let scores = |hits: Vec<SearchHit>| {
            hits.into_iter()
                .map(|h| (h.meta.conversation_id, h.score))
                .collect::<Vec<_>>()
        };
        let index = || store.db.call(|conn| index_pending(conn).map_err(backend));
        // Not indexed yet, then indexed: the same scores.
        let pending = scores(store.search(&alice, "okapi zebra", 10).await.unwrap());
        index().await.unwrap();
        let before = scores(store.search(&alice, "okapi zebra", 10).await.unwrap());
        assert_eq!(before, pending);
        assert_eq!(before, vec![(twice.clone(), 3.0), (once.clone(), 2.0)]);

        for n in 0..40 {
            let id = ConversationId::new();
            store.create(&bob, &id).await.unwrap();
            let text = if n % 2 == 0 {
                "okapi okapi okapi"
            } else {
                "nothing here"
            };
            store
                .append(&bob, &id, vec![msg(Role::User, text)])
                .await
                .unwrap();
        }
        // Bob's messages not indexed yet (read by the pending scan), then indexed.
        let bob_pending = scores(store.search(&alice, "okapi zebra", 10).await.unwrap());
        assert_eq!(
            bob_pending, before,
            "Bob's pending text moved Alice's scores"
        );
        index().await.unwrap();

        let after = scores(store.search(&alice, "okapi zebra", 10).await.unwrap());
        assert_eq!(after, before, "Bob's text moved Alice's scores");
        assert_eq!(store.search(&bob, "zebra", 10).await.unwrap().len(), 0);
    }

    /// Many matching messages are mapped to their conversations by a scan
    /// of the user's index entries rather than one by one: the same scores.
    #[tokio::test]
    async fn many_matching_messages_score_as_few_do() {
        let (_dir, store) = store();
        let (alice, bob) = (UserId::new(), UserId::new());
        let (few, many, bobs) = (
            ConversationId::new(),
            ConversationId::new(),
            ConversationId::new(),
        );
        for (user, id, text, n) in [
            (&alice, &few, "ibis ibis", 100),
            (&alice, &many, "ibis", 250),
            (&bob, &bobs, "ibis", 300),
        ] {
            store.create(user, id).await.unwrap();
            let messages = (0..n).map(|_| msg(Role::User, text)).collect();
            store.append(user, id, messages).await.unwrap();
        }
        let scores = |hits: Vec<SearchHit>| {
            hits.into_iter()
                .map(|h| (h.meta.conversation_id, h.score))
                .collect::<Vec<_>>()
        };
        let expected = vec![(many.clone(), 250.0), (few.clone(), 200.0)];
        assert_eq!(
            scores(store.search(&alice, "ibis", 10).await.unwrap()),
            expected
        );
        store
            .db
            .call(|conn| index_pending(conn).map_err(backend))
            .await
            .unwrap();
        assert_eq!(
            scores(store.search(&alice, "ibis", 10).await.unwrap()),
            expected
        );
        assert_eq!(
            scores(store.search(&alice, "ibis", 1).await.unwrap()),
            expected[..1]
        );
    }

    /// A search reads on a connection of its own: it answers while another
    /// connection (another instance, `migrate`) holds the write lock, which
    /// on the database thread it waited for and then failed.
    #[tokio::test]
    async fn a_search_answers_while_the_write_lock_is_held_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let store = crate::store::sqlite::SqliteStore::new(SqliteDb::open(&path).unwrap());
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        store
            .append(&user, &id, vec![msg(Role::User, "lemurs of madagascar")])
            .await
            .unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();

        let hits = store.search(&user, "lemurs", 10).await.unwrap();

        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].meta.conversation_id, id);
        other.execute_batch("COMMIT").unwrap();
    }

    /// A search does not queue behind the database thread: here that
    /// thread is stuck in a call until the search has answered.
    #[tokio::test]
    async fn a_search_answers_while_the_database_thread_is_busy() {
        let (_dir, store) = store();
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        store
            .append(&user, &id, vec![msg(Role::User, "narwhal tusks")])
            .await
            .unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let db = store.db.clone();
        let busy = tokio::spawn(async move {
            db.call(move |_| {
                let _ = released.recv();
                Ok(())
            })
            .await
        });

        // Bounded, so a search stuck behind the call fails instead of hanging.
        let hits = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            store.search(&user, "narwhal", 10),
        )
        .await
        .expect("the search waited for the database thread")
        .unwrap();

        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].meta.conversation_id, id);
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
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
        assert_eq!(
            pending_after(&store, std::time::Duration::from_secs(5)).await,
            0,
            "nothing indexed the new message"
        );
        let hits = store.search(&user, "quokka", 10).await.unwrap();
        assert_eq!(hits.len(), 1);
        let integrity: String = store
            .db
            .call(|conn| {
                conn.execute(
                    "INSERT INTO search_fts (search_fts, rank) VALUES ('integrity-check', 1)",
                    [],
                )
                .map_err(backend)?;
                Ok("ok".to_string())
            })
            .await
            .unwrap();
        assert_eq!(integrity, "ok");
    }

    /// Messages not yet in the index, once none are or `within` passed.
    async fn pending_after(store: &super::super::SqliteStore, within: std::time::Duration) -> i64 {
        let deadline = std::time::Instant::now() + within;
        loop {
            let pending: i64 = store
                .db
                .call(|conn| {
                    conn.query_row(
                        "SELECT COUNT(*) FROM messages \
                         WHERE indexed = 0 OR (indexed = 2 AND id > (SELECT mark FROM search_state))",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(backend)
                })
                .await
                .unwrap();
            if pending == 0 || std::time::Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// More messages than a slice: once the thread is behind, slices follow
    /// each other, not one a second (that would take 4 s for these).
    #[tokio::test]
    async fn a_backlog_longer_than_a_slice_is_indexed_without_waiting_a_second_per_slice() {
        use super::super::index::SLICE;
        let (_dir, store) = store();
        let user = UserId::new();
        let id = ConversationId::new();
        store.create(&user, &id).await.unwrap();
        let messages = (0..3 * SLICE + 5)
            .map(|i| msg(Role::User, &format!("capybara number{i}")))
            .collect();
        store.append(&user, &id, messages).await.unwrap();
        // The first slice runs a second after the store opened.
        assert_eq!(
            pending_after(&store, std::time::Duration::from_secs(3)).await,
            0,
            "a backlog of three slices and more was not indexed within 3 s"
        );
        let hits = store.search(&user, "number304", 10).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].meta.conversation_id, id);
    }

    /// Rows, the mark and FTS5's own check, read on the database thread.
    async fn index_state(store: &super::super::SqliteStore) -> (i64, i64, i64, i64) {
        store
            .db
            .call(|conn| {
                conn.execute(
                    "INSERT INTO search_fts (search_fts, rank) VALUES ('integrity-check', 1)",
                    [],
                )
                .map_err(backend)?;
                conn.query_row(
                    "SELECT (SELECT mark FROM search_state), \
                            (SELECT coalesce(max(id), 0) FROM messages), \
                            (SELECT COUNT(*) FROM messages WHERE indexed = 0), \
                            (SELECT COUNT(*) FROM search_vocab)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(backend)
            })
            .await
            .unwrap()
    }

    /// New messages are indexed by moving the mark, with no flag written;
    /// deleting the newest indexed rows lowers the mark, so that the row id
    /// the next message reuses is indexed (and found once), not taken as
    /// indexed already.
    #[tokio::test]
    async fn the_mark_goes_down_with_the_newest_rows_and_a_reused_id_is_indexed() {
        let (_dir, store) = store();
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        store
            .append(
                &user,
                &id,
                vec![
                    msg(Role::User, "heron one"),
                    msg(Role::Assistant, "heron two"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(index_now(&store).await, 2);
        let (mark, max, flagged, _) = index_state(&store).await;
        assert_eq!(
            (mark, max, flagged),
            (max, 2, 0),
            "indexed by the mark, no flag written"
        );

        // The newest row goes: the mark follows it down.
        let gone = store
            .delete_last_message(&user, &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gone.content.as_ref(), "heron two");
        let (mark, max, _, _) = index_state(&store).await;
        assert_eq!((mark, max), (1, 1));

        // The next message gets the freed row id, above the mark: pending,
        // found by the pending scan, then indexed once.
        store
            .append(&user, &id, vec![msg(Role::Assistant, "heron heron")])
            .await
            .unwrap();
        let (mark, max, _, _) = index_state(&store).await;
        assert_eq!((mark, max), (1, 2), "the id was reused, above the mark");
        let score = |hits: Vec<SearchHit>| hits.iter().map(|h| h.score).collect::<Vec<_>>();
        assert_eq!(
            score(store.search(&user, "heron", 10).await.unwrap()),
            [3.0]
        );
        assert_eq!(index_now(&store).await, 1);
        assert_eq!(
            score(store.search(&user, "heron", 10).await.unwrap()),
            [3.0]
        );
        assert_eq!(index_now(&store).await, 0, "nothing left to index");

        // A row in the middle goes: the mark stays, and the index drops it.
        store
            .append(&user, &id, vec![msg(Role::User, "egret")])
            .await
            .unwrap();
        assert_eq!(index_now(&store).await, 1);
        store.delete(&user, &id).await.unwrap();
        let (mark, max, flagged, vocab) = index_state(&store).await;
        assert_eq!(
            (mark, max, flagged, vocab),
            (0, 0, 0, 0),
            "every row and posting gone"
        );
    }

    /// A row an older version wrote above the mark (flag 0) is indexed once:
    /// its flag is cleared as the mark passes it.
    #[tokio::test]
    async fn a_flagged_row_above_the_mark_is_indexed_once() {
        let (_dir, store) = store();
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        store
            .append(&user, &id, vec![msg(Role::User, "ibis")])
            .await
            .unwrap();
        store
            .db
            .call(|conn| {
                conn.execute("UPDATE messages SET indexed = 0", [])
                    .map_err(backend)
            })
            .await
            .unwrap();
        let indexed = index_now(&store).await;
        assert_eq!(indexed, 1);
        let (mark, max, flagged, _) = index_state(&store).await;
        assert_eq!((mark, max, flagged), (1, 1, 0));
        let again = index_now(&store).await;
        assert_eq!(again, 0);
        let hits = store.search(&user, "ibis", 10).await.unwrap();
        assert_eq!(hits.iter().map(|h| h.score).collect::<Vec<_>>(), [1.0]);
    }

    /// A message an older version's indexer added (flag 1, the mark left
    /// below it: instances of both versions on one file) is neither indexed
    /// again nor counted twice by a search.
    #[tokio::test]
    async fn a_row_an_older_indexer_added_above_the_mark_is_not_indexed_again() {
        let (_dir, store) = store();
        let (user, id) = (UserId::new(), ConversationId::new());
        store.create(&user, &id).await.unwrap();
        store
            .append(&user, &id, vec![msg(Role::User, "stork")])
            .await
            .unwrap();
        let owner = user.to_string();
        store
            .db
            .call(move |conn| {
                // What an older version's indexer does: the row into the
                // index, its flag to 1, the mark left where it was.
                conn.execute(
                    "INSERT INTO search_users (user_id) VALUES (?1) ON CONFLICT DO NOTHING",
                    [&owner],
                )
                .map_err(backend)?;
                let key: i64 = conn
                    .query_row(
                        "SELECT key FROM search_users WHERE user_id = ?1",
                        [&owner],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                conn.execute(
                    "INSERT INTO search_fts (rowid, terms) SELECT id, ?1 FROM messages",
                    [super::super::index::user_term(key, "stork")],
                )
                .map_err(backend)?;
                conn.execute("UPDATE messages SET indexed = 1", [])
                    .map_err(backend)
            })
            .await
            .unwrap();
        let score = |hits: Vec<SearchHit>| hits.iter().map(|h| h.score).collect::<Vec<_>>();
        assert_eq!(
            score(store.search(&user, "stork", 10).await.unwrap()),
            [1.0]
        );
        let passed = index_now(&store).await;
        assert_eq!(passed, 1, "the mark moves past it");
        let (mark, max, flagged, _) = index_state(&store).await;
        assert_eq!((mark, max, flagged), (1, 1, 0));
        assert_eq!(
            score(store.search(&user, "stork", 10).await.unwrap()),
            [1.0]
        );
        // Deleted, it leaves the index (FTS5's check passes, no posting left).
        store.delete(&user, &id).await.unwrap();
        let (_, _, _, vocab) = index_state(&store).await;
        assert_eq!(vocab, 0);
    }
}
