//! Models, system prompts and presets: a catalogue of two models (`MODELS_FILE`), each
//! served by its own fake upstream; every conversation's requests go to its own model with
//! that model's context window, key and reply tokens; its system prompt goes first; presets
//! are per user. The assertions are on what each upstream received.

use serde_json::{json, Value};
use testkit::browser::msg;
use testkit::fake_llm::FakeLlm;

use crate::helpers::{
    base_env, run_expecting_startup_failure, spawn_app_in, TestApp, EVENT_TIMEOUT, TURN_TIMEOUT,
};

/// The default model (`big`, on the app's own fake) and a small one on `small`.
struct TwoModels {
    app: TestApp,
    small: FakeLlm,
}

impl TwoModels {
    fn big(&self) -> &FakeLlm {
        &self.app.llm
    }
}

fn catalogue(big: &FakeLlm, small: &FakeLlm) -> String {
    format!(
        r#"
default = "big"

[[models]]
id = "small"
name = "Small model"
provider = "openai"
base_url = "{small}"
model = "small-upstream"
key_env = "KEY_SMALL"
max_tokens = 300
reply_tokens = 100
tokenizer = "o200k_base"
temperature = 0.5

[[models]]
id = "big"
name = "Big model"
provider = "openai"
base_url = "{big}"
model = "big-upstream"
key_env = "KEY_BIG"
max_tokens = 128000
reply_tokens = 700
"#,
        small = small.base_url(),
        big = big.base_url(),
    )
}

async fn two_models() -> TwoModels {
    two_models_with(&[]).await
}

/// [`two_models`] with more variables.
async fn two_models_with(extra: &[(&str, &str)]) -> TwoModels {
    let (big, small) = (FakeLlm::start().await, FakeLlm::start().await);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("models.toml");
    std::fs::write(&path, catalogue(&big, &small)).expect("writing the catalogue");
    let mut env = base_env(&big, &dir);
    env.insert("MODELS_FILE".into(), path.display().to_string());
    env.insert("KEY_SMALL".into(), "key-of-small".into());
    env.insert("KEY_BIG".into(), "key-of-big".into());
    for (name, value) in extra {
        env.insert((*name).into(), (*value).into());
    }
    let app = spawn_app_in(big, dir, env).await;
    TwoModels { app, small }
}

/// `POST /start_conversation` with this JSON body, returning the new id.
async fn start_with(user: &crate::helpers::User, body: Value) -> String {
    let response = user.post_json("/start_conversation", body).await;
    response.assert_status(200);
    response.str_field("conversation_id")
}

fn upstream_messages(request: &testkit::fake_llm::RecordedRequest) -> Vec<(String, String)> {
    request
        .messages()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_string(),
                m["content"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn get_config_lists_the_models_without_their_endpoints_or_keys() {
    let models = two_models().await;
    let user = models.app.new_user().await;

    let config = user.get("/get_config").await;

    config.assert_status(200);
    assert_eq!(config.json["default_model"], "big");
    assert_eq!(
        config.json["models"],
        json!([
            {"id": "big", "name": "Big model", "provider": "openai", "max_tokens": 128000,
             "reply_tokens": 700, "tokenizer": "cl100k_base", "temperature": 0.7},
            {"id": "small", "name": "Small model", "provider": "openai", "max_tokens": 300,
             "reply_tokens": 100, "tokenizer": "o200k_base", "temperature": 0.5},
        ])
    );
    assert_eq!(config.json["max_tokens"], 128000);
    for secret in [
        "key-of-small",
        "key-of-big",
        "KEY_SMALL",
        &models.small.base_url(),
    ] {
        assert!(!config.text.contains(secret), "{secret} in {}", config.text);
    }
}

#[tokio::test]
async fn each_conversation_goes_to_its_own_model_with_its_own_window_and_key() {
    let models = two_models().await;
    models.small.streams(&["small", " answer"]);
    models.big().streams(&["big", " answer"]);
    let user = models.app.new_user().await;
    let on_small = start_with(&user, json!({"model": "small"})).await;
    // The original app's call, no body: the default model.
    let on_big = user.start_conversation().await;
    let mut socket = user.socket().await;

    socket.send_message("question for small", Some(&on_small));
    let small_turn = socket.collect_turn(TURN_TIMEOUT).await;
    socket.send_message("question for big", Some(&on_big));
    let big_turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(small_turn.text(), "small answer", "{:?}", small_turn.events);
    assert_eq!(big_turn.text(), "big answer", "{:?}", big_turn.events);
    assert_eq!(small_turn.token_usage.as_ref().unwrap()["max_tokens"], 300);
    assert_eq!(big_turn.token_usage.as_ref().unwrap()["max_tokens"], 128000);
    let (to_small, to_big) = (models.small.requests(), models.big().requests());
    assert_eq!(to_small.len(), 1, "small got {to_small:?}");
    assert_eq!(to_big.len(), 1, "big got {to_big:?}");
    assert_eq!(to_small[0].body["model"], "small-upstream");
    assert_eq!(to_small[0].body["max_tokens"], 100);
    assert_eq!(to_small[0].body["temperature"], 0.5);
    assert_eq!(
        to_small[0].header("authorization").as_deref(),
        Some("Bearer key-of-small")
    );
    assert_eq!(to_small[0].last_user_message(), "question for small");
    assert_eq!(to_big[0].body["model"], "big-upstream");
    assert_eq!(to_big[0].body["max_tokens"], 700);
    assert_eq!(
        to_big[0].header("authorization").as_deref(),
        Some("Bearer key-of-big")
    );
    assert_eq!(to_big[0].last_user_message(), "question for big");
    let loaded = user.get(&format!("/load_conversation/{on_small}")).await;
    assert_eq!(loaded.json["model"], "small");
    assert_eq!(
        user.get(&format!("/load_conversation/{on_big}")).await.json["model"],
        "big"
    );
}

#[tokio::test]
async fn the_context_window_is_the_conversations_models() {
    let models = two_models().await;
    models.big().streams(&["fits"]);
    let user = models.app.new_user().await;
    let on_small = start_with(&user, json!({"model": "small"})).await;
    let on_big = start_with(&user, json!({"model": "big"})).await;
    // About 250 tokens: over the small model's 200-token prompt budget, far under the big one's.
    let long = "the cat sat on the mat and the dog ran in the sun ".repeat(20);
    let mut socket = user.socket().await;

    socket.send_message(&long, Some(&on_small));
    let refused = socket.collect_turn(TURN_TIMEOUT).await;
    socket.send_message(&long, Some(&on_big));
    let answered = socket.collect_turn(TURN_TIMEOUT).await;

    let error = refused.expect_error();
    assert_eq!(error["error"], "too_large", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("Message too long for the context window"),
        "{error}"
    );
    assert_eq!(models.small.call_count(), 0);
    assert!(user.history(&on_small).await.is_empty());
    assert_eq!(answered.text(), "fits", "{:?}", answered.events);
    assert_eq!(models.big().call_count(), 1);
}

#[tokio::test]
async fn a_model_picked_with_a_message_is_remembered_by_the_conversation() {
    let models = two_models().await;
    models.small.streams(&["one"]).streams(&["two"]);
    let user = models.app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;

    socket.emit(
        "send_message",
        json!({"message": "switch me", "conversation_id": id, "model": "small"}),
    );
    let first = socket.collect_turn(TURN_TIMEOUT).await;
    // No model now: the conversation keeps the one it was switched to.
    socket.send_message("and again", Some(&id));
    let second = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(first.text(), "one", "{:?}", first.events);
    assert_eq!(second.text(), "two", "{:?}", second.events);
    assert_eq!(models.big().call_count(), 0);
    let to_small = models.small.requests();
    assert_eq!(to_small.len(), 2);
    assert_eq!(
        upstream_messages(&to_small[1]),
        [
            msg("user", "switch me"),
            msg("assistant", "one"),
            msg("user", "and again")
        ]
    );
    assert_eq!(
        user.get(&format!("/load_conversation/{id}")).await.json["model"],
        "small"
    );
}

#[tokio::test]
async fn an_unknown_model_is_refused_with_400_or_an_error_event_and_nothing_happens() {
    let models = two_models().await;
    let user = models.app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;

    let started = user
        .post_json("/start_conversation", json!({"model": "gpt-9"}))
        .await;
    socket.emit(
        "send_message",
        json!({"message": "hello", "conversation_id": id, "model": "gpt-9"}),
    );
    let refused = socket.wait_for("error", EVENT_TIMEOUT).await;
    socket.emit(
        "send_message",
        json!({"message": "hello", "conversation_id": id, "model": "<script>"}),
    );
    let hostile = socket.wait_for("error", EVENT_TIMEOUT).await;

    started.assert_error(
        400,
        "unknown_model",
        "Unknown model \"gpt-9\": choose one of the models GET /get_config lists.",
    );
    assert_eq!(refused.data["error"], "unknown_model", "{:?}", refused.data);
    assert_eq!(
        refused.data["message"],
        "Unknown model \"gpt-9\": choose one of the models GET /get_config lists."
    );
    assert_eq!(
        hostile.data["message"],
        "Unknown model: choose one of the models GET /get_config lists."
    );
    assert_eq!(models.small.call_count() + models.big().call_count(), 0);
    assert!(user.history(&id).await.is_empty());
    assert_eq!(user.list().await.len(), 1, "no conversation was started");
}

#[tokio::test]
async fn the_system_prompt_reaches_upstream_first_and_is_not_stored_in_the_history() {
    let models = two_models().await;
    models.big().streams(&["Arr", "!"]).streams(&["Aye"]);
    let user = models.app.new_user().await;
    let id = start_with(
        &user,
        json!({"system_prompt": "You are a pirate.", "temperature": 1.25}),
    )
    .await;
    let mut socket = user.socket().await;

    socket.send_message("hello", Some(&id));
    let first = socket.collect_turn(TURN_TIMEOUT).await;
    socket.send_message("again", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(first.text(), "Arr!", "{:?}", first.events);
    let requests = models.big().requests();
    assert_eq!(
        upstream_messages(&requests[0]),
        [msg("system", "You are a pirate."), msg("user", "hello")]
    );
    assert_eq!(
        upstream_messages(&requests[1]),
        [
            msg("system", "You are a pirate."),
            msg("user", "hello"),
            msg("assistant", "Arr!"),
            msg("user", "again"),
        ]
    );
    assert_eq!(requests[0].body["temperature"], 1.25);
    assert_eq!(
        user.history(&id).await,
        [
            msg("user", "hello"),
            msg("assistant", "Arr!"),
            msg("user", "again"),
            msg("assistant", "Aye"),
        ]
    );
    let loaded = user.get(&format!("/load_conversation/{id}")).await;
    assert_eq!(loaded.json["system_prompt"], "You are a pirate.");
    assert_eq!(loaded.json["temperature"], 1.25);
}

#[tokio::test]
async fn bad_settings_are_refused_with_what_is_wrong() {
    let models = two_models().await;
    let user = models.app.new_user().await;

    let hot = user
        .post_json("/start_conversation", json!({"temperature": 3}))
        .await;
    let long = user
        .post_json(
            "/start_conversation",
            json!({"system_prompt": "x".repeat(32_001)}),
        )
        .await;
    let not_json = user
        .post_raw("/start_conversation", "application/json", "{nope")
        .await;

    hot.assert_error(400, "invalid", "temperature must be a number from 0 to 2.");
    long.assert_error(
        413,
        "too_large",
        "System prompt too long (max 32000 characters).",
    );
    not_json.assert_error(400, "invalid", "The request body is not valid JSON.");
    assert!(user.list().await.is_empty());
    // A body not sent as JSON is ignored, as the original app ignored it.
    let form = user
        .post_raw(
            "/start_conversation",
            "application/x-www-form-urlencoded",
            "a=b",
        )
        .await;
    form.assert_status(200);
    assert_eq!(form.json["model"], "big");
}

#[tokio::test]
async fn presets_are_made_listed_started_from_and_deleted() {
    let models = two_models().await;
    models.small.streams(&["from", " the preset"]);
    let user = models.app.new_user().await;

    let created = user
        .post_json(
            "/presets",
            json!({"name": "Terse", "model": "small", "system_prompt": "Answer in one word.",
                   "temperature": 0.1}),
        )
        .await;
    created.assert_status(201);
    let preset_id = created.str_field("preset_id");
    let listed = user.get("/presets").await;
    let id = start_with(&user, json!({"preset_id": preset_id})).await;
    let mut socket = user.socket().await;
    socket.send_message("capital of France?", Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;
    let deleted = user.delete(&format!("/presets/{preset_id}")).await;
    let again = user.delete(&format!("/presets/{preset_id}")).await;
    let start_from_deleted = user
        .post_json("/start_conversation", json!({"preset_id": preset_id}))
        .await;

    assert_eq!(created.json["name"], "Terse");
    assert_eq!(created.json["model"], "small");
    assert_eq!(listed.json["presets"].as_array().unwrap().len(), 1);
    assert_eq!(listed.json["presets"][0]["preset_id"], preset_id.as_str());
    assert_eq!(
        listed.json["presets"][0]["system_prompt"],
        "Answer in one word."
    );
    assert_eq!(turn.text(), "from the preset", "{:?}", turn.events);
    let to_small = models.small.requests();
    assert_eq!(to_small.len(), 1);
    assert_eq!(
        upstream_messages(&to_small[0]),
        [
            msg("system", "Answer in one word."),
            msg("user", "capital of France?")
        ]
    );
    assert_eq!(
        to_small[0].body["temperature"].as_f64().unwrap() as f32,
        0.1
    );
    assert_eq!(models.big().call_count(), 0);
    deleted.assert_ok_message("Preset deleted.");
    again.assert_error(404, "not_found", "Preset not found.");
    start_from_deleted.assert_error(404, "not_found", "Preset not found.");
    assert!(user.get("/presets").await.json["presets"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn another_user_can_neither_see_nor_use_nor_delete_a_preset() {
    let models = two_models().await;
    let (alice, mallory) = (models.app.new_user().await, models.app.new_user().await);
    let created = alice
        .post_json(
            "/presets",
            json!({"name": "Secret", "system_prompt": "alice's instructions"}),
        )
        .await;
    created.assert_status(201);
    let preset_id = created.str_field("preset_id");

    let listed = mallory.get("/presets").await;
    let started = mallory
        .post_json("/start_conversation", json!({"preset_id": preset_id}))
        .await;
    let deleted = mallory.delete(&format!("/presets/{preset_id}")).await;

    assert_eq!(listed.json, json!({"presets": []}));
    started.assert_error(404, "not_found", "Preset not found.");
    deleted.assert_error(404, "not_found", "Preset not found.");
    assert!(mallory.list().await.is_empty());
    assert_eq!(
        alice.get("/presets").await.json["presets"][0]["name"],
        "Secret"
    );
}

#[tokio::test]
async fn a_preset_is_checked_when_made() {
    let models = two_models().await;
    let user = models.app.new_user().await;

    let unnamed = user.post_json("/presets", json!({"model": "small"})).await;
    let unknown = user
        .post_json("/presets", json!({"name": "x", "model": "gpt-9"}))
        .await;
    let bad_id = user.delete("/presets/not-a-uuid").await;

    unnamed.assert_error(
        400,
        "invalid",
        "Give the preset a name of 1 to 100 characters.",
    );
    unknown.assert_error(
        400,
        "unknown_model",
        "Unknown model \"gpt-9\": choose one of the models GET /get_config lists.",
    );
    bad_id.assert_error(404, "not_found", "Preset not found.");
    assert_eq!(user.get("/presets").await.json, json!({"presets": []}));
}

#[tokio::test]
async fn without_a_catalogue_the_single_model_variables_are_the_default_model() {
    let app = crate::helpers::spawn_app(&[("MAX_TOKENS", "5000"), ("REPLY_TOKENS", "300")]).await;
    app.llm.streams(&["ok"]);
    let user = app.new_user().await;

    let config = user.get("/get_config").await;
    let id = start_with(&user, json!({"model": "default"})).await;
    let mut socket = user.socket().await;
    socket.emit(
        "send_message",
        json!({"message": "hi", "conversation_id": id, "model": "default"}),
    );
    let turn = socket.collect_turn(TURN_TIMEOUT).await;

    assert_eq!(config.json["default_model"], "default");
    assert_eq!(
        config.json["models"],
        json!([{"id": "default", "name": "fake-model", "provider": "openai",
                "max_tokens": 5000, "reply_tokens": 300, "tokenizer": "cl100k_base",
                "temperature": 0.7}])
    );
    assert_eq!(turn.text(), "ok", "{:?}", turn.events);
    assert_eq!(app.llm.requests()[0].body["model"], "fake-model");
    assert_eq!(app.llm.requests()[0].body["max_tokens"], 300);
}

#[tokio::test]
async fn a_bad_catalogue_stops_the_start_naming_the_file_and_the_field() {
    let llm = FakeLlm::start().await;
    let cases = [
        (
            "[[models]]\nid = \"a\"\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmax_token = 10\n",
            "max_token",
        ),
        (
            "[[models]]\nid = \"a\"\nprovider = \"azure\"\nurl = \"https://x.example/chat\"\nkey_env = \"NOT_SET_ANYWHERE\"\n",
            "models[0] (id \"a\").key_env: the variable NOT_SET_ANYWHERE is not set",
        ),
        (
            "[[models]]\nid = \"a\"\nprovider = \"openai\"\nbase_url = \"ftp://x\"\n",
            "models[0] (id \"a\").base_url=\"ftp://x\" is not an http(s) URL",
        ),
        (
            "[[models]]\nid = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x/v1\"\nmax_tokens = 100\nreply_tokens = 100\n",
            "models[0] (id \"a\").reply_tokens (100) must leave at least 50 of max_tokens (100)",
        ),
        (
            "default = \"b\"\n[[models]]\nid = \"a\"\nprovider = \"demo\"\n",
            "default=\"b\" names no model of the file",
        ),
    ];
    for (text, expected) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("models.toml");
        std::fs::write(&path, text).unwrap();
        let mut env = base_env(&llm, &dir);
        env.insert("MODELS_FILE".into(), path.display().to_string());

        let (code, output) = run_expecting_startup_failure(&env, &dir).await;

        assert_ne!(code, Some(0), "{output}");
        assert!(
            output.contains(&format!("MODELS_FILE {}", path.display())),
            "{output}"
        );
        assert!(output.contains(expected), "{expected:?} not in {output}");
    }
}

#[tokio::test]
async fn the_openai_api_offers_the_catalogue_and_sends_each_request_to_its_model() {
    let models = two_models_with(&[("AUTH_MODE", "local")]).await;
    models.small.streams(&["small", " answer"]);
    let (browser, _) = models.app.signed_up("sdk@example.com").await;
    let made = browser
        .post_json("/api/tokens", json!({"name": "sdk"}))
        .await;
    made.assert_status(201);
    let token = made.json["token"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();

    let list: Value = client
        .get(format!("{}/v1/models", models.app.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("models JSON");
    let mut ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["big", "small"], "{list}");

    let completion = |body: Value| {
        client
            .post(format!("{}/v1/chat/completions", models.app.base_url))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let answer = completion(json!({
        "model": "small",
        "max_tokens": 5000,
        "messages": [{"role": "user", "content": "question for small"}],
    }))
    .await
    .expect("completion");
    assert_eq!(answer.status().as_u16(), 200);
    let answer: Value = answer.json().await.expect("completion JSON");
    assert_eq!(answer["model"], "small");
    assert_eq!(answer["choices"][0]["message"]["content"], "small answer");
    let to_small = models.small.requests();
    assert_eq!(to_small.len(), 1, "small got {to_small:?}");
    assert_eq!(to_small[0].body["model"], "small-upstream");
    // The small model's reply tokens cap what the request asked for.
    assert_eq!(to_small[0].body["max_tokens"], 100);
    assert_eq!(
        to_small[0].header("authorization").as_deref(),
        Some("Bearer key-of-small")
    );
    assert!(models.big().requests().is_empty(), "big was asked");

    // The small model's window (300 tokens) is the one a prompt must fit.
    let long = "word ".repeat(400);
    let refused = completion(json!({
        "model": "small",
        "messages": [{"role": "user", "content": long}],
    }))
    .await
    .expect("completion");
    assert_eq!(refused.status().as_u16(), 400);
    let refused: Value = refused.json().await.expect("error JSON");
    assert_eq!(
        refused["error"]["code"], "context_length_exceeded",
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context window is 300 tokens"),
        "{refused}"
    );
    assert_eq!(
        models.small.requests().len(),
        1,
        "the refused prompt reached small"
    );
}

// ------------------------------------------- changing a conversation's settings

#[tokio::test]
async fn changed_settings_are_used_by_the_next_turn_and_shown_by_load() {
    let models = two_models().await;
    models
        .big()
        .streams(&["one"])
        .streams(&["two"])
        .streams(&["three"]);
    models.small.streams(&["four"]);
    let user = models.app.new_user().await;
    let id = start_with(&user, json!({"system_prompt": "Be brief."})).await;
    let mut socket = user.socket().await;
    socket.send_message("first", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();

    let changed = user
        .patch_json(
            &format!("/conversation/{id}/settings"),
            json!({"system_prompt": "You are a pirate.", "temperature": 1.5}),
        )
        .await;
    socket.send_message("second", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    let loaded = user.get(&format!("/load_conversation/{id}")).await;

    changed.assert_status(200);
    assert_eq!(
        changed.json,
        json!({"conversation_id": id, "model": "big",
               "system_prompt": "You are a pirate.", "temperature": 1.5})
    );
    let requests = models.big().requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        upstream_messages(&requests[1]),
        [
            msg("system", "You are a pirate."),
            msg("user", "first"),
            msg("assistant", "one"),
            msg("user", "second"),
        ]
    );
    assert_eq!(requests[1].body["temperature"], 1.5);
    assert_eq!(loaded.json["system_prompt"], "You are a pirate.");
    assert_eq!(loaded.json["temperature"], 1.5);

    // null sets a field back to the default; a field left out stays.
    let cleared = user
        .patch_json(
            &format!("/conversation/{id}/settings"),
            json!({"system_prompt": null, "temperature": null}),
        )
        .await;
    socket.send_message("third", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    let moved = user
        .patch_json(
            &format!("/conversation/{id}/settings"),
            json!({"model": "small"}),
        )
        .await;
    socket.send_message("fourth", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    let reloaded = user.get(&format!("/load_conversation/{id}")).await;

    assert_eq!(
        cleared.json,
        json!({"conversation_id": id, "model": "big",
               "system_prompt": null, "temperature": null})
    );
    let third = &models.big().requests()[2];
    assert_eq!(upstream_messages(third)[0], msg("user", "first"));
    assert_eq!(third.body["temperature"], 0.7, "the model's own");
    moved.assert_status(200);
    assert_eq!(moved.json["model"], "small");
    assert_eq!(moved.json["system_prompt"], Value::Null);
    assert_eq!(models.small.call_count(), 1);
    assert_eq!(models.small.requests()[0].body["temperature"], 0.5);
    assert_eq!(reloaded.json["model"], "small");
    assert!(
        reloaded.json.get("system_prompt").is_none(),
        "{}",
        reloaded.text
    );
    assert!(
        reloaded.json.get("temperature").is_none(),
        "{}",
        reloaded.text
    );
}

#[tokio::test]
async fn bad_settings_changes_are_refused_and_change_nothing() {
    let models = two_models().await;
    let (alice, mallory) = (models.app.new_user().await, models.app.new_user().await);
    let id = start_with(
        &alice,
        json!({"system_prompt": "Keep me.", "temperature": 0.25}),
    )
    .await;
    let path = format!("/conversation/{id}/settings");

    let unknown = alice.patch_json(&path, json!({"model": "gpt-9"})).await;
    let hot = alice
        .patch_json(&path, json!({"system_prompt": "new", "temperature": 3}))
        .await;
    let wrong = alice
        .patch_json(&path, json!({"temperature": "warm"}))
        .await;
    let long = alice
        .patch_json(&path, json!({"system_prompt": "x".repeat(32_001)}))
        .await;
    let array = alice.patch_json(&path, json!(["system_prompt"])).await;
    let not_json = alice.patch_raw(&path, "application/json", "{nope").await;
    let stolen = mallory
        .patch_json(&path, json!({"system_prompt": "Mallory's now."}))
        .await;
    let missing = alice
        .patch_json(
            &format!("/conversation/{}/settings", uuid::Uuid::new_v4()),
            json!({"system_prompt": "x"}),
        )
        .await;
    let forged = alice
        .send(
            reqwest::Client::new()
                .patch(alice.url(&path))
                .header("origin", "https://evil.example")
                .header("content-type", "application/json")
                .body(json!({"system_prompt": "forged"}).to_string()),
        )
        .await;

    unknown.assert_error(
        400,
        "unknown_model",
        "Unknown model \"gpt-9\": choose one of the models GET /get_config lists.",
    );
    hot.assert_error(400, "invalid", "temperature must be a number from 0 to 2.");
    wrong.assert_error(400, "invalid", "temperature must be a number from 0 to 2.");
    long.assert_error(
        413,
        "too_large",
        "System prompt too long (max 32000 characters).",
    );
    assert_eq!(array.status, 400, "{}", array.text);
    assert_eq!(array.json["error"], "invalid");
    assert_eq!(not_json.status, 400, "{}", not_json.text);
    stolen.assert_error(404, "not_found", "Conversation not found.");
    missing.assert_error(404, "not_found", "Conversation not found.");
    forged.assert_error(403, "forbidden", "Cross-site request refused.");
    let loaded = alice.get(&format!("/load_conversation/{id}")).await;
    assert_eq!(loaded.json["system_prompt"], "Keep me.");
    assert_eq!(loaded.json["temperature"], 0.25);
    assert_eq!(loaded.json["model"], "big");
}

#[tokio::test]
async fn the_users_other_tabs_are_told_the_new_settings() {
    let models = two_models().await;
    let user = models.app.new_user().await;
    let other = models.app.new_user().await;
    let id = user.start_conversation().await;
    let mut tab = user.socket().await;
    let mut strangers_tab = other.socket().await;

    user.patch_json(
        &format!("/conversation/{id}/settings"),
        json!({"system_prompt": "Speak French.", "temperature": 0.2}),
    )
    .await
    .assert_status(200);
    let told = tab
        .wait_for_matching("conversation_updated", EVENT_TIMEOUT, |data| {
            data.get("settings").is_some()
        })
        .await;

    assert_eq!(told["conversation_id"], json!(id));
    assert_eq!(told["message_count"], 0);
    assert_eq!(told["settings"]["system_prompt"], "Speak French.");
    assert_eq!(told["settings"]["model"], "big");
    let temperature = told["settings"]["temperature"].as_f64().unwrap();
    assert!((temperature - 0.2).abs() < 1e-6, "{temperature}");
    // The other user's own change reaches their tab, and nothing of the first user's did
    // before it.
    let theirs = other.start_conversation().await;
    other
        .patch_json(
            &format!("/conversation/{theirs}/settings"),
            json!({"temperature": 1}),
        )
        .await
        .assert_status(200);
    let seen = strangers_tab
        .wait_for("conversation_updated", EVENT_TIMEOUT)
        .await;
    assert_eq!(seen.data["conversation_id"], json!(theirs));
}
