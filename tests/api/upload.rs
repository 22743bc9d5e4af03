//! `POST /upload_file`: chunked analysis with progress events, and every rejection.

use serde_json::json;
use testkit::browser::{multipart, Part};
use testkit::fake_llm::{pieces, Behaviour, RecordedRequest};

use crate::helpers::{spawn_app, EVENT_TIMEOUT};

const LINES: usize = 20;

/// `LINES` numbered lines of about 18 tokens each: with 50-token chunks, two lines a chunk.
fn numbered_file() -> String {
    (1..=LINES)
        .map(|number| format!("Line {number:04}: the quick brown fox jumps over the lazy dog near the river bank."))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Line numbers ("Line 0007" -> 7) mentioned in `text`, in order.
fn line_numbers(text: &str) -> Vec<usize> {
    text.match_indices("Line ")
        .filter_map(|(at, _)| {
            let digits = text.get(at + 5..at + 9)?;
            if digits.chars().all(|c| c.is_ascii_digit()) {
                digits.parse().ok()
            } else {
                None
            }
        })
        .collect()
}

/// Answers each analysis request with the first line number of its chunk.
fn analyse_by_first_line(request: &RecordedRequest) -> Behaviour {
    let first = line_numbers(&request.last_message_content())
        .first()
        .copied();
    let reply = match first {
        Some(number) => format!("analysed Line {number:04}"),
        None => "analysed nothing".to_owned(),
    };
    Behaviour::Stream(pieces(&[&reply]))
}

/// Splits an `analysis` into its per-chunk texts, checking the headers are 1..=N in order.
#[track_caller]
fn split_analysis(analysis: &str, chunks: usize) -> Vec<String> {
    let mut texts = Vec::new();
    let mut rest = analysis;
    for index in 1..=chunks {
        let header = format!("\n-- Analysis for Chunk {index} --\n");
        rest = rest
            .strip_prefix(&header)
            .unwrap_or_else(|| panic!("expected {header:?} next in the analysis, found {rest:?}"));
        let next_header = format!("\n-- Analysis for Chunk {} --\n", index + 1);
        let end = if index == chunks {
            rest.len()
        } else {
            rest.find(&next_header)
                .unwrap_or_else(|| panic!("no {next_header:?}"))
        };
        texts.push(rest[..end].to_owned());
        rest = &rest[end..];
    }
    assert!(
        rest.is_empty(),
        "trailing text after the last chunk: {rest:?}"
    );
    texts
}

#[tokio::test]
async fn text_file_is_analysed_chunk_by_chunk_in_order_with_progress_events() {
    let app = spawn_app(&[("CHUNK_SIZE_TOKENS", "50")]).await;
    app.llm.set_default_fn(analyse_by_first_line);
    let user = app.new_user().await;
    let mut socket = user.socket().await;

    let response = user.upload("notes.txt", numbered_file().as_bytes()).await;

    response.assert_ok_message("File was uploaded and analyzed successfully.");
    let chunks = response.json["chunks"]
        .as_u64()
        .unwrap_or_else(|| panic!("no chunks count: {}", response.text)) as usize;
    assert!(
        chunks >= 5,
        "{LINES} lines of ~18 tokens in 50-token chunks should make several chunks, got {chunks}"
    );
    let texts = split_analysis(&response.str_field("analysis"), chunks);
    let firsts: Vec<usize> = texts
        .iter()
        .map(|text| {
            let numbers = line_numbers(text);
            assert_eq!(
                text,
                &format!("analysed Line {:04}", numbers[0]),
                "unexpected chunk analysis"
            );
            numbers[0]
        })
        .collect();
    assert_eq!(firsts[0], 1, "{firsts:?}");
    assert!(
        firsts.windows(2).all(|pair| pair[0] < pair[1]),
        "chunk analyses out of order: {firsts:?}"
    );

    let requests = app.llm.requests();
    assert_eq!(requests.len(), chunks, "one analysis request per chunk");
    let mut analysed: Vec<usize> = requests
        .iter()
        .flat_map(|request| line_numbers(&request.last_message_content()))
        .collect();
    analysed.sort();
    assert_eq!(
        analysed,
        (1..=LINES).collect::<Vec<_>>(),
        "every line analysed exactly once"
    );

    let mut progress = Vec::new();
    loop {
        let event = socket.wait_for("upload_progress", EVENT_TIMEOUT).await;
        let done = event["done"].as_u64().expect("done");
        let total = event["total"].as_u64().expect("total");
        progress.push((done, total));
        if done == total {
            break;
        }
    }
    assert!(
        progress.iter().all(|(_, total)| *total as usize == chunks),
        "{progress:?}"
    );
    assert!(
        progress.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "progress not increasing: {progress:?}"
    );
}

#[tokio::test]
async fn markdown_file_is_accepted() {
    let app = spawn_app(&[]).await;
    app.llm
        .set_default(Behaviour::Stream(pieces(&["A short", " note."])));
    let user = app.new_user().await;

    let response = user.upload("readme.md", b"# Title\n\nSome text.").await;

    response.assert_ok_message("File was uploaded and analyzed successfully.");
    assert_eq!(response.json["chunks"], json!(1));
    assert_eq!(
        response.json["analysis"],
        json!("\n-- Analysis for Chunk 1 --\nA short note.")
    );
}

#[tokio::test]
async fn file_with_an_unsupported_extension_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user.upload("program.exe", b"MZ not really a program").await;

    response.assert_error(400, "unsupported", "Unsupported file type.");
    assert_eq!(app.llm.call_count(), 0);
}

#[tokio::test]
async fn form_without_a_file_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;
    let (content_type, body) = multipart(&[Part::Text {
        field: "comment",
        value: "no file here",
    }]);

    let response = user.post_raw("/upload_file", &content_type, body).await;

    response.assert_error(400, "invalid", "No file selected.");
}

#[tokio::test]
async fn file_with_an_empty_name_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user.upload("", b"").await;

    response.assert_error(400, "invalid", "No file selected.");
}

#[tokio::test]
async fn file_that_is_not_utf8_is_rejected() {
    let app = spawn_app(&[]).await;
    let user = app.new_user().await;

    let response = user
        .upload("binary.txt", &[0x48, 0x69, 0xff, 0xfe, 0x00, 0xc3, 0x28])
        .await;

    response.assert_error(400, "invalid", "The file is not valid UTF-8 text.");
    assert_eq!(app.llm.call_count(), 0);
}

#[tokio::test]
async fn file_over_the_size_limit_is_rejected_as_too_large() {
    let app = spawn_app(&[("MAX_FILE_SIZE_MB", "1")]).await;
    let user = app.new_user().await;
    let big = "a".repeat(1_500_000);

    let response = user.upload("big.txt", big.as_bytes()).await;

    response.assert_error(413, "too_large", "File too large. Max size is 1 MB.");
    assert_eq!(app.llm.call_count(), 0);
}
