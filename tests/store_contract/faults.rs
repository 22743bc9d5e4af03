//! The store going away while the server runs: requests get a clear 503,
//! the process keeps serving, `/readyz` says which dependency is down, and
//! everything works again once the store is back (the driver reconnects).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::server::{env_with_path, ServerProcess};

use crate::fixture::database_name;
use crate::server::Server;

async fn get(client: &reqwest::Client, url: &str, cookie: &str) -> (u16, Value) {
    let response = client
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls until `check` holds, or panics after `limit` with `what`.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_gives_503_keeps_the_server_up_and_recovers() {
    let store = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let env = env_with_path([
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", "0".to_owned()),
        ("MONGODB_URI", store.uri()),
        ("MONGODB_DB", database_name()),
        ("RUST_LOG", "error".to_owned()),
    ]);
    let bin = Path::new(env!("CARGO_BIN_EXE_llm-chat-server"));
    let mut server = ServerProcess::start(bin, &env, dir.path())
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    let base = server.base_url();
    let http = reqwest::Client::new();
    let page = http.get(format!("{base}/")).send().await.unwrap();
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let started = http
        .post(format!("{base}/start_conversation"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);

    store.stop();
    let (status, body) = get(&http, &format!("{base}/list_conversations"), &cookie).await;
    let (health, _) = get(&http, &format!("{base}/healthz"), &cookie).await;
    let (ready, readiness) = get(&http, &format!("{base}/readyz"), &cookie).await;

    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable");
    assert_eq!(
        body["message"],
        "The service is temporarily unavailable. Please try again."
    );
    assert!(
        !body.to_string().to_lowercase().contains("mongo"),
        "internal detail leaked: {body}"
    );
    assert_eq!(health, 200);
    assert_eq!(ready, 503);
    assert_eq!(readiness["checks"]["store"], "down");

    let _back = Server::start_at(Some(store.port));
    within(Duration::from_secs(30), "/readyz to recover", || {
        let (http, url, cookie) = (http.clone(), format!("{base}/readyz"), cookie.clone());
        async move { get(&http, &url, &cookie).await.0 == 200 }
    })
    .await;
    // The restarted server is empty (in memory): a new session, a new conversation.
    let fresh = http.get(format!("{base}/")).send().await.unwrap();
    let cookie = fresh.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let again = http
        .post(format!("{base}/start_conversation"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let (status, listed) = get(&http, &format!("{base}/list_conversations"), &cookie).await;
    assert_eq!(status, 200);
    assert_eq!(listed["conversations"].as_array().unwrap().len(), 1);
    server.kill().await;
}
