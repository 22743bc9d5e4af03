//! `llm-chat-server migrate --from sqlite --to mongodb` (or back): copies
//! every conversation and every live session between the two stores, page
//! by page, with a progress bar on stderr and a count at the end.
//!
//! Idempotent: a conversation already in the target (same user and id) is
//! left as it is, so a copy can be repeated or resumed after a failure.
//! Sessions are copied too, or users would get new ids after the switch and
//! lose sight of their conversations.

use std::io::Write;

use anyhow::{bail, Context};

use crate::config::Settings;
use crate::sessions::open_backend;
use crate::store::{ConversationStore, StoreError};

pub use crate::store::Backend;

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub conversations: u64,
    pub inserted: u64,
    pub already_there: u64,
    pub too_large: u64,
    pub sessions: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} conversations read: {} copied, {} already there, {} too large for the target (left out); {} sessions copied",
            self.conversations, self.inserted, self.already_there, self.too_large, self.sessions
        )
    }
}

/// Copies everything from `from` to `to`; `progress` is told (done, total).
pub async fn copy(
    from: &dyn ConversationStore,
    to: &dyn ConversationStore,
    page_size: u32,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Report> {
    let total = from.count_all().await.context("counting conversations")?;
    let mut report = Report::default();
    let mut after = None;
    progress(0, total);
    loop {
        let page = from
            .export_page(after.clone(), page_size)
            .await
            .context("reading conversations")?;
        let Some((user, last)) = page.last() else {
            break;
        };
        after = Some((user.clone(), last.meta.conversation_id.clone()));
        for (user, conversation) in &page {
            report.conversations += 1;
            match to.import(user, conversation).await {
                Ok(true) => report.inserted += 1,
                Ok(false) => report.already_there += 1,
                Err(StoreError::TooLarge(_)) => {
                    report.too_large += 1;
                    tracing::warn!(
                        conversation = %conversation.meta.conversation_id,
                        "conversation too large for the target store; left out"
                    );
                }
                Err(err) => {
                    return Err(anyhow::Error::new(err).context(format!(
                        "writing conversation {}",
                        conversation.meta.conversation_id
                    )))
                }
            }
            progress(report.conversations, total.max(report.conversations));
        }
    }
    Ok(report)
}

/// The subcommand: opens both stores from the settings and copies.
pub async fn run(settings: &Settings, from: Backend, to: Backend) -> anyhow::Result<Report> {
    if from == to {
        bail!("--from and --to name the same store");
    }
    let source = open_backend(from, settings)
        .await
        .context("opening the source store")?;
    let target = open_backend(to, settings)
        .await
        .context("opening the target store")?;
    let mut report = copy(
        source.conversations.as_ref(),
        target.conversations.as_ref(),
        200,
        draw_progress,
    )
    .await?;
    eprintln!();
    for record in &source.sessions.live_records().await? {
        target.sessions.save(record).await?;
        report.sessions += 1;
    }
    Ok(report)
}

/// `[#########...........]  45% 450/1000 conversations` on one line.
fn draw_progress(done: u64, total: u64) {
    const WIDTH: u64 = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r[{bar}] {percent:>3}% {done}/{total} conversations");
    let _ = err.flush();
}
