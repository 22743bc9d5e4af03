//! Property tests of every parser of client (and upstream) input: for any
//! input they return an answer, never panic, and what they accept keeps its
//! promises. Bounded: a few hundred cases each.

use std::collections::HashMap;

use llm_chat_server::config::{Settings, Tokenizer};
use llm_chat_server::context::{chunk_text, TokenCounter};
use llm_chat_server::domain::ConversationId;
use llm_chat_server::files::{clean_file_name, decode_text, extension_allowed};
use llm_chat_server::llm::sse::{completion, parse_line, take_lines};
use llm_chat_server::store::search_terms;
use llm_chat_server::turn::validate_message;
use proptest::prelude::*;
use serde_json::Value;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn conversation_ids_accept_only_uuids_in_canonical_form(raw in ".{0,80}") {
        if let Ok(id) = ConversationId::parse(&raw) {
            let canonical = id.as_ref();
            prop_assert_eq!(canonical.len(), 36);
            prop_assert!(canonical.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
            prop_assert_eq!(ConversationId::parse(canonical).unwrap(), id.clone());
        }
    }

    #[test]
    fn any_uuid_parses_back_to_itself(bytes in any::<[u8; 16]>()) {
        let uuid = uuid::Uuid::from_bytes(bytes);
        let id = ConversationId::parse(&uuid.to_string().to_uppercase()).unwrap();
        prop_assert_eq!(id.as_ref(), uuid.hyphenated().to_string());
    }

    #[test]
    fn search_terms_are_at_most_sixteen_plain_words(query in ".{0,400}") {
        let terms = search_terms(&query);
        prop_assert!(terms.len() <= 16);
        for term in &terms {
            prop_assert!(!term.is_empty());
            prop_assert!(term.chars().all(char::is_alphanumeric), "{:?}", term);
        }
    }

    #[test]
    fn chunks_stay_under_the_limit_and_keep_every_word(
        text in "([a-zé中 ]{0,30}\n){0,40}[a-z ]{0,500}",
        limit in 8u32..60,
    ) {
        let counter = TokenCounter::new(Tokenizer::Cl100kBase);
        let chunks = chunk_text(&counter, &text, limit);
        for chunk in &chunks {
            prop_assert!(counter.count(chunk) <= limit, "{} tokens > {}", counter.count(chunk), limit);
            prop_assert!(!chunk.trim().is_empty());
        }
        let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        prop_assert_eq!(squeeze(&chunks.concat()), squeeze(&text));
    }

    #[test]
    fn sse_lines_and_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut buffer = bytes.clone();
        for line in take_lines(&mut buffer) {
            let _ = parse_line(&line);
        }
        prop_assert!(!buffer.contains(&b'\n'));
        let _ = completion(&bytes);
    }

    #[test]
    fn sse_data_lines_with_text_deltas_are_read_exactly(text in ".{0,100}") {
        let event = serde_json::json!({"choices": [{"delta": {"content": text}}]});
        let line = format!("data: {event}");
        match parse_line(line.as_bytes()).unwrap() {
            llm_chat_server::llm::sse::SseItem::Text(got) => prop_assert_eq!(got, text),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn messages_are_accepted_only_as_non_blank_strings_within_the_limit(
        text in ".{0,60}",
        max in 1usize..50,
    ) {
        let value = Value::String(text.clone());
        let accepted = validate_message(Some(&value), max).is_ok();
        prop_assert_eq!(accepted, !text.trim().is_empty() && text.chars().count() <= max);
        prop_assert!(validate_message(Some(&serde_json::json!([text])), max).is_err());
    }

    #[test]
    fn file_names_lose_folders_hidden_dots_and_control_characters(raw in "\\PC{0,60}|[./\\\\a-z\\x00-\\x1f]{0,30}") {
        if let Some(name) = clean_file_name(&raw) {
            prop_assert!(!name.contains('/') && !name.contains('\\'));
            prop_assert!(!name.starts_with('.'));
            prop_assert!(!name.chars().any(char::is_control));
        }
        let allowed = vec!["txt".to_string()];
        if extension_allowed(&raw, &allowed) {
            prop_assert!(raw.to_lowercase().ends_with(".txt"));
        }
    }

    #[test]
    fn uploads_decode_only_valid_utf8(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let decoded = decode_text(bytes.clone());
        prop_assert_eq!(decoded.is_some(), std::str::from_utf8(&bytes).is_ok());
    }

    #[test]
    fn settings_never_panic_on_any_value(
        name in prop::sample::select(vec![
            "PORT", "MAX_TOKENS", "REPLY_TOKENS", "MAX_FILE_SIZE_MB", "LLM_PROVIDER",
            "LLM_TEMPERATURE", "CHUNK_SIZE_TOKENS", "ALLOWED_EXTENSIONS", "REDIS_PREFIX",
            "DISCONNECT_GRACE_SECONDS", "SHUTDOWN_GRACE_SECONDS", "LLM_FIRST_BYTE_TIMEOUT_SECONDS",
            "RATE_LIMIT_MESSAGES_PER_MINUTE", "MONGODB_DB", "TOKENIZER", "LOG_FORMAT",
        ]),
        value in ".{0,30}",
    ) {
        let vars: HashMap<&str, String> = [(name, value)].into_iter().collect();
        if let Err(errors) = Settings::from_lookup(&|key| vars.get(key).cloned()) {
            prop_assert!(errors.to_string().contains(name), "{}", errors);
        }
    }
}

/// Text that exercises tiktoken's pre-tokenisation: pieces of arbitrary
/// printable Unicode, whitespace runs (Unicode spaces, tabs, line breaks),
/// digit runs, punctuation, emoji (with modifiers and joiners), combining
/// marks, contractions in both cases, and special-token text, in any order.
fn tokenizer_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "\\PC{1,12}",
        "[ \t\r\n\u{a0}\u{2003}\u{3000}\u{b}\u{c}\u{85}\u{2028}]{1,8}",
        "[0-9]{1,9}",
        "[!-/:-@\\[-`{-~]{1,6}",
        "[a-zA-Z]{1,10}",
        prop::sample::select(vec![
            "<|endoftext|>",
            "<|fim_prefix|>",
            "<|im_start|>",
            "<|endofprompt|>",
            "😀",
            "👍🏽",
            "👩‍👩‍👧",
            "🇫🇷",
            "e\u{301}",
            "'s",
            "'LL",
            "'Re",
            "日本語",
            "Ωμέγα",
            "Привет",
            "مرحبا",
            "\u{200b}",
            "\r\n",
            "/",
        ])
        .prop_map(String::from),
        any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// The server counts with bpe-openai; its counts are tiktoken's
    /// (`encode_ordinary`: special-token text is ordinary text) for both
    /// encodings.
    #[test]
    fn token_counts_are_tiktokens_for_both_encodings(text in tokenizer_text()) {
        let encodings = [
            (Tokenizer::Cl100kBase, tiktoken_rs::cl100k_base_singleton()),
            (Tokenizer::O200kBase, tiktoken_rs::o200k_base_singleton()),
        ];
        for (tokenizer, tiktoken) in encodings {
            let counted = TokenCounter::new(tokenizer).count(&text);
            let expected = tiktoken.encode_ordinary(&text).len();
            prop_assert_eq!(counted as usize, expected, "{:?} of {:?}", tokenizer, text);
        }
    }
}
