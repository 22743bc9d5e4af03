//! Token metering in SQLite: [`UsageStore`] for [`SqliteStore`] over the
//! `usage` table (one row per user and day, grown by an upsert that adds in
//! place, so two processes sharing the file never lose an increment) and
//! the `quotas` table (see `schema`).

use async_trait::async_trait;
use chrono::NaiveDate;
use rusqlite::{params, OptionalExtension};

use super::exec::{backend, exec};
use super::SqliteStore;
use crate::domain::UserId;
use crate::store::usage::{day_key, DayUsage, Standing, UsageStore, UserUsage};
use crate::store::StoreResult;

/// SQLite integers are signed: counts past `i64::MAX` stay there.
fn to_sql(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn from_sql(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}

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
        self.db
            .call(move |conn| {
                let used = conn
                    .prepare_cached(
                        "SELECT prompt_tokens, completion_tokens FROM usage \
                         WHERE user_id = ?1 AND day = ?2",
                    )
                    .and_then(|mut stmt| {
                        stmt.query_row(params![user, day], |row| {
                            Ok(DayUsage {
                                prompt_tokens: from_sql(row.get(0)?),
                                completion_tokens: from_sql(row.get(1)?),
                            })
                        })
                        .optional()
                    })
                    .map_err(backend)?
                    .unwrap_or_default();
                let quota_override = conn
                    .prepare_cached("SELECT tokens_per_day FROM quotas WHERE user_id = ?1")
                    .and_then(|mut stmt| {
                        stmt.query_row(params![user], |row| row.get::<_, i64>(0))
                            .optional()
                    })
                    .map_err(backend)?
                    .map(from_sql);
                Ok(Standing {
                    used,
                    quota_override,
                })
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
}
