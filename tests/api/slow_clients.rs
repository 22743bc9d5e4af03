//! Slow and numerous clients (issue 14 item 5): a request head that never finishes, a
//! kept-alive connection left idle, a body that stops arriving, and more connections than
//! `HTTP_MAX_CONNECTIONS`. Raw TCP on loopback, every wait bounded.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::spawn_app;

/// How long a test waits for the server to act before calling it a failure (the server's
/// timeouts under test are 1 s).
const BOUND: Duration = Duration::from_secs(15);

/// Reads until the server closes the connection; everything it sent. Panics after BOUND.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {BOUND:?}; it sent: {:?}",
        String::from_utf8_lossy(&got)
    );
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn an_unfinished_request_head_and_an_idle_connection_are_closed() {
    let app = spawn_app(&[("HTTP_HEADER_TIMEOUT_SECONDS", "1")]).await;

    // Half a request head, then nothing.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );

    // A kept-alive connection: answered, then closed once idle.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("{\"status\":\"ok\"}"), "{answer:?}");

    // Meanwhile everyone else is served.
    let user = app.new_user().await;
    assert_eq!(user.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_a_clear_400() {
    let app = spawn_app(&[("HTTP_BODY_TIMEOUT_SECONDS", "1")]).await;

    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let body = br#"{"user_prompt": "hi", "assistant_response": "hello"}"#;
    let head = format!(
        "POST /add_few_shot_example HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..10]).await.unwrap();
    let answer = read_until_closed(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(
        answer.contains("The request body could not be read."),
        "{answer:?}"
    );
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_wait_for_a_free_place() {
    let app = spawn_app(&[("HTTP_MAX_CONNECTIONS", "2")]).await;
    // Clients that keep no idle connection of their own.
    let client = |timeout: Duration| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(timeout)
            .build()
            .unwrap()
    };
    let url = format!("http://{}/healthz", app.addr);
    // The test app's own pooled connections are closed first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        client(BOUND).get(&url).send().await.unwrap().status(),
        200,
        "served below the cap"
    );

    let first = TcpStream::connect(app.addr).await.unwrap();
    let _second = TcpStream::connect(app.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = client(Duration::from_secs(2)).get(&url).send().await;
    assert!(
        waiting.is_err(),
        "a third connection was served past HTTP_MAX_CONNECTIONS=2: {waiting:?}"
    );

    drop(first);
    let served = client(BOUND).get(&url).send().await.unwrap();
    assert_eq!(
        served.status(),
        200,
        "a freed place is given to the next one"
    );
}
