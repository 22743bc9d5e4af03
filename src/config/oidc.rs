//! Single sign-on settings (`AUTH_MODE` with `oidc`): the identity
//! providers (`OIDC_PROVIDERS=a,b` and `OIDC_<ID>_ISSUER`, `_CLIENT_ID`,
//! `_CLIENT_SECRET`, `_NAME`, `_SCOPES`), the groups that make an admin
//! (`OIDC_ADMIN_GROUPS`), and the address browsers reach this server at
//! (`PUBLIC_URL`), from which the redirect URIs are made.
//!
//! Only the shape of the values is checked here; whether an issuer answers
//! is found out at start (`crate::oidc::Providers::discover`).

use super::reader::Reader;
use super::secret::Secret;

/// Longest provider id accepted (it is part of a URL and of variable names).
const MAX_ID_CHARS: usize = 32;
/// Longest display name accepted.
const MAX_NAME_CHARS: usize = 60;

/// The identity providers and what is shared by all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// The server's address as browsers see it, without a trailing `/`
    /// (`https://chat.example.org`, or with a path prefix).
    pub public_url: String,
    /// In the order of `OIDC_PROVIDERS` (the order of the page's buttons).
    pub providers: Vec<OidcProvider>,
    /// A member of any of these groups (the `groups` claim) is an admin,
    /// anyone else is not; empty: admin is not taken from the provider.
    pub admin_groups: Vec<String>,
}

/// One identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProvider {
    /// Lowercase letters, digits, `-` and `_`: the URL segment
    /// (`/auth/oidc/{id}/login`) and, uppercased with `-` as `_`, the
    /// variables' infix.
    pub id: String,
    /// The button's label: "Sign in with {name}".
    pub name: String,
    /// The issuer URL; discovery reads `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// Absent for a public client (PKCE only).
    pub client_secret: Option<Secret>,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
}

impl OidcSettings {
    /// The provider with this id.
    pub fn provider(&self, id: &str) -> Option<&OidcProvider> {
        self.providers.iter().find(|provider| provider.id == id)
    }

    /// Where the provider sends the browser back after sign-in; register
    /// it at the provider.
    pub fn redirect_uri(&self, provider: &OidcProvider) -> String {
        format!("{}/auth/oidc/{}/callback", self.public_url, provider.id)
    }

    /// Where the provider sends the browser after signing out (the page);
    /// register it at the provider as a post-logout redirect URI.
    pub fn post_logout_redirect_uri(&self) -> String {
        format!("{}/", self.public_url)
    }

    /// Whether someone in `groups` is an admin: `None` when
    /// `OIDC_ADMIN_GROUPS` is not set (the store decides: the first
    /// account is the admin).
    pub fn admin_from_groups(&self, groups: &[String]) -> Option<bool> {
        if self.admin_groups.is_empty() {
            return None;
        }
        Some(groups.iter().any(|group| self.admin_groups.contains(group)))
    }
}

/// The variable name for `setting` of provider `id` (`OIDC_A_ISSUER`).
fn variable(id: &str, setting: &str) -> String {
    format!(
        "OIDC_{}_{setting}",
        id.to_ascii_uppercase().replace('-', "_")
    )
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn http_url(value: &str) -> bool {
    (value.starts_with("http://") || value.starts_with("https://"))
        && reqwest::Url::parse(value).is_ok_and(|url| url.host_str().is_some())
}

/// Reads the OIDC settings; `enabled` says whether `AUTH_MODE` has `oidc`.
/// Without it, `None` (and the OIDC variables are not looked at).
pub(super) fn read(r: &mut Reader<'_>, enabled: bool) -> Option<OidcSettings> {
    if !enabled {
        return None;
    }
    let public_url = match r.raw("PUBLIC_URL") {
        None => {
            r.errors.push(
                "AUTH_MODE=oidc needs PUBLIC_URL, the address browsers use to reach this server \
                 (e.g. https://chat.example.org); the redirect URIs are made from it"
                    .to_string(),
            );
            String::new()
        }
        Some(url) => {
            let url = url.trim_end_matches('/').to_string();
            if !http_url(&url) || url.contains(['?', '#']) {
                r.errors.push(format!(
                    "PUBLIC_URL={url:?} is not an http(s) URL without a query"
                ));
            }
            url
        }
    };
    let mut providers: Vec<OidcProvider> = Vec::new();
    let listed = r.raw("OIDC_PROVIDERS").unwrap_or_default();
    for raw_id in listed.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        let id = raw_id.to_ascii_lowercase();
        if !valid_id(&id) {
            r.errors.push(format!(
                "OIDC_PROVIDERS: {raw_id:?} is not a provider id (1-{MAX_ID_CHARS} letters, digits, '-' or '_')"
            ));
            continue;
        }
        if providers.iter().any(|known| known.id == id) {
            r.errors
                .push(format!("OIDC_PROVIDERS: {id:?} is listed twice"));
            continue;
        }
        if let Some(provider) = read_provider(r, id) {
            providers.push(provider);
        }
    }
    if listed.trim().is_empty() {
        r.errors.push(
            "AUTH_MODE=oidc needs OIDC_PROVIDERS, a comma-separated list of provider ids \
             (each with OIDC_<ID>_ISSUER and OIDC_<ID>_CLIENT_ID)"
                .to_string(),
        );
    }
    let admin_groups = r
        .raw("OIDC_ADMIN_GROUPS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|group| !group.is_empty())
        .map(str::to_string)
        .collect();
    Some(OidcSettings {
        public_url,
        providers,
        admin_groups,
    })
}

fn read_provider(r: &mut Reader<'_>, id: String) -> Option<OidcProvider> {
    let issuer_var = variable(&id, "ISSUER");
    let client_var = variable(&id, "CLIENT_ID");
    let issuer = r.raw(&issuer_var);
    let client_id = r.raw(&client_var);
    match &issuer {
        None => r.errors.push(format!(
            "OIDC_PROVIDERS lists {id:?} but {issuer_var} is not set (the provider's issuer URL)"
        )),
        // The issuer is compared with the discovery document's as it is
        // written, so a trailing '/' is kept.
        Some(url) if !http_url(url) => r
            .errors
            .push(format!("{issuer_var}={url:?} is not an http(s) URL")),
        Some(_) => {}
    }
    if client_id.is_none() {
        r.errors.push(format!(
            "OIDC_PROVIDERS lists {id:?} but {client_var} is not set (the client id registered at the provider)"
        ));
    }
    let name_var = variable(&id, "NAME");
    let name = r.string(&name_var, &id);
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        r.errors.push(format!(
            "{name_var} may have at most {MAX_NAME_CHARS} characters"
        ));
    }
    let scopes = r
        .string(&variable(&id, "SCOPES"), "openid email profile")
        .split([' ', ','])
        .filter(|scope| !scope.is_empty() && *scope != "openid")
        .map(str::to_string)
        .collect();
    Some(OidcProvider {
        name,
        issuer: issuer?,
        client_id: client_id?,
        client_secret: r.raw(&variable(&id, "CLIENT_SECRET")).map(Secret),
        scopes,
        id,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read_vars(vars: &[(&str, &str)]) -> (Option<OidcSettings>, Vec<String>) {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = |name: &str| map.get(name).cloned();
        let mut reader = Reader {
            lookup: &lookup,
            errors: Vec::new(),
        };
        let settings = read(&mut reader, true);
        (settings, reader.errors)
    }

    #[test]
    fn two_providers_with_names_secrets_and_admin_groups() {
        let (settings, errors) = read_vars(&[
            ("PUBLIC_URL", "https://chat.example.org/"),
            ("OIDC_PROVIDERS", "corp, Google-Work"),
            ("OIDC_CORP_ISSUER", "https://id.corp.example/realms/x"),
            ("OIDC_CORP_CLIENT_ID", "chat"),
            ("OIDC_CORP_CLIENT_SECRET", "s3cret"),
            ("OIDC_CORP_NAME", "Corp SSO"),
            ("OIDC_GOOGLE_WORK_ISSUER", "https://accounts.google.com"),
            ("OIDC_GOOGLE_WORK_CLIENT_ID", "abc"),
            ("OIDC_GOOGLE_WORK_SCOPES", "openid email"),
            ("OIDC_ADMIN_GROUPS", "chat-admins, ops"),
        ]);
        let settings = settings.unwrap();

        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(settings.public_url, "https://chat.example.org");
        let corp = settings.provider("corp").unwrap();
        assert_eq!(corp.name, "Corp SSO");
        assert_eq!(corp.client_secret.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(corp.scopes, vec!["email", "profile"]);
        assert_eq!(
            settings.redirect_uri(corp),
            "https://chat.example.org/auth/oidc/corp/callback"
        );
        let google = settings.provider("google-work").unwrap();
        assert_eq!(google.name, "google-work");
        assert!(google.client_secret.is_none());
        assert_eq!(google.scopes, vec!["email"]);
        assert_eq!(settings.admin_from_groups(&["ops".into()]), Some(true));
        assert_eq!(settings.admin_from_groups(&["staff".into()]), Some(false));
        assert!(!format!("{settings:?}").contains("s3cret"));
    }

    #[test]
    fn missing_and_malformed_values_are_named() {
        let (_, errors) = read_vars(&[
            ("OIDC_PROVIDERS", "a,a,b c,b"),
            ("OIDC_A_ISSUER", "ftp://x"),
            ("OIDC_A_CLIENT_ID", "x"),
        ]);
        let text = errors.join("\n");

        assert!(text.contains("needs PUBLIC_URL"), "{text}");
        assert!(text.contains("OIDC_A_ISSUER=\"ftp://x\""), "{text}");
        assert!(text.contains("\"a\" is listed twice"), "{text}");
        assert!(text.contains("\"b c\" is not a provider id"), "{text}");
        assert!(text.contains("OIDC_B_ISSUER is not set"), "{text}");
        assert!(text.contains("OIDC_B_CLIENT_ID is not set"), "{text}");
    }

    #[test]
    fn without_admin_groups_the_provider_does_not_decide_admin() {
        let (settings, errors) = read_vars(&[
            ("PUBLIC_URL", "http://127.0.0.1:5000"),
            ("OIDC_PROVIDERS", "a"),
            ("OIDC_A_ISSUER", "http://127.0.0.1:9000"),
            ("OIDC_A_CLIENT_ID", "x"),
        ]);

        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(settings.unwrap().admin_from_groups(&["x".into()]), None);
    }
}
