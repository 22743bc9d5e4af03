//! Share links: a read-only snapshot of a conversation, made by its owner, read by anyone
//! holding the link without a session (and without being given one), listed and revoked
//! by the owner only; a revoked link, or one of a deleted conversation, answers 404.

use serde_json::{json, Value};
use testkit::browser::ApiResponse;

use crate::helpers::{spawn_app, TestApp, User};

/// `POST /api/shares` for `conversation_id`, asserting 201; returns the body and the token.
async fn share(owner: &User, conversation_id: &str) -> (Value, String) {
    let made = owner
        .post_json("/api/shares", json!({"conversation_id": conversation_id}))
        .await;
    made.assert_status(201);
    let url = made.str_field("url");
    let token = url
        .strip_prefix("/share/")
        .unwrap_or_else(|| panic!("not a share URL: {url}"))
        .to_owned();
    (made.json, token)
}

/// A conversation of `owner` holding one few-shot pair.
async fn conversation_with(owner: &User, prompt: &str, reply: &str) -> String {
    let id = owner.start_conversation().await;
    owner.add_example(prompt, reply).await;
    id
}

#[track_caller]
fn assert_no_cookie(response: &ApiResponse) {
    assert_eq!(
        response.header("set-cookie"),
        None,
        "a public share answer set a cookie"
    );
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_link_shows_the_snapshot_to_anyone_without_a_session_and_not_later_messages() {
    let app = spawn_app(&[]).await;
    let owner = app.new_user().await;
    let id = conversation_with(&owner, "What is **Rust**?", "A *systems* language.").await;
    let (made, token) = share(&owner, &id).await;
    owner
        .add_example("a later question", "a later answer")
        .await;
    let stranger = app.new_user_without_page();

    let json = stranger.get(&format!("/api/share/{token}")).await;
    let page = stranger.get(&format!("/share/{token}")).await;
    let owners_view = owner.get(&format!("/api/share/{token}")).await;

    assert_eq!(token.len(), 48);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(made["conversation_id"], id.as_str());
    assert_eq!(made["message_count"], 2);
    assert_eq!(made["title"], "What is **Rust**?");
    json.assert_status(200);
    assert_eq!(keys(&json.json), ["created_at", "messages", "title"]);
    assert_eq!(json.json["title"], "What is **Rust**?");
    assert_eq!(
        json.json["messages"],
        json!([
            {"role": "user", "content": "What is **Rust**?"},
            {"role": "assistant", "content": "A *systems* language."},
        ]),
        "later messages must not appear"
    );
    assert_eq!(json.json["created_at"], made["created_at"]);
    assert_no_cookie(&json);
    assert_eq!(json.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(stranger.cookie_header(), None);
    page.assert_status(200);
    assert!(page
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(page.text.contains("/static/share.js?v="), "{}", page.text);
    assert!(!page.text.contains("/static/app.js"));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|csp| csp.contains("script-src 'self'")));
    assert_eq!(
        page.header("referrer-policy").as_deref(),
        Some("no-referrer")
    );
    assert_no_cookie(&page);
    // The owner's own session reads the same snapshot and is not touched.
    owners_view.assert_status(200);
    assert_eq!(owners_view.json, json.json);
    assert_no_cookie(&owners_view);
    // The conversation itself has all four messages.
    assert_eq!(owner.history(&id).await.len(), 4);
}

#[tokio::test]
async fn the_owner_lists_and_revokes_links_and_a_revoked_link_answers_404() {
    let app = spawn_app(&[]).await;
    let owner = app.new_user().await;
    let first = conversation_with(&owner, "first question", "first answer").await;
    let second = conversation_with(&owner, "second question", "second answer").await;
    let (old, old_token) = share(&owner, &first).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (new, new_token) = share(&owner, &second).await;

    let listed = owner.get("/api/shares").await;
    let revoked = owner
        .delete(&format!("/api/shares/{}", old["id"].as_str().unwrap()))
        .await;
    let json_after = app
        .new_user_without_page()
        .get(&format!("/api/share/{old_token}"))
        .await;
    let page_after = app
        .new_user_without_page()
        .get(&format!("/share/{old_token}"))
        .await;
    let again = owner
        .delete(&format!("/api/shares/{}", old["id"].as_str().unwrap()))
        .await;

    listed.assert_status(200);
    let shares = listed.json["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 2);
    assert_eq!(shares[0]["id"], new["id"], "newest first");
    assert_eq!(shares[1]["id"], old["id"]);
    assert_eq!(
        keys(&shares[0]),
        [
            "conversation_id",
            "created_at",
            "id",
            "message_count",
            "title"
        ]
    );
    assert_eq!(shares[0]["conversation_id"], second.as_str());
    assert_eq!(shares[0]["title"], "second question");
    assert!(!listed.text.contains(&old_token) && !listed.text.contains(&new_token));
    revoked.assert_ok_message("Share link revoked.");
    json_after.assert_error(404, "not_found", "Share link not found.");
    assert_no_cookie(&json_after);
    assert_eq!(page_after.status, 404);
    assert!(page_after
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(page_after.text.contains("This link does not exist"));
    assert!(!page_after.text.contains("first question"));
    assert!(!page_after.text.contains("share.js"));
    assert_no_cookie(&page_after);
    again.assert_error(404, "not_found", "Share link not found.");
    // The other link still works, and is the only one listed.
    let still = app
        .new_user_without_page()
        .get(&format!("/api/share/{new_token}"))
        .await;
    still.assert_status(200);
    assert_eq!(still.json["messages"][1]["content"], "second answer");
    let listed = owner.get("/api/shares").await;
    assert_eq!(listed.json["shares"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn links_are_scoped_to_their_owner() {
    let app = spawn_app(&[]).await;
    let owner = app.new_user().await;
    let other = app.new_user().await;
    other.start_conversation().await;
    let id = conversation_with(&owner, "mine", "yours to read only by link").await;
    let (made, token) = share(&owner, &id).await;
    let share_id = made["id"].as_str().unwrap();

    let stolen = other
        .post_json("/api/shares", json!({"conversation_id": id}))
        .await;
    let listed = other.get("/api/shares").await;
    let revoked = other.delete(&format!("/api/shares/{share_id}")).await;

    stolen.assert_error(404, "not_found", "Conversation not found.");
    assert_eq!(listed.json, json!({"shares": []}));
    revoked.assert_error(404, "not_found", "Share link not found.");
    let still = other.get(&format!("/api/share/{token}")).await;
    still.assert_status(200);
    assert_eq!(
        owner.get("/api/shares").await.json["shares"][0]["id"],
        share_id
    );
}

#[tokio::test]
async fn deleting_a_conversation_revokes_its_links_only() {
    let app = spawn_app(&[]).await;
    let owner = app.new_user().await;
    let doomed = conversation_with(&owner, "doomed", "soon gone").await;
    let kept = conversation_with(&owner, "kept", "still here").await;
    let (_, doomed_one) = share(&owner, &doomed).await;
    let (_, doomed_two) = share(&owner, &doomed).await;
    let (_, kept_token) = share(&owner, &kept).await;

    owner
        .delete(&format!("/conversation/{doomed}"))
        .await
        .assert_ok_message("Conversation deleted.");

    let stranger = app.new_user_without_page();
    for token in [&doomed_one, &doomed_two] {
        stranger
            .get(&format!("/api/share/{token}"))
            .await
            .assert_error(404, "not_found", "Share link not found.");
        assert_eq!(stranger.get(&format!("/share/{token}")).await.status, 404);
    }
    stranger
        .get(&format!("/api/share/{kept_token}"))
        .await
        .assert_status(200);
    let listed = owner.get("/api/shares").await;
    let shares = listed.json["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 1);
    assert_eq!(shares[0]["conversation_id"], kept.as_str());
}

#[tokio::test]
async fn bad_requests_are_refused_and_unknown_links_are_not_found() {
    let app = spawn_app(&[]).await;
    let owner = app.new_user().await;
    let empty = owner.start_conversation().await;
    let stranger = app.new_user_without_page();

    owner
        .post_json("/api/shares", json!({"conversation_id": empty}))
        .await
        .assert_error(
            400,
            "invalid",
            "This conversation has no messages to share yet.",
        );
    owner
        .post_json("/api/shares", json!({}))
        .await
        .assert_error(400, "invalid", "Invalid conversation id.");
    owner
        .post_json("/api/shares", json!({"conversation_id": "../etc"}))
        .await
        .assert_error(400, "invalid", "Invalid conversation id.");
    owner
        .post_json(
            "/api/shares",
            json!({"conversation_id": uuid::Uuid::new_v4().to_string()}),
        )
        .await
        .assert_error(404, "not_found", "Conversation not found.");
    owner
        .delete("/api/shares/not-a-uuid")
        .await
        .assert_error(400, "invalid", "Invalid share id.");
    assert_eq!(owner.get("/api/shares").await.json, json!({"shares": []}));
    let unknown = "0".repeat(48);
    for path in [
        format!("/api/share/{unknown}"),
        "/api/share/short".to_owned(),
        format!("/api/share/{}", "A".repeat(48)),
    ] {
        let answer = stranger.get(&path).await;
        answer.assert_error(404, "not_found", "Share link not found.");
        assert_no_cookie(&answer);
    }
    let page = stranger.get(&format!("/share/{unknown}")).await;
    assert_eq!(page.status, 404);
    assert!(page.text.contains("This link does not exist"));
    assert_no_cookie(&page);
    assert_eq!(stranger.cookie_header(), None);
}

#[tokio::test]
async fn a_user_may_hold_fifty_links_and_one_more_after_revoking() {
    let app = spawn_app(&[]).await;
    let owner = app.new_user().await;
    let id = conversation_with(&owner, "popular", "shared a lot").await;
    let mut first = None;
    for _ in 0..50 {
        let (made, _) = share(&owner, &id).await;
        first.get_or_insert(made["id"].as_str().unwrap().to_owned());
    }

    let refused = owner
        .post_json("/api/shares", json!({"conversation_id": id}))
        .await;

    refused.assert_error(
        409,
        "conflict",
        "You have the most share links allowed (50). Revoke one first.",
    );
    assert_eq!(
        owner.get("/api/shares").await.json["shares"]
            .as_array()
            .unwrap()
            .len(),
        50
    );
    owner
        .delete(&format!("/api/shares/{}", first.unwrap()))
        .await
        .assert_status(200);
    share(&owner, &id).await;
}

async fn account(app: &TestApp, email: &str) -> (User, String) {
    let (browser, body) = app.signed_up(email).await;
    (browser, body["user_id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn with_accounts_a_link_needs_no_sign_in_and_leaks_nothing_of_the_owner() {
    let app = spawn_app(&[("AUTH_MODE", "local"), ("SIGNUP", "open")]).await;
    let (admin, _) = account(&app, "admin@example.org").await;
    let (ann, ann_id) = account(&app, "ann@example.org").await;
    let id = conversation_with(&ann, "ann's question", "ann's answer").await;
    conversation_with(&ann, "ann's private thoughts", "never shared").await;
    let (_, token) = share(&ann, &id).await;
    let stranger = app.new_user_without_page();

    let signed_out_list = stranger.get("/api/shares").await;
    let signed_out_create = stranger
        .post_json("/api/shares", json!({"conversation_id": id}))
        .await;
    let json = stranger.get(&format!("/api/share/{token}")).await;
    let page = stranger.get(&format!("/share/{token}")).await;

    signed_out_list.assert_error(401, "unauthenticated", "Sign in to continue.");
    signed_out_create.assert_error(401, "unauthenticated", "Sign in to continue.");
    json.assert_status(200);
    page.assert_status(200);
    for answer in [&json, &page] {
        assert_no_cookie(answer);
        assert!(!answer.text.contains(&ann_id), "the owner's id leaked");
        assert!(
            !answer.text.contains("ann@example.org"),
            "the owner's email leaked"
        );
        assert!(!answer.text.contains("private thoughts"));
    }
    assert_eq!(json.json["messages"][0]["content"], "ann's question");

    // A disabled account's links stop answering; enabled again, they answer again.
    admin
        .patch_json(&format!("/admin/users/{ann_id}"), json!({"disabled": true}))
        .await
        .assert_status(200);
    stranger
        .get(&format!("/api/share/{token}"))
        .await
        .assert_error(404, "not_found", "Share link not found.");
    admin
        .patch_json(
            &format!("/admin/users/{ann_id}"),
            json!({"disabled": false}),
        )
        .await
        .assert_status(200);
    stranger
        .get(&format!("/api/share/{token}"))
        .await
        .assert_status(200);
}

#[tokio::test]
async fn an_anonymous_browsers_links_move_to_the_account_it_signs_up_for() {
    let app = spawn_app(&[("AUTH_MODE", "local"), ("ALLOW_ANONYMOUS", "true")]).await;
    let browser = app.new_user().await;
    let id = conversation_with(&browser, "asked anonymously", "answered").await;
    let (made, token) = share(&browser, &id).await;

    browser
        .post_json(
            "/auth/signup",
            json!({"email": "later@example.org", "password": crate::helpers::PASSWORD}),
        )
        .await
        .assert_status(201);
    let listed = browser.get("/api/shares").await;

    assert_eq!(listed.json["shares"][0]["id"], made["id"]);
    browser
        .delete(&format!("/api/shares/{}", made["id"].as_str().unwrap()))
        .await
        .assert_ok_message("Share link revoked.");
    app.new_user_without_page()
        .get(&format!("/api/share/{token}"))
        .await
        .assert_error(404, "not_found", "Share link not found.");
}
