//! The models of the catalogue, each with its client and its tokenizer,
//! built once at start; and how a conversation's model is found.

use std::sync::Arc;

use crate::config::{ModelSpec, Settings};
use crate::context::TokenCounter;
use crate::error::ApiError;
use crate::llm::{self, ChatModel};
use crate::metrics::Metrics;
use crate::store::ConversationSettings;

/// One model of the catalogue, ready to use.
pub struct Model {
    pub spec: ModelSpec,
    pub llm: Arc<dyn ChatModel>,
    /// Counts tokens with the model's tokenizer.
    pub tokens: TokenCounter,
}

/// Every model of the catalogue; the first is the default.
pub struct Models {
    list: Vec<Arc<Model>>,
}

impl Models {
    /// A client per model of `settings.models`.
    pub fn build(settings: &Settings, metrics: &Arc<Metrics>) -> anyhow::Result<Self> {
        let list = settings
            .models
            .models
            .iter()
            .map(|spec| {
                let llm = llm::for_model(settings, spec, metrics.clone())
                    .map_err(|err| err.context(format!("model {:?}", spec.id)))?;
                Ok(Arc::new(Model {
                    spec: spec.clone(),
                    llm,
                    tokens: TokenCounter::new(spec.tokenizer),
                }))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!list.is_empty(), "the model catalogue is empty");
        Ok(Self { list })
    }

    /// The default model.
    pub fn default_model(&self) -> &Arc<Model> {
        &self.list[0]
    }

    /// Every model, the default first.
    pub fn all(&self) -> &[Arc<Model>] {
        &self.list
    }

    /// The model with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Model>> {
        self.list.iter().find(|m| m.spec.id == id)
    }

    /// A model id a client sent: `Ok(None)` when absent (the default),
    /// `UnknownModel` when the catalogue has no such model.
    pub fn check(&self, requested: Option<&str>) -> Result<Option<&Arc<Model>>, ApiError> {
        match requested {
            None => Ok(None),
            Some(id) => self
                .get(id)
                .map(Some)
                .ok_or_else(|| ApiError::UnknownModel(id.to_string())),
        }
    }

    /// The model a conversation uses: its own, or the default when it has
    /// none or names one the catalogue no longer has (a model removed from
    /// `MODELS_FILE`).
    pub fn for_conversation(&self, settings: &ConversationSettings) -> &Arc<Model> {
        match settings.model.as_deref() {
            None => self.default_model(),
            Some(id) => self.get(id).unwrap_or_else(|| {
                tracing::info!(
                    model = id,
                    "a conversation's model is not in the catalogue; using the default"
                );
                self.default_model()
            }),
        }
    }
}
