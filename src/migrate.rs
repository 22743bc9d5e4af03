//! `llm-chat-server migrate --from sqlite --to mongodb` (or back): copies
//! every conversation (with the branches its edits and regenerates set
//! aside), every account with its access tokens, sign-in
//! identities, token usage and quota, share links, and every live session between the
//! two stores (conversations page by page, with a
//! progress bar on stderr) and prints a count at the end.
//!
//! Idempotent: a conversation already in the target (same user and id), an
//! account whose user id or email is already there and a token whose id or
//! hash is already there are left as they are, so a copy can be repeated or
//! resumed after a failure. Sessions are copied too, or users would get new
//! ids after the switch and lose sight of their conversations; accounts keep
//! their user ids, password hashes and flags, so people sign in as before
//! and their tokens keep working.

use std::io::Write;

use anyhow::{bail, Context};

use crate::config::Settings;
use crate::sessions::{open_backend, Backends};
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
    pub accounts: u64,
    pub accounts_already_there: u64,
    pub tokens: u64,
    pub tokens_already_there: u64,
    /// Links of single sign-on and proxy identities to accounts.
    pub identities: u64,
    /// Days of a user's token usage, and per-user quotas.
    pub usage_days: u64,
    pub quotas: u64,
    /// Share links (with their snapshots).
    pub shares: u64,
    pub shares_already_there: u64,
    /// Users' presets.
    pub presets: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} conversations read: {} copied, {} already there, {} too large for the target (left out); \
             {} sessions copied; {} accounts copied, {} already there; {} access tokens copied, {} already there; \
             {} sign-in identities, {} days of usage and {} quotas copied; \
             {} share links copied, {} already there; {} presets copied",
            self.conversations,
            self.inserted,
            self.already_there,
            self.too_large,
            self.sessions,
            self.accounts,
            self.accounts_already_there,
            self.tokens,
            self.tokens_already_there,
            self.identities,
            self.usage_days,
            self.quotas,
            self.shares,
            self.shares_already_there,
            self.presets
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
        let Some(last) = page.last() else {
            break;
        };
        after = Some((
            last.user.clone(),
            last.conversation.meta.conversation_id.clone(),
        ));
        for exported in &page {
            let conversation = &exported.conversation;
            report.conversations += 1;
            // With its branches: an edited conversation keeps its siblings.
            match to
                .import_branched(&exported.user, conversation, &exported.branches)
                .await
            {
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

/// Copies every account, then what belongs to users: access tokens, links
/// to sign-in identities, days of token usage, quotas and share links
/// (each left as it is when the target has it).
pub async fn copy_accounts(
    from: &Backends,
    to: &Backends,
    report: &mut Report,
) -> anyhow::Result<()> {
    for account in from
        .accounts
        .accounts_for_copy()
        .await
        .context("reading accounts")?
    {
        let inserted = to
            .accounts
            .import_account(&account)
            .await
            .with_context(|| format!("writing the account of user {}", account.user_id))?;
        if inserted {
            report.accounts += 1;
        } else {
            report.accounts_already_there += 1;
        }
    }
    for token in from
        .tokens
        .tokens_for_copy()
        .await
        .context("reading access tokens")?
    {
        let inserted = to
            .tokens
            .import_token(&token)
            .await
            .with_context(|| format!("writing access token {}", token.token.id))?;
        if inserted {
            report.tokens += 1;
        } else {
            report.tokens_already_there += 1;
        }
    }
    for identity in from
        .accounts
        .identities_for_copy()
        .await
        .context("reading sign-in identities")?
    {
        if to
            .accounts
            .import_identity(&identity)
            .await
            .with_context(|| format!("writing a sign-in identity of user {}", identity.user_id))?
        {
            report.identities += 1;
        }
    }
    for day in from
        .usage
        .usage_for_copy()
        .await
        .context("reading token usage")?
    {
        if to
            .usage
            .import_usage(&day)
            .await
            .with_context(|| format!("writing the usage of user {}", day.user_id))?
        {
            report.usage_days += 1;
        }
    }
    for (user, tokens_per_day) in from
        .usage
        .quotas_for_copy()
        .await
        .context("reading quotas")?
    {
        if to
            .usage
            .import_quota(&user, tokens_per_day)
            .await
            .with_context(|| format!("writing the quota of user {user}"))?
        {
            report.quotas += 1;
        }
    }
    // Share links hold whole snapshots: a page at a time.
    let mut after: Option<String> = None;
    loop {
        let page = from
            .shares
            .shares_for_copy(after.as_deref(), 50)
            .await
            .context("reading share links")?;
        let Some(last) = page.last() else { break };
        after = Some(last.share.id.clone());
        for share in &page {
            let inserted = to
                .shares
                .import_share(share)
                .await
                .with_context(|| format!("writing share link {}", share.share.id))?;
            if inserted {
                report.shares += 1;
            } else {
                report.shares_already_there += 1;
            }
        }
    }
    Ok(())
}

/// Copies every user's presets (each left as it is when the target has it).
pub async fn copy_presets(
    from: &Backends,
    to: &Backends,
    report: &mut Report,
) -> anyhow::Result<()> {
    for (user, preset) in from
        .presets
        .presets_for_copy()
        .await
        .context("reading presets")?
    {
        if to
            .presets
            .import_preset(&user, &preset)
            .await
            .with_context(|| format!("writing a preset of user {user}"))?
        {
            report.presets += 1;
        }
    }
    Ok(())
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
    copy_accounts(&source, &target, &mut report).await?;
    copy_presets(&source, &target, &mut report).await?;
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
