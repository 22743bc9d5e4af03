//! The upstream a model is reached at, how its key is sent, and its
//! tokenizer: shared by the single-model variables and the catalogue.

use super::secret::Secret;

/// Which upstream answers chat requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmProvider {
    /// Azure OpenAI: `AZURE_API_URL` is the full chat-completions URL.
    Azure {
        url: String,
        key: Secret,
        auth: AzureAuth,
    },
    /// Any OpenAI-compatible endpoint: `{base_url}/chat/completions`.
    OpenAi {
        base_url: String,
        key: Secret,
        model: String,
    },
    /// Local replies, no network: the default when nothing is configured.
    Demo,
}

/// How the Azure key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzureAuth {
    /// `Authorization: Bearer KEY`, as the original app does.
    Bearer,
    /// `api-key: KEY`, Azure's own header.
    ApiKey,
}

/// Tokenizer used for budgets and chunking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    Cl100kBase,
    O200kBase,
}
