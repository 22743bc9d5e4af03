//! The demo provider: answers locally, streamed word by word, so the whole
//! app (page, sockets, storage) can be tried with nothing configured. The
//! page and `/get_config` say plainly that it is demo mode.

use std::time::Duration;

use async_trait::async_trait;

use super::model::{ChatModel, ChatRequest, ChunkStream, Completion, LlmError, ModelInfo};
use super::openai::async_stream;
use crate::domain::Role;

/// Local replies; no network.
#[derive(Debug, Clone)]
pub struct DemoModel {
    /// Pause between streamed words, so streaming is visible.
    pub word_delay: Duration,
}

impl Default for DemoModel {
    fn default() -> Self {
        Self {
            word_delay: Duration::from_millis(25),
        }
    }
}

/// The reply the demo gives to a prompt.
pub fn demo_reply(request: &ChatRequest) -> String {
    let last = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| &*m.content)
        .unwrap_or("");
    let quoted: String = last.chars().take(200).collect();
    let ellipsis = if last.chars().count() > 200 {
        "…"
    } else {
        ""
    };
    format!(
        "Demo mode: no language model is configured, so this reply comes from the server itself. \
         You said: \"{quoted}{ellipsis}\" ({words} words). To talk to a real model, set AZURE_API_URL \
         and API_KEY, or LLM_PROVIDER=openai with OPENAI_BASE_URL and LLM_MODEL, then restart.",
        words = last.split_whitespace().count()
    )
}

#[async_trait]
impl ChatModel for DemoModel {
    async fn stream(&self, request: ChatRequest) -> Result<ChunkStream, LlmError> {
        let reply = demo_reply(&request);
        let delay = self.word_delay;
        Ok(async_stream(move |tx| async move {
            for (i, word) in reply.split_inclusive(' ').enumerate() {
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if !tx.text(word.to_string()).await {
                    return;
                }
            }
        }))
    }

    async fn complete(&self, request: ChatRequest) -> Result<Completion, LlmError> {
        let text: String = request
            .messages
            .last()
            .map(|m| m.content.chars().take(300).collect())
            .unwrap_or_default();
        // No upstream, no usage: the server counts the tokens itself.
        Ok(Completion {
            text: format!("Demo mode (no model configured). The text begins: {text}"),
            usage: None,
        })
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            provider: "demo",
            model: "demo".to_string(),
            demo: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::domain::ChatMessage;

    #[tokio::test]
    async fn demo_streams_a_reply_that_quotes_the_user() {
        let model = DemoModel {
            word_delay: Duration::ZERO,
        };
        let request = ChatRequest {
            messages: vec![ChatMessage::new(Role::User, "hello there")].into(),
            max_tokens: 100,
            temperature: None,
        };

        let chunks: Vec<String> = model
            .stream(request.clone())
            .await
            .unwrap()
            .map(|c| match c.unwrap() {
                crate::llm::Delta::Text(text) => text,
                other => panic!("the demo reports no usage: {other:?}"),
            })
            .collect()
            .await;

        assert!(chunks.len() > 10);
        assert_eq!(chunks.concat(), demo_reply(&request));
        assert!(chunks
            .concat()
            .contains("You said: \"hello there\" (2 words)"));
    }
}
