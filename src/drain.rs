//! The graceful drain on SIGTERM or Ctrl-C: no new turns, replies in
//! flight finish or are stopped and stored, and the exit code says whether
//! every one of them was stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::turn::TurnRegistry;

/// How long stopped replies get to be stored after the grace period (a slow
/// store under load can take seconds); under `main`'s hard stop.
const STORE_AFTER_STOP: Duration = Duration::from_secs(14);

/// Graceful drain: refuse new turns (and fail `/readyz`, so the balancer
/// sends no more), let replies in flight finish for up to `grace`, then stop
/// the rest, whose partial replies are stored like any stop. Returns how many
/// turns were still not stored at the end (then the exit code is 1).
pub async fn drain(turns: &TurnRegistry, draining: &AtomicBool, grace: Duration) -> usize {
    draining.store(true, Ordering::SeqCst);
    tracing::info!(
        in_flight = turns.len(),
        grace_secs = grace.as_secs_f32(),
        "draining"
    );
    let deadline = tokio::time::Instant::now() + grace;
    while !turns.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !turns.is_empty() {
        let stopped = turns.stop_all();
        tracing::info!(stopped, "grace period over: stopping the remaining replies");
        let deadline = tokio::time::Instant::now() + STORE_AFTER_STOP;
        while !turns.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let left = turns.len();
    if left == 0 {
        tracing::info!("drained; closing sockets");
    } else {
        tracing::error!(
            left,
            "drain: replies still not stored; closing sockets and exiting with an error"
        );
    }
    left
}
