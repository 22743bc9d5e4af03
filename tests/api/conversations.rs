//! Conversation routes: start, list, load, delete, reset.

use serde_json::json;
use testkit::browser::msg;

use crate::helpers::{spawn_app, timestamp};

#[tokio::test]
async fn started_conversation_has_a_uuid_and_is_listed_empty() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let id = user.start_conversation().await;

    uuid::Uuid::parse_str(&id).unwrap_or_else(|error| panic!("{id:?} is not a UUID: {error}"));
    let list = user.list().await;
    assert_eq!(list.len(), 1, "{list:?}");
    let entry = &list[0];
    assert_eq!(entry["conversation_id"], json!(id));
    assert_eq!(entry["message_count"], json!(0));
    let created = timestamp(&entry["created_at"]);
    let updated = timestamp(&entry["updated_at"]);
    assert!(
        updated >= created,
        "updated_at {updated} before created_at {created}"
    );
    assert!(entry.get("title").is_some(), "no title field: {entry}");
}

#[tokio::test]
async fn each_start_gives_a_new_conversation() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let first = user.start_conversation().await;
    let second = user.start_conversation().await;

    assert_ne!(first, second);
    let mut listed = user.listed_ids().await;
    listed.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn new_user_has_no_conversations() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let list = user.list().await;

    assert!(list.is_empty(), "{list:?}");
}

#[tokio::test]
async fn list_is_newest_first() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(user.start_conversation().await);
    }

    let list = user.list().await;

    let ids: Vec<String> = list
        .iter()
        .map(|entry| entry["conversation_id"].as_str().unwrap().to_owned())
        .collect();
    let times: Vec<_> = list
        .iter()
        .map(|entry| timestamp(&entry["created_at"]))
        .collect();
    assert!(
        times.windows(2).all(|pair| pair[0] >= pair[1]),
        "not newest first: {list:?}"
    );
    let distinct = times.windows(2).all(|pair| pair[0] != pair[1]);
    if distinct {
        let newest_first: Vec<String> = created.iter().rev().cloned().collect();
        assert_eq!(ids, newest_first);
    } else {
        let mut sorted = ids.clone();
        sorted.sort();
        created.sort();
        assert_eq!(sorted, created);
    }
}

#[tokio::test]
async fn list_pages_with_limit_and_offset() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    for _ in 0..3 {
        user.start_conversation().await;
    }
    let all = user.listed_ids().await;

    let first_page = user.get("/list_conversations?limit=2").await;
    let second_page = user.get("/list_conversations?limit=2&offset=2").await;

    assert_eq!(first_page.status, 200, "{}", first_page.text);
    assert_eq!(second_page.status, 200, "{}", second_page.text);
    let page_ids = |body: &serde_json::Value| -> Vec<String> {
        body["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["conversation_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(page_ids(&first_page.json), all[..2].to_vec());
    assert_eq!(page_ids(&second_page.json), all[2..].to_vec());
}

#[tokio::test]
async fn list_rejects_a_limit_that_is_not_a_number() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user.get("/list_conversations?limit=abc").await;

    assert_eq!(response.status, 400, "{}", response.text);
    assert_eq!(
        response.json["error"],
        json!("invalid"),
        "{}",
        response.text
    );
    assert!(response.json["message"].is_string(), "{}", response.text);
}

#[tokio::test]
async fn list_rejects_a_negative_offset() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user.get("/list_conversations?offset=-1").await;

    assert_eq!(response.status, 400, "{}", response.text);
    assert_eq!(
        response.json["error"],
        json!("invalid"),
        "{}",
        response.text
    );
}

#[tokio::test]
async fn load_returns_the_history_and_makes_the_conversation_current() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let first = user.start_conversation().await;
    user.add_example("What is 2+2?", "4").await;
    let second = user.start_conversation().await;

    let loaded = user.get(&format!("/load_conversation/{first}")).await;
    user.add_example("And 3+3?", "6").await;

    assert_eq!(loaded.status, 200, "{}", loaded.text);
    assert_eq!(loaded.json["conversation_id"], json!(first));
    assert_eq!(
        loaded.json["conversation"],
        json!([
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"}
        ])
    );
    assert!(
        loaded.json.get("title").is_some(),
        "no title: {}",
        loaded.text
    );
    assert_eq!(
        user.history(&first).await,
        vec![
            msg("user", "What is 2+2?"),
            msg("assistant", "4"),
            msg("user", "And 3+3?"),
            msg("assistant", "6")
        ]
    );
    assert!(user.history(&second).await.is_empty());
}

#[tokio::test]
async fn load_of_an_unknown_conversation_is_not_found() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user
        .get(&format!("/load_conversation/{}", uuid::Uuid::new_v4()))
        .await;

    response.assert_error(404, "not_found", "Conversation not found.");
}

#[tokio::test]
async fn load_of_a_malformed_id_is_invalid() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user.get("/load_conversation/not-a-uuid").await;

    assert_eq!(response.status, 400, "{}", response.text);
    assert_eq!(
        response.json["error"],
        json!("invalid"),
        "{}",
        response.text
    );
}

#[tokio::test]
async fn deleted_conversation_is_gone_from_list_and_load() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let kept = user.start_conversation().await;
    let doomed = user.start_conversation().await;

    let response = user.delete(&format!("/conversation/{doomed}")).await;

    response.assert_ok_message("Conversation deleted.");
    assert_eq!(user.listed_ids().await, vec![kept]);
    user.get(&format!("/load_conversation/{doomed}"))
        .await
        .assert_error(404, "not_found", "Conversation not found.");
}

#[tokio::test]
async fn deleting_the_current_conversation_leaves_no_current_one() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let current = user.start_conversation().await;

    user.delete(&format!("/conversation/{current}"))
        .await
        .assert_ok_message("Conversation deleted.");
    let reset = user.post("/reset_conversation").await;
    let save = user.post("/save_history").await;

    reset.assert_error(400, "no_conversation", "No active conversation to reset.");
    save.assert_error(400, "no_conversation", "No active conversation to save.");
}

#[tokio::test]
async fn deleting_another_conversation_keeps_the_current_one() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let other = user.start_conversation().await;
    let current = user.start_conversation().await;

    user.delete(&format!("/conversation/{other}"))
        .await
        .assert_ok_message("Conversation deleted.");
    user.add_example("still here?", "yes").await;

    assert_eq!(
        user.history(&current).await,
        vec![msg("user", "still here?"), msg("assistant", "yes")]
    );
}

#[tokio::test]
async fn delete_of_an_unknown_conversation_is_not_found() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user
        .delete(&format!("/conversation/{}", uuid::Uuid::new_v4()))
        .await;

    response.assert_error(404, "not_found", "Conversation not found.");
}

#[tokio::test]
async fn delete_of_a_malformed_id_is_invalid() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user.delete("/conversation/not-a-uuid").await;

    assert_eq!(response.status, 400, "{}", response.text);
    assert_eq!(
        response.json["error"],
        json!("invalid"),
        "{}",
        response.text
    );
}

#[tokio::test]
async fn reset_empties_the_current_conversation_but_keeps_it() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    user.add_example("first question", "first answer").await;
    user.add_example("second question", "second answer").await;

    let response = user.post("/reset_conversation").await;

    response.assert_ok_message("Conversation has been reset successfully!");
    assert!(user.history(&id).await.is_empty());
    let list = user.list().await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["conversation_id"], json!(id));
    assert_eq!(list[0]["message_count"], json!(0));
}

#[tokio::test]
async fn reset_without_a_conversation_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user.post("/reset_conversation").await;

    response.assert_error(400, "no_conversation", "No active conversation to reset.");
}

#[tokio::test]
async fn list_counts_messages_and_moves_updated_at() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let before = user.list().await[0].clone();

    user.add_example("count me", "counted").await;

    let after = user.list().await;
    assert_eq!(after[0]["conversation_id"], json!(id));
    assert_eq!(after[0]["message_count"], json!(2));
    assert_eq!(after[0]["created_at"], before["created_at"]);
    assert!(timestamp(&after[0]["updated_at"]) >= timestamp(&before["updated_at"]));
}
