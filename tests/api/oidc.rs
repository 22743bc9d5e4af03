//! Single sign-on (`AUTH_MODE=oidc`) without a browser: the login redirect,
//! and the callback's hostile cases (no state, a state from elsewhere, a
//! state used twice, a refusal from the provider, unknown providers), each a
//! clear 4xx page that signs nobody in and shows no internal text. The
//! provider is the real `oidc-provider` (tests/node/oidc-provider.mjs, run
//! with Node: scripts/test.sh installs tests/node's packages first). The
//! whole sign-in through a browser, on two instances, is tests/node/oidc.test.mjs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{base_env, run_expecting_startup_failure, spawn_app, TestApp};

const CLIENT_ID: &str = "chat-test";
const CLIENT_SECRET: &str = "a-test-client-secret-that-is-long-enough";
const PUBLIC_URL: &str = "http://chat.test";

/// The real OpenID provider, in a Node process killed on drop.
struct Provider {
    issuer: String,
    _child: Child,
}

impl Provider {
    async fn start() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let script = root.join("tests/node/oidc-provider.mjs");
        assert!(
            root.join("tests/node/node_modules/oidc-provider").exists(),
            "tests/node/node_modules/oidc-provider is missing: run `npm ci` in tests/node \
             (scripts/test.sh does)"
        );
        let mut child = Command::new("node")
            .arg(&script)
            .env(
                "OIDC_TEST_REDIRECT_URIS",
                format!("{PUBLIC_URL}/auth/oidc/test/callback"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (install Node.js, as scripts/test.sh does)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let issuer = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(issuer) = line.strip_prefix("issuer ") {
                    return issuer.to_string();
                }
            }
            panic!("the OpenID provider exited before listening");
        })
        .await
        .expect("the OpenID provider listens within 20 s");
        Self {
            issuer,
            _child: child,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AUTH_MODE", "oidc".into()),
            ("PUBLIC_URL", PUBLIC_URL.into()),
            ("OIDC_PROVIDERS", "test".into()),
            ("OIDC_TEST_ISSUER", self.issuer.clone()),
            ("OIDC_TEST_CLIENT_ID", CLIENT_ID.into()),
            ("OIDC_TEST_CLIENT_SECRET", CLIENT_SECRET.into()),
            ("OIDC_TEST_NAME", "Test Provider".into()),
        ]
    }
}

async fn spawn_with(provider: &Provider) -> TestApp {
    let env = provider.env();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_app(&pairs).await
}

/// The query parameters of a URL.
fn query(url: &str) -> std::collections::HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The `data-error` code of a failure page.
fn page_code(text: &str) -> &str {
    let start = text
        .find("data-error=\"")
        .unwrap_or_else(|| panic!("not a failure page: {text}"))
        + "data-error=\"".len();
    &text[start..start + text[start..].find('"').unwrap()]
}

#[tokio::test]
async fn login_redirects_to_the_provider_with_state_nonce_and_a_pkce_challenge() {
    let provider = Provider::start().await;
    let app = spawn_with(&provider).await;
    let user = app.new_user_without_page();

    let response = user.get("/auth/oidc/test/login").await;

    assert_eq!(response.status, 303, "{}", response.text);
    let location = response.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{}/auth?", provider.issuer)),
        "{location}"
    );
    let params = query(&location);
    assert_eq!(params["client_id"], CLIENT_ID);
    assert_eq!(params["response_type"], "code");
    assert_eq!(
        params["redirect_uri"],
        format!("{PUBLIC_URL}/auth/oidc/test/callback")
    );
    assert_eq!(params["code_challenge_method"], "S256");
    assert!(params["code_challenge"].len() >= 43);
    assert!(params["state"].len() >= 16 && params["nonce"].len() >= 16);
    assert!(params["scope"].split(' ').any(|s| s == "openid"));
    assert_eq!(
        response.header("cache-control").as_deref(),
        Some("no-store")
    );
    assert!(
        user.session_cookie().is_some(),
        "the login state needs a session"
    );
}

#[tokio::test]
async fn a_callback_without_state_or_with_a_state_from_another_browser_is_refused() {
    let provider = Provider::start().await;
    let app = spawn_with(&provider).await;
    let (victim, attacker) = (app.new_user_without_page(), app.new_user_without_page());
    let started = victim.get("/auth/oidc/test/login").await;
    let state = query(&started.header("location").unwrap())["state"].clone();

    let missing = attacker.get("/auth/oidc/test/callback?code=abc").await;
    let foreign = attacker
        .get(&format!("/auth/oidc/test/callback?code=abc&state={state}"))
        .await;
    let forged = victim
        .get("/auth/oidc/test/callback?code=abc&state=forged")
        .await;

    assert_eq!(missing.status, 400, "{}", missing.text);
    assert_eq!(page_code(&missing.text), "missing_state");
    assert_eq!(foreign.status, 400, "{}", foreign.text);
    assert_eq!(page_code(&foreign.text), "unknown_login");
    assert!(
        foreign.text.contains("Start the sign-in again"),
        "{}",
        foreign.text
    );
    assert_eq!(forged.status, 400);
    assert_eq!(page_code(&forged.text), "unknown_login");
    for user in [&victim, &attacker] {
        assert_eq!(user.get("/auth/me").await.status, 401);
    }
}

#[tokio::test]
async fn a_state_is_used_up_by_its_first_callback_even_when_the_code_is_refused() {
    let provider = Provider::start().await;
    let app = spawn_with(&provider).await;
    let user = app.new_user_without_page();
    let started = user.get("/auth/oidc/test/login").await;
    let state = query(&started.header("location").unwrap())["state"].clone();
    let callback = format!("/auth/oidc/test/callback?code=not-a-real-code&state={state}");

    let first = user.get(&callback).await;
    let replayed = user.get(&callback).await;

    // The provider's token endpoint refused the code: a clear page, not its words.
    assert_eq!(first.status, 400, "{}", first.text);
    assert_eq!(page_code(&first.text), "sign_in_failed");
    assert!(first.text.contains("Test Provider"), "{}", first.text);
    assert!(!first.text.contains("invalid_grant"), "{}", first.text);
    assert_eq!(replayed.status, 400, "{}", replayed.text);
    assert_eq!(page_code(&replayed.text), "unknown_login");
    assert_eq!(user.get("/auth/me").await.status, 401);
}

#[tokio::test]
async fn a_refusal_from_the_provider_is_shown_and_signs_nobody_in() {
    let provider = Provider::start().await;
    let app = spawn_with(&provider).await;
    let user = app.new_user_without_page();
    let started = user.get("/auth/oidc/test/login").await;
    let state = query(&started.header("location").unwrap())["state"].clone();

    let refused = user
        .get(&format!(
            "/auth/oidc/test/callback?error=access_denied&error_description=%3Cscript%3E&state={state}"
        ))
        .await;

    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(page_code(&refused.text), "provider_refused");
    assert!(
        refused
            .text
            .contains("Test Provider did not sign you in (access_denied)"),
        "{}",
        refused.text
    );
    assert!(!refused.text.contains("<script>"), "{}", refused.text);
    assert_eq!(user.get("/auth/me").await.status, 401);
}

#[tokio::test]
async fn a_callback_from_another_issuer_is_refused() {
    let provider = Provider::start().await;
    let app = spawn_with(&provider).await;
    let user = app.new_user_without_page();
    let started = user.get("/auth/oidc/test/login").await;
    let state = query(&started.header("location").unwrap())["state"].clone();

    // RFC 9207: the provider names itself in `iss`; a mix-up sends another's.
    let mixed_up = user
        .get(&format!(
            "/auth/oidc/test/callback?code=abc&state={state}&iss=http%3A%2F%2Fevil.test"
        ))
        .await;

    assert_eq!(mixed_up.status, 400, "{}", mixed_up.text);
    assert_eq!(page_code(&mixed_up.text), "sign_in_failed");
}

#[tokio::test]
async fn unknown_providers_and_servers_without_oidc_answer_404() {
    let provider = Provider::start().await;
    let app = spawn_with(&provider).await;
    let plain = spawn_app(&[]).await;
    let local = spawn_app(&[("AUTH_MODE", "local")]).await;

    let unknown_login = app
        .new_user_without_page()
        .get("/auth/oidc/nope/login")
        .await;
    let unknown_callback = app
        .new_user_without_page()
        .get("/auth/oidc/nope/callback?code=a&state=b")
        .await;
    let without = plain
        .new_user_without_page()
        .get("/auth/oidc/test/login")
        .await;
    let local_only = local
        .new_user_without_page()
        .get("/auth/oidc/test/login")
        .await;

    for response in [&unknown_login, &unknown_callback, &without, &local_only] {
        assert_eq!(response.status, 404, "{}", response.text);
        assert_eq!(page_code(&response.text), "not_found");
    }
    assert!(without.text.contains("Single sign-on is not enabled"));
}

#[tokio::test]
async fn get_config_lists_the_providers_by_id_and_name_only() {
    let provider = Provider::start().await;
    let app = spawn_with(&provider).await;

    let config = app.new_user_without_page().get("/get_config").await;

    assert_eq!(config.status, 200);
    assert_eq!(
        config.json["auth"]["providers"],
        serde_json::json!([{"id": "test", "name": "Test Provider"}])
    );
    assert!(!config.text.contains(CLIENT_SECRET));
    assert!(!config.text.contains(&provider.issuer));
}

#[tokio::test]
async fn local_and_oidc_together_offer_passwords_and_the_provider() {
    let provider = Provider::start().await;
    let mut env = provider.env();
    env[0].1 = "local,oidc".into();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = spawn_app(&pairs).await;
    let user = app.new_user_without_page();

    let config = user.get("/get_config").await;
    let signup = user
        .post_json(
            "/auth/signup",
            serde_json::json!({"email": "ann@example.org", "password": "a long password"}),
        )
        .await;
    let login = user.get("/auth/oidc/test/login").await;

    assert_eq!(config.json["auth"]["mode"], "local,oidc");
    assert_eq!(config.json["auth"]["providers"][0]["id"], "test");
    assert_eq!(signup.status, 201, "{}", signup.text);
    assert_eq!(signup.json["auth"], "local");
    assert_eq!(login.status, 303, "{}", login.text);
}

#[tokio::test]
async fn an_issuer_that_cannot_be_discovered_stops_the_start_and_is_named() {
    let llm = testkit::fake_llm::FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env(&llm, &dir);
    for (key, value) in [
        ("AUTH_MODE", "oidc"),
        ("PUBLIC_URL", PUBLIC_URL),
        ("OIDC_PROVIDERS", "test"),
        // Nothing listens on the discard port.
        ("OIDC_TEST_ISSUER", "http://127.0.0.1:9"),
        ("OIDC_TEST_CLIENT_ID", CLIENT_ID),
    ] {
        env.insert(key.to_owned(), value.to_owned());
    }

    let (code, output) = run_expecting_startup_failure(&env, &dir).await;

    assert_ne!(code, Some(0), "{output}");
    assert!(
        output.contains("OIDC provider \"test\" could not be discovered at http://127.0.0.1:9/.well-known/openid-configuration"),
        "{output}"
    );
    assert!(output.contains("OIDC_TEST_ISSUER"), "{output}");
}
