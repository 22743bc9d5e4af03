//! Edits and branches: `edit_message` answers an earlier message again on a
//! new branch, `regenerate` keeps the old reply as a sibling, `switch_branch`
//! shows another sibling, and what goes upstream is exactly the path shown.

use serde_json::{json, Value};
use testkit::browser::msg;
use testkit::fake_llm::Behaviour;

use crate::helpers::{spawn_app, EVENT_TIMEOUT, TURN_TIMEOUT};

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
async fn an_edit_answers_on_a_new_branch_and_upstream_gets_only_the_path_shown() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    for (question, answer) in [("Name a fruit", "Apple"), ("Name a colour", "Red")] {
        app.llm.streams(&[answer]);
        socket.send_message(question, Some(&id));
        socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    }
    app.llm.streams(&["Blue", " whale"]);

    socket.emit(
        "edit_message",
        json!({"conversation_id": id, "index": 2, "message": "Name an animal"}),
    );
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(turn.text(), "Blue whale");
    assert!(turn.token_usage.is_some());
    assert_eq!(
        app.llm.requests().last().unwrap().contents(),
        ["Name a fruit", "Apple", "Name an animal"]
    );
    assert_eq!(
        user.history(&id).await,
        [
            msg("user", "Name a fruit"),
            msg("assistant", "Apple"),
            msg("user", "Name an animal"),
            msg("assistant", "Blue whale"),
        ]
    );
    let loaded = user.get(&format!("/load_conversation/{id}")).await;
    assert_eq!(siblings(&loaded.json), [(2, 2, 2)]);

    // The conversation goes on from the edited branch.
    app.llm.streams(&["Grey"]);
    socket.send_message("And its colour?", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    assert_eq!(
        app.llm.requests().last().unwrap().contents(),
        [
            "Name a fruit",
            "Apple",
            "Name an animal",
            "Blue whale",
            "And its colour?"
        ]
    );

    // Back to the first question: its reply and nothing of the other branch.
    let ack = socket
        .emit_with_ack(
            "switch_branch",
            json!({"conversation_id": id, "index": 2, "position": 1}),
            EVENT_TIMEOUT,
        )
        .await;
    assert_eq!(
        ack,
        json!({"ok": true, "conversation_id": id, "message_count": 4})
    );
    assert_eq!(
        user.history(&id).await,
        [
            msg("user", "Name a fruit"),
            msg("assistant", "Apple"),
            msg("user", "Name a colour"),
            msg("assistant", "Red"),
        ]
    );
    app.llm.streams(&["Green"]);
    socket.send_message("Another one?", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    assert_eq!(
        app.llm.requests().last().unwrap().contents(),
        [
            "Name a fruit",
            "Apple",
            "Name a colour",
            "Red",
            "Another one?"
        ]
    );

    // And forward again: the edited branch as it was left.
    socket
        .emit_with_ack(
            "switch_branch",
            json!({"conversation_id": id, "index": 2, "position": 2}),
            EVENT_TIMEOUT,
        )
        .await;
    let history = user.history(&id).await;
    assert_eq!(history.len(), 6);
    assert_eq!(history[4], msg("user", "And its colour?"));
}

#[tokio::test]
async fn a_regenerate_keeps_the_old_reply_as_a_sibling_and_other_tabs_hear_of_a_switch() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    let mut other_tab = user.socket().await;
    app.llm.streams(&["Weak answer"]);
    socket.send_message("Which is best?", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    app.llm.streams(&["Better answer"]);
    socket.emit("regenerate", json!({"conversation_id": id}));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    app.llm.streams(&["Best answer"]);
    socket.emit("regenerate", json!({"conversation_id": id}));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    let loaded = user.get(&format!("/load_conversation/{id}")).await;
    assert_eq!(siblings(&loaded.json), [(1, 3, 3)]);
    assert_eq!(
        app.llm.requests().last().unwrap().contents(),
        ["Which is best?"]
    );
    // The three turns' updates first (the regenerates' say the path
    // changed); the next one is the switch's.
    let mut branched = Vec::new();
    for _ in 0..3 {
        let updated = other_tab
            .wait_for("conversation_updated", EVENT_TIMEOUT)
            .await;
        branched.push(updated.data.get("branched").cloned());
    }
    assert_eq!(branched, [None, Some(json!(true)), Some(json!(true))]);

    let ack = socket
        .emit_with_ack(
            "switch_branch",
            json!({"conversation_id": id, "index": 1, "position": 1}),
            EVENT_TIMEOUT,
        )
        .await;

    assert_eq!(ack["ok"], true);
    let updated = other_tab
        .wait_for("conversation_updated", EVENT_TIMEOUT)
        .await;
    assert_eq!(updated["conversation_id"], json!(id));
    assert_eq!(updated["message_count"], 2);
    assert_eq!(updated["branched"], true);
    assert_eq!(
        user.history(&id).await,
        [
            msg("user", "Which is best?"),
            msg("assistant", "Weak answer")
        ]
    );
    let loaded = user.get(&format!("/load_conversation/{id}")).await;
    assert_eq!(siblings(&loaded.json), [(1, 1, 3)]);
    app.llm.streams(&["Because"]);
    socket.send_message("Why?", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    assert_eq!(
        app.llm.requests().last().unwrap().contents(),
        ["Which is best?", "Weak answer", "Why?"]
    );
    // A page of the history carries the siblings of its own messages only.
    let page = user
        .get(&format!("/load_conversation/{id}?limit=2&before=4"))
        .await;
    assert_eq!(page.json["first"], 2);
    assert!(page.json.get("branches").is_none(), "{}", page.json);
    let page = user
        .get(&format!("/load_conversation/{id}?limit=2&before=2"))
        .await;
    assert_eq!(siblings(&page.json), [(1, 1, 3)]);
}

#[tokio::test]
async fn edits_and_switches_that_name_nothing_are_refused_and_change_nothing() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm.streams(&["Answer"]);
    socket.send_message("Question", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    let calls = app.llm.call_count();

    for payload in [
        json!({"conversation_id": id, "index": 1, "message": "An answer is not mine"}),
        json!({"conversation_id": id, "index": 2, "message": "Past the end"}),
        json!({"conversation_id": id, "index": "0", "message": "Not a number"}),
        json!({"conversation_id": id, "message": "No index"}),
    ] {
        socket.emit("edit_message", payload);
        let error = socket.wait_for("error", EVENT_TIMEOUT).await;
        assert_eq!(error["error"], "invalid");
        assert_eq!(
            error["message"],
            "index must be the history index of one of your messages."
        );
    }
    socket.emit(
        "edit_message",
        json!({"conversation_id": id, "index": 0, "message": "  "}),
    );
    let error = socket.wait_for("error", EVENT_TIMEOUT).await;
    assert_eq!(error["message"], "No message received from user.");
    for (payload, message) in [
        (
            json!({"conversation_id": id, "index": 1, "position": 2}),
            "There is no such message or branch in this conversation.",
        ),
        (
            json!({"conversation_id": id, "index": 5, "position": 1}),
            "There is no such message or branch in this conversation.",
        ),
        (
            json!({"conversation_id": id, "index": 1}),
            "index and position must be whole numbers (position from 1).",
        ),
    ] {
        let ack = socket
            .emit_with_ack("switch_branch", payload, EVENT_TIMEOUT)
            .await;
        assert_eq!(ack["error"], "invalid", "{ack}");
        assert_eq!(ack["message"], message);
    }

    // Another user's conversation is not found, whatever they ask.
    let stranger = app.new_user().await;
    stranger.start_conversation().await;
    let mut theirs = stranger.socket().await;
    let ack = theirs
        .emit_with_ack(
            "switch_branch",
            json!({"conversation_id": id, "index": 1, "position": 1}),
            EVENT_TIMEOUT,
        )
        .await;
    assert_eq!(ack["message"], "Conversation not found.");
    theirs.emit(
        "edit_message",
        json!({"conversation_id": id, "index": 0, "message": "Mine now"}),
    );
    let error = theirs.wait_for("error", EVENT_TIMEOUT).await;
    assert_eq!(error["message"], "Conversation not found.");

    assert_eq!(app.llm.call_count(), calls);
    assert_eq!(
        user.history(&id).await,
        [msg("user", "Question"), msg("assistant", "Answer")]
    );
}

#[tokio::test]
async fn a_saved_conversation_holds_every_branch_beside_the_path_shown() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm.streams(&["First reply"]);
    socket.send_message("Hello", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    app.llm.streams(&["Second reply"]);
    socket.emit("regenerate", json!({"conversation_id": id}));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();

    let saved = user.post("/save_history").await;

    saved.assert_ok_message("Conversation history saved successfully.");
    let path = app
        .dir
        .path()
        .join("saved")
        .join(saved.str_field("file_name"));
    let document: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(
        document["conversation_history"],
        json!([{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Second reply"}])
    );
    let nodes = document["branches"]["nodes"]
        .as_array()
        .expect("branches.nodes");
    assert_eq!(nodes.len(), 1, "{document}");
    assert_eq!(nodes[0]["content"], "First reply");
    assert_eq!(nodes[0]["role"], "assistant");
    assert_eq!(nodes[0]["depth"], 1);
    assert_eq!(nodes[0]["parent"], Value::Null);
    // The same pool for the page's export, for its owner only.
    let pool = user.get(&format!("/conversation/{id}/branches")).await;
    assert_eq!(pool.status, 200);
    assert_eq!(pool.json["conversation_id"], json!(id));
    assert_eq!(pool.json["branches"], document["branches"]);
    let stranger = app.new_user().await;
    stranger
        .get(&format!("/conversation/{id}/branches"))
        .await
        .assert_error(404, "not_found", "Conversation not found.");
    let fresh = user.start_conversation().await;
    let none = user.get(&format!("/conversation/{fresh}/branches")).await;
    assert_eq!(
        none.json,
        json!({"conversation_id": fresh, "branches": null})
    );
}

#[tokio::test]
async fn a_stopped_edit_keeps_its_partial_reply_on_the_new_branch_and_a_switch_waits_for_it() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm.streams(&["Old reply"]);
    socket.send_message("Old question", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    app.llm.stream_then_hang(&["Half", " of it"]);

    socket.emit(
        "edit_message",
        json!({"conversation_id": id, "index": 0, "message": "New question"}),
    );
    socket.wait_for("response_chunk", TURN_TIMEOUT).await;
    // While the reply is being written, the path cannot be switched.
    let refused = socket
        .emit_with_ack(
            "switch_branch",
            json!({"conversation_id": id, "index": 0, "position": 1}),
            EVENT_TIMEOUT,
        )
        .await;
    assert_eq!(refused["error"], "busy", "{refused}");
    socket.emit("stop_generation", json!({"conversation_id": id}));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(turn.expect_end()["stopped"], true);
    let history = user.history(&id).await;
    assert_eq!(history[0], msg("user", "New question"));
    assert_eq!(history.len(), 2);
    assert!(history[1].1.starts_with("Half"), "{history:?}");
    let loaded = user.get(&format!("/load_conversation/{id}")).await;
    assert_eq!(siblings(&loaded.json), [(0, 2, 2)]);
    socket
        .emit_with_ack(
            "switch_branch",
            json!({"conversation_id": id, "index": 0, "position": 1}),
            EVENT_TIMEOUT,
        )
        .await;
    assert_eq!(
        user.history(&id).await,
        [msg("user", "Old question"), msg("assistant", "Old reply")]
    );
}

#[tokio::test]
async fn a_failed_regenerate_leaves_the_old_reply_shown_and_a_later_one_has_it_as_a_sibling() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    let mut other_tab = user.socket().await;
    app.llm.streams(&["Old answer"]);
    socket.send_message("Which is best?", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    other_tab
        .wait_for("conversation_updated", EVENT_TIMEOUT)
        .await;
    // A client error: not retried, the regenerate fails at once.
    app.llm.push(Behaviour::Fail(400));

    socket.emit("regenerate", json!({"conversation_id": id}));
    let failed = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(failed.expect_error()["error"], "llm_unavailable");
    // The old reply is back where it was, nothing set aside without arrows.
    let shown = [
        msg("user", "Which is best?"),
        msg("assistant", "Old answer"),
    ];
    assert_eq!(user.history(&id).await, shown);
    let loaded = user.get(&format!("/load_conversation/{id}")).await;
    assert_eq!(siblings(&loaded.json), []);
    // Other tabs (which may have cleared the old reply) are told to reload.
    let updated = other_tab
        .wait_for("conversation_updated", EVENT_TIMEOUT)
        .await;
    assert_eq!(updated["message_count"], 2);

    app.llm.streams(&["New answer"]);
    socket.emit("regenerate", json!({"conversation_id": id}));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    let loaded = user.get(&format!("/load_conversation/{id}")).await;
    assert_eq!(siblings(&loaded.json), [(1, 2, 2)]);
    let ack = socket
        .emit_with_ack(
            "switch_branch",
            json!({"conversation_id": id, "index": 1, "position": 1}),
            EVENT_TIMEOUT,
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(user.history(&id).await, shown);
}
