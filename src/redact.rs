//! Keeping passwords out of what the server prints: the one place that
//! finds the credentials in a connection URI (`MONGODB_URI`, `REDIS_URL`)
//! and hides them, in the URI itself or in any text (a driver's error
//! message) that may repeat them.

/// What a hidden value is shown as.
pub const MASK: &str = "***";

/// The URI with everything before its last `@` (user and password) hidden:
/// `redis://:hunter2@cache:6379/0` → `redis://***@cache:6379/0`. A URI
/// without `@` is shown as it is.
pub fn url(uri: &str) -> String {
    let (scheme, rest) = split_scheme(uri);
    match rest.rfind('@') {
        Some(at) => format!("{scheme}{MASK}{}", &rest[at..]),
        None => uri.to_string(),
    }
}

/// `("scheme://", rest)`, or `("", uri)` without a scheme.
fn split_scheme(uri: &str) -> (&str, &str) {
    match uri.find("://") {
        Some(at) => uri.split_at(at + 3),
        None => ("", uri),
    }
}

/// Strings that must never appear in an error message (a URI's password).
#[derive(Debug, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Hides the password of `uri`, as written and percent-decoded.
    pub fn for_uri(uri: &str) -> Self {
        let mut secrets = Vec::new();
        if let Some(password) = uri_password(uri) {
            if let Some(decoded) = percent_decode(&password) {
                if decoded != password && !decoded.is_empty() {
                    secrets.push(decoded);
                }
            }
            if !password.is_empty() {
                secrets.push(password);
            }
        }
        Self { secrets }
    }

    /// Hides `secret` too.
    pub fn add(&mut self, secret: &str) {
        if !secret.is_empty() && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_string());
        }
    }

    /// `text` with every secret replaced by [`MASK`].
    pub fn clean(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), MASK);
        }
        out
    }
}

/// The password part of `scheme://user:password@hosts/...`, as written.
fn uri_password(uri: &str) -> Option<String> {
    let rest = &uri[uri.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let (_, password) = userinfo.split_once(':')?;
    Some(password.to_string())
}

fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::url as redact;
    use super::*;

    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(
            redact("redis://:hunter2@cache:6379/0"),
            "redis://***@cache:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn the_uri_password_is_found_and_redacted() {
        let redactor = Redactor::for_uri("mongodb://app:s3cr%40t@db.example:27017/chat?tls=true");
        assert_eq!(
            redactor.clean("auth failed for app:s3cr%40t and s3cr@t"),
            "auth failed for app:*** and ***"
        );
        assert_eq!(uri_password("mongodb://db:27017"), None);
        assert_eq!(uri_password("mongodb://user@db:27017"), None);
        assert_eq!(
            uri_password("mongodb+srv://u:p:w@cluster.example/?x=1").as_deref(),
            Some("p:w")
        );
        assert_eq!(Redactor::for_uri("mongodb://127.0.0.1").clean("x"), "x");
    }
}
