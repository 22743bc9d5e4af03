//! Process counters and histograms, rendered as Prometheus text at
//! `/metrics`. Lock-free on the hot path (atomics); the per-status upstream
//! counts take a short lock only when a response arrives.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A Prometheus histogram with fixed buckets (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Buckets for latencies from a millisecond to two minutes.
const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Buckets for round trips to a nearby server: 50 µs to 5 s.
const ROUND_TRIP: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

impl Histogram {
    fn with_bounds(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn latency() -> Self {
        Self::with_bounds(LATENCY)
    }

    /// A histogram for Redis round trips (finer buckets).
    pub fn round_trip() -> Self {
        Self::with_bounds(ROUND_TRIP)
    }

    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        if let Some(bucket) = self.bounds.iter().position(|b| seconds <= *b) {
            self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Counters, gauges and histograms of this process.
#[derive(Debug)]
pub struct Metrics {
    pub sockets_connected: AtomicI64,
    pub turns_started: AtomicU64,
    pub turns_completed: AtomicU64,
    pub turns_stopped: AtomicU64,
    pub turns_failed: AtomicU64,
    /// Messages refused because `LLM_MAX_CONCURRENCY` replies were running.
    pub turns_refused_busy: AtomicU64,
    /// Messages refused because the user's daily token quota was used up.
    pub turns_refused_quota: AtomicU64,
    pub summaries: AtomicU64,
    pub summary_failures: AtomicU64,
    /// Times this instance's Redis listener fell behind and re-read the
    /// reply logs (every watcher still gets every chunk once).
    pub listener_lagged: AtomicU64,
    pub upload_chunks: AtomicU64,
    pub reply_chunks: AtomicU64,
    pub tokens_in: AtomicU64,
    pub tokens_out: AtomicU64,
    pub llm_retries: AtomicU64,
    /// Upstream responses by HTTP status (0: no response: connect error or timeout).
    pub llm_responses: Mutex<BTreeMap<u16, u64>>,
    pub first_chunk: Histogram,
    pub turn_duration: Histogram,
    pub store_latency: Histogram,
    /// Redis commands (sessions, reply log, rate limits, stop requests);
    /// shared with the Redis connections, which time them.
    pub redis_latency: std::sync::Arc<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            sockets_connected: AtomicI64::new(0),
            turns_started: AtomicU64::new(0),
            turns_completed: AtomicU64::new(0),
            turns_stopped: AtomicU64::new(0),
            turns_failed: AtomicU64::new(0),
            turns_refused_busy: AtomicU64::new(0),
            turns_refused_quota: AtomicU64::new(0),
            summaries: AtomicU64::new(0),
            summary_failures: AtomicU64::new(0),
            listener_lagged: AtomicU64::new(0),
            upload_chunks: AtomicU64::new(0),
            reply_chunks: AtomicU64::new(0),
            tokens_in: AtomicU64::new(0),
            tokens_out: AtomicU64::new(0),
            llm_retries: AtomicU64::new(0),
            llm_responses: Mutex::new(BTreeMap::new()),
            first_chunk: Histogram::latency(),
            turn_duration: Histogram::latency(),
            store_latency: Histogram::latency(),
            redis_latency: std::sync::Arc::new(Histogram::round_trip()),
        }
    }
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    /// Counts one upstream answer (status 0: none came).
    pub fn llm_response(&self, status: u16) {
        *self
            .llm_responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status)
            .or_insert(0) += 1;
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "chat_turns_started_total",
                "Chat turns started.",
                get(&self.turns_started),
            ),
            (
                "chat_turns_completed_total",
                "Chat turns whose reply finished.",
                get(&self.turns_completed),
            ),
            (
                "chat_turns_stopped_total",
                "Chat turns stopped by the user, a disconnect or shutdown.",
                get(&self.turns_stopped),
            ),
            (
                "chat_turns_failed_total",
                "Chat turns that ended in an error.",
                get(&self.turns_failed),
            ),
            (
                "chat_turns_refused_busy_total",
                "Messages refused because LLM_MAX_CONCURRENCY replies were running.",
                get(&self.turns_refused_busy),
            ),
            (
                "chat_turns_refused_quota_total",
                "Messages (send_message, regenerate) refused because the user's daily token quota was used up.",
                get(&self.turns_refused_quota),
            ),
            (
                "chat_reply_chunks_total",
                "Streamed reply chunks sent to clients.",
                get(&self.reply_chunks),
            ),
            (
                "chat_tokens_in_total",
                "Prompt tokens sent upstream for chat turns.",
                get(&self.tokens_in),
            ),
            (
                "chat_tokens_out_total",
                "Reply tokens received for chat turns.",
                get(&self.tokens_out),
            ),
            (
                "chat_summaries_total",
                "Summaries of older turns made.",
                get(&self.summaries),
            ),
            (
                "chat_summary_failures_total",
                "Summaries that failed (oldest turns left out instead).",
                get(&self.summary_failures),
            ),
            (
                "chat_reply_listener_lagged_total",
                "Times the Redis listener fell behind and re-read the reply logs.",
                get(&self.listener_lagged),
            ),
            (
                "chat_upload_chunks_total",
                "Uploaded file chunks analysed.",
                get(&self.upload_chunks),
            ),
            (
                "chat_llm_retries_total",
                "Upstream requests tried again (429, 5xx, connection errors).",
                get(&self.llm_retries),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP chat_llm_responses_total Upstream responses by HTTP status (0: no response).\n# TYPE chat_llm_responses_total counter"
        );
        for (status, count) in self
            .llm_responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "chat_llm_responses_total{{status=\"{status}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP chat_sockets_connected Socket.IO connections open now.\n# TYPE chat_sockets_connected gauge\nchat_sockets_connected {}",
            self.sockets_connected.load(Ordering::Relaxed)
        );
        self.first_chunk.render(
            &mut out,
            "chat_first_chunk_seconds",
            "From a message to its first reply chunk.",
        );
        self.turn_duration.render(
            &mut out,
            "chat_turn_duration_seconds",
            "From a message to its stored reply.",
        );
        self.store_latency.render(
            &mut out,
            "chat_store_seconds",
            "Conversation store calls of a turn (load, append).",
        );
        self.redis_latency.render(
            &mut out,
            "chat_redis_seconds",
            "Redis round trips: sessions, reply log, rate limits, stop requests (Redis mode).",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let metrics = Metrics::default();
        metrics.turn_duration.observe(Duration::from_millis(3));
        metrics.turn_duration.observe(Duration::from_millis(700));
        metrics.llm_response(200);
        metrics.llm_response(500);
        metrics.llm_response(500);

        let text = metrics.render();

        assert!(
            text.contains("chat_turn_duration_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(text.contains("chat_turn_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("chat_turn_duration_seconds_bucket{le=\"1\"} 2"));
        assert!(text.contains("chat_turn_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("chat_turn_duration_seconds_sum 0.703"));
        assert!(text.contains("chat_llm_responses_total{status=\"500\"} 2"));
    }
}
