//! `AUTH_MODE=proxy` without nginx (the end-to-end test through nginx is in
//! tests/cluster): what the settings refuse at start, and what a trusted peer's odd header
//! gets. The test client connects from 127.0.0.1, listed in `TRUSTED_PROXIES` here.

use serde_json::json;
use testkit::fake_llm::FakeLlm;

use testkit::browser::{msg, ApiResponse};
use testkit::sio::SioClient;

use crate::helpers::{base_env, run_expecting_startup_failure, spawn_app, User, TURN_TIMEOUT};

async fn refused_at_start(settings: &[(&str, &str)], named: &str) {
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env(&llm, &dir);
    for (key, value) in settings {
        env.insert((*key).into(), (*value).into());
    }
    let (code, output) = run_expecting_startup_failure(&env, &dir).await;
    assert_ne!(code, Some(0), "exited successfully; output:\n{output}");
    assert!(output.contains(named), "no {named:?} in:\n{output}");
}

#[tokio::test]
async fn proxy_mode_needs_trusted_proxies_stands_alone_and_a_valid_header_name() {
    refused_at_start(&[("AUTH_MODE", "proxy")], "needs TRUSTED_PROXIES").await;
    refused_at_start(
        &[
            ("AUTH_MODE", "proxy,local"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ],
        "proxy cannot be combined",
    )
    .await;
    refused_at_start(
        &[
            ("AUTH_MODE", "proxy"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
            ("AUTH_PROXY_HEADER", "not a header"),
        ],
        "AUTH_PROXY_HEADER",
    )
    .await;
    refused_at_start(
        &[
            ("AUTH_MODE", "proxy"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
            ("AUTH_PROXY_LOGOUT_URL", "javascript:alert(1)"),
        ],
        "AUTH_PROXY_LOGOUT_URL",
    )
    .await;
}

#[tokio::test]
async fn a_trusted_proxys_header_names_the_account_and_passwords_do_not_exist() {
    let app = spawn_app(&[
        ("AUTH_MODE", "proxy"),
        ("TRUSTED_PROXIES", "127.0.0.0/30"),
        ("AUTH_PROXY_HEADER", "X-Auth-Email"),
    ])
    .await;
    // `GET /auth/me` with the proxy's header, on this browser's cookie.
    async fn me_as(user: &User, email: &str) -> ApiResponse {
        let request = reqwest::Client::new()
            .get(user.url("/auth/me"))
            .header("x-auth-email", email);
        user.send(request).await
    }

    // Without the header: nobody (anonymous use is off by default in proxy mode).
    let nobody = app.new_user_without_page();
    nobody
        .get("/auth/me")
        .await
        .assert_error(401, "unauthenticated", "Sign in to continue.");

    let ada = app.new_user_without_page();
    let me = me_as(&ada, "  Ada@Example.COM ").await;
    me.assert_status(200);
    assert_eq!(me.json["email"], "ada@example.com", "{}", me.text);
    assert_eq!(me.json["auth"], "proxy");
    // The session remembers the proxied person: the next request without the header is
    // still Ada's (the cookie is hers).
    let again = ada.get("/auth/me").await;
    assert_eq!(again.json["user_id"], me.json["user_id"], "{}", again.text);

    // The proxy names someone else on this browser: the session follows the proxy.
    let bob = me_as(&ada, "bob@example.com").await;
    assert_eq!(bob.json["email"], "bob@example.com", "{}", bob.text);
    assert_ne!(bob.json["user_id"], me.json["user_id"]);

    // A header that is no email address: refused, nothing created.
    for bad in ["not-an-email", "a@b@c", ""] {
        let odd = app.new_user_without_page();
        let response = me_as(&odd, bad).await;
        assert_eq!(response.status, 401, "{bad:?}: {}", response.text);
        assert_eq!(response.json["error"], "unauthenticated", "{bad:?}");
    }

    // No passwords behind a proxy.
    for path in ["/auth/signup", "/auth/login", "/auth/password"] {
        ada.post_json(
            path,
            json!({"email": "ada@example.com", "password": "long enough"}),
        )
        .await
        .assert_error(
            404,
            "not_found",
            "Signing in with a password is not enabled on this server.",
        );
    }
}

#[tokio::test]
async fn a_socket_with_only_the_proxys_header_is_that_account() {
    let app = spawn_app(&[
        ("AUTH_MODE", "proxy"),
        ("TRUSTED_PROXIES", "127.0.0.0/30"),
        ("AUTH_PROXY_HEADER", "X-Auth-Email"),
    ])
    .await;
    // Ada's browser session is signed in by one request with the header.
    let ada = app.new_user_without_page();
    let request = reqwest::Client::new()
        .get(ada.url("/auth/me"))
        .header("x-auth-email", "ada@example.com");
    ada.send(request).await.assert_status(200);
    let id = ada.start_conversation().await;

    // No cookie, no token: the header alone names the socket's account.
    let mut socket =
        SioClient::connect_with_headers(app.addr, &[("x-auth-email", "ada@example.com")])
            .await
            .expect("the proxied socket was refused");
    app.llm.streams(&["hello ", "Ada"]);
    socket.send_message("hi over the proxy", Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;
    let nobody = SioClient::connect_with_headers(app.addr, &[]).await;

    assert_eq!(turn.text(), "hello Ada");
    assert_eq!(
        ada.history(&id).await,
        vec![
            msg("user", "hi over the proxy"),
            msg("assistant", "hello Ada")
        ]
    );
    assert!(nobody.is_err(), "a socket without the header was let in");
}
