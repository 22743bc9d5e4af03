//! Token usage and daily quotas: `GET /usage` (the caller's day, for every
//! kind of user, anonymous included), and for admins `PUT
//! /admin/users/{user_id}/quota` (a user's own quota, or back to
//! `QUOTA_TOKENS_PER_DAY`) and `GET /admin/usage` (everyone's day). The
//! metering and the refusals themselves are `turn::Chat`'s.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::extract::{AdminUser, ApiJson, SessionUser};
use crate::config::MAX_QUOTA_TOKENS_PER_DAY;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::state::AppState;
use crate::turn::{resets_at, today, UsageToday};

/// Users `GET /admin/usage` lists when no `limit` is given, and at most.
const DEFAULT_ADMIN_LIST: u32 = 100;
const MAX_ADMIN_LIST: u32 = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/usage", get(my_usage))
        .route("/admin/users/{user_id}/quota", put(set_quota))
        .route("/admin/usage", get(everyones_usage))
}

fn rfc3339(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `GET /usage`.
#[derive(Debug, Serialize)]
struct UsageView {
    /// `YYYY-MM-DD`, UTC.
    date: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// 0: no quota.
    quota_tokens_per_day: u64,
    resets_at: String,
}

impl From<UsageToday> for UsageView {
    fn from(today: UsageToday) -> Self {
        UsageView {
            date: today.date.to_string(),
            prompt_tokens: today.used.prompt_tokens,
            completion_tokens: today.used.completion_tokens,
            quota_tokens_per_day: today.quota,
            resets_at: rfc3339(&today.resets_at),
        }
    }
}

/// `GET /usage` → the caller's tokens today and their quota.
async fn my_usage(
    State(state): State<AppState>,
    who: SessionUser,
) -> Result<Json<UsageView>, ApiError> {
    Ok(Json(state.chat.usage_today(&who.user).await?.into()))
}

/// `PUT /admin/users/{user_id}/quota` answer.
#[derive(Debug, Serialize)]
struct QuotaView {
    user_id: String,
    /// The user's own quota; `null`: the server's default applies.
    quota_tokens_per_day: Option<u64>,
    /// The quota that applies now (0: none).
    effective_quota_tokens_per_day: u64,
}

/// The new quota from the body: `{"quota_tokens_per_day": n | null}`.
fn quota_from(body: &Value) -> Result<Option<u64>, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "quota_tokens_per_day must be a whole number of tokens from 0 to \
             {MAX_QUOTA_TOKENS_PER_DAY} (0: no quota), or null for the server's default."
        ))
    };
    let Some(value) = body.as_object().and_then(|o| o.get("quota_tokens_per_day")) else {
        return Err(bad());
    };
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_u64() {
            Some(quota) if quota <= MAX_QUOTA_TOKENS_PER_DAY => Ok(Some(quota)),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// `PUT /admin/users/{user_id}/quota {quota_tokens_per_day: n | null}`.
async fn set_quota(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    path: Result<Path<String>, PathRejection>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Json<QuotaView>, ApiError> {
    let user = path
        .ok()
        .and_then(|Path(raw)| UserId::parse(&raw).ok())
        .ok_or_else(|| ApiError::invalid("Invalid user id."))?;
    let ApiJson(body) = body?;
    let quota = quota_from(&body)?;
    if state.accounts.account(&user).await?.is_none() {
        return Err(ApiError::UserNotFound);
    }
    state.chat.usage.set_quota(&user, quota).await?;
    tracing::info!(admin = %admin.user_id, user = %user, quota = ?quota, "daily token quota set");
    Ok(Json(QuotaView {
        user_id: user.to_string(),
        quota_tokens_per_day: quota,
        effective_quota_tokens_per_day: quota.unwrap_or(state.chat.settings.quota_tokens_per_day),
    }))
}

/// `GET /admin/usage?limit=`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ListQuery {
    limit: Option<u32>,
}

/// One user's day in `GET /admin/usage`.
#[derive(Debug, Serialize)]
struct UserUsageView {
    user_id: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// The quota that applies (0: none).
    quota_tokens_per_day: u64,
    /// Whether it is the user's own (set by an admin).
    own_quota: bool,
}

#[derive(Debug, Serialize)]
struct EveryonesUsage {
    date: String,
    resets_at: String,
    default_quota_tokens_per_day: u64,
    users: Vec<UserUsageView>,
}

/// `GET /admin/usage` → every user who spent tokens today, most first.
async fn everyones_usage(
    State(state): State<AppState>,
    _admin: AdminUser,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<EveryonesUsage>, ApiError> {
    let bad_limit = || {
        ApiError::invalid(format!(
            "limit must be a whole number from 1 to {MAX_ADMIN_LIST}."
        ))
    };
    let Ok(Query(query)) = query else {
        return Err(bad_limit());
    };
    let limit = query.limit.unwrap_or(DEFAULT_ADMIN_LIST);
    if !(1..=MAX_ADMIN_LIST).contains(&limit) {
        return Err(bad_limit());
    }
    let date = today();
    let default = state.chat.settings.quota_tokens_per_day;
    let rows = state.chat.usage.usage_on(date, limit).await?;
    Ok(Json(EveryonesUsage {
        date: date.to_string(),
        resets_at: rfc3339(&resets_at(date)),
        default_quota_tokens_per_day: default,
        users: rows
            .into_iter()
            .map(|row| UserUsageView {
                user_id: row.user_id.to_string(),
                prompt_tokens: row.used.prompt_tokens,
                completion_tokens: row.used.completion_tokens,
                quota_tokens_per_day: row.quota_override.unwrap_or(default),
                own_quota: row.quota_override.is_some(),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_quota_is_a_whole_number_in_range_or_null() {
        assert_eq!(
            quota_from(&json!({"quota_tokens_per_day": 5000})).unwrap(),
            Some(5000)
        );
        assert_eq!(
            quota_from(&json!({"quota_tokens_per_day": 0})).unwrap(),
            Some(0)
        );
        assert_eq!(
            quota_from(&json!({"quota_tokens_per_day": null})).unwrap(),
            None
        );
        for bad in [
            json!({}),
            json!([]),
            json!(5),
            json!({"quota_tokens_per_day": -1}),
            json!({"quota_tokens_per_day": 1.5}),
            json!({"quota_tokens_per_day": "100"}),
            json!({"quota_tokens_per_day": true}),
            json!({"quota_tokens_per_day": [1]}),
            json!({"quota_tokens_per_day": MAX_QUOTA_TOKENS_PER_DAY + 1}),
            json!({"quota_tokens_per_day": 1e300}),
        ] {
            assert!(quota_from(&bad).is_err(), "{bad}");
        }
    }
}
