//! Local accounts' rules: what an email, a name and a password must look
//! like, password hashing with argon2id (PHC strings), and personal access
//! tokens (made here, stored as their SHA-256). Password hashing is slow on
//! purpose, so it runs on the blocking pool, never on the async workers.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

use crate::error::ApiError;

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted (hashing cost grows with it).
pub const MAX_PASSWORD_CHARS: usize = 1024;
const MAX_EMAIL_CHARS: usize = 254;
const MAX_NAME_CHARS: usize = 100;

/// The email, trimmed and lowercased, if it looks like one
/// (`local@domain.tld`, no spaces, at most 254 characters).
pub fn normalise_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let valid = email.chars().count() <= MAX_EMAIL_CHARS
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid {
        Ok(email)
    } else {
        Err(ApiError::invalid("Enter a valid email address."))
    }
}

/// Checks a new password's length.
pub fn check_password(password: &str) -> Result<(), ApiError> {
    let length = password.chars().count();
    if length < MIN_PASSWORD_CHARS {
        return Err(ApiError::invalid(format!(
            "The password needs at least {MIN_PASSWORD_CHARS} characters."
        )));
    }
    if length > MAX_PASSWORD_CHARS {
        return Err(ApiError::invalid(format!(
            "The password may have at most {MAX_PASSWORD_CHARS} characters."
        )));
    }
    Ok(())
}

/// The display name: the given one trimmed (at most 100 characters, no
/// control characters), else the email's local part.
pub fn display_name(raw: Option<&str>, email: &str) -> Result<String, ApiError> {
    let name = raw.map(str::trim).unwrap_or_default();
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "The name may have at most {MAX_NAME_CHARS} characters."
        )));
    }
    if name.is_empty() {
        return Ok(email.split('@').next().unwrap_or(email).to_string());
    }
    Ok(name.to_string())
}

/// What every personal access token starts with (so a leaked one is easy
/// to recognise in logs and by secret scanners).
pub const TOKEN_PREFIX: &str = "lcs_";

/// A new personal access token: the prefix and 192 random bits in hex.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex_192())
}

/// A new share link token (the last part of `/share/<token>`): 192
/// random bits in hex, 48 digits.
pub fn new_share_token() -> String {
    random_hex_192()
}

/// 192 random bits as 48 lowercase hex digits: the secret part of every
/// token this module makes.
fn random_hex_192() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether `raw` could be a share link token (48 lowercase hex digits), so
/// anything else is refused before a look-up.
pub fn is_share_token(raw: &str) -> bool {
    raw.len() == 48 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The stored form of a token: its SHA-256 in hex. (A token is random and
/// long, so a fast hash is enough; nothing can be guessed from it.)
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// Hashes a password with argon2id and a random salt.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
}

/// Whether `password` matches the PHC string `hash`. Without a hash (no
/// such account) a dummy one is checked, so the answer takes as long
/// either way.
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let known = hash.is_some();
    let matched = tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| {
                    Argon2::default()
                        .hash_password(b"no account has this password")
                        .map(|hash| hash.to_string())
                        .unwrap_or_default()
                })
                .clone()
        });
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    known && matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lowercased_and_checked() {
        assert_eq!(
            normalise_email(" Ann@Example.ORG ").unwrap(),
            "ann@example.org"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@x.org",
            "a b@x.org",
            "ann@x",
            "a@b@x.org",
            "ann@.org",
        ] {
            assert_eq!(
                normalise_email(bad).unwrap_err().to_string(),
                "Enter a valid email address.",
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hash = hash_password("correct horse".into()).await.unwrap();

        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), Some(hash.clone())).await);
        assert!(!verify_password("wrong horse".into(), Some(hash)).await);
        assert!(!verify_password("correct horse".into(), None).await);
    }

    #[test]
    fn tokens_are_long_random_and_stored_as_a_hash() {
        let (one, two) = (new_token(), new_token());
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {one}").parse().unwrap());

        assert!(one.starts_with(TOKEN_PREFIX) && one.len() == 52);
        assert_ne!(one, two);
        assert_eq!(token_hash(&one).len(), 64);
        assert_ne!(token_hash(&one), token_hash(&two));
        assert_eq!(bearer_token(&headers), Some(one.as_str()));
    }

    #[test]
    fn share_tokens_are_48_hex_digits_and_nothing_else_passes() {
        let (one, two) = (new_share_token(), new_share_token());

        assert!(is_share_token(&one) && is_share_token(&two));
        assert_ne!(one, two);
        assert!(!is_share_token(&one[..47]));
        assert!(!is_share_token(&format!("{one}0")));
        assert!(!is_share_token(&one.to_uppercase()));
        assert!(!is_share_token(&format!("{}g", &one[..47])));
        assert!(!is_share_token(""));
    }

    #[test]
    fn passwords_need_eight_characters_and_names_default_to_the_email() {
        assert_eq!(
            check_password("short").unwrap_err().to_string(),
            "The password needs at least 8 characters."
        );
        assert!(check_password("long enough").is_ok());
        assert_eq!(display_name(None, "ann@x.org").unwrap(), "ann");
        assert_eq!(display_name(Some(" Ann "), "ann@x.org").unwrap(), "Ann");
    }
}
