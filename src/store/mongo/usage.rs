//! Token metering in MongoDB: [`UsageStore`] for [`MongoStore`]. One
//! document per user and UTC day in `usage` (`{_id: "<user_id>/<day>",
//! user_id, day, prompt_tokens, completion_tokens, total_tokens}`), grown
//! by an upserting `$inc`, which the server applies atomically whatever the
//! number of instances; one document per user with a quota in `quotas`
//! (`{_id: <user_id>, tokens_per_day}`).

use async_trait::async_trait;
use chrono::NaiveDate;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};

use super::base::{code, command_code, MongoStore};
use crate::domain::UserId;
use crate::store::usage::{day_key, DayUsage, Standing, UsageStore, UserUsage};
use crate::store::StoreResult;

fn usage_id(user: &UserId, day: &str) -> String {
    format!("{}/{day}", user.as_ref())
}

/// BSON integers are signed: counts past `i64::MAX` stay there.
fn to_bson(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// A count as stored (an `$inc` keeps Int64; a hand-written document may
/// hold Int32 or a double); anything else reads as 0.
fn count(d: &Document, key: &str) -> u64 {
    match d.get(key) {
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Double(n)) if n.is_finite() && *n >= 0.0 => *n as u64,
        _ => 0,
    }
}

fn day_usage(d: &Document) -> DayUsage {
    DayUsage {
        prompt_tokens: count(d, "prompt_tokens"),
        completion_tokens: count(d, "completion_tokens"),
    }
}

fn quota_of(d: &Document) -> Option<u64> {
    d.contains_key("tokens_per_day")
        .then(|| count(d, "tokens_per_day"))
}

#[async_trait]
impl UsageStore for MongoStore {
    async fn add_usage(&self, user: &UserId, day: NaiveDate, spent: DayUsage) -> StoreResult<()> {
        let day = day_key(day);
        let filter = doc! {"_id": usage_id(user, &day)};
        let update = doc! {
            "$inc": {
                "prompt_tokens": to_bson(spent.prompt_tokens),
                "completion_tokens": to_bson(spent.completion_tokens),
                "total_tokens": to_bson(spent.total()),
            },
            "$setOnInsert": {"user_id": user.as_ref(), "day": &day},
        };
        // Two upserts of a new day at once may both try the insert; the
        // loser fails on the `_id` and, run again, finds the document and
        // increments it.
        for attempt in 0..3 {
            match self
                .usage
                .update_one(filter.clone(), update.clone())
                .upsert(true)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 2 && command_code(&e) == Some(code::DUPLICATE_KEY) => {}
                Err(e) => return Err(self.err(e)),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn standing(&self, user: &UserId, day: NaiveDate) -> StoreResult<Standing> {
        let id = usage_id(user, &day_key(day));
        let (used, quota) = tokio::join!(
            self.usage.find_one(doc! {"_id": id}),
            self.quotas.find_one(doc! {"_id": user.as_ref()}),
        );
        let used = used.map_err(|e| self.err(e))?;
        let quota = quota.map_err(|e| self.err(e))?;
        Ok(Standing {
            used: used.as_ref().map(day_usage).unwrap_or_default(),
            quota_override: quota.as_ref().and_then(quota_of),
        })
    }

    async fn set_quota(&self, user: &UserId, tokens_per_day: Option<u64>) -> StoreResult<()> {
        let filter = doc! {"_id": user.as_ref()};
        match tokens_per_day {
            Some(quota) => {
                let update = doc! {"$set": {"tokens_per_day": to_bson(quota)}};
                // A replaced quota is an update, so the race of two first
                // settings is only a duplicate key, which one retry settles.
                for attempt in 0..2 {
                    match self
                        .quotas
                        .update_one(filter.clone(), update.clone())
                        .upsert(true)
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(e) if attempt == 0 && command_code(&e) == Some(code::DUPLICATE_KEY) => {
                        }
                        Err(e) => return Err(self.err(e)),
                    }
                }
                Ok(())
            }
            None => self
                .quotas
                .delete_one(filter)
                .await
                .map(|_| ())
                .map_err(|e| self.err(e)),
        }
    }

    async fn usage_on(&self, day: NaiveDate, limit: u32) -> StoreResult<Vec<UserUsage>> {
        let mut cursor = self
            .usage
            .find(doc! {"day": day_key(day)})
            .sort(doc! {"total_tokens": -1, "user_id": 1})
            .limit(i64::from(limit))
            .await
            .map_err(|e| self.err(e))?;
        let mut rows = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(|e| self.err(e))? {
            let Ok(user) = d.get_str("user_id") else {
                tracing::warn!("skipping a usage document without a string user_id");
                continue;
            };
            rows.push(UserUsage {
                user_id: UserId::from_stored(user.to_string()),
                used: day_usage(&d),
                quota_override: None,
            });
        }
        if rows.is_empty() {
            return Ok(rows);
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.user_id.as_ref()).collect();
        let mut quotas = self
            .quotas
            .find(doc! {"_id": {"$in": ids}})
            .await
            .map_err(|e| self.err(e))?;
        let mut found = std::collections::HashMap::new();
        while let Some(d) = quotas.try_next().await.map_err(|e| self.err(e))? {
            if let (Ok(user), Some(quota)) = (d.get_str("_id"), quota_of(&d)) {
                found.insert(user.to_string(), quota);
            }
        }
        for row in &mut rows {
            row.quota_override = found.get(row.user_id.as_ref()).copied();
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_any_numeric_type_and_refuse_the_rest() {
        let d = doc! {
            "prompt_tokens": 7_i64, "completion_tokens": 5_i32, "a": 2.0, "b": -3_i64, "c": "9",
        };
        assert_eq!(
            day_usage(&d),
            DayUsage {
                prompt_tokens: 7,
                completion_tokens: 5
            }
        );
        assert_eq!(count(&d, "a"), 2);
        assert_eq!(count(&d, "b"), 0);
        assert_eq!(count(&d, "c"), 0);
        assert_eq!(quota_of(&doc! {"tokens_per_day": 100_i64}), Some(100));
        assert_eq!(quota_of(&doc! {}), None);
    }
}
