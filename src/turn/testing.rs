//! A turn's services for unit tests: the SQLite store in a temporary
//! folder, the demo model, no other sockets.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Chat, Models, SummaryBackoff, TurnRegistry};
use crate::config::Settings;
use crate::context::TokenCounter;
use crate::domain::UserId;
use crate::events::ServerEvent;
use crate::metrics::Metrics;
use crate::store::cache::CachedStore;
use crate::store::Backend;

/// No other sockets to tell.
struct NoOne;

#[async_trait]
impl crate::notify::Notifier for NoOne {
    async fn to_user(&self, _: &UserId, _: ServerEvent<'_>) {}
    async fn disconnect_user(&self, _: &UserId) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A turn's services over the SQLite store in `dir`, behind the
/// conversation cache (its `stats` count the loads); demo model.
pub(crate) async fn chat_in(dir: &tempfile::TempDir) -> (Chat, Arc<CachedStore>) {
    let settings = Arc::new(Settings::for_tests(dir.path().join("chat.db")));
    let backends = crate::sessions::open_backend(Backend::Sqlite, &settings)
        .await
        .unwrap();
    let store = Arc::new(CachedStore::new(backends.conversations, 1 << 20));
    let metrics = Arc::new(Metrics::default());
    let models = Arc::new(Models::build(&settings, &metrics).unwrap());
    let chat = Chat {
        store: store.clone(),
        usage: backends.usage,
        llm: models.default_model().llm.clone(),
        tokens: TokenCounter::new(settings.tokenizer),
        models,
        notifier: Arc::new(NoOne),
        metrics,
        replies: crate::replies::ReplyHub::in_memory(settings.reply_resume_ttl),
        turns: Arc::new(TurnRegistry::default()),
        redis: None,
        llm_slots: None,
        summary_backoff: Arc::new(SummaryBackoff::default()),
        settings,
    };
    (chat, store)
}
