//! The JSON bodies the HTTP routes answer with (`docs/PROTOCOL.md`), one
//! struct each; errors are [`crate::error::ErrorBody`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::domain::{ChatMessage, ConversationId, UserId};
use crate::error::ErrorBody;
use crate::store::{BranchPool, ConversationMeta, SearchHit, Siblings};

/// 404 for a path no route has, or a static file that does not exist.
pub fn not_found() -> Response {
    let body = ErrorBody {
        message: "Not found.".to_string(),
        error: "not_found",
        retry_after: None,
        resets_at: None,
    };
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// A sentence saying what was done (reset, delete, few-shot example).
#[derive(Debug, Serialize)]
pub struct Done {
    pub message: &'static str,
}

/// `POST /auth/logout`: done, and where the browser goes next to end the
/// sign-in at its source (a proxy's or a provider's sign-out), if anywhere.
#[derive(Debug, Serialize)]
pub struct SignedOut {
    pub message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logout_url: Option<String>,
}

/// `POST /start_conversation`.
#[derive(Debug, Serialize)]
pub struct ConversationStarted {
    pub message: &'static str,
    pub conversation_id: ConversationId,
    /// The model id the conversation uses; absent where the original
    /// contract holds (one model, none asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// `GET /list_conversations`, newest first.
#[derive(Debug, Serialize)]
pub struct ConversationList {
    pub conversations: Vec<ConversationMeta>,
}

/// `GET /load_conversation/{id}`; `total` and `first` only when a page
/// was asked for (`?limit=&before=`), so the plain answer stays the
/// original app's.
#[derive(Debug, Serialize)]
pub struct LoadedConversation {
    pub conversation: Vec<ChatMessage>,
    pub conversation_id: ConversationId,
    pub title: Option<String>,
    /// Messages in the whole history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// The history index of the first message in `conversation`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<u64>,
    /// For each message returned that has siblings (an edit, a
    /// regenerate): its history index, its position among them (from 1)
    /// and their count. Absent for a conversation never forked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<Siblings>,
    /// The model id the conversation uses (its own, or the default); absent
    /// where the original contract holds (one model, none asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation's system prompt, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// The conversation's own temperature, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
}

/// `PATCH /conversation/{id}/settings`: the conversation's settings now.
#[derive(Debug, Serialize)]
pub struct SettingsChanged {
    pub conversation_id: ConversationId,
    #[serde(flatten)]
    pub settings: crate::events::SettingsShown,
}

/// `GET /conversation/{id}/branches`.
#[derive(Debug, Serialize)]
pub struct ConversationBranches {
    pub conversation_id: ConversationId,
    pub branches: Option<BranchPool>,
}

/// `POST /save_history`: the file written.
#[derive(Debug, Serialize)]
pub struct HistorySaved {
    pub message: &'static str,
    pub file_name: String,
}

/// The file `POST /save_history` writes: the original app's document
/// shape, so tools that read its files read ours.
#[derive(Debug, Serialize)]
pub struct SavedConversation<'a> {
    pub conversation_id: &'a ConversationId,
    pub user_id: &'a UserId,
    pub conversation_history: &'a [ChatMessage],
    pub conversation_text: String,
    pub created_at: String,
    pub updated_at: String,
    pub title: Option<&'a str>,
    /// Every branch set aside beside the history (edits, regenerates);
    /// absent for a conversation never forked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branches: Option<&'a BranchPool>,
}

/// `GET /search_conversations`, best first.
#[derive(Debug, Serialize)]
pub struct SearchResults {
    pub conversations: Vec<SearchHit>,
}

/// `POST /upload_file`.
#[derive(Debug, Serialize)]
pub struct UploadAnalysed {
    pub message: &'static str,
    pub analysis: String,
    pub chunks: usize,
    pub file_name: String,
}

/// `GET /get_config`: what the page needs to know about limits and the model.
#[derive(Debug, Serialize)]
pub struct ClientConfig<'a> {
    pub max_tokens: u32,
    pub reply_tokens: u32,
    pub demo_mode: bool,
    pub provider: &'static str,
    pub model: &'a str,
    pub max_file_size_mb: f64,
    pub allowed_extensions: &'a [String],
    pub max_message_chars: usize,
    pub auth: AuthConfig,
    /// The models people can pick, the default first.
    pub models: Vec<ModelView<'a>>,
    /// The id of the model a conversation gets when none is named.
    pub default_model: &'a str,
}

/// One model of the catalogue, as `/get_config` lists it (never its
/// endpoint or key).
#[derive(Debug, Serialize)]
pub struct ModelView<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub provider: &'static str,
    /// The context window.
    pub max_tokens: u32,
    pub reply_tokens: u32,
    pub tokenizer: &'static str,
    pub temperature: f32,
}

/// `GET /auth/me`, and the answer to a sign-in or sign-up.
#[derive(Debug, Serialize)]
pub struct Me {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub is_admin: bool,
    /// How the user signed in (`local`, `oidc`, `proxy`, `token`).
    pub auth: String,
}

/// A token as its owner lists it.
#[derive(Debug, Serialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

/// `GET /api/tokens`.
#[derive(Debug, Serialize)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// `POST /api/tokens`: the only time the token itself is shown.
#[derive(Debug, Serialize)]
pub struct NewToken {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub token: String,
}

/// What the page needs to know about accounts.
#[derive(Debug, Serialize)]
pub struct AuthConfig {
    /// `none` or `local`.
    pub mode: &'static str,
    /// Whether the sign-up form may be offered now.
    pub signup_open: bool,
    /// Whether the page works without signing in.
    pub anonymous: bool,
    /// Single sign-on providers; absent without `oidc`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderView>,
}

/// A single sign-on provider as the page shows it.
#[derive(Debug, Serialize)]
pub struct ProviderView {
    /// The path segment: `/auth/oidc/{id}/login`.
    pub id: String,
    /// The button's label: "Sign in with {name}".
    pub name: String,
}

/// `GET /healthz`.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
}

/// `GET /readyz`: each dependency's state.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub status: &'static str,
    pub checks: ReadinessChecks,
    /// With `REDIS_URL`: how this instance sees Redis now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<crate::cluster::Topology>,
}

/// The checks of [`Readiness`]; the Redis ones only in multi-instance mode.
#[derive(Debug, Serialize)]
pub struct ReadinessChecks {
    pub store: &'static str,
    pub store_backend: &'static str,
    pub llm: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<&'static str>,
}

/// A share link as its owner lists it (`GET /api/shares`).
#[derive(Debug, Serialize)]
pub struct ShareView {
    pub id: String,
    pub conversation_id: String,
    pub title: Option<String>,
    pub message_count: u64,
    pub created_at: String,
}

/// `GET /api/shares`.
#[derive(Debug, Serialize)]
pub struct ShareList {
    pub shares: Vec<ShareView>,
}

/// `POST /api/shares`: the only time the link itself is shown.
#[derive(Debug, Serialize)]
pub struct NewShareLink {
    #[serde(flatten)]
    pub share: ShareView,
    /// `/share/<token>`, on this server.
    pub url: String,
}

/// `GET /api/share/{token}`: the snapshot, and nothing about its owner.
#[derive(Debug, Serialize)]
pub struct SharedView {
    pub title: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub created_at: String,
}
