//! Process counters, rendered as Prometheus text at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters and gauges of this process.
#[derive(Debug, Default)]
pub struct Metrics {
    pub sockets_connected: AtomicI64,
    pub turns_started: AtomicU64,
    pub turns_completed: AtomicU64,
    pub turns_stopped: AtomicU64,
    pub turns_failed: AtomicU64,
    pub summaries: AtomicU64,
    pub summary_failures: AtomicU64,
    pub upload_chunks: AtomicU64,
    pub reply_chunks: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            "chat_turns_started_total",
            "Chat turns started.",
            get(&self.turns_started),
        );
        counter(
            "chat_turns_completed_total",
            "Chat turns whose reply finished.",
            get(&self.turns_completed),
        );
        counter(
            "chat_turns_stopped_total",
            "Chat turns stopped by the user or a disconnect.",
            get(&self.turns_stopped),
        );
        counter(
            "chat_turns_failed_total",
            "Chat turns that ended in an error.",
            get(&self.turns_failed),
        );
        counter(
            "chat_reply_chunks_total",
            "Streamed reply chunks sent to clients.",
            get(&self.reply_chunks),
        );
        counter(
            "chat_summaries_total",
            "Summaries of older turns made.",
            get(&self.summaries),
        );
        counter(
            "chat_summary_failures_total",
            "Summaries that failed (oldest turns left out instead).",
            get(&self.summary_failures),
        );
        counter(
            "chat_upload_chunks_total",
            "Uploaded file chunks analysed.",
            get(&self.upload_chunks),
        );
        let _ = writeln!(
            out,
            "# HELP chat_sockets_connected Socket.IO connections open now.\n# TYPE chat_sockets_connected gauge\nchat_sockets_connected {}",
            self.sockets_connected.load(Ordering::Relaxed)
        );
        out
    }
}
