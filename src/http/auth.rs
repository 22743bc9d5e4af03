//! Local accounts (`AUTH_MODE=local`): sign-up, sign-in, sign-out (here or
//! everywhere), a new password, and who is signed in. Sign-in rotates the
//! session id and moves the browser's anonymous conversations to the
//! account; failed attempts are throttled per email and per client
//! address, and a wrong email gets the same answer as a wrong password.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tower_sessions::Session;

use super::bodies::{Done, Me, SignedOut};
use super::extract::{AccountUser, ApiJson, ClientAddress};
use crate::auth::{check_password, display_name, hash_password, normalise_email, verify_password};
use crate::config::SignupPolicy;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::events::{Field, Inbound};
use crate::ratelimit::{Bucket, Limit};
use crate::sessions;
use crate::state::AppState;
use crate::store::accounts::{Account, Created, NewAccount, Signup};

/// Sign-in attempts per email in [`ATTEMPT_WINDOW`].
const ATTEMPTS_PER_ACCOUNT: u32 = 10;
/// Sign-in attempts per client address in [`ATTEMPT_WINDOW`].
const ATTEMPTS_PER_ADDRESS: u32 = 30;
/// Accounts created per client address per hour.
const SIGNUPS_PER_ADDRESS: u32 = 10;
const ATTEMPT_WINDOW: Duration = Duration::from_secs(15 * 60);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/signup", post(signup))
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/auth/password", post(change_password))
        .route("/auth/me", get(me))
}

/// `{email, password, name?}`; a wrong type reads as missing.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Credentials {
    email: Field<String>,
    password: Field<String>,
    name: Field<String>,
}

/// `{current, new}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NewPassword {
    current: Field<String>,
    new: Field<String>,
}

fn me_body(account: &Account, method: &str) -> Me {
    Me {
        user_id: account.user_id.clone(),
        email: account.email.clone(),
        name: account.name.clone(),
        is_admin: account.is_admin,
        auth: method.to_string(),
    }
}

/// Counts one request against a limit; over it: 429 with the wait.
async fn throttle(
    state: &AppState,
    bucket: Bucket,
    key: &str,
    count: u32,
    window: Duration,
) -> Result<(), ApiError> {
    state
        .limiter
        .check(bucket, key, Limit { count, window })
        .await
        .map_err(ApiError::RateLimited)
}

/// `POST /auth/signup`: creates an account (the first one is the admin)
/// and signs it in.
async fn signup(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    session: Session,
    ApiJson(Inbound(body)): ApiJson<Inbound<Credentials>>,
) -> Result<(StatusCode, Json<Me>), ApiError> {
    state.require_local()?;
    let policy = match state.chat.settings.auth.signup {
        SignupPolicy::Closed => return Err(ApiError::SignupClosed),
        SignupPolicy::Open => Signup::Open,
        SignupPolicy::FirstOnly => Signup::FirstOnly,
    };
    let email = normalise_email(body.email.given().map_or("", String::as_str))?;
    let password = body.password.given().cloned().unwrap_or_default();
    check_password(&password)?;
    let name = display_name(body.name.given().map(String::as_str), &email)?;
    throttle(
        &state,
        Bucket::Signups,
        &address.to_string(),
        SIGNUPS_PER_ADDRESS,
        Duration::from_secs(3600),
    )
    .await?;
    let account = NewAccount {
        user_id: UserId::new(),
        email,
        name,
        password_hash: hash_password(password).await?,
    };
    let account = match state.accounts.create_account(account, policy).await? {
        Created::Account(account) => account,
        Created::EmailTaken => {
            return Err(ApiError::Conflict(
                "An account with this email already exists.",
            ))
        }
        Created::Closed => return Err(ApiError::SignupClosed),
    };
    state.sign_in(&session, &account, "local").await?;
    tracing::info!(user = %account.user_id, admin = account.is_admin, "account created");
    Ok((StatusCode::CREATED, Json(me_body(&account, "local"))))
}

/// `POST /auth/login`.
async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    session: Session,
    ApiJson(Inbound(body)): ApiJson<Inbound<Credentials>>,
) -> Result<Json<Me>, ApiError> {
    state.require_local()?;
    const WRONG: &str = "Wrong email or password.";
    let email = body
        .email
        .given()
        .map(|raw| raw.trim().to_lowercase())
        .filter(|email| !email.is_empty() && email.len() <= 254)
        .ok_or(ApiError::InvalidCredentials(WRONG))?;
    let password = body
        .password
        .given()
        .filter(|password| password.chars().count() <= crate::auth::MAX_PASSWORD_CHARS)
        .cloned()
        .ok_or(ApiError::InvalidCredentials(WRONG))?;
    throttle(
        &state,
        Bucket::LoginAddress,
        &address.to_string(),
        ATTEMPTS_PER_ADDRESS,
        ATTEMPT_WINDOW,
    )
    .await?;
    throttle(
        &state,
        Bucket::LoginAccount,
        &email,
        ATTEMPTS_PER_ACCOUNT,
        ATTEMPT_WINDOW,
    )
    .await?;
    let account = state.accounts.account_by_email(&email).await?;
    let hash = account.as_ref().map(|a| a.password_hash.clone());
    let (Some(account), true) = (account, verify_password(password, hash).await) else {
        tracing::info!("sign-in refused: wrong email or password");
        return Err(ApiError::InvalidCredentials(WRONG));
    };
    if account.disabled {
        return Err(ApiError::Disabled);
    }
    state.sign_in(&session, &account, "local").await?;
    Ok(Json(me_body(&account, "local")))
}

/// `POST /auth/logout`: ends this session. With the body
/// `{"everywhere": true}`, ends every session of the account and
/// disconnects its sockets on every instance (the account is the signed-in
/// one, or the bearer token's; 401 without one). The body is optional; a
/// body that is there must be a JSON object whose `everywhere` is a
/// boolean, else 400 and nothing changes. Behind a sign-in proxy the
/// answer names the proxy's sign-out page (`AUTH_PROXY_LOGOUT_URL`), where
/// the page goes next: otherwise the proxy would sign it in again. After a
/// single sign-on it names the provider's end-session URL (RP-initiated
/// logout, when the provider has an `end_session_endpoint`), with the ID
/// token as a hint and the page as the way back.
async fn logout(
    State(state): State<AppState>,
    session: Session,
    account: Result<AccountUser, ApiError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SignedOut>, ApiError> {
    state.require_accounts()?;
    let body = body.map_err(|_| ApiError::TooLarge("The request body is too large.".into()))?;
    let everywhere = logout_everywhere(&headers, &body)?;
    // After a single sign-on, the provider's session ends too (read
    // before the session is deleted).
    let provider_logout = match (
        state.oidc.as_deref(),
        sessions::provider_session(&session).await?,
    ) {
        (Some(providers), Some((provider, id_token))) => providers
            .get(&provider)
            .and_then(|provider| providers.logout_url(provider, Some(&id_token))),
        _ => None,
    };
    let logout_url = provider_logout.or_else(|| {
        state
            .chat
            .settings
            .auth
            .proxy
            .as_ref()
            .and_then(|proxy| proxy.logout_url.clone())
    });
    if !everywhere {
        sessions::sign_out(&session).await?;
        return Ok(Json(SignedOut {
            message: "Signed out.",
            logout_url,
        }));
    }
    let AccountUser(user) = account?;
    sessions::sign_out(&session).await?;
    state.sign_out_everywhere(&user).await?;
    Ok(Json(SignedOut {
        message: "Signed out everywhere.",
        logout_url,
    }))
}

/// Whether the optional body of `POST /auth/logout` asks to sign out
/// everywhere.
fn logout_everywhere(headers: &HeaderMap, body: &[u8]) -> Result<bool, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::invalid(
            "Send a JSON body with Content-Type: application/json.",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::invalid("The request body is not valid JSON."))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(ApiError::invalid(
            "The request body must be a JSON object, such as {\"everywhere\": true}.",
        ));
    };
    match fields.get("everywhere") {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(serde_json::Value::Bool(everywhere)) => Ok(*everywhere),
        Some(_) => Err(ApiError::invalid("'everywhere' must be true or false.")),
    }
}

/// The signed-in account, or 401.
async fn current_account(state: &AppState, session: &Session) -> Result<Account, ApiError> {
    let Some(user) = sessions::signed_in(session).await? else {
        return Err(ApiError::Unauthenticated);
    };
    state.active_account(&user).await
}

/// `POST /auth/password`: needs the current password; the session id is
/// rotated.
async fn change_password(
    State(state): State<AppState>,
    session: Session,
    ApiJson(Inbound(body)): ApiJson<Inbound<NewPassword>>,
) -> Result<Json<Done>, ApiError> {
    state.require_local()?;
    let account = current_account(&state, &session).await?;
    let new = body.new.given().cloned().unwrap_or_default();
    check_password(&new)?;
    throttle(
        &state,
        Bucket::LoginAccount,
        &account.email,
        ATTEMPTS_PER_ACCOUNT,
        ATTEMPT_WINDOW,
    )
    .await?;
    let current = body.current.given().cloned().unwrap_or_default();
    if !verify_password(current, Some(account.password_hash.clone())).await {
        return Err(ApiError::InvalidCredentials(
            "The current password is wrong.",
        ));
    }
    let hash = hash_password(new).await?;
    if !state.accounts.set_password(&account.user_id, &hash).await? {
        return Err(ApiError::Unauthenticated);
    }
    session.cycle_id().await?;
    tracing::info!(user = %account.user_id, "password changed");
    Ok(Json(Done {
        message: "Password changed.",
    }))
}

/// `GET /auth/me`: the signed-in account (or the bearer token's), or 401
/// `unauthenticated`.
async fn me(
    State(state): State<AppState>,
    AccountUser(user): AccountUser,
    session: Session,
    headers: axum::http::HeaderMap,
) -> Result<Json<Me>, ApiError> {
    let method = match crate::auth::bearer_token(&headers) {
        Some(_) => "token".to_string(),
        None => sessions::sign_in_method(&session)
            .await?
            .unwrap_or_else(|| "local".to_string()),
    };
    let account = state.active_account(&user).await?;
    Ok(Json(me_body(&account, &method)))
}
