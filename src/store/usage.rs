//! Token metering: the prompt and completion tokens each user spent on the
//! upstream model per UTC day, and the per-user daily quotas an admin sets.
//! One row (SQLite) or document (MongoDB) per user and day, grown by atomic
//! increments, so every server instance sharing the store sees one total.
//! What counts and when a turn is refused is the turn's business
//! (`turn::Chat`), not this layer's.

use async_trait::async_trait;
use chrono::NaiveDate;

use super::StoreResult;
use crate::domain::UserId;

/// Tokens spent on one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl DayUsage {
    /// Prompt and completion tokens together (what a quota limits).
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// A user's day: what they spent, and their own quota when an admin set one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    pub used: DayUsage,
    /// `None`: the server's default (`QUOTA_TOKENS_PER_DAY`) applies.
    pub quota_override: Option<u64>,
}

/// One line of the admin's view of a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUsage {
    pub user_id: UserId,
    pub used: DayUsage,
    pub quota_override: Option<u64>,
}

/// The day as it is stored: `YYYY-MM-DD`.
pub fn day_key(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

/// Storage of token usage and quotas, scoped by user.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Adds tokens to the user's `day`, creating the day's record on first
    /// use; one atomic step, safe from any number of instances at once.
    async fn add_usage(&self, user: &UserId, day: NaiveDate, spent: DayUsage) -> StoreResult<()>;
    /// What the user spent on `day` (zero when nothing) and their quota
    /// override.
    async fn standing(&self, user: &UserId, day: NaiveDate) -> StoreResult<Standing>;
    /// Sets the user's own daily quota; `None` goes back to the default.
    async fn set_quota(&self, user: &UserId, tokens_per_day: Option<u64>) -> StoreResult<()>;
    /// Every user who spent tokens on `day`, most tokens first (then by
    /// user id), at most `limit` of them.
    async fn usage_on(&self, day: NaiveDate, limit: u32) -> StoreResult<Vec<UserUsage>>;
}
