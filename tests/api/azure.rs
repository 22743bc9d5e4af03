//! Azure mode: `AZURE_API_URL` + `API_KEY`, as the original app's `.env`.

use serde_json::json;
use testkit::fake_llm::DEFAULT_PIECES;
use testkit::server::Env;

use crate::helpers::{spawn_app_with, TestApp, TURN_TIMEOUT};

fn azure_env(llm_origin: &str, env: &mut Env) {
    for key in [
        "LLM_PROVIDER",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "LLM_MODEL",
    ] {
        env.remove(key);
    }
    env.insert(
        "AZURE_API_URL".into(),
        format!("{llm_origin}/openai/deployments/x/chat/completions?api-version=2024-02-01"),
    );
    env.insert("API_KEY".into(), "k".into());
}

async fn one_turn(app: &TestApp) {
    let user = app.new_user().await;
    user.start_conversation().await;
    let mut socket = user.socket().await;
    socket.send_message("Hello Azure", None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;
    turn.expect_end();
    assert_eq!(turn.text(), DEFAULT_PIECES.concat());
}

#[tokio::test]
async fn azure_mode_posts_to_the_configured_url_with_a_bearer_key() {
    let app = spawn_app_with(|llm, env| azure_env(&llm.origin(), env)).await;

    one_turn(&app).await;

    let requests = app.llm.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/openai/deployments/x/chat/completions");
    assert_eq!(request.query.as_deref(), Some("api-version=2024-02-01"));
    assert_eq!(request.header("authorization").as_deref(), Some("Bearer k"));
    assert_eq!(request.body["stream"], json!(true));
    assert_eq!(request.body["max_tokens"], json!(800));
}

#[tokio::test]
async fn azure_auth_header_api_key_sends_the_key_in_an_api_key_header() {
    let app = spawn_app_with(|llm, env| {
        azure_env(&llm.origin(), env);
        env.insert("AZURE_AUTH_HEADER".into(), "api-key".into());
    })
    .await;

    one_turn(&app).await;

    let request = &app.llm.requests()[0];
    assert_eq!(request.header("api-key").as_deref(), Some("k"));
    assert_eq!(request.header("authorization"), None);
}

#[tokio::test]
async fn azure_mode_is_reported_by_get_config() {
    let app = spawn_app_with(|llm, env| azure_env(&llm.origin(), env)).await;
    let user = app.new_user().await;

    let config = user.get("/get_config").await;
    let ready = user.get("/readyz").await;

    assert_eq!(config.json["provider"], json!("azure"), "{}", config.text);
    assert_eq!(config.json["demo_mode"], json!(false), "{}", config.text);
    assert_eq!(
        ready.json["checks"]["llm"],
        json!("configured"),
        "{}",
        ready.text
    );
}
