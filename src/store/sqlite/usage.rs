//! Token metering in SQLite: [`UsageStore`] for [`SqliteStore`] over the
//! `usage` table (one row per user and day, grown by an upsert that adds in
//! place, so two processes sharing the file never lose an increment) and
//! the `quotas` table (see `schema`).

use async_trait::async_trait;
use chrono::NaiveDate;
use rusqlite::params;

use super::exec::{backend, exec};
use super::SqliteStore;
use crate::domain::UserId;
use crate::store::usage::{day_key, DayUsage, Standing, UsageRecord, UsageStore, UserUsage};
use crate::store::StoreResult;

/// SQLite integers are signed: counts past `i64::MAX` stay there.
fn to_sql(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn from_sql(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}

/// The day's usage and the quota of user ?1 on day ?2, each NULL when
/// absent (one row always).
pub(super) const STANDING: &str = "SELECT u.prompt_tokens, u.completion_tokens, q.tokens_per_day \
     FROM (SELECT ?1 AS user_id, ?2 AS day) k \
     LEFT JOIN usage u ON u.user_id = k.user_id AND u.day = k.day \
     LEFT JOIN quotas q ON q.user_id = k.user_id";

#[async_trait]
impl UsageStore for SqliteStore {
    async fn add_usage(&self, user: &UserId, day: NaiveDate, spent: DayUsage) -> StoreResult<()> {
        let (user, day) = (user.to_string(), day_key(day));
        self.db
            .call(move |conn| {
                exec(
                    conn,
                    "INSERT INTO usage (user_id, day, prompt_tokens, completion_tokens) \
                     VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (user_id, day) DO UPDATE SET \
                     prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
                     completion_tokens = completion_tokens + excluded.completion_tokens",
                    params![
                        user,
                        day,
                        to_sql(spent.prompt_tokens),
                        to_sql(spent.completion_tokens)
                    ],
                )
                .map(|_| ())
            })
            .await
    }

    async fn standing(&self, user: &UserId, day: NaiveDate) -> StoreResult<Standing> {
        let (user, day) = (user.to_string(), day_key(day));
        // On the database thread, not a read connection: its page cache
        // stays warm (a read connection drops its whole cache whenever the
        // file changed since its last read, which under load is every time),
        // and in the thread's batch the read costs no transaction of its own.
        // One statement: the day's row and the quota, each when present.
        self.db
            .call(move |conn| {
                conn.prepare_cached(STANDING)
                    .and_then(|mut stmt| {
                        stmt.query_row(params![user, day], |row| {
                            let count = |i| row.get::<_, Option<i64>>(i).map(|n| n.map(from_sql));
                            Ok(Standing {
                                used: DayUsage {
                                    prompt_tokens: count(0)?.unwrap_or(0),
                                    completion_tokens: count(1)?.unwrap_or(0),
                                },
                                quota_override: count(2)?,
                            })
                        })
                    })
                    .map_err(backend)
            })
            .await
    }

    async fn set_quota(&self, user: &UserId, tokens_per_day: Option<u64>) -> StoreResult<()> {
        let user = user.to_string();
        self.db
            .call(move |conn| {
                match tokens_per_day {
                    Some(quota) => exec(
                        conn,
                        "INSERT INTO quotas (user_id, tokens_per_day) VALUES (?1, ?2) \
                         ON CONFLICT (user_id) DO UPDATE SET tokens_per_day = excluded.tokens_per_day",
                        params![user, to_sql(quota)],
                    ),
                    None => exec(conn, "DELETE FROM quotas WHERE user_id = ?1", params![user]),
                }
                .map(|_| ())
            })
            .await
    }

    async fn usage_on(&self, day: NaiveDate, limit: u32) -> StoreResult<Vec<UserUsage>> {
        let day = day_key(day);
        self.db
            .call(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT u.user_id, u.prompt_tokens, u.completion_tokens, q.tokens_per_day \
                         FROM usage u LEFT JOIN quotas q ON q.user_id = u.user_id \
                         WHERE u.day = ?1 \
                         ORDER BY u.prompt_tokens + u.completion_tokens DESC, u.user_id \
                         LIMIT ?2",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![day, i64::from(limit)], |row| {
                        Ok(UserUsage {
                            user_id: UserId::from_stored(row.get(0)?),
                            used: DayUsage {
                                prompt_tokens: from_sql(row.get(1)?),
                                completion_tokens: from_sql(row.get(2)?),
                            },
                            quota_override: row.get::<_, Option<i64>>(3)?.map(from_sql),
                        })
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn usage_for_copy(&self) -> StoreResult<Vec<UsageRecord>> {
        self.db
            .call(|conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT user_id, day, prompt_tokens, completion_tokens FROM usage \
                         ORDER BY user_id, day",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, i64>(3)?,
                        ))
                    })
                    .map_err(backend)?;
                let mut records = Vec::new();
                for row in rows {
                    let (user, day, prompt, completion) = row.map_err(backend)?;
                    // A day that does not parse was not written by this server.
                    let Ok(day) = NaiveDate::parse_from_str(&day, "%Y-%m-%d") else {
                        continue;
                    };
                    records.push(UsageRecord {
                        user_id: UserId::from_stored(user),
                        day,
                        used: DayUsage {
                            prompt_tokens: from_sql(prompt),
                            completion_tokens: from_sql(completion),
                        },
                    });
                }
                Ok(records)
            })
            .await
    }

    async fn quotas_for_copy(&self) -> StoreResult<Vec<(UserId, u64)>> {
        self.db
            .call(|conn| {
                let mut stmt = conn
                    .prepare("SELECT user_id, tokens_per_day FROM quotas ORDER BY user_id")
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok((
                            UserId::from_stored(row.get::<_, String>(0)?),
                            from_sql(row.get(1)?),
                        ))
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn import_usage(&self, record: &UsageRecord) -> StoreResult<bool> {
        let record = record.clone();
        self.db
            .call(move |conn| {
                exec(
                    conn,
                    "INSERT OR IGNORE INTO usage (user_id, day, prompt_tokens, completion_tokens) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        record.user_id.as_ref(),
                        day_key(record.day),
                        to_sql(record.used.prompt_tokens),
                        to_sql(record.used.completion_tokens)
                    ],
                )
                .map(|inserted| inserted > 0)
            })
            .await
    }

    async fn import_quota(&self, user: &UserId, tokens_per_day: u64) -> StoreResult<bool> {
        let user = user.to_string();
        self.db
            .call(move |conn| {
                exec(
                    conn,
                    "INSERT OR IGNORE INTO quotas (user_id, tokens_per_day) VALUES (?1, ?2)",
                    params![user, to_sql(tokens_per_day)],
                )
                .map(|inserted| inserted > 0)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::store;
    use super::*;

    /// The one read of a standing answers the day's row and the quota
    /// each whether or not the other is there.
    #[tokio::test]
    async fn a_standing_reads_the_day_and_the_quota_each_when_present() {
        let (_dir, store) = store();
        let (ann, bob) = (UserId::new(), UserId::new());
        let day = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        let spent = DayUsage {
            prompt_tokens: 12,
            completion_tokens: 30,
        };
        store.add_usage(&ann, day, spent).await.unwrap();
        store.set_quota(&ann, Some(500)).await.unwrap();
        store.set_quota(&bob, Some(7)).await.unwrap();

        let both = store.standing(&ann, day).await.unwrap();
        let other_day = store.standing(&ann, day.succ_opt().unwrap()).await.unwrap();
        let quota_only = store.standing(&bob, day).await.unwrap();
        let nothing = store.standing(&UserId::new(), day).await.unwrap();

        assert_eq!((both.used, both.quota_override), (spent, Some(500)));
        assert_eq!(
            (other_day.used, other_day.quota_override),
            (DayUsage::default(), Some(500))
        );
        assert_eq!(
            (quota_only.used, quota_only.quota_override),
            (DayUsage::default(), Some(7))
        );
        assert_eq!(
            (nothing.used, nothing.quota_override),
            (DayUsage::default(), None)
        );
    }
}
