//! Percentiles over every sample (sorted, nearest rank): exact, no histogram error.

use serde_json::{json, Value};

/// `{p50, p90, p99, max}` in milliseconds from samples in microseconds.
pub fn summary_ms(samples: &mut [u64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let rank = |p: f64| {
        let n = samples.len();
        let idx = ((p / 100.0) * n as f64).ceil() as usize;
        samples[idx.clamp(1, n) - 1]
    };
    let ms = |us: u64| round3(us as f64 / 1000.0);
    json!({
        "p50": ms(rank(50.0)),
        "p90": ms(rank(90.0)),
        "p99": ms(rank(99.0)),
        "max": ms(*samples.last().unwrap()),
    })
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
