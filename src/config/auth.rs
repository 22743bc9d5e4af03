//! Who the users are (`AUTH_MODE`, `SIGNUP`, `ALLOW_ANONYMOUS`) and which
//! peers may say who the client is (`TRUSTED_PROXIES`).

use ipnet::IpNet;

use super::oidc::OidcSettings;
use super::reader::Reader;

/// How people are identified (`AUTH_MODE`): `none` alone, or any of
/// `local` and `oidc` together, or `proxy` alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthMethods {
    /// Accounts with an email and a password.
    pub local: bool,
    /// Accounts signed in through OpenID Connect providers.
    pub oidc: bool,
    /// Accounts named by a header a trusted proxy sets.
    pub proxy: bool,
}

impl AuthMethods {
    /// The `AUTH_MODE` value these methods are read from: `none`, `local`,
    /// `oidc`, `local,oidc` or `proxy` (what `/get_config` shows).
    pub fn name(self) -> &'static str {
        match (self.local, self.oidc, self.proxy) {
            (false, false, false) => "none",
            (true, false, false) => "local",
            (false, true, false) => "oidc",
            (true, true, false) => "local,oidc",
            _ => "proxy",
        }
    }
}

/// The trusted proxy's identity header (`AUTH_MODE=proxy`).
#[derive(Debug, Clone)]
pub struct ProxyAuth {
    /// `AUTH_PROXY_HEADER`, default `X-Forwarded-Email` (oauth2-proxy's).
    pub header: axum::http::HeaderName,
    /// `AUTH_PROXY_LOGOUT_URL`: the proxy's sign-out page (oauth2-proxy:
    /// `/oauth2/sign_out`), where the page goes after signing out.
    pub logout_url: Option<String>,
}

/// Who may create an account (`SIGNUP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignupPolicy {
    Open,
    /// The first account is created (and is the admin); then sign-up closes.
    FirstOnly,
    Closed,
}

/// The identity settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub methods: AuthMethods,
    /// Set in `proxy` mode.
    pub proxy: Option<ProxyAuth>,
    /// Single sign-on providers, set when `AUTH_MODE` has `oidc`.
    pub oidc: Option<OidcSettings>,
    pub signup: SignupPolicy,
    /// Whether a browser without an account may chat (always in `none`).
    pub allow_anonymous: bool,
    /// Peers whose `X-Forwarded-For` names the client (nginx, a balancer).
    pub trusted_proxies: Vec<IpNet>,
}

impl AuthSettings {
    /// People have accounts (any method but `none`).
    pub fn accounts(&self) -> bool {
        self.methods != AuthMethods::default()
    }

    /// Email and password accounts (sign-up, sign-in with a password).
    pub fn local(&self) -> bool {
        self.methods.local
    }

    /// Whether `peer` is a trusted proxy.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    /// The client's address: the TCP `peer`, or, when the peer is a trusted
    /// proxy, the nearest address in `X-Forwarded-For` that no trusted proxy
    /// owns (anything before it is the client's own say).
    pub fn client_address(
        &self,
        peer: std::net::IpAddr,
        headers: &axum::http::HeaderMap,
    ) -> std::net::IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded: Vec<std::net::IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        forwarded
            .iter()
            .rev()
            .find(|hop| !self.trusts(**hop))
            .or(forwarded.first())
            .copied()
            .unwrap_or(peer)
    }
}

pub(super) fn read(r: &mut Reader<'_>) -> AuthSettings {
    let raw_mode = r.string("AUTH_MODE", "none").to_ascii_lowercase();
    let modes: Vec<&str> = raw_mode.split(',').map(str::trim).collect();
    let mut methods = AuthMethods::default();
    for name in &modes {
        match *name {
            "none" if modes.len() == 1 => {}
            "none" => r
                .errors
                .push("AUTH_MODE: none cannot be combined with other modes".to_string()),
            "local" => methods.local = true,
            "proxy" if modes.len() == 1 => methods.proxy = true,
            "proxy" => r.errors.push(
                "AUTH_MODE: proxy cannot be combined with other modes (the proxy signs people in)"
                    .to_string(),
            ),
            "oidc" => methods.oidc = true,
            other => r.errors.push(format!(
                "AUTH_MODE={other:?} is not one of none, local, oidc, proxy"
            )),
        }
    }
    let proxy = methods.proxy.then(|| {
        let raw = r.string("AUTH_PROXY_HEADER", "X-Forwarded-Email");
        let header = axum::http::HeaderName::from_bytes(raw.trim().as_bytes()).unwrap_or_else(|_| {
            r.errors
                .push(format!("AUTH_PROXY_HEADER={raw:?} is not an HTTP header name"));
            axum::http::HeaderName::from_static("x-forwarded-email")
        });
        let logout_url = r
            .raw("AUTH_PROXY_LOGOUT_URL")
            .map(|url| url.trim().to_string())
            .filter(|url| !url.is_empty());
        if let Some(url) = &logout_url {
            let relative = url.starts_with('/') && !url.starts_with("//");
            if !relative && !url.starts_with("https://") && !url.starts_with("http://") {
                r.errors.push(format!(
                    "AUTH_PROXY_LOGOUT_URL={url:?} is not a path (/oauth2/sign_out) or an http(s) URL"
                ));
            }
        }
        ProxyAuth { header, logout_url }
    });
    let oidc = super::oidc::read(r, methods.oidc);
    let signup = match r
        .string("SIGNUP", "first-only")
        .to_ascii_lowercase()
        .as_str()
    {
        "open" => SignupPolicy::Open,
        "first-only" => SignupPolicy::FirstOnly,
        "closed" => SignupPolicy::Closed,
        other => {
            r.errors.push(format!(
                "SIGNUP={other:?} is not one of open, first-only, closed"
            ));
            SignupPolicy::FirstOnly
        }
    };
    let none = methods == AuthMethods::default();
    let allow_anonymous = r.boolean("ALLOW_ANONYMOUS", none);
    if none && !allow_anonymous {
        r.errors.push(
            "ALLOW_ANONYMOUS=false needs an AUTH_MODE with accounts (there is no other way in)"
                .into(),
        );
    }
    let mut trusted_proxies = Vec::new();
    for item in r
        .raw("TRUSTED_PROXIES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let parsed = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => r.errors.push(format!(
                "TRUSTED_PROXIES: {item:?} is not an IP address or CIDR range"
            )),
        }
    }
    if methods.proxy && trusted_proxies.is_empty() {
        r.errors.push(
            "AUTH_MODE=proxy needs TRUSTED_PROXIES: the addresses of the proxies whose identity \
             header is believed"
                .to_string(),
        );
    }
    AuthSettings {
        methods,
        proxy,
        oidc,
        signup,
        allow_anonymous,
        trusted_proxies,
    }
}
