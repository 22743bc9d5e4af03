//! What the tests (`tests/api`, `tests/cluster`, `tests/store_contract`) and the bench
//! (`bench/`) of llm-chat-server share, written once:
//!
//! - [`fake_llm`]: a fake OpenAI-compatible chat-completions server, scripted per request;
//! - [`sio`]: a Socket.IO v4 client, raw frames for the bench and an event-level
//!   [`sio::SioClient`] (WebSocket or long-polling) for the tests;
//! - [`server`]: the real binary as a child process, its address from its listening line;
//! - [`browser`]: a cookie jar talking HTTP and Socket.IO to a server, as a browser does.

pub mod browser;
pub mod fake_llm;
pub mod server;
pub mod sio;

use std::future::Future;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released; the caller binds it right away).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Polls `check` until it returns `Some`, for effects that land some time after an event;
/// panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
