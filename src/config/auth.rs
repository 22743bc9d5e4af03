//! Who the users are (`AUTH_MODE`, `SIGNUP`, `ALLOW_ANONYMOUS`) and which
//! peers may say who the client is (`TRUSTED_PROXIES`).

use ipnet::IpNet;

use super::oidc::OidcSettings;
use super::reader::Reader;

/// How people are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every browser session is its own anonymous user (the original app).
    None,
    /// Accounts with an email and a password.
    Local,
    /// Accounts from identity providers only.
    Oidc,
}

impl AuthMode {
    /// The name `/get_config` and `/auth/me` use.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Local => "local",
            AuthMode::Oidc => "oidc",
        }
    }
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
    pub mode: AuthMode,
    pub signup: SignupPolicy,
    /// Whether a browser without an account may chat (always in `none`).
    pub allow_anonymous: bool,
    /// Peers whose `X-Forwarded-For` names the client (nginx, a balancer).
    pub trusted_proxies: Vec<IpNet>,
    /// Single sign-on providers, when `AUTH_MODE` has `oidc`.
    pub oidc: Option<OidcSettings>,
}

impl AuthSettings {
    /// Accounts can be used (sign-in, sign-up).
    pub fn accounts(&self) -> bool {
        self.mode != AuthMode::None
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
}

pub(super) fn read(r: &mut Reader<'_>) -> AuthSettings {
    let raw_mode = r.string("AUTH_MODE", "none").to_ascii_lowercase();
    let modes: Vec<&str> = raw_mode.split(',').map(str::trim).collect();
    let mut mode = AuthMode::None;
    let mut oidc = false;
    for name in &modes {
        match *name {
            "none" if modes.len() == 1 => {}
            "none" => r
                .errors
                .push("AUTH_MODE: none cannot be combined with other modes".to_string()),
            "local" => mode = AuthMode::Local,
            "oidc" => {
                oidc = true;
                if mode == AuthMode::None {
                    mode = AuthMode::Oidc;
                }
            }
            "proxy" => r.errors.push(format!(
                "AUTH_MODE={name} is not available in this version yet (use none or local)"
            )),
            other => r
                .errors
                .push(format!("AUTH_MODE={other:?} is not one of none, local")),
        }
    }
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
    let allow_anonymous = r.boolean("ALLOW_ANONYMOUS", mode == AuthMode::None);
    if mode == AuthMode::None && !allow_anonymous {
        r.errors
            .push("ALLOW_ANONYMOUS=false needs AUTH_MODE=local (there is no other way in)".into());
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
    let oidc = super::oidc::read(r, oidc);
    AuthSettings {
        oidc,
        mode,
        signup,
        allow_anonymous,
        trusted_proxies,
    }
}
