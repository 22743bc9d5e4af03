//! Metering and daily quotas: what a user spent on the upstream model today
//! (UTC), whether they may spend more, and the metered model calls.
//!
//! What counts: every upstream call made for a user, chat turns, summaries
//! of older turns, titles and upload analyses, by the upstream's `usage`
//! when it reports one, else counted here with the server's tokenizer (the
//! prompt as sent, the reply text received). A call the upstream refused
//! (an HTTP error after retries) counts nothing; a reply that was stopped,
//! cut off or failed mid-stream counts its prompt and the text that had
//! arrived (the upstream reports no usage then); a summary or a streamed
//! request abandoned by a stop before the upstream answered counts nothing
//! (nothing came back to count). A user is refused once
//! today's total reaches their quota; the turn that crosses it finishes.

use chrono::{DateTime, Days, NaiveDate, Utc};

use super::chat::Chat;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::llm::{ChatRequest, Completion, LlmError, Messages, Usage};
use crate::store::usage::DayUsage;

/// A user's day, as `GET /usage` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageToday {
    pub date: NaiveDate,
    pub used: DayUsage,
    /// Tokens per day; 0: no quota.
    pub quota: u64,
    pub resets_at: DateTime<Utc>,
}

/// Today, in UTC.
pub fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// The midnight (UTC) that ends `day`, when its quota starts again.
pub fn resets_at(day: NaiveDate) -> DateTime<Utc> {
    day.checked_add_days(Days::new(1))
        .unwrap_or(day)
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc()
}

/// The quota that applies: the user's own, else the server's; 0: none.
pub fn effective_quota(default: u64, own: Option<u64>) -> u64 {
    own.unwrap_or(default)
}

impl From<Usage> for DayUsage {
    fn from(usage: Usage) -> Self {
        DayUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        }
    }
}

impl Chat {
    /// What `user` spent today and their quota.
    pub async fn usage_today(&self, user: &UserId) -> Result<UsageToday, ApiError> {
        let date = today();
        let standing = self.usage.standing(user, date).await?;
        Ok(UsageToday {
            date,
            used: standing.used,
            quota: effective_quota(self.settings.quota_tokens_per_day, standing.quota_override),
            resets_at: resets_at(date),
        })
    }

    /// 429 `quota_exceeded` when `user` has used up today's quota; made
    /// before any upstream call, so a refused request costs nothing.
    /// `account`: the user is an account (a signed-in session or an access
    /// token). Only an account can have a quota of its own (an admin sets
    /// one only for an account), so when the server sets none
    /// (`QUOTA_TOKENS_PER_DAY=0`) anyone else has nothing to check, and
    /// nothing is read from the store for them.
    pub async fn check_quota(&self, user: &UserId, account: bool) -> Result<(), ApiError> {
        if !account && self.settings.quota_tokens_per_day == 0 {
            return Ok(());
        }
        let today = self.usage_today(user).await?;
        if today.quota > 0 && today.used.total() >= today.quota {
            tracing::info!(user = %user, used = today.used.total(), quota = today.quota, "refused: daily token quota used up");
            return Err(ApiError::QuotaExceeded {
                quota: today.quota,
                resets_at: today.resets_at,
            });
        }
        Ok(())
    }

    /// Adds `spent` to the user's day. A store failure is logged, not
    /// returned: the reply was made, and refusing it now helps nobody.
    pub async fn record_usage(&self, user: &UserId, spent: DayUsage) {
        if spent == DayUsage::default() {
            return;
        }
        if let Err(err) = self.usage.add_usage(user, today(), spent).await {
            tracing::warn!(error = %err, user = %user, prompt_tokens = spent.prompt_tokens, completion_tokens = spent.completion_tokens, "could not record token usage");
        }
    }

    /// Tokens a prompt costs by the server's own count.
    pub fn prompt_cost(&self, messages: &Messages) -> u64 {
        crate::context::prompt_cost(messages.iter().map(|m| self.tokens.count(&m.content)))
    }

    /// What a request the upstream answered spent: its `usage` when it
    /// reported one, else the server's count (`counted_prompt`, from
    /// [`Chat::prompt_cost`], and the reply text that arrived).
    pub fn spent(&self, usage: Option<Usage>, counted_prompt: u64, reply: &str) -> DayUsage {
        match usage {
            Some(usage) => usage.into(),
            None => DayUsage {
                prompt_tokens: counted_prompt,
                completion_tokens: u64::from(self.tokens.count(reply)),
            },
        }
    }

    /// A whole reply for `user` (summaries, titles, upload analyses), its
    /// tokens added to the user's day.
    pub async fn complete_metered(
        &self,
        user: &UserId,
        request: ChatRequest,
    ) -> Result<String, LlmError> {
        self.complete_spent_with(self.llm.as_ref(), user, request)
            .await
            .map(|(text, _)| text)
    }

    /// As [`Chat::complete_metered`], also returning what the reply spent
    /// (the OpenAI-compatible API reports it to the client).
    pub async fn complete_spent(
        &self,
        user: &UserId,
        request: ChatRequest,
    ) -> Result<(String, DayUsage), LlmError> {
        self.complete_spent_with(self.llm.as_ref(), user, request)
            .await
    }

    /// [`complete_metered`](Self::complete_metered) with a given model (a
    /// conversation's own, for its summaries).
    pub async fn complete_metered_with(
        &self,
        llm: &dyn crate::llm::ChatModel,
        user: &UserId,
        request: ChatRequest,
    ) -> Result<String, LlmError> {
        self.complete_spent_with(llm, user, request)
            .await
            .map(|(text, _)| text)
    }

    /// [`complete_spent`](Self::complete_spent) with a given model.
    pub async fn complete_spent_with(
        &self,
        llm: &dyn crate::llm::ChatModel,
        user: &UserId,
        request: ChatRequest,
    ) -> Result<(String, DayUsage), LlmError> {
        let counted_prompt = self.prompt_cost(&request.messages);
        self.complete_counted(llm, user, request, counted_prompt)
            .await
            .map(|(completion, spent)| (completion.text, spent))
    }

    /// [`complete_spent_with`](Self::complete_spent_with) for a prompt
    /// already counted (`counted_prompt`, as [`Chat::prompt_cost`] counts).
    /// With no `usage` in the completion, the spent `completion_tokens` are
    /// the server's count of its text.
    pub async fn complete_counted(
        &self,
        llm: &dyn crate::llm::ChatModel,
        user: &UserId,
        request: ChatRequest,
        counted_prompt: u64,
    ) -> Result<(Completion, DayUsage), LlmError> {
        let completion = llm.complete(request).await?;
        let spent = self.spent(completion.usage, counted_prompt, &completion.text);
        self.record_usage(user, spent).await;
        Ok((completion, spent))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::store::usage::{Standing, UsageRecord, UsageStore, UserUsage};
    use crate::store::StoreResult;

    /// The real usage store, its `standing` reads counted.
    struct CountedReads {
        store: Arc<dyn UsageStore>,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl UsageStore for CountedReads {
        async fn add_usage(
            &self,
            user: &UserId,
            day: NaiveDate,
            spent: DayUsage,
        ) -> StoreResult<()> {
            self.store.add_usage(user, day, spent).await
        }
        async fn standing(&self, user: &UserId, day: NaiveDate) -> StoreResult<Standing> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.store.standing(user, day).await
        }
        async fn set_quota(&self, user: &UserId, tokens_per_day: Option<u64>) -> StoreResult<()> {
            self.store.set_quota(user, tokens_per_day).await
        }
        async fn usage_on(&self, day: NaiveDate, limit: u32) -> StoreResult<Vec<UserUsage>> {
            self.store.usage_on(day, limit).await
        }
        async fn usage_for_copy(&self) -> StoreResult<Vec<UsageRecord>> {
            self.store.usage_for_copy().await
        }
        async fn quotas_for_copy(&self) -> StoreResult<Vec<(UserId, u64)>> {
            self.store.quotas_for_copy().await
        }
        async fn import_usage(&self, record: &UsageRecord) -> StoreResult<bool> {
            self.store.import_usage(record).await
        }
        async fn import_quota(&self, user: &UserId, tokens_per_day: u64) -> StoreResult<bool> {
            self.store.import_quota(user, tokens_per_day).await
        }
    }

    #[tokio::test]
    async fn without_a_server_quota_only_an_accounts_own_quota_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut chat, _) = super::super::testing::chat_in(&dir).await;
        assert_eq!(chat.settings.quota_tokens_per_day, 0);
        let counted = Arc::new(CountedReads {
            store: chat.usage.clone(),
            reads: AtomicUsize::new(0),
        });
        chat.usage = counted.clone();
        let account = UserId::new();
        chat.usage.set_quota(&account, Some(10)).await.unwrap();
        chat.record_usage(
            &account,
            DayUsage {
                prompt_tokens: 8,
                completion_tokens: 4,
            },
        )
        .await;

        // An account is held to its own quota (read from the store).
        let refused = chat.check_quota(&account, true).await.unwrap_err();
        assert!(
            matches!(refused, ApiError::QuotaExceeded { quota: 10, .. }),
            "{refused:?}"
        );
        assert_eq!(counted.reads.load(Ordering::SeqCst), 1);

        // Anyone else has none: nothing is read.
        chat.check_quota(&UserId::new(), false).await.unwrap();
        assert_eq!(counted.reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_day_resets_at_the_next_utc_midnight() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        assert_eq!(
            resets_at(day).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "2027-01-01T00:00:00Z"
        );
        let leap = NaiveDate::from_ymd_opt(2028, 2, 28).unwrap();
        assert_eq!(resets_at(leap).date_naive().to_string(), "2028-02-29");
    }

    #[test]
    fn a_users_own_quota_wins_over_the_default_even_zero() {
        assert_eq!(effective_quota(1000, None), 1000);
        assert_eq!(effective_quota(1000, Some(50)), 50);
        assert_eq!(effective_quota(0, Some(50)), 50);
        // 0 as the user's own quota: no quota for them.
        assert_eq!(effective_quota(1000, Some(0)), 0);
    }
}
