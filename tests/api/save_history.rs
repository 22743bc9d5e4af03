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
