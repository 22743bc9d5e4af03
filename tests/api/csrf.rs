//! CSRF: requests that change something must come from this site (or an
//! origin listed in CORS_ALLOWED_ORIGINS); reads and non-browser clients pass.

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_cross_site_post_is_refused_and_changes_nothing() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let http = reqwest::Client::new();

    let forged = user
        .send(
            http.post(user.url("/reset_conversation"))
                .header("origin", "https://evil.example"),
        )
        .await;
    let fetched = user
        .send(
            http.post(user.url("/start_conversation"))
                .header("sec-fetch-site", "cross-site"),
        )
        .await;
    let deleted = user
        .send(
            http.delete(user.url(&format!("/conversation/{id}")))
                .header("origin", "http://127.0.0.1:1"),
        )
        .await;

    for response in [&forged, &fetched, &deleted] {
        response.assert_error(403, "forbidden", "Cross-site request refused.");
    }
    assert_eq!(
        user.listed_ids().await,
        vec![id.clone()],
        "nothing was created or deleted"
    );
}

#[tokio::test]
async fn same_origin_listed_origins_and_non_browser_clients_pass() {
    let app = spawn_app(&[("CORS_ALLOWED_ORIGINS", "https://app.example")]).await;
    let user = app.new_user().await;
    let http = reqwest::Client::new();
    let own_origin = format!("http://{}", app.addr);

    let same_site = user
        .send(
            http.post(user.url("/start_conversation"))
                .header("origin", own_origin)
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    let listed = user
        .send(
            http.post(user.url("/start_conversation"))
                .header("origin", "https://app.example")
                .header("sec-fetch-site", "cross-site"),
        )
        .await;
    let plain = user.post("/start_conversation").await;
    let read = user
        .send(
            http.get(user.url("/list_conversations"))
                .header("origin", "https://evil.example"),
        )
        .await;

    for response in [&same_site, &listed, &plain] {
        assert_eq!(response.status, 200, "{}", response.text);
    }
    assert_eq!(read.status, 200);
    assert_eq!(read.json["conversations"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_listed_origin_may_read_with_credentials_and_no_other_origin_may() {
    let app = spawn_app(&[("CORS_ALLOWED_ORIGINS", "https://app.example")]).await;
    let user = app.new_user().await;
    let http = reqwest::Client::new();
    let read_from = |origin: &'static str| {
        user.send(
            http.get(user.url("/list_conversations"))
                .header("origin", origin),
        )
    };

    let listed = read_from("https://app.example").await;
    let other = read_from("https://evil.example").await;

    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(
        listed.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        listed.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "another site may read a user's conversations"
    );
}
