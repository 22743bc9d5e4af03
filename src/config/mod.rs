//! Settings: the original app's `.env` names plus new flat ones, read once at
//! start, every value validated. The full table is in the README ("Configuration").
//!
//! Loading is split from the process environment (`Settings::from_lookup`) so
//! the parsing rules are unit-tested without touching global state.

mod auth;
mod http;
mod limits;
pub mod models;
mod oidc;
mod provider;
mod reader;
pub mod redis_url;
mod secret;

pub use auth::{AuthMethods, AuthSettings, ProxyAuth, SignupPolicy};
pub use http::HttpLimits;
pub use limits::ConversationLimits;
pub use models::{ModelCatalog, ModelSpec};
pub use oidc::{OidcProvider, OidcSettings};
pub use provider::{AzureAuth, LlmProvider, Tokenizer};
use reader::Reader;
pub use secret::Secret;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The largest daily token quota accepted (from `QUOTA_TOKENS_PER_DAY` or
/// an admin): a million million, far above any real day and exact in a
/// JavaScript number.
pub const MAX_QUOTA_TOKENS_PER_DAY: u64 = 1_000_000_000_000;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the server reads from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub database_path: PathBuf,
    pub saved_conversations_dir: PathBuf,
    pub secret_key: Option<Secret>,
    pub mongodb_uri: Option<String>,
    pub mongodb_db: String,
    pub redis_url: Option<String>,
    /// CA and client certificate files for a `rediss://` `REDIS_URL`.
    pub redis_tls: redis_url::RedisTls,
    pub redis_prefix: String,
    pub rate_limit_messages_per_minute: u32,
    pub rate_limit_uploads_per_hour: u32,
    /// Anonymous sessions first stored per client address per hour; 0: no limit.
    pub rate_limit_new_sessions_per_ip_per_hour: u32,
    /// Anonymous users' messages per client address per minute; 0: no limit.
    pub rate_limit_messages_per_ip_per_minute: u32,
    /// Anonymous users' uploads per client address per hour; 0: no limit.
    pub rate_limit_uploads_per_ip_per_hour: u32,
    /// `POST /save_history` calls per user per hour; 0: no limit.
    pub rate_limit_saves_per_hour: u32,
    /// `GET /search_conversations` calls per user per minute; 0: no limit.
    pub rate_limit_searches_per_minute: u32,
    /// The largest file `POST /save_history` writes, in bytes.
    pub save_history_max_bytes: u64,
    pub reply_resume_ttl: Duration,
    /// A reply in flight whose instance has not renewed its lease for this
    /// long is ended by another instance (Redis mode).
    pub reply_lease: Duration,
    /// Pub/sub messages an instance buffers before the oldest are lost
    /// (and read again from the reply logs).
    pub redis_pubsub_buffer: usize,
    pub disconnect_grace: Duration,
    pub shutdown_grace: Duration,
    /// The single-model variables' provider; the default model of the
    /// catalogue when `MODELS_FILE` is not set (use `models`).
    pub llm: LlmProvider,
    /// The models people can pick (`MODELS_FILE`, or one made of the
    /// single-model variables); the first is the default.
    pub models: ModelCatalog,
    pub temperature: f32,
    pub top_p: f32,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_attempts: u32,
    pub retry_max_wait: Duration,
    pub llm_titles: bool,
    /// Replies generated at once by this instance; 0: no cap.
    pub llm_max_concurrency: u32,
    /// `LLM_STREAM_USAGE`: ask for the usage chunk in streamed replies
    /// (`stream_options.include_usage`); `None` (`auto`): where the
    /// provider is known to take it (see `llm::openai`).
    pub llm_stream_usage: Option<bool>,
    /// Tokens (prompt + completion) a user may spend per UTC day unless an
    /// admin set their own quota; 0: no quota.
    pub quota_tokens_per_day: u64,
    pub max_tokens: u32,
    pub reply_tokens: u32,
    pub summary_tokens: u32,
    pub tokenizer: Tokenizer,
    pub chunk_size_tokens: u32,
    pub max_file_size_bytes: u64,
    pub max_file_size_mb: f64,
    pub allowed_extensions: Vec<String>,
    pub upload_concurrency: usize,
    /// Bytes of conversation text kept in memory (embedded mode); 0: none.
    pub conversation_cache_bytes: usize,
    pub max_message_chars: usize,
    pub cors_allowed_origins: Vec<String>,
    pub cookie_secure: bool,
    pub session_ttl: Duration,
    pub log_format: LogFormat,
    /// Accounts, sign-up, anonymous use, trusted proxies.
    pub auth: AuthSettings,
    /// Timeouts and the connection cap of the HTTP server.
    pub http: HttpLimits,
    /// How large one conversation may grow (`MAX_CONVERSATION_*`).
    pub conversation_limits: ConversationLimits,
    /// `IMPORT_MAX_BYTES`: the largest ChatGPT export `POST /import/chatgpt`
    /// takes.
    pub import_max_bytes: u64,
}

/// Every problem found in the environment, one line each.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for line in &self.0 {
            writeln!(f, "  - {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Settings {
    /// Reads `.env` (if any) into the process environment, then the settings.
    pub fn load() -> Result<Self, ConfigErrors> {
        // A missing .env is normal; a malformed one is worth saying.
        if let Err(err) = dotenvy::dotenv() {
            if !err.not_found() {
                return Err(ConfigErrors(vec![format!(".env could not be read: {err}")]));
            }
        }
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Builds settings from a variable lookup; see the README's configuration table.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut r = Reader {
            lookup,
            errors: Vec::new(),
        };

        let host = r.string("HOST", "127.0.0.1");
        let port = r.parse::<u16>("PORT", 5000, "a port number (0-65535)");
        let database_path = PathBuf::from(r.string("DATABASE_PATH", "data/chat.db"));
        let saved_conversations_dir =
            PathBuf::from(r.string("SAVED_CONVERSATIONS_DIR", "saved_conversations"));
        let secret_key = r.raw("SECRET_KEY").map(Secret);
        let mongodb_uri = r.raw("MONGODB_URI");
        let mongodb_db = r.string("MONGODB_DB", "chatbot_db");
        if mongodb_db.is_empty()
            || mongodb_db.len() > 63
            || mongodb_db.contains(['/', '\\', '.', ' ', '"', '$', '*', '<', '>', ':', '|', '?'])
        {
            r.errors.push(format!(
                "MONGODB_DB={mongodb_db:?} is not a valid MongoDB database name"
            ));
        }
        let redis_url = r.raw("REDIS_URL");
        let redis_prefix = r.string("REDIS_PREFIX", "chat");
        if redis_prefix.is_empty()
            || redis_prefix.len() > 64
            || !redis_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            r.errors.push(format!(
                "REDIS_PREFIX={redis_prefix:?} must be 1-64 letters, digits, '-', '_' or '.'"
            ));
        }
        let redis_target = match redis_url.as_deref().map(redis_url::check) {
            Some(Err(error)) => {
                r.errors.push(error);
                None
            }
            Some(Ok(target)) => Some(target),
            None => None,
        };
        let redis_tls = read_redis_tls(&mut r, redis_url.is_some(), redis_target);
        if redis_url.is_some() {
            match &secret_key {
                None => r.errors.push(
                    "REDIS_URL is set (several instances) but SECRET_KEY is not: set SECRET_KEY to the \
                     same random string (at least 32 characters) on every instance; it signs the session cookie"
                        .to_string(),
                ),
                Some(key) if key.expose().chars().count() < 32 => r.errors.push(
                    "SECRET_KEY must be at least 32 characters (it signs the session cookie)".to_string(),
                ),
                Some(_) => {}
            }
        }
        let rate_limit_messages_per_minute = r.parse::<u32>(
            "RATE_LIMIT_MESSAGES_PER_MINUTE",
            30,
            "a whole number (0 = no limit)",
        );
        let rate_limit_uploads_per_hour = r.parse::<u32>(
            "RATE_LIMIT_UPLOADS_PER_HOUR",
            60,
            "a whole number (0 = no limit)",
        );
        let rate_limit_new_sessions_per_ip_per_hour = r.parse::<u32>(
            "RATE_LIMIT_NEW_SESSIONS_PER_IP_PER_HOUR",
            100,
            "a whole number (0 = no limit)",
        );
        let rate_limit_messages_per_ip_per_minute = r.parse::<u32>(
            "RATE_LIMIT_MESSAGES_PER_IP_PER_MINUTE",
            120,
            "a whole number (0 = no limit)",
        );
        let rate_limit_uploads_per_ip_per_hour = r.parse::<u32>(
            "RATE_LIMIT_UPLOADS_PER_IP_PER_HOUR",
            240,
            "a whole number (0 = no limit)",
        );
        let rate_limit_saves_per_hour = r.parse::<u32>(
            "RATE_LIMIT_SAVES_PER_HOUR",
            30,
            "a whole number (0 = no limit)",
        );
        let rate_limit_searches_per_minute = r.parse::<u32>(
            "RATE_LIMIT_SEARCHES_PER_MINUTE",
            60,
            "a whole number (0 = no limit)",
        );
        let save_history_max_bytes = r.positive("SAVE_HISTORY_MAX_MB", 32).min(1024) * 1024 * 1024;
        let reply_resume_ttl = r.seconds("REPLY_RESUME_TTL_SECONDS", 120.0);
        let reply_lease = r.seconds("REPLY_LEASE_SECONDS", 5.0);
        if reply_lease < Duration::from_secs(2) {
            r.errors
                .push("REPLY_LEASE_SECONDS must be at least 2".to_string());
        }
        let redis_pubsub_buffer = r.positive("REDIS_PUBSUB_BUFFER", 8192).min(1 << 20) as usize;
        let shutdown_grace = r.seconds("SHUTDOWN_GRACE_SECONDS", 30.0);
        // 0 is allowed here: stop at once when the socket goes.
        let disconnect_grace = match r.raw("DISCONNECT_GRACE_SECONDS") {
            None => Duration::from_secs(10),
            Some(v) => match v.parse::<f64>() {
                Ok(s) if (0.0..=3600.0).contains(&s) => Duration::from_secs_f64(s),
                _ => {
                    r.errors.push(format!(
                        "DISCONNECT_GRACE_SECONDS={v:?} must be between 0 and 3600"
                    ));
                    Duration::from_secs(10)
                }
            },
        };

        let llm = Self::read_provider(&mut r);
        let temperature = r.parse::<f32>("LLM_TEMPERATURE", 0.7, "a number");
        if !(0.0..=2.0).contains(&temperature) {
            r.errors
                .push("LLM_TEMPERATURE must be between 0 and 2".to_string());
        }
        let top_p = r.parse::<f32>("LLM_TOP_P", 0.95, "a number");
        if !(0.0..=1.0).contains(&top_p) {
            r.errors
                .push("LLM_TOP_P must be between 0 and 1".to_string());
        }
        let connect_timeout = r.seconds("LLM_CONNECT_TIMEOUT_SECONDS", 10.0);
        let first_byte_timeout = r.seconds("LLM_FIRST_BYTE_TIMEOUT_SECONDS", 60.0);
        let idle_timeout = r.seconds("LLM_IDLE_TIMEOUT_SECONDS", 60.0);
        let max_attempts = r.positive("LLM_MAX_ATTEMPTS", 3).min(10) as u32;
        let retry_max_wait = r.seconds("LLM_RETRY_MAX_WAIT_SECONDS", 20.0);
        let llm_titles = r.boolean("LLM_TITLES", false);
        let llm_max_concurrency =
            r.parse::<u32>("LLM_MAX_CONCURRENCY", 0, "a whole number (0: no cap)");
        let llm_stream_usage = match r
            .string("LLM_STREAM_USAGE", "auto")
            .to_ascii_lowercase()
            .as_str()
        {
            "auto" => None,
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            other => {
                r.errors.push(format!(
                    "LLM_STREAM_USAGE={other:?} is not one of auto, true, false"
                ));
                None
            }
        };
        let quota_tokens_per_day = r.parse::<u64>(
            "QUOTA_TOKENS_PER_DAY",
            0,
            "a whole number of tokens (0: no quota)",
        );
        if quota_tokens_per_day > MAX_QUOTA_TOKENS_PER_DAY {
            r.errors.push(format!(
                "QUOTA_TOKENS_PER_DAY must be at most {MAX_QUOTA_TOKENS_PER_DAY}"
            ));
        }

        let max_tokens = r.positive("MAX_TOKENS", 128_000).min(u32::MAX as u64) as u32;
        let reply_tokens = r.positive("REPLY_TOKENS", 800).min(u32::MAX as u64) as u32;
        if reply_tokens >= max_tokens {
            r.errors.push(format!(
                "REPLY_TOKENS ({reply_tokens}) must be smaller than MAX_TOKENS ({max_tokens})"
            ));
        } else if max_tokens - reply_tokens < 50 {
            r.errors.push(format!(
                "MAX_TOKENS - REPLY_TOKENS leaves only {} tokens for the prompt; at least 50 are needed",
                max_tokens - reply_tokens
            ));
        }
        let summary_tokens = r.positive("SUMMARY_TOKENS", 500) as u32;
        let tokenizer = match r.string("TOKENIZER", "cl100k_base").as_str() {
            "cl100k_base" => Tokenizer::Cl100kBase,
            "o200k_base" => Tokenizer::O200kBase,
            other => {
                r.errors.push(format!(
                    "TOKENIZER={other:?} is not one of cl100k_base, o200k_base"
                ));
                Tokenizer::Cl100kBase
            }
        };
        let models = models::read(
            &mut r,
            models::Fallback {
                provider: llm.clone(),
                max_tokens,
                reply_tokens,
                tokenizer,
                temperature,
            },
        );
        let chunk_size_tokens = r.positive("CHUNK_SIZE_TOKENS", 1000).min(1_000_000) as u32;

        // The original accepted values like "5m"; keep that, and "5MB".
        let max_file_size_mb = match r.raw("MAX_FILE_SIZE_MB") {
            None => 5.0,
            Some(v) => {
                let number = v
                    .trim_end_matches(['b', 'B'])
                    .trim_end_matches(['m', 'M'])
                    .trim();
                match number.parse::<f64>() {
                    Ok(mb) if mb > 0.0 && mb <= 1024.0 => mb,
                    _ => {
                        r.errors.push(format!(
                            "MAX_FILE_SIZE_MB={v:?} is not a size in megabytes between 0 and 1024"
                        ));
                        5.0
                    }
                }
            }
        };
        let max_file_size_bytes = (max_file_size_mb * 1024.0 * 1024.0) as u64;
        let allowed_extensions: Vec<String> = r
            .string("ALLOWED_EXTENSIONS", "txt,md,json")
            .split(',')
            .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        if allowed_extensions.is_empty() {
            r.errors
                .push("ALLOWED_EXTENSIONS must name at least one extension".to_string());
        }
        let upload_concurrency = r.positive("UPLOAD_CONCURRENCY", 4).min(64) as usize;
        let conversation_cache_bytes = r
            .parse::<u64>(
                "CONVERSATION_CACHE_MB",
                64,
                "a whole number of megabytes (0 = no cache)",
            )
            .min(1 << 20) as usize
            * 1024
            * 1024;
        let max_message_chars = r.positive("MAX_MESSAGE_CHARS", 32_000).min(10_000_000) as usize;
        let cors_allowed_origins: Vec<String> = r
            .raw("CORS_ALLOWED_ORIGINS")
            .map(|v| {
                v.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if cors_allowed_origins.iter().any(|o| o.contains('*')) {
            // Sessions are cookies: a wildcard (mirrored, as credentials
            // require) would let any web site read a signed-in user's data.
            r.errors.push(
                "CORS_ALLOWED_ORIGINS must list origins (https://app.example,...): `*` is refused because sessions use cookies and any site could read a user's data"
                    .to_string(),
            );
        }
        let cookie_secure = r.boolean("COOKIE_SECURE", false);
        // Days, fractions allowed (`0.5` is twelve hours; tests use seconds'
        // worth), at least one second, at most ten years.
        let session_ttl_days = r.parse::<f64>("SESSION_TTL_DAYS", 30.0, "a number of days");
        let session_ttl = if session_ttl_days.is_finite() && session_ttl_days * 86_400.0 >= 1.0 {
            Duration::from_secs((session_ttl_days.min(3650.0) * 86_400.0).round() as u64)
        } else {
            r.errors.push(format!(
                "SESSION_TTL_DAYS must be greater than 0 (at least one second), got {session_ttl_days}"
            ));
            Duration::from_secs(30 * 86_400)
        };
        let log_format = match r.string("LOG_FORMAT", "text").as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                r.errors
                    .push(format!("LOG_FORMAT={other:?} is not one of text, json"));
                LogFormat::Text
            }
        };

        let auth = auth::read(&mut r);
        let http = http::read(&mut r);
        let conversation_limits = limits::read(&mut r);
        let import_max_bytes = r.positive("IMPORT_MAX_BYTES", 50 * 1024 * 1024);

        if !r.errors.is_empty() {
            return Err(ConfigErrors(r.errors));
        }
        Ok(Settings {
            host,
            port,
            database_path,
            saved_conversations_dir,
            secret_key,
            mongodb_uri,
            mongodb_db,
            redis_url,
            redis_tls,
            redis_prefix,
            rate_limit_messages_per_minute,
            rate_limit_uploads_per_hour,
            rate_limit_saves_per_hour,
            rate_limit_searches_per_minute,
            save_history_max_bytes,
            rate_limit_new_sessions_per_ip_per_hour,
            rate_limit_messages_per_ip_per_minute,
            rate_limit_uploads_per_ip_per_hour,
            reply_resume_ttl,
            reply_lease,
            redis_pubsub_buffer,
            disconnect_grace,
            shutdown_grace,
            llm,
            models,
            temperature,
            top_p,
            connect_timeout,
            first_byte_timeout,
            idle_timeout,
            max_attempts,
            retry_max_wait,
            llm_titles,
            llm_max_concurrency,
            llm_stream_usage,
            quota_tokens_per_day,
            max_tokens,
            reply_tokens,
            summary_tokens,
            tokenizer,
            chunk_size_tokens,
            max_file_size_bytes,
            max_file_size_mb,
            allowed_extensions,
            upload_concurrency,
            conversation_cache_bytes,
            max_message_chars,
            cors_allowed_origins,
            cookie_secure,
            session_ttl,
            log_format,
            auth,
            http,
            conversation_limits,
            import_max_bytes,
        })
    }

    fn read_provider(r: &mut Reader<'_>) -> LlmProvider {
        let azure_url = r.raw("AZURE_API_URL");
        let openai_base = r.raw("OPENAI_BASE_URL");
        let openai_key = r.raw("OPENAI_API_KEY");
        let chosen = r.raw("LLM_PROVIDER").map(|p| p.to_ascii_lowercase());
        let provider = match chosen.as_deref() {
            Some(p) => p.to_string(),
            None if azure_url.is_some() => "azure".to_string(),
            None if openai_base.is_some() || openai_key.is_some() => "openai".to_string(),
            None => "demo".to_string(),
        };
        match provider.as_str() {
            "azure" => {
                let Some(url) = azure_url else {
                    r.errors
                        .push("LLM_PROVIDER=azure needs AZURE_API_URL".to_string());
                    return LlmProvider::Demo;
                };
                check_http_url(r, "AZURE_API_URL", &url);
                let key = r.raw("API_KEY").unwrap_or_default();
                if key.is_empty() {
                    r.errors
                        .push("AZURE_API_URL is set but API_KEY is empty".to_string());
                }
                let auth = match r
                    .string("AZURE_AUTH_HEADER", "bearer")
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "bearer" => AzureAuth::Bearer,
                    "api-key" => AzureAuth::ApiKey,
                    other => {
                        r.errors.push(format!(
                            "AZURE_AUTH_HEADER={other:?} is not one of bearer, api-key"
                        ));
                        AzureAuth::Bearer
                    }
                };
                LlmProvider::Azure {
                    url,
                    key: Secret(key),
                    auth,
                }
            }
            "openai" => {
                let base_url = openai_base
                    .unwrap_or_else(|| "https://api.openai.com/v1".to_string())
                    .trim_end_matches('/')
                    .to_string();
                check_http_url(r, "OPENAI_BASE_URL", &base_url);
                let Some(model) = r.raw("LLM_MODEL") else {
                    r.errors.push(
                        "LLM_PROVIDER=openai needs LLM_MODEL (the model name to request)"
                            .to_string(),
                    );
                    return LlmProvider::Demo;
                };
                LlmProvider::OpenAi {
                    base_url,
                    key: Secret(openai_key.unwrap_or_default()),
                    model,
                }
            }
            "demo" => LlmProvider::Demo,
            other => {
                r.errors.push(format!(
                    "LLM_PROVIDER={other:?} is not one of azure, openai, demo"
                ));
                LlmProvider::Demo
            }
        }
    }

    /// The address to bind, `HOST:PORT`.
    pub fn bind_address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Tokens the prompt may use: `MAX_TOKENS - REPLY_TOKENS`.
    pub fn prompt_budget(&self) -> u32 {
        self.max_tokens - self.reply_tokens
    }

    /// Settings for tests of the library: demo LLM, given database path.
    pub fn for_tests(database_path: PathBuf) -> Self {
        let mut vars = HashMap::new();
        vars.insert("DATABASE_PATH", database_path.display().to_string());
        vars.insert("PORT", "0".to_string());
        Self::from_lookup(&|name| vars.get(name).cloned()).expect("test settings are valid")
    }
}

/// `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE` and `REDIS_TLS_KEY_FILE`: only with a TLS
/// `REDIS_URL` (set with a plain one, they would be silently unused), and the certificate
/// with its key. The files are read when the server connects.
fn read_redis_tls(
    r: &mut Reader<'_>,
    url_set: bool,
    target: Option<redis_url::RedisTarget>,
) -> redis_url::RedisTls {
    let ca_file = r.raw("REDIS_TLS_CA_FILE").map(PathBuf::from);
    let cert_file = r.raw("REDIS_TLS_CERT_FILE").map(PathBuf::from);
    let key_file = r.raw("REDIS_TLS_KEY_FILE").map(PathBuf::from);
    let named: Vec<&str> = [
        ("REDIS_TLS_CA_FILE", ca_file.is_some()),
        ("REDIS_TLS_CERT_FILE", cert_file.is_some()),
        ("REDIS_TLS_KEY_FILE", key_file.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if !named.is_empty() {
        let named = named.join(" and ");
        if !url_set {
            r.errors.push(format!("{named} set but REDIS_URL is not"));
        } else if target.is_some_and(|t| !t.tls) {
            r.errors.push(format!(
                "{named} set but REDIS_URL does not use TLS: use rediss:// (rediss-cluster://, \
                 rediss-sentinel://) for TLS to Redis"
            ));
        }
    }
    let client = match (cert_file, key_file) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            r.errors.push(
                "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together (a client certificate \
                 and its private key)"
                    .to_string(),
            );
            None
        }
    };
    redis_url::RedisTls { ca_file, client }
}

fn check_http_url(r: &mut Reader<'_>, name: &str, url: &str) {
    if !(url.starts_with("http://") || url.starts_with("https://"))
        || reqwest::Url::parse(url).is_err()
    {
        r.errors
            .push(format!("{name}={url:?} is not an http(s) URL"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(&|name| map.get(name).cloned())
    }

    #[test]
    fn nothing_configured_gives_demo_on_port_5000() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.llm, LlmProvider::Demo);
        assert_eq!(s.bind_address(), "127.0.0.1:5000");
        assert_eq!(s.prompt_budget(), 128_000 - 800);
        assert_eq!(s.allowed_extensions, vec!["txt", "md", "json"]);
        assert_eq!(s.max_file_size_bytes, 5 * 1024 * 1024);
    }

    #[test]
    fn azure_url_selects_azure_with_bearer_auth() {
        let s = settings(&[
            ("AZURE_API_URL", "https://x.openai.azure.com/chat"),
            ("API_KEY", "k"),
        ])
        .unwrap();
        assert!(matches!(
            s.llm,
            LlmProvider::Azure {
                auth: AzureAuth::Bearer,
                ..
            }
        ));
    }

    #[test]
    fn every_bad_value_is_reported_by_name() {
        let err = settings(&[
            ("PORT", "eighty"),
            ("MAX_TOKENS", "100"),
            ("REPLY_TOKENS", "200"),
            ("LLM_PROVIDER", "openai"),
        ])
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("PORT=\"eighty\""), "{text}");
        assert!(
            text.contains("REPLY_TOKENS (200) must be smaller than MAX_TOKENS (100)"),
            "{text}"
        );
        assert!(text.contains("LLM_MODEL"), "{text}");
    }

    #[test]
    fn quota_and_stream_usage_are_read_and_checked() {
        let defaults = settings(&[]).unwrap();
        assert_eq!(defaults.quota_tokens_per_day, 0);
        assert_eq!(defaults.llm_stream_usage, None);
        let set = settings(&[
            ("QUOTA_TOKENS_PER_DAY", "50000"),
            ("LLM_STREAM_USAGE", "false"),
        ])
        .unwrap();
        assert_eq!(set.quota_tokens_per_day, 50_000);
        assert_eq!(set.llm_stream_usage, Some(false));
        let err = settings(&[
            ("QUOTA_TOKENS_PER_DAY", "-5"),
            ("LLM_STREAM_USAGE", "sometimes"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("QUOTA_TOKENS_PER_DAY"), "{err}");
        assert!(err.contains("LLM_STREAM_USAGE=\"sometimes\""), "{err}");
        let huge = settings(&[("QUOTA_TOKENS_PER_DAY", "1000000000001")]).unwrap_err();
        assert!(huge.to_string().contains("at most 1000000000000"), "{huge}");
    }

    #[test]
    fn file_size_accepts_the_original_m_suffix() {
        let s = settings(&[("MAX_FILE_SIZE_MB", "2m")]).unwrap();
        assert_eq!(s.max_file_size_bytes, 2 * 1024 * 1024);
        assert!(settings(&[("MAX_FILE_SIZE_MB", "-1")]).is_err());
    }

    #[test]
    fn secrets_are_not_printed_by_debug() {
        let s = settings(&[("AZURE_API_URL", "https://x/chat"), ("API_KEY", "hunter2")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn redis_tls_files_need_a_tls_redis_url_and_go_in_pairs() {
        let secret = "s".repeat(40);
        let base = [
            ("REDIS_URL", "rediss://redis.internal:6380/0"),
            ("SECRET_KEY", secret.as_str()),
        ];
        let s = settings(&base).unwrap();
        assert_eq!(s.redis_tls, redis_url::RedisTls::default());
        let mut vars = base.to_vec();
        vars.extend([
            ("REDIS_TLS_CA_FILE", "/etc/redis/ca.pem"),
            ("REDIS_TLS_CERT_FILE", "/etc/redis/client.pem"),
            ("REDIS_TLS_KEY_FILE", "/etc/redis/client.key"),
        ]);
        let s = settings(&vars).unwrap();
        assert_eq!(
            s.redis_tls,
            redis_url::RedisTls {
                ca_file: Some(PathBuf::from("/etc/redis/ca.pem")),
                client: Some((
                    PathBuf::from("/etc/redis/client.pem"),
                    PathBuf::from("/etc/redis/client.key")
                )),
            }
        );

        let errors = |vars: &[(&str, &str)]| settings(vars).unwrap_err().to_string();
        let plain = errors(&[
            ("REDIS_URL", "redis://redis.internal:6379/0"),
            ("SECRET_KEY", &secret),
            ("REDIS_TLS_CA_FILE", "/etc/redis/ca.pem"),
        ]);
        assert!(
            plain.contains("REDIS_TLS_CA_FILE set but REDIS_URL does not use TLS"),
            "{plain}"
        );
        let unset = errors(&[("REDIS_TLS_CA_FILE", "/etc/redis/ca.pem")]);
        assert!(
            unset.contains("REDIS_TLS_CA_FILE set but REDIS_URL is not"),
            "{unset}"
        );
        let half = errors(&[
            base[0],
            base[1],
            ("REDIS_TLS_CERT_FILE", "/etc/redis/client.pem"),
        ]);
        assert!(half.contains("go together"), "{half}");
    }
}

#[cfg(test)]
mod model_catalogue_tests {
    use std::collections::HashMap;

    use super::*;

    fn load(path: &str, extra: &[(&str, &str)]) -> Result<Settings, String> {
        let mut vars: HashMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.insert("MODELS_FILE".into(), path.into());
        Settings::from_lookup(&|name| vars.get(name).cloned()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_committed_example_loads_with_its_keys_from_the_environment() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/models.example.toml");
        let settings = load(
            path,
            &[
                ("AZURE_KEY_GPT4O", "azure-secret"),
                ("OPENAI_KEY", "openai-secret"),
                ("MAX_TOKENS", "64000"),
            ],
        )
        .unwrap();

        let ids: Vec<&str> = settings
            .models
            .models
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(ids, ["gpt-4o", "gpt-4o-mini", "llama3.1"]);
        let azure = settings.models.default_model();
        assert!(matches!(
            &azure.provider,
            LlmProvider::Azure { key, auth: AzureAuth::ApiKey, .. } if key.expose() == "azure-secret"
        ));
        assert_eq!((azure.max_tokens, azure.reply_tokens), (128_000, 1000));
        let local = settings.models.get("llama3.1").unwrap();
        assert!(matches!(
            &local.provider,
            LlmProvider::OpenAi { model, key, .. } if model == "llama3.1" && key.expose().is_empty()
        ));
        // Left out: the single-model variables' values.
        assert_eq!(local.tokenizer, Tokenizer::Cl100kBase);
        assert_eq!(settings.models.get("gpt-4o-mini").unwrap().temperature, 0.7);
        assert!(!format!("{settings:?}").contains("azure-secret"));
    }

    #[test]
    fn without_a_file_the_single_model_variables_are_the_one_default_model() {
        let settings = Settings::from_lookup(&|name| match name {
            "LLM_PROVIDER" => Some("openai".into()),
            "OPENAI_BASE_URL" => Some("http://127.0.0.1:9/v1".into()),
            "LLM_MODEL" => Some("llama3".into()),
            "MAX_TOKENS" => Some("9000".into()),
            "TOKENIZER" => Some("o200k_base".into()),
            _ => None,
        })
        .unwrap();

        assert_eq!(settings.models.models.len(), 1);
        let model = settings.models.default_model();
        assert_eq!(
            (model.id.as_str(), model.name.as_str()),
            ("default", "llama3")
        );
        assert_eq!(model.provider, settings.llm);
        assert_eq!((model.max_tokens, model.reply_tokens), (9000, 800));
        assert_eq!(model.tokenizer, Tokenizer::O200kBase);
    }

    #[test]
    fn every_problem_names_the_file_the_model_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.toml");
        std::fs::write(
            &path,
            r#"
[[models]]
id = "a"
provider = "openai"
base_url = "http://127.0.0.1:1/v1"
tokenizer = "gpt2"
temperature = 9

[[models]]
id = "a"
provider = "demo"

[[models]]
id = "bad id!"
provider = "demo"

[[models]]
id = "c"
provider = "bedrock"
"#,
        )
        .unwrap();
        let at = path.display().to_string();

        let err = load(&at, &[]).unwrap_err();

        for expected in [
            format!("MODELS_FILE {at}: models[0] (id \"a\").tokenizer=\"gpt2\" is not one of cl100k_base, o200k_base"),
            format!("MODELS_FILE {at}: models[0] (id \"a\").temperature must be between 0 and 2"),
            format!("MODELS_FILE {at}: models[1] (id \"a\").id: another model has this id"),
            format!("MODELS_FILE {at}: models[2].id=\"bad id!\" must be"),
            format!("MODELS_FILE {at}: models[3] (id \"c\").provider=\"bedrock\" is not one of azure, openai, demo"),
        ] {
            assert!(err.contains(&expected), "{expected:?} not in {err}");
        }
        let missing = load("/nonexistent/models.toml", &[]).unwrap_err();
        assert!(
            missing.contains("MODELS_FILE=\"/nonexistent/models.toml\" could not be read"),
            "{missing}"
        );
    }
}
