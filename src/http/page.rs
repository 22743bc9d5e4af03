//! The chat page (askama template) and its static files, which are compiled
//! into the binary so it runs from any folder.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::bodies::{AuthConfig, ClientConfig, ModelView, ProviderView};
use super::extract::SessionUser;
use crate::config::{SignupPolicy, Tokenizer};
use crate::error::ApiError;
use crate::sessions;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/get_config", get(get_config))
        .route("/static/{file}", get(static_file))
        .route("/static/vendor/{file}", get(vendor_file))
}

#[derive(Template, WebTemplate)]
#[template(path = "index.html")]
struct IndexTemplate {
    demo_mode: bool,
    model_label: String,
    max_tokens: u32,
    asset_version: String,
}

/// Serving the page also gives a first-time visitor their user id (a
/// cookie naming a pending session, stored only once it is given data)
/// where anonymous use is allowed; otherwise the page asks to sign in.
async fn index(
    State(state): State<AppState>,
    who: Result<SessionUser, ApiError>,
) -> Result<IndexTemplate, ApiError> {
    match who {
        Ok(who) if who.anonymous => sessions::begin_pending(&who.session).await?,
        Ok(_) | Err(ApiError::Unauthenticated) => {}
        Err(err) => return Err(err),
    }
    let info = state.chat.llm.info();
    Ok(IndexTemplate {
        demo_mode: info.demo,
        model_label: info.model,
        max_tokens: state.chat.models.default_model().spec.max_tokens,
        asset_version: state.asset_version.to_string(),
    })
}

async fn get_config(State(state): State<AppState>) -> Response {
    let settings = &state.chat.settings;
    let info = state.chat.llm.info();
    let models = state.chat.models.all();
    let default = &state.chat.models.default_model().spec;
    let auth = &settings.auth;
    let signup_open = match auth.signup {
        _ if !auth.local() => false,
        SignupPolicy::Open => true,
        SignupPolicy::Closed => false,
        // A failed look-up offers the form; sign-up itself decides.
        SignupPolicy::FirstOnly => !state.accounts.has_accounts().await.unwrap_or(false),
    };
    Json(ClientConfig {
        max_tokens: default.max_tokens,
        reply_tokens: default.reply_tokens,
        demo_mode: info.demo,
        provider: info.provider,
        model: &info.model,
        max_file_size_mb: settings.max_file_size_mb,
        allowed_extensions: &settings.allowed_extensions,
        max_message_chars: settings.max_message_chars,
        models: models
            .iter()
            .map(|model| ModelView {
                id: &model.spec.id,
                name: &model.spec.name,
                provider: model.spec.provider_name(),
                max_tokens: model.spec.max_tokens,
                reply_tokens: model.spec.reply_tokens,
                tokenizer: match model.spec.tokenizer {
                    Tokenizer::Cl100kBase => "cl100k_base",
                    Tokenizer::O200kBase => "o200k_base",
                },
                temperature: model.spec.temperature,
            })
            .collect(),
        default_model: &default.id,
        auth: AuthConfig {
            mode: auth.methods.name(),
            signup_open,
            anonymous: auth.allow_anonymous,
            providers: state
                .oidc
                .as_deref()
                .map(|providers| {
                    providers
                        .list
                        .iter()
                        .map(|provider| ProviderView {
                            id: provider.id.clone(),
                            name: provider.name.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        },
    })
    .into_response()
}

/// A file of static/vendor/, served as /static/vendor/<name>.
macro_rules! vendor {
    ($name:literal, $content_type:literal) => {
        (
            concat!("vendor/", $name),
            $content_type,
            include_bytes!(concat!("../../static/vendor/", $name)),
        )
    };
}

/// The static files: name (under /static/), content type, bytes.
pub const STATIC_FILES: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/app.js"),
    ),
    (
        "stream-events.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/stream-events.js"),
    ),
    (
        "search.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/search.js"),
    ),
    (
        "format.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/format.js"),
    ),
    (
        "limits.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/limits.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/admin.js"),
    ),
    (
        "socket.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/socket.js"),
    ),
    (
        "settings.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/settings.js"),
    ),
    (
        "share.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/share.js"),
    ),
    (
        "markdown.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/markdown.js"),
    ),
    (
        "state.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/state.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/api.js"),
    ),
    (
        "transcript.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/transcript.js"),
    ),
    (
        "sidebar.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/sidebar.js"),
    ),
    (
        "conversations.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/conversations.js"),
    ),
    (
        "dialogs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/dialogs.js"),
    ),
    (
        "upload.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/upload.js"),
    ),
    (
        "composer.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/composer.js"),
    ),
    (
        "live.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/live.js"),
    ),
    (
        "accounts.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/accounts.js"),
    ),
    (
        "tokens.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/tokens.js"),
    ),
    (
        "startup.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/startup.js"),
    ),
    (
        "shortcuts.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/shortcuts.js"),
    ),
    (
        "shares.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/shares.js"),
    ),
    (
        "import.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/import.js"),
    ),
    (
        "models.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/models.js"),
    ),
    (
        "branches.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/branches.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../static/favicon.svg"),
    ),
    // The third-party libraries, bundled by scripts/vendor.sh.
    vendor!("libs.js", "text/javascript; charset=utf-8"),
    vendor!("katex.css", "text/css; charset=utf-8"),
    vendor!("KaTeX_AMS-Regular.woff2", "font/woff2"),
    vendor!("KaTeX_Caligraphic-Bold.woff2", "font/woff2"),
    vendor!("KaTeX_Caligraphic-Regular.woff2", "font/woff2"),
    vendor!("KaTeX_Fraktur-Bold.woff2", "font/woff2"),
    vendor!("KaTeX_Fraktur-Regular.woff2", "font/woff2"),
    vendor!("KaTeX_Main-Bold.woff2", "font/woff2"),
    vendor!("KaTeX_Main-BoldItalic.woff2", "font/woff2"),
    vendor!("KaTeX_Main-Italic.woff2", "font/woff2"),
    vendor!("KaTeX_Main-Regular.woff2", "font/woff2"),
    vendor!("KaTeX_Math-BoldItalic.woff2", "font/woff2"),
    vendor!("KaTeX_Math-Italic.woff2", "font/woff2"),
    vendor!("KaTeX_SansSerif-Bold.woff2", "font/woff2"),
    vendor!("KaTeX_SansSerif-Italic.woff2", "font/woff2"),
    vendor!("KaTeX_SansSerif-Regular.woff2", "font/woff2"),
    vendor!("KaTeX_Script-Regular.woff2", "font/woff2"),
    vendor!("KaTeX_Size1-Regular.woff2", "font/woff2"),
    vendor!("KaTeX_Size2-Regular.woff2", "font/woff2"),
    vendor!("KaTeX_Size3-Regular.woff2", "font/woff2"),
    vendor!("KaTeX_Size4-Regular.woff2", "font/woff2"),
    vendor!("KaTeX_Typewriter-Regular.woff2", "font/woff2"),
];

/// A version string that changes whenever a static file does.
pub fn asset_version() -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for (name, _, bytes) in STATIC_FILES {
        name.hash(&mut hasher);
        bytes.hash(&mut hasher);
    }
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

async fn vendor_file(
    state: State<AppState>,
    Path(name): Path<String>,
    query: RawQuery,
    headers: HeaderMap,
) -> Response {
    static_file(state, Path(format!("vendor/{name}")), query, headers).await
}

/// Serves a static file. Every answer carries the asset version as its
/// ETag, so what is fetched without `?v=` (the page's module imports,
/// KaTeX's fonts) is revalidated with a 304 instead of sent again.
async fn static_file(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    // The page asks for `?v=<asset_version>`: that URL always names these
    // bytes. Another version (an old page during a rolling deploy, a guess)
    // gets today's bytes, which must not be pinned under its name.
    let current = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.strip_prefix("v=") == Some(&*state.asset_version))
    });
    let cache = if current {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let Some((_, content_type, bytes)) = STATIC_FILES.iter().find(|(n, _, _)| *n == name) else {
        return super::bodies::not_found();
    };
    let etag = format!("\"{}\"", state.asset_version);
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == etag || tag.strip_prefix("W/") == Some(&etag) || tag == "*"
        });
    if unchanged {
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, cache.to_string()),
            ],
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CACHE_CONTROL, cache.to_string()),
            (header::ETAG, etag),
        ],
        *bytes,
    )
        .into_response()
}
