//! Single sign-on routes (`AUTH_MODE` with `oidc`): `GET
//! /auth/oidc/{provider}/login` sends the browser to the provider with a
//! fresh state, nonce and PKCE challenge, kept in the session (shared by
//! every instance, so any instance may serve the callback); `GET
//! /auth/oidc/{provider}/callback` checks the state (single use, ten
//! minutes), exchanges the code, verifies the ID token and signs the
//! account in like a local sign-in does. These routes are browser
//! navigations: their failures are a short HTML page with a 4xx (or 502)
//! status, never an internal error's text.

use std::time::Duration;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use tower_sessions::Session;

use super::extract::ClientAddress;
use crate::auth::{display_name, normalise_email};
use crate::error::ApiError;
use crate::oidc::{LoginError, Provider, Providers, SignedIn};
use crate::ratelimit::{Bucket, Limit};
use crate::sessions;
use crate::state::AppState;
use crate::store::accounts::{Account, External, ExternalIdentity};

/// Logins begun per client address in [`LOGIN_WINDOW`].
const LOGINS_PER_ADDRESS: u32 = 30;
const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Longest `code` or `state` read from a callback.
const MAX_PARAMETER_CHARS: usize = 4096;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/oidc/{provider}/login", get(login))
        .route("/auth/oidc/{provider}/callback", get(callback))
}

/// The page a failed sign-in lands on.
#[derive(Template, WebTemplate)]
#[template(path = "auth_error.html")]
struct FailurePage {
    title: &'static str,
    message: String,
    /// A stable code for tests and support (`login_expired`, ...).
    code: &'static str,
    asset_version: String,
}

/// A failed single sign-on, as the browser is shown it.
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn page(self, state: &AppState) -> Response {
        let title = if self.status == StatusCode::NOT_FOUND {
            "Not found"
        } else {
            "Sign-in failed"
        };
        let page = FailurePage {
            title,
            message: self.message,
            code: self.code,
            asset_version: state.asset_version.to_string(),
        };
        let mut response = (self.status, page).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
        response
    }
}

impl From<ApiError> for Failure {
    fn from(err: ApiError) -> Self {
        // The body logs an internal cause once; the page shows the sentence.
        let body = err.body();
        Self::new(err.status(), body.error, body.message)
    }
}

/// The provider named in the path, or 404 (also when single sign-on is off).
fn provider<'a>(state: &'a AppState, id: &str) -> Result<(&'a Providers, &'a Provider), Failure> {
    let Some(providers) = state.oidc.as_deref() else {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Single sign-on is not enabled on this server.",
        ));
    };
    match providers.get(id) {
        Some(provider) => Ok((providers, provider)),
        None => Err(Failure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "There is no such sign-in provider.",
        )),
    }
}

/// `GET /auth/oidc/{provider}/login`: 303 to the provider's authorization
/// endpoint.
async fn login(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ClientAddress(address): ClientAddress,
    session: Session,
) -> Response {
    match begin(&state, &id, address, &session).await {
        Ok(url) => no_store(Redirect::to(&url).into_response()),
        Err(failure) => failure.page(&state),
    }
}

async fn begin(
    state: &AppState,
    id: &str,
    address: std::net::IpAddr,
    session: &Session,
) -> Result<String, Failure> {
    let (providers, provider) = provider(state, id)?;
    state
        .limiter
        .check(
            Bucket::LoginAddress,
            &address.to_string(),
            Limit {
                count: LOGINS_PER_ADDRESS,
                window: LOGIN_WINDOW,
            },
        )
        .await
        .map_err(ApiError::RateLimited)?;
    let (url, pending) = providers.begin(provider);
    sessions::push_pending_login(session, pending)
        .await
        .map_err(ApiError::from)?;
    tracing::info!(provider = %provider.id, "single sign-on begun");
    Ok(url)
}

/// `GET /auth/oidc/{provider}/callback?code&state` (or `?error&state`):
/// signs the account in and sends the browser to the page.
async fn callback(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    session: Session,
) -> Response {
    match finish(&state, &id, query.as_deref().unwrap_or(""), &session).await {
        Ok(()) => no_store(Redirect::to("/").into_response()),
        Err(failure) => {
            tracing::info!(provider = %id, code = failure.code, status = failure.status.as_u16(), "single sign-on refused");
            failure.page(&state)
        }
    }
}

/// The callback's parameters, each at most [`MAX_PARAMETER_CHARS`] long
/// (longer ones read as absent).
#[derive(Default)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    /// The issuer, from providers that send it (RFC 9207).
    iss: Option<String>,
}

fn parse_query(raw: &str) -> CallbackQuery {
    let mut query = CallbackQuery::default();
    for (key, value) in openidconnect::url::form_urlencoded::parse(raw.as_bytes()) {
        if value.is_empty() || value.chars().count() > MAX_PARAMETER_CHARS {
            continue;
        }
        let slot = match key.as_ref() {
            "code" => &mut query.code,
            "state" => &mut query.state,
            "error" => &mut query.error,
            "iss" => &mut query.iss,
            _ => continue,
        };
        slot.get_or_insert_with(|| value.into_owned());
    }
    query
}

async fn finish(state: &AppState, id: &str, raw: &str, session: &Session) -> Result<(), Failure> {
    let (providers, provider) = provider(state, id)?;
    let query = parse_query(raw);
    let again = "Start the sign-in again from the chat page.";
    let Some(returned_state) = query.state else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "missing_state",
            format!(
                "The answer from {} is incomplete (it has no state). {again}",
                provider.name
            ),
        ));
    };
    let pending = sessions::take_pending_login(session, &provider.id, &returned_state)
        .await
        .map_err(ApiError::from)?;
    let Some(pending) = pending else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "unknown_login",
            format!("This sign-in was not started in this browser, or was already used. {again}"),
        ));
    };
    if pending.expired() {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "login_expired",
            format!("This sign-in took too long and has expired. {again}"),
        ));
    }
    // A provider that names itself must be the one this login went to
    // (RFC 9207: a mix-up attack would bring another's answer here).
    if query
        .iss
        .as_deref()
        .is_some_and(|iss| iss.trim_end_matches('/') != provider.issuer.trim_end_matches('/'))
    {
        tracing::warn!(provider = %provider.id, "callback from another issuer refused");
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "sign_in_failed",
            format!(
                "The sign-in with {} could not be completed. {again}",
                provider.name
            ),
        ));
    }
    if let Some(error) = query.error {
        // The provider's code is shown only when it looks like one.
        let looks_like_a_code =
            error.len() <= 64 && error.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        let shown = if looks_like_a_code {
            format!(" ({error})")
        } else {
            String::new()
        };
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "provider_refused",
            format!("{} did not sign you in{shown}. {again}", provider.name),
        ));
    }
    let Some(code) = query.code else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "missing_code",
            format!(
                "The answer from {} is incomplete (it has no code). {again}",
                provider.name
            ),
        ));
    };
    let signed_in = providers
        .finish(provider, pending, code)
        .await
        .map_err(|err| {
            tracing::warn!(provider = %provider.id, error = %err, "single sign-on failed");
            match err {
                LoginError::Rejected(_) => Failure::new(
                    StatusCode::BAD_REQUEST,
                    "sign_in_failed",
                    format!(
                        "The sign-in with {} could not be completed. {again}",
                        provider.name
                    ),
                ),
                LoginError::Unavailable(_) => Failure::new(
                    StatusCode::BAD_GATEWAY,
                    "provider_unavailable",
                    format!(
                        "{} could not be reached. Try again in a moment.",
                        provider.name
                    ),
                ),
            }
        })?;
    let account = account_for(state, provider, &signed_in).await?;
    if account.disabled {
        return Err(ApiError::Disabled.into());
    }
    state.sign_in(session, &account, "oidc").await?;
    sessions::set_provider_session(session, &provider.id, &signed_in.id_token)
        .await
        .map_err(ApiError::from)?;
    tracing::info!(provider = %provider.id, user = %account.user_id, admin = account.is_admin, "signed in with single sign-on");
    Ok(())
}

/// The account of the person who signed in at the provider: the one
/// linked to (provider, subject), else the one with the email when the
/// provider vouches for it, else a new one. With `OIDC_ADMIN_GROUPS`, the
/// `groups` claim decides admin at each sign-in.
async fn account_for(
    state: &AppState,
    provider: &Provider,
    signed_in: &SignedIn,
) -> Result<Account, Failure> {
    let Some(email) = signed_in
        .email
        .as_deref()
        .and_then(|raw| normalise_email(raw).ok())
    else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "no_email",
            format!(
                "{} did not share a usable email address, which this server needs. \
                 Ask your administrator to allow the email scope.",
                provider.name
            ),
        ));
    };
    // A name the account rules refuse (too long) falls back to the email's.
    let name =
        display_name(signed_in.name.as_deref(), &email).or_else(|_| display_name(None, &email))?;
    let admin = state
        .chat
        .settings
        .auth
        .oidc
        .as_ref()
        .and_then(|oidc| oidc.admin_from_groups(&signed_in.groups));
    let identity = ExternalIdentity {
        provider: format!("oidc:{}", provider.id),
        subject: signed_in.subject.clone(),
        email,
        email_verified: signed_in.email_verified,
        name,
    };
    match state
        .accounts
        .external_account(identity, admin)
        .await
        .map_err(ApiError::from)?
    {
        External::Account(account) => Ok(account),
        External::EmailTaken => Err(Failure::new(
            StatusCode::CONFLICT,
            "email_taken",
            format!(
                "An account with this email already exists, and {} does not confirm the email \
                 is yours. Sign in to that account another way.",
                provider.name
            ),
        )),
    }
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_parameters_are_read_once_and_bounded() {
        let long = "x".repeat(MAX_PARAMETER_CHARS + 1);
        let query = parse_query(&format!("code=c1&code=c2&state=&error={long}&other=1"));

        assert_eq!(query.code.as_deref(), Some("c1"));
        assert_eq!(query.state, None);
        assert_eq!(query.error, None);
    }
}
