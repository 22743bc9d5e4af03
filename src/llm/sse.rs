//! Parsing of OpenAI-style server-sent events: `data: {json}` lines, blank
//! line separators, `data: [DONE]` at the end. Pure, unit-tested here.

use serde::Deserialize;
use serde_json::Value;

use super::model::{Completion, LlmError, Usage};

/// What one complete SSE line means.
#[derive(Debug, PartialEq)]
pub enum SseItem {
    /// Reply text (may be empty for role-only or filter-result deltas).
    Text(String),
    /// An event carrying the request's `usage` (OpenAI's last one, with
    /// `stream_options.include_usage`: no choices, so no text), with the
    /// text it carries too (servers that report usage on a content delta).
    WithUsage { text: String, usage: Usage },
    /// `[DONE]`.
    Done,
    /// A comment, an `event:`/`id:` field, or a blank line.
    Skip,
}

/// Splits a byte buffer into complete lines, leaving a partial last line in
/// the buffer. Lines are returned without `\r\n` / `\n`.
pub fn take_lines(buffer: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut start = 0;
    while let Some(pos) = buffer[start..].iter().position(|&b| b == b'\n') {
        let end = start + pos;
        let mut line = buffer[start..end].to_vec();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        lines.push(line);
        start = end + 1;
    }
    buffer.drain(..start);
    lines
}

/// Interprets one SSE line.
pub fn parse_line(line: &[u8]) -> Result<SseItem, LlmError> {
    let line =
        std::str::from_utf8(line).map_err(|_| LlmError::Decode("stream is not UTF-8".into()))?;
    let Some(data) = line.strip_prefix("data:") else {
        return Ok(SseItem::Skip);
    };
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(SseItem::Done);
    }
    if data.is_empty() {
        return Ok(SseItem::Skip);
    }
    // The usual event, read into types that borrow from the line (no map
    // of every field); anything else (an error, fields of other types)
    // takes the general path, which reads any JSON.
    match serde_json::from_str::<Event>(data) {
        Ok(event) if event.error.is_none() => event.item(),
        _ => parse_value(data),
    }
}

/// A streamed event as OpenAI and the servers that copy its API send it.
#[derive(serde::Deserialize)]
struct Event<'a> {
    /// Present (with any value, `null` too): the general path reads it.
    #[serde(default, deserialize_with = "present")]
    error: Option<()>,
    #[serde(default)]
    usage: Option<EventUsage>,
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
}

#[derive(serde::Deserialize)]
struct EventUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(serde::Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<ChoiceDelta<'a>>,
}

#[derive(serde::Deserialize)]
struct ChoiceDelta<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
}

fn present<'de, D: serde::Deserializer<'de>>(value: D) -> Result<Option<()>, D::Error> {
    serde::de::IgnoredAny::deserialize(value).map(|_| Some(()))
}

impl Event<'_> {
    fn item(self) -> Result<SseItem, LlmError> {
        let usage = self.usage.map(|u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        });
        let text = self.choices.map(|choices| {
            choices
                .into_iter()
                .next()
                .and_then(|c| c.delta)
                .and_then(|d| d.content)
                .map(std::borrow::Cow::into_owned)
                .unwrap_or_default()
        });
        event_item(usage, text)
    }
}

/// What an event means, from its usage and, when its `choices` is a list,
/// its first choice's delta text (empty when it has none: Azure sends a
/// first event with empty choices, its prompt filter results).
fn event_item(usage: Option<Usage>, text: Option<String>) -> Result<SseItem, LlmError> {
    Ok(match (text, usage) {
        (None, Some(usage)) => SseItem::WithUsage {
            text: String::new(),
            usage,
        },
        (None, None) => return Err(LlmError::Decode("event has no choices".into())),
        (Some(text), Some(usage)) => SseItem::WithUsage { text, usage },
        (Some(text), None) => SseItem::Text(text),
    })
}

/// An event's data read as any JSON: the general path of [`parse_line`].
fn parse_value(data: &str) -> Result<SseItem, LlmError> {
    let value: Value = serde_json::from_str(data)
        .map_err(|e| LlmError::Decode(format!("event is not JSON: {e}")))?;
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Err(LlmError::Upstream(message.chars().take(300).collect()));
    }
    let text = value
        .get("choices")
        .and_then(Value::as_array)
        .map(|choices| {
            choices
                .first()
                .and_then(|c| c.get("delta"))
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        });
    event_item(usage_of(&value), text)
}

/// The body's `usage` object, when it has whole, non-negative
/// `prompt_tokens` and `completion_tokens` (anything else: none, and the
/// server counts the tokens itself).
fn usage_of(value: &Value) -> Option<Usage> {
    let usage = value.get("usage")?;
    Some(Usage {
        prompt_tokens: usage.get("prompt_tokens")?.as_u64()?,
        completion_tokens: usage.get("completion_tokens")?.as_u64()?,
    })
}

/// The reply text of a non-streamed completion body, and its usage.
pub fn completion(body: &[u8]) -> Result<Completion, LlmError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| LlmError::Decode(format!("body is not JSON: {e}")))?;
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Err(LlmError::Upstream(message.chars().take(300).collect()));
    }
    let text = value
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| LlmError::Decode("body has no choices[0].message.content".into()))?;
    Ok(Completion {
        text,
        usage: usage_of(&value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_reads_and_crlf_is_dropped() {
        let mut buffer = b"data: {\"a\":1}\r\n\r\ndata: par".to_vec();
        let lines = take_lines(&mut buffer);
        assert_eq!(lines, vec![b"data: {\"a\":1}".to_vec(), Vec::new()]);
        assert_eq!(buffer, b"data: par");
        buffer.extend_from_slice(b"tial\n");
        assert_eq!(take_lines(&mut buffer), vec![b"data: partial".to_vec()]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn deltas_done_comments_and_errors() {
        let delta = br#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#;
        assert_eq!(parse_line(delta).unwrap(), SseItem::Text("Hi".into()));
        assert_eq!(parse_line(b"data: [DONE]").unwrap(), SseItem::Done);
        assert_eq!(parse_line(b": keep-alive").unwrap(), SseItem::Skip);
        assert_eq!(
            parse_line(br#"data: {"choices":[]}"#).unwrap(),
            SseItem::Text(String::new())
        );
        assert!(matches!(
            parse_line(b"data: {nope"),
            Err(LlmError::Decode(_))
        ));
        assert!(matches!(
            parse_line(br#"data: {"error":{"message":"quota"}}"#),
            Err(LlmError::Upstream(m)) if m == "quota"
        ));
    }

    #[test]
    fn the_usual_events_read_as_the_general_path_reads_them() {
        let events = [
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant","content":"say \"x\"\n\u00e9\ud83d\ude00"},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"delta":{"content":null}}]}"#,
            r#"{"choices":[{"delta":null}]}"#,
            r#"{"choices":[null]}"#,
            r#"{"choices":[{"delta":{"content":7}}]}"#,
            r#"{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]}"#,
            r#"{"choices":[]}"#,
            r#"{"choices":null}"#,
            r#"{"choices":"x"}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0}}}"#,
            r#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            r#"{"usage":{"prompt_tokens":-3,"completion_tokens":4},"choices":[{"delta":{"content":"n"}}]}"#,
            r#"{"usage":{"prompt_tokens":3.5,"completion_tokens":4},"choices":[]}"#,
            r#"{"usage":null,"choices":[{"delta":{"content":"u"}}]}"#,
            r#"{"usage":{"prompt_tokens":3},"choices":[]}"#,
            r#"{"error":{"message":"quota"}}"#,
            r#"{"error":null,"choices":[{"delta":{"content":"e"}}]}"#,
            r#"{"error":"boom"}"#,
            r#"{"choices":[{"delta":{"content":"d1"}}],"choices":[{"delta":{"content":"d2"}}]}"#,
            r#"{}"#,
            r#"[1,2]"#,
            r#"42"#,
            r#"{"choices":[{"delta":{"content":"unterminated"#,
        ];
        for data in events {
            let line = format!("data: {data}");
            let (fast, general) = (parse_line(line.as_bytes()), parse_value(data));
            match (&fast, &general) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{data}"),
                (Err(a), Err(b)) => assert_eq!(
                    std::mem::discriminant(a),
                    std::mem::discriminant(b),
                    "{data}: {a} vs {b}"
                ),
                _ => panic!("{data}: {fast:?} vs {general:?}"),
            }
        }
        // The usual event takes the typed path (the general one is the fallback).
        let usual = r#"{"choices":[{"index":0,"delta":{"content":"Hi \"you\""}}]}"#;
        let event = serde_json::from_str::<Event>(usual).unwrap();
        assert_eq!(event.item().unwrap(), SseItem::Text("Hi \"you\"".into()));
    }

    #[test]
    fn completion_body_is_read_or_refused() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"Done."}}]}"#;
        assert_eq!(
            completion(body).unwrap(),
            Completion {
                text: "Done.".into(),
                usage: None
            }
        );
        assert!(completion(b"<html>").is_err());
        assert!(completion(br#"{"choices":[]}"#).is_err());
        let with_usage = br#"{"choices":[{"message":{"content":"Ok"}}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        assert_eq!(
            completion(with_usage).unwrap().usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 3
            })
        );
    }

    #[test]
    fn usage_events_are_read_and_bad_usage_is_ignored() {
        let usage = Usage {
            prompt_tokens: 31,
            completion_tokens: 9,
        };
        // OpenAI's last event with `include_usage`: empty choices.
        let last = br#"data: {"id":"x","choices":[],"usage":{"prompt_tokens":31,"completion_tokens":9,"total_tokens":40}}"#;
        assert_eq!(
            parse_line(last).unwrap(),
            SseItem::WithUsage {
                text: String::new(),
                usage
            }
        );
        // Usage on a content delta, and usage without choices at all.
        let both = br#"data: {"choices":[{"delta":{"content":"Hi"}}],"usage":{"prompt_tokens":31,"completion_tokens":9}}"#;
        assert_eq!(
            parse_line(both).unwrap(),
            SseItem::WithUsage {
                text: "Hi".into(),
                usage
            }
        );
        let bare = br#"data: {"usage":{"prompt_tokens":31,"completion_tokens":9}}"#;
        assert!(matches!(
            parse_line(bare).unwrap(),
            SseItem::WithUsage { .. }
        ));
        // `usage: null` (OpenAI's other events with `include_usage`),
        // negative or fractional counts: no usage.
        for line in [
            &br#"data: {"choices":[{"delta":{"content":"a"}}],"usage":null}"#[..],
            br#"data: {"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":-1,"completion_tokens":2}}"#,
            br#"data: {"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":1.5,"completion_tokens":2}}"#,
        ] {
            assert_eq!(parse_line(line).unwrap(), SseItem::Text("a".into()));
        }
    }
}
