//! `POST /import/chatgpt`: a ChatGPT export (`conversations.json`) becomes
//! the user's conversations, message by message, with its other branches
//! kept as siblings; a bad file stores nothing.

use serde_json::{json, Value};
use testkit::browser::msg;

use crate::helpers::{spawn_app, EVENT_TIMEOUT};

/// A node of a ChatGPT mapping.
fn node(id: &str, parent: Option<&str>, children: &[&str], message: Value) -> (String, Value) {
    (
        id.to_string(),
        json!({"id": id, "message": message, "parent": parent, "children": children}),
    )
}

fn text(role: &str, text: &str) -> Value {
    json!({
        "author": {"role": role},
        "content": {"content_type": "text", "parts": [text]},
        "create_time": 1_700_000_000.5,
        "metadata": {}
    })
}

fn conversation(id: &str, title: Value, current: &str, nodes: Vec<(String, Value)>) -> Value {
    json!({
        "title": title,
        "create_time": 1_700_000_000.25,
        "update_time": 1_700_000_100.75,
        "mapping": nodes.into_iter().collect::<serde_json::Map<String, Value>>(),
        "current_node": current,
        "conversation_id": id,
    })
}

/// Three conversations: one whose second question was edited (two
/// branches), one with a hidden system message, a non-text part, a code
/// message and a tool message, and one untitled whose reply was
/// regenerated (the first reply shown).
fn export() -> Value {
    let fruit = conversation(
        "chatgpt-fruit",
        json!("Fruit chat"),
        "a2b",
        vec![
            node("root", None, &["sys"], Value::Null),
            node(
                "sys",
                Some("root"),
                &["u1"],
                json!({
                    "author": {"role": "system"},
                    "content": {"content_type": "text", "parts": [""]},
                    "metadata": {"is_visually_hidden_from_conversation": true}
                }),
            ),
            node("u1", Some("sys"), &["a1"], text("user", "Name a fruit")),
            node("a1", Some("u1"), &["u2", "u2b"], text("assistant", "Apple")),
            node("u2", Some("a1"), &["a2"], text("user", "Name a colour")),
            node("a2", Some("u2"), &[], text("assistant", "Red")),
            node("u2b", Some("a1"), &["a2b"], text("user", "Name an animal")),
            node("a2b", Some("u2b"), &[], text("assistant", "Blue whale")),
        ],
    );
    let code = conversation(
        "chatgpt-code",
        json!("Code talk"),
        "a3",
        vec![
            node("r", None, &["s"], Value::Null),
            node("s", Some("r"), &["h"], text("system", "You are ChatGPT")),
            node(
                "h",
                Some("s"),
                &["u"],
                json!({
                    "author": {"role": "user"},
                    "content": {"content_type": "text", "parts": ["secret context"]},
                    "metadata": {"is_visually_hidden_from_conversation": true}
                }),
            ),
            node(
                "u",
                Some("h"),
                &["c"],
                json!({
                    "author": {"role": "user"},
                    "content": {"content_type": "multimodal_text",
                                "parts": ["Show me", {"content_type": "image_asset_pointer", "asset_pointer": "file-service://x"}, "code"]},
                    "metadata": {}
                }),
            ),
            node(
                "c",
                Some("u"),
                &["a"],
                json!({
                    "author": {"role": "assistant"},
                    "content": {"content_type": "code", "language": "python", "text": "print(1)"},
                    "metadata": {}
                }),
            ),
            node("a", Some("c"), &["t"], text("assistant", "Here it is")),
            node("t", Some("a"), &["e"], text("tool", "1")),
            node("e", Some("t"), &["a3"], text("assistant", "   ")),
            node("a3", Some("e"), &[], text("assistant", "Done")),
        ],
    );
    let hello = conversation(
        "chatgpt-hello",
        Value::Null,
        "x1",
        vec![
            node("q", None, &["x1", "x2"], text("user", "Hi there")),
            node("x1", Some("q"), &[], text("assistant", "Hello!")),
            node("x2", Some("q"), &[], text("assistant", "Hey!")),
        ],
    );
    json!([fruit, code, hello])
}

/// `branches` of `GET /load_conversation/{id}` as (index, position, count).
fn siblings(loaded: &Value) -> Vec<(u64, u64, u64)> {
    loaded["branches"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| {
                    (
                        s["index"].as_u64().unwrap(),
                        s["position"].as_u64().unwrap(),
                        s["count"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_chatgpt_export_imports_message_by_message_with_its_branches_once() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let body = export().to_string();
    // Another site cannot import into the user's conversations.
    let forged = user
        .send(
            reqwest::Client::new()
                .post(user.url("/import/chatgpt"))
                .header("origin", "https://evil.example")
                .header("content-type", "application/json")
                .body(body.clone()),
        )
        .await;
    forged.assert_error(403, "forbidden", "Cross-site request refused.");
    assert!(user.list().await.is_empty());

    let done = user
        .post_raw("/import/chatgpt", "application/json", body.clone())
        .await;

    done.assert_status(200);
    assert_eq!(done.json["imported"], json!(3), "{}", done.text);
    assert_eq!(done.json["skipped"], json!(0));
    let listed: Vec<(String, Value, u64)> = done.json["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["conversation_id"].as_str().unwrap().to_string(),
                c["title"].clone(),
                c["messages"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed[0].1, json!("Fruit chat"));
    assert_eq!(listed[1].1, json!("Code talk"));
    assert_eq!(listed[2].1, json!("Hi there"));
    assert_eq!(listed.iter().map(|c| c.2).collect::<Vec<_>>(), [4, 3, 2]);
    let (fruit, code, hello) = (&listed[0].0, &listed[1].0, &listed[2].0);

    // The edited conversation: the branch shown last, the other beside it.
    assert_eq!(
        user.history(fruit).await,
        [
            msg("user", "Name a fruit"),
            msg("assistant", "Apple"),
            msg("user", "Name an animal"),
            msg("assistant", "Blue whale"),
        ]
    );
    let loaded = user.get(&format!("/load_conversation/{fruit}")).await;
    assert_eq!(loaded.json["title"], json!("Fruit chat"));
    assert_eq!(siblings(&loaded.json), [(2, 2, 2)]);
    let mut socket = user.socket().await;
    let ack = socket
        .emit_with_ack(
            "switch_branch",
            json!({"conversation_id": fruit, "index": 2, "position": 1}),
            EVENT_TIMEOUT,
        )
        .await;
    assert_eq!(
        ack,
        json!({"ok": true, "conversation_id": fruit, "message_count": 4})
    );
    assert_eq!(
        user.history(fruit).await,
        [
            msg("user", "Name a fruit"),
            msg("assistant", "Apple"),
            msg("user", "Name a colour"),
            msg("assistant", "Red"),
        ]
    );
    let loaded = user.get(&format!("/load_conversation/{fruit}")).await;
    assert_eq!(siblings(&loaded.json), [(2, 1, 2)]);

    // Hidden, system, tool, code and empty messages and the image part are
    // left out.
    assert_eq!(
        user.history(code).await,
        [
            msg("user", "Show me\ncode"),
            msg("assistant", "Here it is"),
            msg("assistant", "Done"),
        ]
    );
    let loaded = user.get(&format!("/load_conversation/{code}")).await;
    assert_eq!(loaded.json["title"], json!("Code talk"));
    assert_eq!(siblings(&loaded.json), []);

    // The regenerated reply: the first one shown, the second beside it.
    assert_eq!(
        user.history(hello).await,
        [msg("user", "Hi there"), msg("assistant", "Hello!")]
    );
    let loaded = user.get(&format!("/load_conversation/{hello}")).await;
    assert_eq!(siblings(&loaded.json), [(1, 1, 2)]);
    let pool = user.get(&format!("/conversation/{hello}/branches")).await;
    let contents: Vec<&str> = pool.json["branches"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["Hey!"]);

    // Listed, with ChatGPT's times.
    let list = user.list().await;
    assert_eq!(list.len(), 3);
    let listed_fruit = list
        .iter()
        .find(|c| c["conversation_id"] == json!(fruit))
        .unwrap();
    assert!(
        listed_fruit["created_at"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T22:13:20"),
        "{listed_fruit}"
    );

    // Again: nothing new.
    let again = user
        .post_raw("/import/chatgpt", "application/json", body.clone())
        .await;
    again.assert_status(200);
    assert_eq!(again.json["imported"], json!(0), "{}", again.text);
    assert_eq!(again.json["skipped"], json!(3));
    assert_eq!(user.list().await.len(), 3);

    // Another user sees none of them, and importing the same file gets
    // their own copies.
    let other = app.new_user().await;
    assert!(other.list().await.is_empty());
    other
        .get(&format!("/load_conversation/{fruit}"))
        .await
        .assert_status(404);
    let theirs = other
        .post_raw("/import/chatgpt", "application/json", body)
        .await;
    assert_eq!(theirs.json["imported"], json!(3), "{}", theirs.text);
    assert_ne!(
        theirs.json["conversations"][0]["conversation_id"],
        json!(fruit)
    );
    assert_eq!(user.list().await.len(), 3);
}

#[tokio::test]
async fn a_bad_export_is_refused_whole_with_a_sentence_and_stores_nothing() {
    let app = spawn_app(&[
        ("MAX_CONVERSATION_MESSAGES", "5"),
        ("IMPORT_MAX_BYTES", "20000"),
    ])
    .await;
    let user = app.new_user().await;

    user.post_raw("/import/chatgpt", "application/json", "[{\"title\": ")
        .await
        .assert_error(
            400,
            "invalid",
            "The file is not valid JSON (line 1, column 11).",
        );
    user.post_raw("/import/chatgpt", "application/json", "{}")
        .await
        .assert_error(
            400,
            "invalid",
            "The file is not a ChatGPT export: conversations.json holds a list of conversations.",
        );

    // A good conversation first, then one whose tree is broken.
    let mut broken = json!([export()[2], export()[1]]);
    broken[1]["mapping"]["a"]["parent"] = json!("nowhere");
    user.post_raw("/import/chatgpt", "application/json", broken.to_string())
        .await
        .assert_error(
            400,
            "invalid",
            "conversation 2 (\"Code talk\"): mapping node \"a\" has an unknown parent \"nowhere\".",
        );
    let mut cyclic = json!([export()[1], export()[2]]);
    cyclic[1]["mapping"]["q"]["parent"] = json!("x1");
    cyclic[1]["mapping"]["x1"]["children"] = json!(["q"]);
    let refused = user
        .post_raw("/import/chatgpt", "application/json", cyclic.to_string())
        .await;
    refused.assert_status(400);
    assert!(
        refused.json["message"]
            .as_str()
            .unwrap()
            .starts_with("conversation 2: "),
        "{}",
        refused.text
    );

    // Over the cap on one conversation (6 messages stored, 5 allowed).
    user.post_raw("/import/chatgpt", "application/json", export().to_string())
        .await
        .assert_error(
            400,
            "invalid",
            "conversation 1 (\"Fruit chat\"): 6 messages of 57 bytes are over the cap on one \
             conversation (5 messages, 6291456 bytes).",
        );

    // Over IMPORT_MAX_BYTES.
    let big = json!([{"title": "x".repeat(30_000)}]).to_string();
    user.post_raw("/import/chatgpt", "application/json", big)
        .await
        .assert_error(
            413,
            "too_large",
            "The export is too large: at most 20000 bytes can be imported at once.",
        );

    assert!(user.list().await.is_empty());

    // Without the over-cap conversation, the rest goes in.
    let mut fits = export();
    fits.as_array_mut().unwrap().remove(0);
    let done = user
        .post_raw("/import/chatgpt", "application/json", fits.to_string())
        .await;
    assert_eq!(done.json["imported"], json!(2), "{}", done.text);
    assert_eq!(user.list().await.len(), 2);
}

/// Storing fails midway (MongoDB holds at most 16 MB per document, under a
/// cap raised to 64 MiB): what this import stored before is deleted again.
/// SQLite holds it, so there the whole file goes in.
#[tokio::test]
async fn a_store_refusing_midway_leaves_nothing_of_the_import() {
    let app = spawn_app(&[
        ("MAX_CONVERSATION_BYTES", "67108864"),
        ("IMPORT_MAX_BYTES", "30000000"),
    ])
    .await;
    let user = app.new_user().await;
    let huge = "lorem ipsum ".repeat(800_000);
    let big = conversation(
        "chatgpt-big",
        json!("Big one"),
        "b",
        vec![
            node("b0", None, &["b"], Value::Null),
            node("b", Some("b0"), &[], text("user", &huge)),
        ],
    );
    let body = json!([export()[2], big]).to_string();

    let answer = user
        .post_raw("/import/chatgpt", "application/json", body)
        .await;

    if std::env::var("TEST_MONGODB_URI").is_ok() {
        answer.assert_status(413);
        assert_eq!(answer.json["error"], json!("too_large"), "{}", answer.text);
        assert!(user.list().await.is_empty());
    } else {
        assert_eq!(answer.json["imported"], json!(2), "{}", answer.text);
        assert_eq!(user.list().await.len(), 2);
    }
}
