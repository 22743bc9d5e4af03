//! `POST /save_history`.

use serde_json::{json, Value};

use crate::helpers::spawn_app;

#[tokio::test]
async fn save_writes_the_stored_conversation_into_the_saved_conversations_dir() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    user.add_example("Name a planet", "Jupiter").await;

    let response = user.post("/save_history").await;

    response.assert_ok_message("Conversation history saved successfully.");
    let file_name = response.str_field("file_name");
    let suffix = format!("_{id}_conversation_history.json");
    let stamp = file_name
        .strip_suffix(&suffix)
        .unwrap_or_else(|| panic!("file name {file_name:?} does not end with {suffix:?}"));
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%d_%H%M%S")
        .unwrap_or_else(|error| panic!("{stamp:?} is not YYYYmmdd_HHMMSS: {error}"));
    let saved_dir = app.dir.path().join("saved");
    let files: Vec<String> = std::fs::read_dir(&saved_dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", saved_dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, vec![file_name.clone()]);
    let document: Value =
        serde_json::from_slice(&std::fs::read(saved_dir.join(&file_name)).unwrap())
            .expect("saved file is JSON");
    assert_eq!(document["conversation_id"], json!(id));
    assert_eq!(
        document["conversation_history"],
        json!([{"role": "user", "content": "Name a planet"}, {"role": "assistant", "content": "Jupiter"}])
    );
    let user_id = document["user_id"].as_str().expect("user_id string");
    assert!(
        !user_id.is_empty() && user_id != "anonymous",
        "user_id {user_id:?}"
    );
    let text = document["conversation_text"]
        .as_str()
        .expect("conversation_text string");
    assert!(
        text.contains("Name a planet") && text.contains("Jupiter"),
        "conversation_text {text:?}"
    );
    assert!(
        document.get("created_at").is_some() && document.get("updated_at").is_some(),
        "{document}"
    );
}

#[tokio::test]
async fn saves_of_two_users_carry_different_user_ids() {
    let app = spawn_app(&[]).await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    alice.start_conversation().await;
    bob.start_conversation().await;

    let alice_file = alice.post("/save_history").await.str_field("file_name");
    let bob_file = bob.post("/save_history").await.str_field("file_name");

    let read = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(app.dir.path().join("saved").join(name)).unwrap())
            .unwrap()
    };
    assert_ne!(read(&alice_file)["user_id"], read(&bob_file)["user_id"]);
}

#[tokio::test]
async fn save_without_a_conversation_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user.post("/save_history").await;

    response.assert_error(400, "no_conversation", "No active conversation to save.");
    let saved_dir = app.dir.path().join("saved");
    let written = std::fs::read_dir(&saved_dir)
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(written, 0, "a file was written for a rejected save");
}

/// The names of the files in the saved folder (no temporary files).
fn saved_files(app: &crate::helpers::TestApp) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(app.dir.path().join("saved"))
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_new_save_replaces_the_conversations_earlier_file_and_is_private() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    user.add_example("Name a planet", "Jupiter").await;
    let saved_dir = app.dir.path().join("saved");
    std::fs::create_dir_all(&saved_dir).unwrap();
    // An earlier save of this conversation, and one of another conversation.
    let earlier = format!("20200101_000000_{id}_conversation_history.json");
    let other = "20200101_000000_00000000-0000-4000-8000-000000000000_conversation_history.json";
    std::fs::write(saved_dir.join(&earlier), "{}").unwrap();
    std::fs::write(saved_dir.join(other), "{}").unwrap();

    let first = user.post("/save_history").await.str_field("file_name");
    user.add_example("Name a moon", "Io").await;
    let response = user.post("/save_history").await;

    response.assert_ok_message("Conversation history saved successfully.");
    let latest = response.str_field("file_name");
    assert!(latest >= first, "{latest} before {first}");
    let mut expected = vec![latest.clone(), other.to_string()];
    expected.sort();
    assert_eq!(saved_files(&app), expected, "one file per conversation");
    let document: Value =
        serde_json::from_slice(&std::fs::read(saved_dir.join(&latest)).unwrap()).unwrap();
    assert_eq!(
        document["conversation_history"].as_array().map(Vec::len),
        Some(4),
        "the file holds the latest save: {document}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(saved_dir.join(&latest))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {:o}", mode & 0o777);
    }
}

#[tokio::test]
async fn saves_are_rate_limited_per_user() {
    let app = spawn_app(&[("RATE_LIMIT_SAVES_PER_HOUR", "2")]).await;
    let user = app.new_user().await;
    let other = app.new_user().await;
    user.start_conversation().await;
    other.start_conversation().await;
    for _ in 0..2 {
        user.post("/save_history")
            .await
            .assert_ok_message("Conversation history saved successfully.");
    }

    let refused = user.post("/save_history").await;

    refused.assert_status(429);
    assert_eq!(
        refused.json["error"],
        json!("rate_limited"),
        "{}",
        refused.json
    );
    assert!(
        refused.json["retry_after"].as_u64().is_some_and(|s| s > 0),
        "{}",
        refused.json
    );
    other
        .post("/save_history")
        .await
        .assert_ok_message("Conversation history saved successfully.");
}

#[tokio::test]
async fn a_conversation_too_large_to_save_gets_413_and_no_file() {
    let app = spawn_app(&[
        ("SAVE_HISTORY_MAX_MB", "1"),
        ("MAX_MESSAGE_CHARS", "200000"),
    ])
    .await;
    let user = app.new_user().await;
    user.start_conversation().await;
    let long = "x".repeat(150_000);
    for _ in 0..3 {
        user.add_example(&long, &long).await;
    }

    let response = user.post("/save_history").await;

    response.assert_error(
        413,
        "too_large",
        "This conversation is too large to save (max 1 MB).",
    );
    assert!(saved_files(&app).is_empty(), "{:?}", saved_files(&app));
}
