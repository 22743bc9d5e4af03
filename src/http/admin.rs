//! Administration of accounts (`AUTH_MODE=local`, administrators only, see
//! [`AdminUser`]): `GET /admin/users` lists the accounts, `PATCH
//! /admin/users/{user_id}` disables or enables one and gives or takes
//! administrator rights. Disabling signs the account out everywhere (its
//! sessions end, its sockets on every instance are disconnected, its
//! replies stop) and its access tokens stop working. An administrator
//! cannot disable or demote themself, so the server always keeps one.
//!
//! Quotas and usage are elsewhere; this file only manages accounts.

use std::collections::HashMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::Value;

use super::conversations::query_number;
use super::extract::{AdminUser, ApiJson};
use crate::domain::UserId;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::accounts::Account;
use crate::turn::stop_everywhere;
use crate::turn::{effective_quota, today};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(admin_page))
        .route("/admin/users", get(list_users))
        .route("/admin/users/{user_id}", axum::routing::patch(update_user))
}

#[derive(Template, WebTemplate)]
#[template(path = "admin.html")]
struct AdminPage {
    asset_version: String,
}

/// `GET /admin`: the administration page (its script reads the routes
/// below). Signed out: to the chat page, which asks to sign in; signed in
/// without administrator rights: 403 with the app's error body.
async fn admin_page(
    State(state): State<AppState>,
    admin: Result<AdminUser, ApiError>,
) -> Result<Response, ApiError> {
    match admin {
        Ok(_) => Ok(AdminPage {
            asset_version: state.asset_version.to_string(),
        }
        .into_response()),
        Err(ApiError::Unauthenticated) => Ok(Redirect::to("/").into_response()),
        Err(err) => Err(err),
    }
}

/// An account as an administrator sees it (never its password hash).
#[derive(Debug, Serialize)]
pub struct UserView {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub is_admin: bool,
    pub disabled: bool,
    pub created_at: String,
}

impl From<&Account> for UserView {
    fn from(account: &Account) -> Self {
        Self {
            user_id: account.user_id.to_string(),
            email: account.email.clone(),
            name: account.name.clone(),
            is_admin: account.is_admin,
            disabled: account.disabled,
            created_at: crate::store::rfc3339::format(&account.created_at),
        }
    }
}

/// A listed account with its day: tokens spent today (UTC) and its quota.
#[derive(Debug, Serialize)]
pub struct ListedUser {
    #[serde(flatten)]
    pub user: UserView,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The quota that applies (0: none).
    pub quota_tokens_per_day: u64,
    /// Whether an administrator set this account's own quota.
    pub own_quota: bool,
}

/// `{date, default_quota_tokens_per_day, users: [...]}`.
#[derive(Debug, Serialize)]
pub struct UserList {
    /// Today (UTC), the day of the usage figures.
    pub date: String,
    pub default_quota_tokens_per_day: u64,
    pub users: Vec<ListedUser>,
}

/// `GET /admin/users?limit=&offset=`: the accounts, oldest first; `limit`
/// 100 by default, at most 1000.
async fn list_users(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<UserList>, ApiError> {
    let limit = query_number(&query, "limit", 100, 1000)?;
    let offset = query_number(&query, "offset", 0, u32::MAX)?;
    let accounts = state.accounts.list_accounts(limit, offset).await?;
    let day = today();
    let default = state.chat.settings.quota_tokens_per_day;
    // One usage read per account, a few at a time.
    let ids: Vec<UserId> = accounts.iter().map(|a| a.user_id.clone()).collect();
    let standings: Vec<_> = futures_util::stream::iter(ids)
        .map(|user| {
            let usage = state.chat.usage.clone();
            async move { usage.standing(&user, day).await }
        })
        .buffered(8)
        .try_collect()
        .await?;
    let users = accounts
        .iter()
        .zip(standings)
        .map(|(account, standing)| ListedUser {
            user: UserView::from(account),
            prompt_tokens: standing.used.prompt_tokens,
            completion_tokens: standing.used.completion_tokens,
            quota_tokens_per_day: effective_quota(default, standing.quota_override),
            own_quota: standing.quota_override.is_some(),
        })
        .collect();
    Ok(Json(UserList {
        date: day.to_string(),
        default_quota_tokens_per_day: default,
        users,
    }))
}

/// What `PATCH /admin/users/{user_id}` asks for.
#[derive(Debug, Default, PartialEq)]
struct Change {
    disabled: Option<bool>,
    is_admin: Option<bool>,
}

impl Change {
    /// `{disabled?: bool, is_admin?: bool}`, at least one of them (`null`
    /// counts as absent; other fields are ignored).
    fn parse(body: &Value) -> Result<Self, ApiError> {
        let Value::Object(fields) = body else {
            return Err(ApiError::invalid(
                "The request body must be a JSON object such as {\"disabled\": true}.",
            ));
        };
        let flag = |name: &'static str| match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(*value)),
            Some(_) => Err(ApiError::invalid(format!(
                "'{name}' must be true or false."
            ))),
        };
        let change = Change {
            disabled: flag("disabled")?,
            is_admin: flag("is_admin")?,
        };
        if change == Change::default() {
            return Err(ApiError::invalid(
                "Nothing to change: give 'disabled' or 'is_admin' (true or false).",
            ));
        }
        Ok(change)
    }
}

/// `PATCH /admin/users/{user_id} {disabled?, is_admin?}`: the account as
/// it is afterwards.
async fn update_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<UserView>, ApiError> {
    let target = path
        .ok()
        .and_then(|Path(raw)| UserId::parse(&raw).ok())
        .ok_or_else(|| ApiError::invalid("Invalid user id."))?;
    let change = Change::parse(&body)?;
    if target == admin.user_id {
        if change.disabled == Some(true) {
            return Err(ApiError::invalid("You cannot disable your own account."));
        }
        if change.is_admin == Some(false) {
            return Err(ApiError::invalid(
                "You cannot take away your own administrator rights.",
            ));
        }
    }
    let mut updated = None;
    if let Some(is_admin) = change.is_admin {
        updated = Some(
            state
                .accounts
                .set_admin(&target, is_admin)
                .await?
                .ok_or(ApiError::UserNotFound)?,
        );
    }
    if let Some(disabled) = change.disabled {
        updated = Some(
            state
                .accounts
                .set_disabled(&target, disabled)
                .await?
                .ok_or(ApiError::UserNotFound)?,
        );
        if disabled {
            disable_everywhere(&state, &target).await;
        }
    }
    let updated = updated.ok_or(ApiError::UserNotFound)?;
    tracing::info!(
        admin = %admin.user_id,
        user = %target,
        disabled = ?change.disabled,
        is_admin = ?change.is_admin,
        "account changed by an administrator"
    );
    Ok(Json(UserView::from(&updated)))
}

/// What disabling an account does at once: it is signed out everywhere
/// and its replies stop. Its access tokens already fail (they need an
/// account that is not disabled). A failure here is logged, not
/// returned: the account is disabled, and every request and socket event
/// of it is refused from now on anyway.
async fn disable_everywhere(state: &AppState, user: &UserId) {
    state.active_accounts.forget(user);
    if let Err(err) = state.sign_out_everywhere(user).await {
        tracing::warn!(user = %user, error = %err, "a disabled account could not be signed out everywhere");
    }
    let stopped = stop_everywhere(&state.chat, user, None).await;
    if stopped > 0 {
        tracing::info!(user = %user, stopped, "replies of a disabled account stopped");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_change_needs_booleans_and_at_least_one_of_them() {
        assert_eq!(
            Change::parse(&json!({"disabled": true})).unwrap(),
            Change {
                disabled: Some(true),
                is_admin: None
            }
        );
        assert_eq!(
            Change::parse(&json!({"is_admin": false, "disabled": null, "other": 1})).unwrap(),
            Change {
                disabled: None,
                is_admin: Some(false)
            }
        );
        for (body, message) in [
            (
                json!({"disabled": "yes"}),
                "'disabled' must be true or false.",
            ),
            (json!({"is_admin": 1}), "'is_admin' must be true or false."),
            (
                json!({}),
                "Nothing to change: give 'disabled' or 'is_admin' (true or false).",
            ),
            (
                json!([true]),
                "The request body must be a JSON object such as {\"disabled\": true}.",
            ),
        ] {
            assert_eq!(Change::parse(&body).unwrap_err().to_string(), message);
        }
    }
}
