//! Single sign-on with OpenID Connect (authorization code with PKCE),
//! through the `openidconnect` crate: the providers discovered at start,
//! the login they begin (state, nonce and PKCE verifier, kept by the caller
//! in the shared session so another instance can finish it), the code
//! exchanged and the ID token verified at the callback, and the provider's
//! logout URL (RP-initiated logout).
//!
//! What a login becomes (an account, a session) is left to the HTTP layer.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreIdTokenVerifier, CoreJsonWebKey, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AsyncHttpClient, AuthorizationCode, ClaimsVerificationError,
    Client, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields, EndSessionUrl,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IdToken,
    IdTokenFields, IdTokenVerifier, IssuerUrl, JsonWebKeySetUrl, LogoutRequest, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl,
    ProviderMetadataWithLogout, RedirectUrl, RequestTokenError, Scope, StandardErrorResponse,
    StandardTokenResponse, TokenResponse, UserInfoClaims,
};
use serde::{Deserialize, Serialize};

use crate::config::{OidcProvider, OidcSettings};

/// How long a begun login may take before its callback is refused.
pub const LOGIN_TTL: Duration = Duration::from_secs(10 * 60);
/// Logins begun and not finished kept per session (several tabs); the
/// oldest is dropped beyond it.
pub const MAX_PENDING_LOGINS: usize = 5;
/// Discovery attempts at start: a provider started at the same moment
/// (a compose file) gets a few seconds; one that stays down stops the start.
const DISCOVERY_ATTEMPTS: u32 = 4;
/// Least time between two reads of a provider's signing keys after start.
const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from a provider.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The claims besides the standard ones: `groups` (for `OIDC_ADMIN_GROUPS`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupClaims {
    /// A list of group names; a provider that sends one string gets it read as one group.
    #[serde(
        default,
        deserialize_with = "groups",
        skip_serializing_if = "Option::is_none"
    )]
    pub groups: Option<Vec<String>>,
}

impl AdditionalClaims for GroupClaims {}

/// `groups` as a list, a single string, or anything else (ignored).
fn groups<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(match value {
        serde_json::Value::String(one) => Some(vec![one]),
        serde_json::Value::Array(items) => Some(
            items
                .into_iter()
                .filter_map(|item| item.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    })
}

type IdTokenFieldsWithGroups = IdTokenFields<
    GroupClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type TokenAnswer = StandardTokenResponse<IdTokenFieldsWithGroups, CoreTokenType>;
type GroupsIdToken = IdToken<
    GroupClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// A client made from discovery: authorization endpoint known, token and
/// userinfo endpoints as the provider lists them.
type OidcClient = Client<
    GroupClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenAnswer,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The HTTP client the crate calls providers with: the app's `reqwest`,
/// never following redirects (the crate's SSRF advice), bounded in time
/// and size.
#[derive(Clone)]
struct Http(reqwest::Client);

/// A request to a provider failed (network, timeout, oversized answer).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let url = parts.uri.to_string();
            let mut response = self
                .0
                .request(parts.method, &url)
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| HttpError(format!("{url}: {e}")))?;
            let mut builder = openidconnect::http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| HttpError(format!("{url}: {e}")))?
            {
                if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(HttpError(format!("{url}: the answer is too large")));
                }
                bytes.extend_from_slice(&chunk);
            }
            builder
                .body(bytes)
                .map_err(|e| HttpError(format!("{url}: {e}")))
        })
    }
}

/// One discovered provider.
pub struct Provider {
    /// Its signing keys: read at discovery, read again when an ID token is
    /// signed by a key not among them (the provider rotated its keys).
    keys: std::sync::RwLock<CoreJsonWebKeySet>,
    /// When the keys were last read again (at most once a minute).
    keys_refreshed: tokio::sync::Mutex<Option<Instant>>,
    jwks_uri: JsonWebKeySetUrl,
    issuer_url: IssuerUrl,
    client_secret: Option<ClientSecret>,
    signing_algs: Vec<CoreJwsSigningAlgorithm>,
    pub id: String,
    pub name: String,
    /// The issuer URL as configured.
    pub issuer: String,
    client: OidcClient,
    scopes: Vec<String>,
    client_id: String,
    /// The provider's `end_session_endpoint`, if it has one.
    end_session: Option<EndSessionUrl>,
}

impl Provider {
    /// An ID token verifier with the provider's current keys.
    fn verifier(&self) -> CoreIdTokenVerifier<'static> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let client_id = ClientId::new(self.client_id.clone());
        let verifier = match &self.client_secret {
            Some(secret) => IdTokenVerifier::new_confidential_client(
                client_id,
                secret.clone(),
                self.issuer_url.clone(),
                keys,
            ),
            None => IdTokenVerifier::new_public_client(client_id, self.issuer_url.clone(), keys),
        };
        verifier.set_allowed_algs(self.signing_algs.clone())
    }

    /// Reads the provider's signing keys again, unless that was done less
    /// than [`KEY_REFRESH_INTERVAL`] ago; whether new keys were read.
    async fn refresh_keys(&self, http: &Http) -> bool {
        let mut refreshed = self.keys_refreshed.lock().await;
        if refreshed.is_some_and(|at| at.elapsed() < KEY_REFRESH_INTERVAL) {
            return false;
        }
        *refreshed = Some(Instant::now());
        match CoreJsonWebKeySet::fetch_async(&self.jwks_uri, http).await {
            Ok(keys) => {
                tracing::info!(provider = %self.id, "OIDC signing keys read again");
                *self
                    .keys
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = keys;
                true
            }
            Err(err) => {
                tracing::warn!(provider = %self.id, error = %error_chain(&err), "OIDC signing keys could not be read again");
                false
            }
        }
    }
}

/// The discovered providers, in the configured order.
pub struct Providers {
    pub list: Vec<Provider>,
    post_logout_redirect: String,
    http: Http,
}

/// What the browser's session keeps between the login and the callback:
/// single use, and refused after [`LOGIN_TTL`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    pub provider: String,
    pub state: String,
    nonce: String,
    verifier: String,
    /// Unix seconds when the login began.
    pub started: u64,
}

impl PendingLogin {
    /// Whether the login began more than [`LOGIN_TTL`] ago.
    pub fn expired(&self) -> bool {
        unix_now().saturating_sub(self.started) > LOGIN_TTL.as_secs()
    }

    /// Whether `state` (from the callback's query) is this login's, compared
    /// through SHA-256 so the time taken says nothing about the secret.
    pub fn matches(&self, provider: &str, state: &str) -> bool {
        use sha2::Digest;
        self.provider == provider
            && sha2::Sha256::digest(self.state.as_bytes()) == sha2::Sha256::digest(state.as_bytes())
    }
}

/// Who signed in at the provider.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The provider's `sub`: with the provider id, the identity's key.
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub groups: Vec<String>,
    /// The raw ID token, kept for `id_token_hint` at logout.
    pub id_token: String,
}

/// Why a callback could not sign anyone in.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The provider refused the code (wrong, used, expired) or the answer
    /// did not verify (signature, audience, nonce, issuer).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The provider could not be reached or answered nonsense.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Providers {
    /// Discovers every configured provider (its metadata and signing keys);
    /// fails with a message naming the provider and its issuer when one
    /// cannot be discovered after a few attempts.
    pub async fn discover(settings: &OidcSettings) -> anyhow::Result<Self> {
        let http = Http(
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(HTTP_TIMEOUT)
                .connect_timeout(HTTP_TIMEOUT)
                .build()
                .context("building the OIDC HTTP client")?,
        );
        let mut list = Vec::new();
        for provider in &settings.providers {
            list.push(Self::discover_one(&http, settings, provider).await?);
        }
        Ok(Self {
            list,
            post_logout_redirect: settings.post_logout_redirect_uri(),
            http,
        })
    }

    async fn discover_one(
        http: &Http,
        settings: &OidcSettings,
        provider: &OidcProvider,
    ) -> anyhow::Result<Provider> {
        let issuer = IssuerUrl::new(provider.issuer.clone())
            .with_context(|| format!("OIDC provider {:?}: issuer URL", provider.id))?;
        let mut wait = Duration::from_millis(500);
        let mut attempt = 1;
        let metadata = loop {
            match ProviderMetadataWithLogout::discover_async(issuer.clone(), http).await {
                Ok(metadata) => break metadata,
                Err(err) if attempt < DISCOVERY_ATTEMPTS => {
                    tracing::warn!(provider = %provider.id, issuer = %provider.issuer, attempt, error = %error_chain(&err), "OIDC discovery failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(err) => anyhow::bail!(
                    "OIDC provider {:?} could not be discovered at {}/.well-known/openid-configuration \
                     after {DISCOVERY_ATTEMPTS} attempts: {} (check OIDC_{}_ISSUER and that the provider is up)",
                    provider.id,
                    provider.issuer.trim_end_matches('/'),
                    error_chain(&err),
                    provider.id.to_ascii_uppercase().replace('-', "_"),
                ),
            }
        };
        let end_session = metadata.additional_metadata().end_session_endpoint.clone();
        let keys = metadata.jwks().clone();
        let jwks_uri = metadata.jwks_uri().clone();
        let signing_algs = metadata.id_token_signing_alg_values_supported().clone();
        let client_secret = provider
            .client_secret
            .as_ref()
            .map(|secret| ClientSecret::new(secret.expose().to_string()));
        let redirect = RedirectUrl::new(settings.redirect_uri(provider))
            .context("PUBLIC_URL does not make a valid redirect URI")?;
        let client = OidcClient::from_provider_metadata(
            metadata,
            ClientId::new(provider.client_id.clone()),
            client_secret.clone(),
        )
        .set_redirect_uri(redirect);
        tracing::info!(provider = %provider.id, issuer = %provider.issuer, logout = end_session.is_some(), "OIDC provider discovered");
        Ok(Provider {
            keys: std::sync::RwLock::new(keys),
            keys_refreshed: tokio::sync::Mutex::new(None),
            jwks_uri,
            issuer_url: issuer,
            client_secret,
            signing_algs,
            id: provider.id.clone(),
            name: provider.name.clone(),
            issuer: provider.issuer.clone(),
            client,
            scopes: provider.scopes.clone(),
            client_id: provider.client_id.clone(),
            end_session,
        })
    }

    /// The provider with this id.
    pub fn get(&self, id: &str) -> Option<&Provider> {
        self.list.iter().find(|provider| provider.id == id)
    }

    /// Begins a login: the URL to send the browser to, and what the session
    /// must keep for the callback.
    pub fn begin(&self, provider: &Provider) -> (String, PendingLogin) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = provider.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in &provider.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let pending = PendingLogin {
            provider: provider.id.clone(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            started: unix_now(),
        };
        (url.to_string(), pending)
    }

    /// Finishes a login: exchanges `code` with the PKCE verifier, verifies
    /// the ID token (signature, issuer, audience, expiry, nonce, access
    /// token hash), and reads the claims, asking the userinfo endpoint for
    /// what the ID token does not carry (email, name, groups).
    pub async fn finish(
        &self,
        provider: &Provider,
        pending: PendingLogin,
        code: String,
    ) -> Result<SignedIn, LoginError> {
        let answer = provider
            .client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| LoginError::Unavailable(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
            .request_async(&self.http)
            .await
            .map_err(|err| match err {
                RequestTokenError::ServerResponse(answer) => {
                    LoginError::Rejected(format!("token endpoint: {answer}"))
                }
                other => {
                    LoginError::Unavailable(format!("token endpoint: {}", error_chain(&other)))
                }
            })?;
        let id_token: &GroupsIdToken = answer
            .id_token()
            .ok_or_else(|| LoginError::Rejected("the token answer has no ID token".into()))?;
        let nonce = Nonce::new(pending.nonce);
        let mut verifier = provider.verifier();
        let mut checked = id_token.claims(&verifier, &nonce);
        if let Err(ClaimsVerificationError::SignatureVerification(_)) = checked {
            // Signed with a key we do not have: the provider may have
            // rotated its keys since discovery.
            if provider.refresh_keys(&self.http).await {
                verifier = provider.verifier();
                checked = id_token.claims(&verifier, &nonce);
            }
        }
        let claims =
            checked.map_err(|e| LoginError::Rejected(format!("ID token: {}", error_chain(&e))))?;
        if let Some(expected) = claims.access_token_hash() {
            let rejected = |e: &dyn std::error::Error| {
                LoginError::Rejected(format!("at_hash: {}", error_chain(e)))
            };
            let alg = id_token.signing_alg().map_err(|e| rejected(&e))?;
            let key = id_token.signing_key(&verifier).map_err(|e| rejected(&e))?;
            let actual = AccessTokenHash::from_token(answer.access_token(), alg, key)
                .map_err(|e| rejected(&e))?;
            if actual != *expected {
                return Err(LoginError::Rejected("at_hash does not match".into()));
            }
        }
        let mut signed_in = SignedIn {
            subject: claims.subject().to_string(),
            email: claims.email().map(|email| email.to_string()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims
                .name()
                .and_then(|name| name.get(None))
                .map(|name| name.to_string())
                .or_else(|| claims.preferred_username().map(|name| name.to_string())),
            groups: claims
                .additional_claims()
                .groups
                .clone()
                .unwrap_or_default(),
            id_token: id_token.to_string(),
        };
        let missing = signed_in.email.is_none()
            || signed_in.name.is_none()
            || claims.additional_claims().groups.is_none();
        if missing {
            if let Ok(request) = provider.client.user_info(
                answer.access_token().clone(),
                Some(claims.subject().clone()),
            ) {
                let info: UserInfoClaims<GroupClaims, CoreGenderClaim> = match request
                    .request_async(&self.http)
                    .await
                {
                    Ok(info) => info,
                    // Without an email there is no account to link to.
                    Err(err) if signed_in.email.is_none() => {
                        return Err(LoginError::Unavailable(format!(
                            "userinfo: {}",
                            error_chain(&err)
                        )))
                    }
                    Err(err) => {
                        tracing::warn!(provider = %provider.id, error = %error_chain(&err), "OIDC userinfo failed; using the ID token's claims");
                        return Ok(signed_in);
                    }
                };
                if signed_in.email.is_none() {
                    signed_in.email = info.email().map(|email| email.to_string());
                    signed_in.email_verified = info.email_verified().unwrap_or(false);
                }
                if signed_in.name.is_none() {
                    signed_in.name = info
                        .name()
                        .and_then(|name| name.get(None))
                        .map(|name| name.to_string())
                        .or_else(|| info.preferred_username().map(|name| name.to_string()));
                }
                if claims.additional_claims().groups.is_none() {
                    signed_in.groups = info.additional_claims().groups.clone().unwrap_or_default();
                }
            }
        }
        Ok(signed_in)
    }

    /// Where the browser goes to end its session at the provider (with the
    /// ID token as a hint and the page as the way back), if the provider
    /// has an `end_session_endpoint`.
    pub fn logout_url(&self, provider: &Provider, id_token: Option<&str>) -> Option<String> {
        let endpoint = provider.end_session.clone()?;
        let mut request =
            LogoutRequest::from(endpoint).set_client_id(ClientId::new(provider.client_id.clone()));
        if let Some(token) = id_token.and_then(|raw| raw.parse::<GroupsIdToken>().ok()) {
            request = request.set_id_token_hint(&token);
        }
        if let Ok(back) = PostLogoutRedirectUrl::new(self.post_logout_redirect.clone()) {
            request = request.set_post_logout_redirect_uri(back);
        }
        Some(request.http_get_url().to_string())
    }
}

/// An error with its causes, `a: b: c`.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_read_as_a_list_or_one_string() {
        let list: GroupClaims = serde_json::from_str(r#"{"groups":["a","b",3]}"#).unwrap();
        let one: GroupClaims = serde_json::from_str(r#"{"groups":"admins"}"#).unwrap();
        let none: GroupClaims = serde_json::from_str(r#"{}"#).unwrap();

        assert_eq!(list.groups.unwrap(), vec!["a", "b"]);
        assert_eq!(one.groups.unwrap(), vec!["admins"]);
        assert!(none.groups.is_none());
    }

    #[test]
    fn a_pending_login_matches_its_own_state_and_provider_only() {
        let pending = PendingLogin {
            provider: "a".into(),
            state: "s1".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            started: unix_now(),
        };
        let old = PendingLogin {
            started: unix_now() - LOGIN_TTL.as_secs() - 1,
            ..pending.clone()
        };

        assert!(pending.matches("a", "s1"));
        assert!(!pending.matches("a", "s2"));
        assert!(!pending.matches("b", "s1"));
        assert!(!pending.expired());
        assert!(old.expired());
    }
}
