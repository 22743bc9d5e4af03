//! Language models behind one trait: an OpenAI-compatible HTTP client (Azure
//! OpenAI, OpenAI, Ollama, vLLM, llama.cpp) and a local demo provider used
//! when nothing is configured.
//!
//! Cancellation is by dropping: a dropped stream closes the upstream
//! connection, so `stop_generation` and client disconnects stop the tokens
//! being paid for.

pub mod demo;
pub mod model;
pub mod openai;
pub mod sse;

pub use model::{
    ChatModel, ChatRequest, ChunkStream, Completion, Delta, LlmError, Messages, ModelInfo, Usage,
};

use std::sync::Arc;

use crate::config::{LlmProvider, ModelSpec, Settings};

/// The client of one model of the catalogue (`settings.models`); the
/// timeouts and retries are the settings' (shared by every model).
pub fn for_model(
    settings: &Settings,
    spec: &ModelSpec,
    metrics: Arc<crate::metrics::Metrics>,
) -> anyhow::Result<Arc<dyn ChatModel>> {
    Ok(match &spec.provider {
        LlmProvider::Demo => Arc::new(demo::DemoModel::default()),
        _ => Arc::new(openai::OpenAiClient::new(settings, spec, metrics)?),
    })
}
