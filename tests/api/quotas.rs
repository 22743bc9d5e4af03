//! Metering and daily token quotas: usage counted from the upstream's `usage` (asked for
//! with `stream_options.include_usage`) or with the server's tokenizer when there is none,
//! for chat turns, stopped turns, summaries and upload analyses; `GET /usage` for every kind of user;
//! over quota a message, a regenerate or an upload is refused with `quota_exceeded` before
//! the model is asked and with nothing stored; admins set a user's own quota, nobody else
//! can, and hostile input changes nothing.

use chrono::{Days, SecondsFormat, Utc};
use llm_chat_server::config::Tokenizer;
use llm_chat_server::context::TokenCounter;
use serde_json::{json, Value};
use testkit::browser::{msg, ApiResponse};
use testkit::fake_llm::{Behaviour, Gate, Usage};

use crate::helpers::{spawn_app, TestApp, User, EVENT_TIMEOUT, TURN_TIMEOUT};

const PASSWORD: &str = "correct horse battery";

fn today() -> String {
    Utc::now().date_naive().to_string()
}

fn tomorrow_midnight() -> String {
    Utc::now()
        .date_naive()
        .checked_add_days(Days::new(1))
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn count_tokens(text: &str) -> u64 {
    u64::from(TokenCounter::new(Tokenizer::Cl100kBase).count(text))
}

/// (prompt_tokens, completion_tokens) of `GET /usage`.
async fn used(user: &User) -> (u64, u64) {
    let usage = user.get("/usage").await;
    usage.assert_status(200);
    (
        usage.json["prompt_tokens"].as_u64().unwrap(),
        usage.json["completion_tokens"].as_u64().unwrap(),
    )
}

async fn put_quota(user: &User, user_id: &str, body: Value) -> ApiResponse {
    let request = reqwest::Client::new()
        .put(user.url(&format!("/admin/users/{user_id}/quota")))
        .json(&body);
    user.send(request).await
}

async fn account(app: &TestApp, email: &str) -> (User, String) {
    let browser = app.new_user_without_page();
    let response = browser
        .post_json(
            "/auth/signup",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    response.assert_status(201);
    let user_id = response.json["user_id"].as_str().unwrap().to_owned();
    (browser, user_id)
}

/// Sends `message` and waits for the turn's end, asserting it succeeded.
async fn chat(user: &User, message: &str) -> testkit::sio::Turn {
    let mut socket = user.socket().await;
    let id = user.start_conversation().await;
    socket.send_message(message, Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;
    turn.expect_end();
    turn
}

#[track_caller]
fn assert_quota_error(body: &Value, quota: u64) {
    assert_eq!(body["error"], "quota_exceeded", "{body}");
    assert_eq!(body["resets_at"], tomorrow_midnight().as_str(), "{body}");
    let reset = Utc::now()
        .date_naive()
        .checked_add_days(Days::new(1))
        .unwrap()
        .format("%Y-%m-%d 00:00");
    assert_eq!(
        body["message"],
        format!("You have used your {quota} tokens for today. The quota resets at {reset} UTC."),
        "{body}"
    );
}

#[tokio::test]
async fn usage_is_the_upstreams_own_count_for_a_turn_and_an_upload_analysis() {
    let app = spawn_app(&[]).await;
    app.llm.reports_usage(Some(Usage::new(1234, 56)));
    let user = app.new_user().await;
    let before = user.get("/usage").await;

    chat(&user, "Count me exactly").await;
    let after_turn = user.get("/usage").await;
    user.upload("notes.txt", b"A short note to analyse.")
        .await
        .assert_status(200);
    let after_upload = used(&user).await;

    let turn_request = &app.llm.requests()[0];
    assert!(turn_request.is_streaming() && turn_request.asks_for_usage());
    assert_eq!(
        before.json,
        json!({"date": today(), "prompt_tokens": 0, "completion_tokens": 0,
               "quota_tokens_per_day": 0, "resets_at": tomorrow_midnight()})
    );
    assert_eq!(after_turn.json["prompt_tokens"], 1234);
    assert_eq!(after_turn.json["completion_tokens"], 56);
    // The analysis's non-streamed answer carried the same usage.
    assert_eq!(after_upload, (2468, 112));
}

#[tokio::test]
async fn without_upstream_usage_the_prompt_sent_and_the_reply_received_are_counted() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let turn = chat(&user, "Nobody reports usage here").await;
    let (prompt, completion) = used(&user).await;

    let prompt_sent = turn.token_usage.as_ref().unwrap()["total_tokens_used"]
        .as_u64()
        .unwrap();
    assert!(prompt_sent > 5);
    assert_eq!(prompt, prompt_sent);
    assert_eq!(completion, count_tokens("Hello from the fake model."));
}

#[tokio::test]
async fn a_stopped_reply_counts_its_prompt_and_the_text_that_arrived() {
    let app = spawn_app(&[]).await;
    // The usage chunk comes at the end of a reply, which a stopped one never reaches.
    app.llm.reports_usage(Some(Usage::new(9999, 9999)));
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    let gate = Gate::new();
    app.llm.push(Behaviour::held(
        &["Partial words ", "that arrived", " but this never did"],
        2,
        &gate,
    ));

    socket.send_message("Stop me halfway", Some(&id));
    let usage = socket.wait_for("token_usage", TURN_TIMEOUT).await;
    socket.wait_for("response_chunk", EVENT_TIMEOUT).await;
    socket.wait_for("response_chunk", EVENT_TIMEOUT).await;
    socket.emit("stop_generation", json!({"conversation_id": id}));
    let end = socket.wait_for("response_end", EVENT_TIMEOUT).await;
    let (prompt, completion) = used(&user).await;

    assert_eq!(end["stopped"], true);
    assert_eq!(prompt, usage["total_tokens_used"].as_u64().unwrap());
    assert_eq!(completion, count_tokens("Partial words that arrived"));
}

#[tokio::test]
async fn over_quota_messages_regenerates_and_uploads_are_refused_before_the_model() {
    // AUTH_MODE=none: the anonymous browser user is metered and held to the quota.
    let app = spawn_app(&[("QUOTA_TOKENS_PER_DAY", "100")]).await;
    app.llm.reports_usage(Some(Usage::new(80, 30)));
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    socket.send_message("The turn that crosses the quota", Some(&id));
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();
    let history = user.history(&id).await;
    let calls = app.llm.call_count();

    socket.send_message("One more, please", Some(&id));
    let refused_message = socket.wait_for("error", EVENT_TIMEOUT).await;
    socket.emit("regenerate", json!({"conversation_id": id}));
    let refused_regenerate = socket.wait_for("error", EVENT_TIMEOUT).await;
    let refused_upload = user.upload("notes.txt", b"Analyse me.").await;
    let usage = user.get("/usage").await;
    let metrics = user.get("/metrics").await;

    assert_quota_error(&refused_message.data, 100);
    assert_quota_error(&refused_regenerate.data, 100);
    assert_eq!(refused_upload.status, 429);
    assert_quota_error(&refused_upload.json, 100);
    let retry_after: i64 = refused_upload
        .header("retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    assert_eq!(
        app.llm.call_count(),
        calls,
        "a refused request reached the model"
    );
    assert_eq!(
        user.history(&id).await,
        history,
        "a refused request changed the history"
    );
    assert_eq!(
        history,
        vec![
            msg("user", "The turn that crosses the quota"),
            msg("assistant", "Hello from the fake model.")
        ]
    );
    assert_eq!(
        (
            &usage.json["prompt_tokens"],
            &usage.json["completion_tokens"],
            &usage.json["quota_tokens_per_day"]
        ),
        (&json!(80), &json!(30), &json!(100))
    );
    assert!(
        metrics.text.contains("chat_turns_refused_quota_total 2"),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn an_admin_raises_lowers_and_resets_a_users_quota() {
    let app = spawn_app(&[
        ("AUTH_MODE", "local"),
        ("SIGNUP", "open"),
        ("QUOTA_TOKENS_PER_DAY", "100"),
    ])
    .await;
    app.llm.reports_usage(Some(Usage::new(60, 40)));
    let (admin, _) = account(&app, "admin@example.org").await;
    let (bob, bob_id) = account(&app, "bob@example.org").await;
    chat(&bob, "Use up the default quota").await;
    let mut socket = bob.socket().await;
    let id = bob.start_conversation().await;
    socket.send_message("over the default", Some(&id));
    let refused_by_default = socket.wait_for("error", EVENT_TIMEOUT).await;

    let raised = put_quota(&admin, &bob_id, json!({"quota_tokens_per_day": 1000})).await;
    let bob_sees = bob.get("/usage").await;
    socket.send_message("now it fits", Some(&id));
    let allowed = socket.collect_turn(TURN_TIMEOUT).await;
    let lowered = put_quota(&admin, &bob_id, json!({"quota_tokens_per_day": 150})).await;
    socket.send_message("over my own quota", Some(&id));
    let refused_by_own = socket.wait_for("error", EVENT_TIMEOUT).await;
    let reset = put_quota(&admin, &bob_id, json!({"quota_tokens_per_day": null})).await;
    let after_reset = bob.get("/usage").await;
    let everyone = admin.get("/admin/usage").await;

    assert_quota_error(&refused_by_default.data, 100);
    raised.assert_status(200);
    assert_eq!(
        raised.json,
        json!({"user_id": bob_id, "quota_tokens_per_day": 1000, "effective_quota_tokens_per_day": 1000})
    );
    assert_eq!(bob_sees.json["quota_tokens_per_day"], 1000);
    assert_eq!(allowed.expect_end()["stopped"], false);
    lowered.assert_status(200);
    assert_quota_error(&refused_by_own.data, 150);
    assert_eq!(
        reset.json,
        json!({"user_id": bob_id, "quota_tokens_per_day": null, "effective_quota_tokens_per_day": 100})
    );
    assert_eq!(after_reset.json["quota_tokens_per_day"], 100);
    assert_eq!(after_reset.json["prompt_tokens"], 120);
    assert_eq!(after_reset.json["completion_tokens"], 80);
    everyone.assert_status(200);
    assert_eq!(everyone.json["date"], today().as_str());
    assert_eq!(everyone.json["default_quota_tokens_per_day"], 100);
    assert_eq!(
        everyone.json["users"],
        json!([{"user_id": bob_id, "prompt_tokens": 120, "completion_tokens": 80,
                "quota_tokens_per_day": 100, "own_quota": false}])
    );
}

#[tokio::test]
async fn a_token_user_sees_the_same_usage_and_an_own_quota_is_listed_as_such() {
    let app = spawn_app(&[("AUTH_MODE", "local"), ("SIGNUP", "open")]).await;
    app.llm.reports_usage(Some(Usage::new(7, 3)));
    let (admin, admin_id) = account(&app, "admin@example.org").await;
    chat(&admin, "Spend a little").await;
    put_quota(&admin, &admin_id, json!({"quota_tokens_per_day": 0}))
        .await
        .assert_status(200);
    let made = admin
        .post_json("/api/tokens", json!({"name": "script"}))
        .await;
    let token = made.json["token"].as_str().unwrap();

    let by_token = reqwest::Client::new()
        .get(format!("{}/usage", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let everyone = admin.get("/admin/usage?limit=1").await;

    assert_eq!(by_token["prompt_tokens"], 7);
    assert_eq!(by_token["completion_tokens"], 3);
    assert_eq!(by_token["quota_tokens_per_day"], 0);
    assert_eq!(
        everyone.json["users"],
        json!([{"user_id": admin_id, "prompt_tokens": 7, "completion_tokens": 3,
                "quota_tokens_per_day": 0, "own_quota": true}])
    );
}

#[tokio::test]
async fn only_admins_set_quotas_and_hostile_input_changes_nothing() {
    let app = spawn_app(&[
        ("AUTH_MODE", "local"),
        ("SIGNUP", "open"),
        ("QUOTA_TOKENS_PER_DAY", "500"),
    ])
    .await;
    let (admin, _) = account(&app, "admin@example.org").await;
    let (bob, bob_id) = account(&app, "bob@example.org").await;
    let stranger = app.new_user_without_page();

    let bob_sets_his_own = put_quota(&bob, &bob_id, json!({"quota_tokens_per_day": 0})).await;
    let bob_lists = bob.get("/admin/usage").await;
    let stranger_sets = put_quota(&stranger, &bob_id, json!({"quota_tokens_per_day": 0})).await;
    let unknown = put_quota(
        &admin,
        &uuid::Uuid::new_v4().to_string(),
        json!({"quota_tokens_per_day": 5}),
    )
    .await;
    let mut bad_ids = Vec::new();
    for id in ["not-a-uuid", "..%2F..%2Fetc", &"f".repeat(5000), "%00"] {
        bad_ids.push(put_quota(&admin, id, json!({"quota_tokens_per_day": 5})).await);
    }
    let mut bad_bodies = Vec::new();
    for body in [
        json!({"quota_tokens_per_day": -1}),
        json!({"quota_tokens_per_day": 1.5}),
        json!({"quota_tokens_per_day": "100"}),
        json!({"quota_tokens_per_day": true}),
        json!({"quota_tokens_per_day": [100]}),
        json!({"quota_tokens_per_day": {"n": 1}}),
        json!({"quota_tokens_per_day": 1_000_000_000_001_u64}),
        json!({"quota_tokens_per_day": 1e300}),
        json!({"quota": 5}),
        json!([5]),
        json!(null),
    ] {
        bad_bodies.push(put_quota(&admin, &bob_id, body).await);
    }
    let not_json = admin
        .send(
            reqwest::Client::new()
                .put(admin.url(&format!("/admin/users/{bob_id}/quota")))
                .header("content-type", "application/json")
                .body("{\"quota_tokens_per_day\": "),
        )
        .await;
    let mut bad_limits = Vec::new();
    for query in ["limit=0", "limit=1001", "limit=abc", "limit=-1"] {
        bad_limits.push(admin.get(&format!("/admin/usage?{query}")).await);
    }
    let bob_after = bob.get("/usage").await;

    bob_sets_his_own.assert_error(403, "forbidden", "Only administrators may do this.");
    bob_lists.assert_error(403, "forbidden", "Only administrators may do this.");
    stranger_sets.assert_error(401, "unauthenticated", "Sign in to continue.");
    unknown.assert_error(404, "not_found", "User not found.");
    for response in bad_ids {
        response.assert_error(400, "invalid", "Invalid user id.");
    }
    for response in bad_bodies {
        response.assert_error(
            400,
            "invalid",
            "quota_tokens_per_day must be a whole number of tokens from 0 to 1000000000000 \
             (0: no quota), or null for the server's default.",
        );
    }
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json["error"], "invalid");
    for response in bad_limits {
        response.assert_error(
            400,
            "invalid",
            "limit must be a whole number from 1 to 1000.",
        );
    }
    assert_eq!(
        bob_after.json["quota_tokens_per_day"], 500,
        "a refused change was kept"
    );
}

#[tokio::test]
async fn without_accounts_the_admin_routes_do_not_exist_but_usage_does() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let set = put_quota(
        &user,
        &uuid::Uuid::new_v4().to_string(),
        json!({"quota_tokens_per_day": 5}),
    )
    .await;
    let list = user.get("/admin/usage").await;
    let usage = user.get("/usage").await;

    set.assert_error(404, "not_found", "Accounts are not enabled on this server.");
    list.assert_error(404, "not_found", "Accounts are not enabled on this server.");
    usage.assert_status(200);
    assert_eq!(usage.json["quota_tokens_per_day"], 0);
}

#[tokio::test]
async fn a_summary_of_older_turns_counts_too() {
    let app = spawn_app(&[
        ("MAX_TOKENS", "300"),
        ("REPLY_TOKENS", "100"),
        ("SUMMARY_TOKENS", "50"),
    ])
    .await;
    app.llm.reports_usage(Some(Usage::new(100, 10)));
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let long = "the cat sat on the mat and the dog ran in the sun ".repeat(7);
    for marker in ["ONE", "TWO", "THREE", "FOUR"] {
        user.add_example(&format!("{marker} {long}"), &format!("{marker} {long}"))
            .await;
    }
    let mut socket = user.socket().await;

    socket.send_message("And now a short question", Some(&id));
    let turn = socket.collect_turn(TURN_TIMEOUT).await;
    let usage = used(&user).await;

    assert_eq!(turn.token_usage.as_ref().unwrap()["summarised"], true);
    let requests = app.llm.requests();
    assert_eq!(
        requests
            .iter()
            .map(|r| r.is_streaming())
            .collect::<Vec<_>>(),
        [false, true],
        "a summary, then the reply"
    );
    assert_eq!(usage, (200, 20));
}
