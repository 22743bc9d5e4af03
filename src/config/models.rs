//! The model catalogue: the models people can pick, each with its
//! provider, endpoint, key variable, context window, reply tokens,
//! tokenizer and temperature. Read from the TOML file `MODELS_FILE`, or,
//! without one, made of the single-model variables (`LLM_PROVIDER`,
//! `AZURE_*` / `OPENAI_*`, `MAX_TOKENS`, `REPLY_TOKENS`, `TOKENIZER`,
//! `LLM_TEMPERATURE`) as a catalogue of one model with the id `default`.
//!
//! The file names the environment variable holding each key, never the key.
//! Every problem is reported naming the file, the model and the field.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use super::provider::{AzureAuth, LlmProvider, Tokenizer};
use super::reader::Reader;
use super::secret::Secret;

/// The id of the model made of the single-model variables.
pub const DEFAULT_MODEL_ID: &str = "default";

/// At most this many models in a catalogue.
pub const MAX_MODELS: usize = 100;

/// One model people can pick.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// What clients send (`model` in `send_message`, presets): 1-64 letters,
    /// digits, `.`, `_`, `-`, `:`, `/`.
    pub id: String,
    /// What the page shows.
    pub name: String,
    pub provider: LlmProvider,
    /// The context window.
    pub max_tokens: u32,
    /// Tokens reserved for the reply (`max_tokens` upstream).
    pub reply_tokens: u32,
    pub tokenizer: Tokenizer,
    /// Used unless the conversation has its own.
    pub temperature: f32,
}

impl ModelSpec {
    /// Tokens the prompt may use: the context window less the reply's.
    pub fn prompt_budget(&self) -> u32 {
        self.max_tokens - self.reply_tokens
    }

    /// The provider's name, as `/get_config` says it.
    pub fn provider_name(&self) -> &'static str {
        match self.provider {
            LlmProvider::Azure { .. } => "azure",
            LlmProvider::OpenAi { .. } => "openai",
            LlmProvider::Demo => "demo",
        }
    }
}

/// The models there are; the first is the default (the one a conversation
/// without a model, and every client that names none, gets).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCatalog {
    pub models: Vec<ModelSpec>,
}

impl ModelCatalog {
    /// The default model.
    pub fn default_model(&self) -> &ModelSpec {
        &self.models[0]
    }

    /// The model with this id.
    pub fn get(&self, id: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.id == id)
    }
}

/// Whether `id` is a well-formed model id (what a client may send).
pub fn valid_model_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c))
}

/// One `[[models]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    id: String,
    name: Option<String>,
    provider: String,
    /// Azure: the full chat-completions URL.
    url: Option<String>,
    /// OpenAI-compatible: the base URL (`{base_url}/chat/completions`).
    base_url: Option<String>,
    /// OpenAI-compatible: the `model` sent upstream (default: `id`).
    model: Option<String>,
    /// The environment variable holding the key.
    key_env: Option<String>,
    /// Azure: `bearer` or `api-key`.
    auth_header: Option<String>,
    max_tokens: Option<u32>,
    reply_tokens: Option<u32>,
    tokenizer: Option<String>,
    temperature: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    /// The default model's id (default: the first).
    default: Option<String>,
    #[serde(default)]
    models: Vec<ModelEntry>,
}

/// What a model falls back to for the fields it leaves out: the
/// single-model variables.
pub(super) struct Fallback {
    pub provider: LlmProvider,
    pub max_tokens: u32,
    pub reply_tokens: u32,
    pub tokenizer: Tokenizer,
    pub temperature: f32,
}

/// The catalogue: `MODELS_FILE` when set, else the one model of the
/// single-model variables.
pub(super) fn read(r: &mut Reader<'_>, fallback: Fallback) -> ModelCatalog {
    let Some(path) = r.raw("MODELS_FILE") else {
        let name = match &fallback.provider {
            LlmProvider::OpenAi { model, .. } => model.clone(),
            LlmProvider::Azure { url, .. } => azure_deployment(url),
            LlmProvider::Demo => "Demo".to_string(),
        };
        return ModelCatalog {
            models: vec![ModelSpec {
                id: DEFAULT_MODEL_ID.to_string(),
                name,
                provider: fallback.provider,
                max_tokens: fallback.max_tokens,
                reply_tokens: fallback.reply_tokens,
                tokenizer: fallback.tokenizer,
                temperature: fallback.temperature,
            }],
        };
    };
    let one_model = |provider: LlmProvider| ModelCatalog {
        models: vec![ModelSpec {
            id: DEFAULT_MODEL_ID.to_string(),
            name: "Demo".to_string(),
            provider,
            max_tokens: fallback.max_tokens,
            reply_tokens: fallback.reply_tokens,
            tokenizer: fallback.tokenizer,
            temperature: fallback.temperature,
        }],
    };
    let text = match std::fs::read_to_string(Path::new(&path)) {
        Ok(text) => text,
        Err(err) => {
            r.errors
                .push(format!("MODELS_FILE={path:?} could not be read: {err}"));
            return one_model(LlmProvider::Demo);
        }
    };
    match parse(r, &path, &text, &fallback) {
        Some(catalog) => catalog,
        None => one_model(LlmProvider::Demo),
    }
}

/// The deployment named in an Azure URL (`.../deployments/NAME/...`).
fn azure_deployment(url: &str) -> String {
    url.split('/')
        .skip_while(|part| *part != "deployments")
        .nth(1)
        .filter(|name| !name.is_empty())
        .map(|name| name.split('?').next().unwrap_or(name).to_string())
        .unwrap_or_else(|| "Azure OpenAI".to_string())
}

/// Parses and checks the file's text; `None` (with the problems in
/// `r.errors`) when it is not usable.
fn parse(r: &mut Reader<'_>, path: &str, text: &str, fallback: &Fallback) -> Option<ModelCatalog> {
    let file: ModelsFile = match toml::from_str(text) {
        Ok(file) => file,
        Err(err) => {
            // toml's message names the line, the column and the field.
            let message = err.to_string().replace('\n', " ");
            r.errors.push(format!(
                "MODELS_FILE {path}: {}",
                message.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
            return None;
        }
    };
    if file.models.is_empty() {
        r.errors.push(format!(
            "MODELS_FILE {path}: no [[models]]: at least one model is needed"
        ));
        return None;
    }
    if file.models.len() > MAX_MODELS {
        r.errors.push(format!(
            "MODELS_FILE {path}: {} models; at most {MAX_MODELS}",
            file.models.len()
        ));
        return None;
    }
    let errors_before = r.errors.len();
    let mut seen = HashSet::new();
    let mut models = Vec::with_capacity(file.models.len());
    for (index, entry) in file.models.into_iter().enumerate() {
        let at = format!("MODELS_FILE {path}: models[{index}]");
        if !valid_model_id(&entry.id) {
            r.errors.push(format!(
                "{at}.id={:?} must be 1-64 letters, digits, '.', '_', '-', ':' or '/'",
                entry.id
            ));
            continue;
        }
        let at = format!("{at} (id {:?})", entry.id);
        if !seen.insert(entry.id.clone()) {
            r.errors.push(format!("{at}.id: another model has this id"));
            continue;
        }
        if let Some(model) = model_from(r, &at, entry, fallback) {
            models.push(model);
        }
    }
    if let Some(default) = &file.default {
        match models.iter().position(|m| &m.id == default) {
            Some(index) => {
                let chosen = models.remove(index);
                models.insert(0, chosen);
            }
            None if r.errors.len() == errors_before => r.errors.push(format!(
                "MODELS_FILE {path}: default={default:?} names no model of the file"
            )),
            None => {}
        }
    }
    (r.errors.len() == errors_before && !models.is_empty()).then_some(ModelCatalog { models })
}

fn model_from(
    r: &mut Reader<'_>,
    at: &str,
    entry: ModelEntry,
    fallback: &Fallback,
) -> Option<ModelSpec> {
    let errors_before = r.errors.len();
    let key = |r: &mut Reader<'_>, required: bool| -> Secret {
        match &entry.key_env {
            None if required => {
                r.errors.push(format!(
                    "{at}.key_env: missing (the environment variable holding the key)"
                ));
                Secret(String::new())
            }
            None => Secret(String::new()),
            Some(name) => match r.raw(name) {
                Some(key) => Secret(key),
                None if required => {
                    r.errors.push(format!(
                        "{at}.key_env: the variable {name} is not set (it holds the key)"
                    ));
                    Secret(String::new())
                }
                None => Secret(String::new()),
            },
        }
    };
    let url_field = |r: &mut Reader<'_>, field: &str, value: Option<&String>| -> String {
        match value {
            None => {
                r.errors.push(format!("{at}.{field}: missing"));
                String::new()
            }
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || reqwest::Url::parse(url).is_err()
                {
                    r.errors
                        .push(format!("{at}.{field}={url:?} is not an http(s) URL"));
                }
                url.trim_end_matches('/').to_string()
            }
        }
    };
    let provider = match entry.provider.to_ascii_lowercase().as_str() {
        "azure" => {
            let url = url_field(r, "url", entry.url.as_ref());
            let auth = match entry
                .auth_header
                .as_deref()
                .unwrap_or("bearer")
                .to_ascii_lowercase()
                .as_str()
            {
                "bearer" => AzureAuth::Bearer,
                "api-key" => AzureAuth::ApiKey,
                other => {
                    r.errors.push(format!(
                        "{at}.auth_header={other:?} is not one of bearer, api-key"
                    ));
                    AzureAuth::Bearer
                }
            };
            let key = key(r, true);
            LlmProvider::Azure { url, key, auth }
        }
        "openai" => {
            let base_url = url_field(r, "base_url", entry.base_url.as_ref());
            let key = key(r, false);
            LlmProvider::OpenAi {
                base_url,
                key,
                model: entry.model.clone().unwrap_or_else(|| entry.id.clone()),
            }
        }
        "demo" => LlmProvider::Demo,
        other => {
            r.errors.push(format!(
                "{at}.provider={other:?} is not one of azure, openai, demo"
            ));
            LlmProvider::Demo
        }
    };
    let max_tokens = entry.max_tokens.unwrap_or(fallback.max_tokens);
    let reply_tokens = entry.reply_tokens.unwrap_or(fallback.reply_tokens);
    if max_tokens == 0 || reply_tokens == 0 {
        r.errors.push(format!(
            "{at}: max_tokens and reply_tokens must be greater than 0"
        ));
    } else if reply_tokens >= max_tokens || max_tokens - reply_tokens < 50 {
        r.errors.push(format!(
            "{at}.reply_tokens ({reply_tokens}) must leave at least 50 of max_tokens ({max_tokens}) for the prompt"
        ));
    }
    let tokenizer = match entry.tokenizer.as_deref() {
        None => fallback.tokenizer,
        Some("cl100k_base") => Tokenizer::Cl100kBase,
        Some("o200k_base") => Tokenizer::O200kBase,
        Some(other) => {
            r.errors.push(format!(
                "{at}.tokenizer={other:?} is not one of cl100k_base, o200k_base"
            ));
            fallback.tokenizer
        }
    };
    let temperature = entry.temperature.unwrap_or(fallback.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        r.errors
            .push(format!("{at}.temperature must be between 0 and 2"));
    }
    let name = entry.name.clone().unwrap_or_else(|| entry.id.clone());
    if name.trim().is_empty() || name.chars().count() > 100 {
        r.errors.push(format!("{at}.name must be 1-100 characters"));
    }
    (r.errors.len() == errors_before).then_some(ModelSpec {
        id: entry.id,
        name,
        provider,
        max_tokens,
        reply_tokens,
        tokenizer,
        temperature,
    })
}
