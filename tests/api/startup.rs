//! Startup: demo mode when no LLM is configured, and refusing bad configuration.

use serde_json::json;
use testkit::fake_llm::FakeLlm;

use crate::helpers::{
    base_env, run_expecting_startup_failure, spawn_app_in, spawn_app_with, TURN_TIMEOUT,
};

#[tokio::test]
async fn without_llm_settings_the_server_answers_in_demo_mode_without_calling_out() {
    let app = spawn_app_with(|_, env| {
        for key in [
            "LLM_PROVIDER",
            "OPENAI_BASE_URL",
            "OPENAI_API_KEY",
            "LLM_MODEL",
        ] {
            env.remove(key);
        }
    })
    .await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;

    let config = user.get("/get_config").await;
    let ready = user.get("/readyz").await;
    socket.send_message("Hello demo", None);
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(config.json["demo_mode"], json!(true), "{}", config.text);
    assert_eq!(config.json["provider"], json!("demo"), "{}", config.text);
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json["checks"]["llm"], json!("demo"), "{}", ready.text);
    turn.expect_end();
    assert!(
        !turn.text().is_empty(),
        "the demo provider gave an empty reply"
    );
    assert_eq!(user.history(&id).await.len(), 2);
    assert_eq!(app.llm.call_count(), 0);
}

#[tokio::test]
async fn a_bad_number_stops_the_server_naming_the_variable() {
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env(&llm, &dir);
    env.insert("MAX_TOKENS".into(), "lots".into());

    let (code, output) = run_expecting_startup_failure(&env, &dir).await;

    assert_ne!(code, Some(0), "exited successfully; output:\n{output}");
    assert!(
        output.contains("MAX_TOKENS"),
        "the error does not name MAX_TOKENS:\n{output}"
    );
}

#[tokio::test]
async fn reply_tokens_not_below_max_tokens_stops_the_server() {
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env(&llm, &dir);
    env.insert("MAX_TOKENS".into(), "500".into());
    env.insert("REPLY_TOKENS".into(), "500".into());

    let (code, output) = run_expecting_startup_failure(&env, &dir).await;

    assert_ne!(code, Some(0), "exited successfully; output:\n{output}");
    assert!(
        output.contains("REPLY_TOKENS"),
        "the error does not name REPLY_TOKENS:\n{output}"
    );
}

#[tokio::test]
async fn unreachable_mongodb_uri_stops_startup_with_a_message_naming_it() {
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env(&llm, &dir);
    env.insert(
        "MONGODB_URI".into(),
        "mongodb://127.0.0.1:1/chatbot_db".into(),
    );

    let (code, output) = run_expecting_startup_failure(&env, &dir).await;

    assert_ne!(code, Some(0), "exited successfully; output:\n{output}");
    assert!(
        output.contains("MONGODB_URI"),
        "the error does not name MONGODB_URI:\n{output}"
    );
}

#[tokio::test]
async fn dotenv_file_in_the_working_directory_is_read_and_the_environment_wins() {
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "MAX_MESSAGE_CHARS=1234\nREPLY_TOKENS=111\n",
    )
    .unwrap();
    let mut env = base_env(&llm, &dir);
    env.insert("REPLY_TOKENS".into(), "222".into());
    let app = spawn_app_in(llm, dir, env).await;
    let user = app.new_user().await;

    let config = user.get("/get_config").await;

    assert_eq!(
        config.json["max_message_chars"],
        json!(1234),
        "{}",
        config.text
    );
    assert_eq!(config.json["reply_tokens"], json!(222), "{}", config.text);
}

#[tokio::test]
async fn redis_mode_without_secret_key_stops_startup_naming_it() {
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env(&llm, &dir);
    env.insert("REDIS_URL".into(), "redis://127.0.0.1:6379/0".into());

    let (code, output) = run_expecting_startup_failure(&env, &dir).await;

    assert_eq!(code, Some(2), "output:\n{output}");
    assert!(
        output.contains("SECRET_KEY") && output.contains("at least 32 characters"),
        "the error does not explain SECRET_KEY:\n{output}"
    );
}

#[tokio::test]
async fn unreachable_redis_stops_startup_with_a_message_naming_redis_url() {
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env(&llm, &dir);
    env.insert(
        "REDIS_URL".into(),
        "redis://:s3cret-pass@127.0.0.1:1/0".into(),
    );
    env.insert("SECRET_KEY".into(), "x".repeat(40));

    let (code, output) = run_expecting_startup_failure(&env, &dir).await;

    assert_eq!(code, Some(1), "output:\n{output}");
    assert!(
        output.contains("REDIS_URL"),
        "the error does not name REDIS_URL:\n{output}"
    );
    assert!(
        !output.contains("s3cret-pass"),
        "the password leaked:\n{output}"
    );
}

#[tokio::test]
async fn a_wildcard_cors_origin_stops_the_server_naming_the_variable() {
    for value in ["*", "https://app.example, *"] {
        let llm = FakeLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut env = base_env(&llm, &dir);
        env.insert("CORS_ALLOWED_ORIGINS".into(), value.into());

        let (code, output) = run_expecting_startup_failure(&env, &dir).await;

        assert_ne!(code, Some(0), "exited successfully; output:\n{output}");
        assert!(
            output.contains("CORS_ALLOWED_ORIGINS") && output.contains("cookies"),
            "the error does not name CORS_ALLOWED_ORIGINS and why:\n{output}"
        );
    }
}

/// The binary has mimalloc commit its arenas lazily (`src/alloc.rs`) unless
/// `MIMALLOC_ARENA_EAGER_COMMIT` says otherwise: mimalloc lists its options
/// as it starts when `MIMALLOC_VERBOSE=1`.
#[cfg(all(target_os = "linux", not(feature = "system-alloc")))]
#[test]
fn the_binary_has_mimalloc_commit_arenas_lazily_unless_told_otherwise() {
    let arena_eager_commit = |value: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_llm-chat-server"));
        command
            .arg("--version")
            .env_clear()
            .env("MIMALLOC_VERBOSE", "1");
        if let Some(value) = value {
            command.env("MIMALLOC_ARENA_EAGER_COMMIT", value);
        }
        let output = command.output().expect("run llm-chat-server --version");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        stderr
            .lines()
            .find_map(|line| line.strip_prefix("option 'arena_eager_commit':"))
            .unwrap_or_else(|| panic!("mimalloc did not list its options:\n{stderr}"))
            .trim()
            .to_string()
    };

    // mimalloc's own default is 2 (eager where the OS overcommits).
    assert_eq!(arena_eager_commit(None), "0");
    assert_eq!(arena_eager_commit(Some("1")), "1");
    assert_eq!(arena_eager_commit(Some("2")), "2");
}
