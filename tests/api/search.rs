//! `GET /search_conversations?q=`.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, TURN_TIMEOUT};

fn ids(results: &Value) -> Vec<String> {
    results["conversations"]
        .as_array()
        .unwrap_or_else(|| panic!("no conversations array: {results}"))
        .iter()
        .map(|entry| entry["conversation_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn search_without_a_query_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user.get("/search_conversations").await;

    response.assert_error(400, "invalid", "No search query provided.");
}

#[tokio::test]
async fn search_with_an_empty_query_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user.get("/search_conversations?q=").await;

    response.assert_error(400, "invalid", "No search query provided.");
}

#[tokio::test]
async fn search_finds_a_conversation_by_a_word_in_it() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let about_jam = user.start_conversation().await;
    user.add_example(
        "How do I make marmalade at home?",
        "Boil oranges with sugar.",
    )
    .await;
    user.start_conversation().await;
    user.add_example("What is the tallest mountain?", "Everest.")
        .await;

    let response = user.get("/search_conversations?q=marmalade").await;

    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(ids(&response.json), vec![about_jam.clone()]);
    let hit = &response.json["conversations"][0];
    assert!(hit["score"].as_f64().expect("numeric score") > 0.0, "{hit}");
    crate::helpers::timestamp(&hit["created_at"]);
    crate::helpers::timestamp(&hit["updated_at"]);
    assert!(hit.get("title").is_some(), "{hit}");
}

#[tokio::test]
async fn search_for_a_word_in_no_conversation_finds_nothing() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    user.start_conversation().await;
    user.add_example(
        "How do I make marmalade at home?",
        "Boil oranges with sugar.",
    )
    .await;

    let response = user.get("/search_conversations?q=zeppelin").await;

    assert_eq!(response.status, 200, "{}", response.text);
    assert!(ids(&response.json).is_empty(), "{}", response.text);
}

#[tokio::test]
async fn search_ranks_the_conversation_mentioning_the_word_more_often_first() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let once = user.start_conversation().await;
    user.add_example(
        "I had toast with marmalade and a cup of tea in the garden this morning",
        "That sounds like a calm breakfast with a view",
    )
    .await;
    let often = user.start_conversation().await;
    user.add_example(
        "marmalade marmalade marmalade",
        "More marmalade: a jar of marmalade",
    )
    .await;
    let newest_once = user.start_conversation().await;
    user.add_example(
        "Is marmalade made from lemons or from bitter oranges usually?",
        "Usually from Seville oranges, which are bitter",
    )
    .await;

    let response = user.get("/search_conversations?q=marmalade").await;

    assert_eq!(response.status, 200, "{}", response.text);
    let found = ids(&response.json);
    assert_eq!(found.len(), 3, "{}", response.text);
    assert_eq!(
        found[0], often,
        "the conversation saying marmalade five times should rank first: {}",
        response.text
    );
    assert!(found.contains(&once) && found.contains(&newest_once));
    let scores: Vec<f64> = response.json["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| hit["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|pair| pair[0] >= pair[1]),
        "scores not best first: {scores:?}"
    );
    assert!(scores.iter().all(|score| *score > 0.0), "{scores:?}");
}

#[tokio::test]
async fn search_finds_words_of_a_streamed_reply() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    app.llm
        .streams(&["The xylophone", " is a percussion instrument."]);
    socket.send_message("Tell me about an instrument", None);
    socket.collect_turn(TURN_TIMEOUT).await.expect_end();

    let response = user.get("/search_conversations?q=xylophone").await;

    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(ids(&response.json), vec![id]);
}

#[tokio::test]
async fn search_never_returns_another_users_conversation() {
    let app = spawn_app(&[]).await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    alice.start_conversation().await;
    alice
        .add_example("My secret word is pumpernickel", "Noted: pumpernickel")
        .await;
    let bobs = bob.start_conversation().await;
    bob.add_example("I like pumpernickel bread", "Dense and dark")
        .await;

    let response = bob.get("/search_conversations?q=pumpernickel").await;

    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(ids(&response.json), vec![bobs]);
    let response = app
        .new_user()
        .await
        .get("/search_conversations?q=pumpernickel")
        .await;
    assert_eq!(
        response.json,
        json!({"conversations": []}),
        "{}",
        response.text
    );
}

/// With bm25 over every user's text, Alice's scores moved as Bob wrote: how
/// common a word is in other people's conversations leaked through them.
#[tokio::test]
async fn other_users_text_never_moves_a_users_scores() {
    let app = spawn_app(&[]).await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    alice.start_conversation().await;
    alice
        .add_example(
            "Where do capybaras live?",
            "Capybaras live in South America",
        )
        .await;
    alice.start_conversation().await;
    alice
        .add_example("Are capybaras friendly?", "Mostly, yes")
        .await;
    let before = alice.get("/search_conversations?q=capybaras").await;
    assert_eq!(before.status, 200, "{}", before.text);
    assert_eq!(ids(&before.json).len(), 2, "{}", before.text);

    for n in 0..12 {
        bob.start_conversation().await;
        let text = if n % 3 == 0 {
            "capybaras capybaras capybaras"
        } else {
            "something else entirely"
        };
        bob.add_example(text, "noted").await;
    }
    let after = alice.get("/search_conversations?q=capybaras").await;

    assert_eq!(after.status, 200, "{}", after.text);
    assert_eq!(
        after.json, before.json,
        "Bob's conversations changed Alice's results"
    );
    let bobs = bob.get("/search_conversations?q=south").await;
    assert_eq!(bobs.json, json!({"conversations": []}), "{}", bobs.text);
}

#[tokio::test]
async fn searches_are_rate_limited_per_user() {
    let app = spawn_app(&[("RATE_LIMIT_SEARCHES_PER_MINUTE", "2")]).await;
    let user = app.new_user().await;
    let other = app.new_user().await;
    for _ in 0..2 {
        let response = user.get("/search_conversations?q=anything").await;
        assert_eq!(response.status, 200, "{}", response.text);
    }

    let refused = user.get("/search_conversations?q=anything").await;

    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(
        refused.json["error"],
        json!("rate_limited"),
        "{}",
        refused.text
    );
    let wait = refused.json["retry_after"].as_u64().expect("retry_after");
    assert!((1..=60).contains(&wait), "{}", refused.text);
    assert_eq!(
        refused.json["message"],
        json!(format!("Too many requests. Try again in {wait} seconds.")),
    );
    assert_eq!(refused.header("retry-after"), Some(wait.to_string()));
    let response = other.get("/search_conversations?q=anything").await;
    assert_eq!(response.status, 200, "{}", response.text);
}
