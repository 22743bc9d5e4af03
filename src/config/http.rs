//! How long the HTTP server waits for a client, and how many connections it
//! holds open (`HTTP_*`).

use std::time::Duration;

use super::reader::Reader;

/// The HTTP server's limits on slow and numerous clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpLimits {
    /// `HTTP_HEADER_TIMEOUT_SECONDS`: a request's head must arrive within
    /// this; it also ends a kept-alive connection that waits this long for
    /// its next request (the wait for a head starts when it goes idle).
    pub header_timeout: Duration,
    /// `HTTP_BODY_TIMEOUT_SECONDS`: the longest pause between two pieces of
    /// a request body (an upload may take longer as a whole).
    pub body_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: open connections (WebSockets included) per
    /// instance; past it the server accepts no more until one closes.
    pub max_connections: usize,
}

pub(super) fn read(r: &mut Reader<'_>) -> HttpLimits {
    let header_timeout = r.seconds("HTTP_HEADER_TIMEOUT_SECONDS", 30.0);
    let body_timeout = r.seconds("HTTP_BODY_TIMEOUT_SECONDS", 30.0);
    let max_connections = r.parse::<usize>(
        "HTTP_MAX_CONNECTIONS",
        25_000,
        "a whole number of connections",
    );
    if max_connections == 0 {
        r.errors
            .push("HTTP_MAX_CONNECTIONS must be at least 1".to_string());
    }
    HttpLimits {
        header_timeout,
        body_timeout,
        max_connections: max_connections.max(1),
    }
}
