//! What the browser caches and how answers travel: a static asset is pinned
//! (`immutable`) only under the current asset version, and text answers come
//! gzip- or brotli-compressed when asked for, decoding to the same bytes.

use std::io::Read;

use crate::helpers::{spawn_app, TestApp, TURN_TIMEOUT};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The `?v=` the page puts on its script.
async fn current_asset_version(app: &TestApp) -> String {
    let page = app.new_user().await.get("/").await;
    let at = page
        .text
        .find("/static/app.js?v=")
        .unwrap_or_else(|| panic!("no versioned app.js in the page: {}", page.text));
    page.text[at + "/static/app.js?v=".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

#[tokio::test]
async fn an_asset_is_immutable_only_under_the_current_version() {
    let app = spawn_app(&[]).await;
    let version = current_asset_version(&app).await;
    let user = app.new_user_without_page();

    let current = user.get(&format!("/static/app.js?v={version}")).await;
    let old = user.get("/static/app.js?v=0123456789ab").await;
    let unversioned = user.get("/static/app.js").await;
    let empty = user.get("/static/app.js?v=").await;

    assert_eq!(current.status, 200);
    assert_eq!(current.header("cache-control").as_deref(), Some(IMMUTABLE));
    for (what, response) in [("old", &old), ("none", &unversioned), ("empty", &empty)] {
        assert_eq!(response.status, 200, "{what}");
        assert_eq!(
            response.header("cache-control").as_deref(),
            Some("no-cache"),
            "version {what}"
        );
        assert_eq!(response.text, current.text, "version {what}: other bytes");
    }
}

/// `path` fetched raw (not decoded) with `Accept-Encoding: encoding`.
async fn fetch_encoded(
    app: &TestApp,
    cookie: Option<String>,
    path: &str,
    encoding: &str,
) -> (Option<String>, Option<String>, Vec<u8>) {
    let http = testkit::browser::http_client(std::time::Duration::from_secs(10));
    let mut request = http
        .get(format!("{}{path}", app.base_url))
        .header("accept-encoding", encoding);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.expect("request");
    assert_eq!(response.status(), 200, "{path} with {encoding}");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (content_encoding, vary) = (header("content-encoding"), header("vary"));
    let body = response.bytes().await.expect("body").to_vec();
    (content_encoding, vary, body)
}

fn decode(encoding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("valid gzip"),
        "br" => brotli::Decompressor::new(bytes, 4096)
            .read_to_end(&mut out)
            .expect("valid brotli"),
        other => panic!("unknown encoding {other}"),
    };
    out
}

#[tokio::test]
async fn the_page_a_script_and_json_come_compressed_when_asked_and_decode_to_the_same_bytes() {
    let app = spawn_app(&[]).await;
    let version = current_asset_version(&app).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    socket.send_message(&"A long question about compression. ".repeat(80), Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    let cookie = user.cookie_header();
    let json_path = format!("/load_conversation/{id}");
    let script_path = format!("/static/app.js?v={version}");

    for path in ["/", script_path.as_str(), json_path.as_str()] {
        let (plain_encoding, _, plain) =
            fetch_encoded(&app, cookie.clone(), path, "identity").await;
        assert_eq!(plain_encoding, None, "{path}");
        assert!(
            plain.len() > 1024,
            "{path} is too small to test: {}",
            plain.len()
        );
        for encoding in ["gzip", "br"] {
            let (content_encoding, vary, body) =
                fetch_encoded(&app, cookie.clone(), path, encoding).await;

            assert_eq!(content_encoding.as_deref(), Some(encoding), "{path}");
            assert!(
                vary.is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")),
                "{path}: no Vary: Accept-Encoding"
            );
            assert!(
                body.len() < plain.len(),
                "{path} with {encoding} did not shrink"
            );
            assert_eq!(decode(encoding, &body), plain, "{path} with {encoding}");
        }
    }
}

#[tokio::test]
async fn small_answers_are_not_compressed() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let (healthz, _, _) = fetch_encoded(&app, None, "/healthz", "gzip, br").await;
    let (config, _, body) = fetch_encoded(&app, user.cookie_header(), "/get_config", "br").await;

    assert_eq!(healthz, None, "a tiny answer was compressed");
    if body.len() < 1024 {
        assert_eq!(config, None, "a small JSON answer was compressed");
    }
}
