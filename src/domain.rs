//! Newtypes that can only hold valid values: ids are checked once, here,
//! before they reach a query, a file name or a log line.

use std::fmt;
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A conversation id: a UUID in its canonical lowercase hyphenated form
/// (what the original app's `str(uuid4())` produced).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConversationId(String);

/// A raw id that is not a UUID.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid id")]
pub struct InvalidId;

/// A random (version 4) UUID from the thread's generator (`rand`'s
/// ChaCha, seeded from the OS), not a `getrandom` system call per id as
/// `Uuid::new_v4` makes: a turn makes one (its reply id), and so does a
/// request to the OpenAI-compatible API (its completion id).
pub fn new_uuid() -> Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

impl ConversationId {
    /// A fresh id, time-ordered (a version 7 UUID: the time in
    /// milliseconds, then random bits from the thread's generator). The
    /// database keys a conversation's rows by it (`store::sqlite::rekey`),
    /// so the rows of the conversations in use sit together. It tells its
    /// holder when the conversation was started, which its `created_at`
    /// tells its owner anyway; nobody else is given it.
    pub fn new() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid();
        Self(id.to_string())
    }

    /// Accepts any UUID spelling and keeps the canonical one.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        if raw.len() > 64 {
            return Err(InvalidId);
        }
        Uuid::parse_str(raw.trim())
            .map(|id| Self(id.hyphenated().to_string()))
            .map_err(|_| InvalidId)
    }
}

impl Default for ConversationId {
    fn default() -> Self {
        Self::new()
    }
}

impl TryFrom<String> for ConversationId {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ConversationId> for String {
    fn from(value: ConversationId) -> Self {
        value.0
    }
}

impl AsRef<str> for ConversationId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The owner of conversations: one per browser session, never shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserId(String);

impl UserId {
    /// A fresh random user id.
    pub fn new() -> Self {
        Self(new_uuid().to_string())
    }

    /// Wraps a stored id (from a session or a database row) as it is.
    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    /// An account's id from a client (a path, a payload): a UUID, kept in
    /// its canonical lowercase hyphenated form (the form [`UserId::new`]
    /// makes and the stores hold).
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        ConversationId::parse(raw).map(|id| Self(id.0))
    }
}

impl Default for UserId {
    fn default() -> Self {
        Self::new()
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who wrote a message. Stored conversations hold only `user` and
/// `assistant` (the original's schema); `system` exists only in prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The lowercase name used in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// Parses a stored role name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }

    /// "User", "Assistant": the prefix of a line in `conversation_text`.
    pub fn capitalized(self) -> &'static str {
        match self {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
        }
    }
}

/// One message of a conversation or prompt, as sent upstream. The text is
/// shared: a prompt, the conversation cache and the store's answer hold the
/// same bytes, so cloning a history copies no text.
///
/// Its JSON form (`{"role":..,"content":..}`, the text escaped) is made
/// once, when first asked for, and shared by every clone: a turn's request
/// body is then a concatenation, not a re-escaping of the whole history.
///
/// A message that ends a run of [`WIRE_RUN`] messages of a history also
/// keeps that run's JSON forms joined ([`ChatMessage::joined_run`]), so a
/// long history's request body is a list of shared buffers, not a copy of
/// every message on every turn.
#[derive(Clone, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: Arc<str>,
    #[serde(skip)]
    wire: Arc<WireCache>,
}

/// How many messages a joined run holds.
pub const WIRE_RUN: usize = 32;

/// What a message caches of its JSON form, shared by its clones.
#[derive(Default)]
struct WireCache {
    wire: OnceLock<Box<str>>,
    /// The run this message ends, joined, as the history it was made for had it.
    run: OnceLock<Box<JoinedRun>>,
}

/// A run of messages' JSON forms, each after a comma (`,{..},{..}`), and
/// which messages (the ones before the owner, in order) it was made of.
/// `Weak`: the run keeps no message alive, but the allocation it points
/// to cannot be reused while it lives, so an equal pointer is the same message.
struct JoinedRun {
    before: Box<[Weak<WireCache>]>,
    bytes: Bytes,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<Arc<str>>) -> Self {
        Self {
            role,
            content: content.into(),
            wire: Arc::default(),
        }
    }

    /// The message as a JSON object, as the chat completions API takes it.
    pub fn wire(&self) -> &str {
        self.wire.wire.get_or_init(|| {
            #[derive(Serialize)]
            struct Wire<'a> {
                role: Role,
                content: &'a str,
            }
            serde_json::to_string(&Wire {
                role: self.role,
                content: &self.content,
            })
            .unwrap_or_default()
            .into_boxed_str()
        })
    }

    /// `before` (the messages before this one in a history, in order) and
    /// this message, each JSON form after a comma: `,{..},{..}`. Kept on
    /// this message the first time; later calls with the same messages
    /// before it (the same instances: a history only grows at its end, or
    /// is cut and grows again) share it. Called with other messages before
    /// it (not seen in practice), it makes an uncached copy: never a run of
    /// another history.
    pub fn joined_run<'a, I>(&'a self, before: I) -> Bytes
    where
        I: ExactSizeIterator<Item = &'a ChatMessage> + Clone,
    {
        let same = |run: &JoinedRun| {
            run.before.len() == before.len()
                && run
                    .before
                    .iter()
                    .zip(before.clone())
                    .all(|(kept, m)| std::ptr::eq(kept.as_ptr(), Arc::as_ptr(&m.wire)))
        };
        let all = || before.clone().chain([self]);
        if let Some(run) = self.wire.run.get() {
            return if same(run) {
                run.bytes.clone()
            } else {
                join(all())
            };
        }
        let made = JoinedRun {
            before: before.clone().map(|m| Arc::downgrade(&m.wire)).collect(),
            bytes: join(all()),
        };
        // Another turn may have set it meanwhile, for another history.
        match self.wire.run.get_or_init(|| Box::new(made)) {
            run if same(run) => run.bytes.clone(),
            _ => join(all()),
        }
    }
}

/// The messages' JSON forms, each after a comma.
fn join<'a>(messages: impl Iterator<Item = &'a ChatMessage> + Clone) -> Bytes {
    let size: usize = messages.clone().map(|m| m.wire().len() + 1).sum();
    let mut bytes = Vec::with_capacity(size);
    for message in messages {
        bytes.push(b',');
        bytes.extend_from_slice(message.wire().as_bytes());
    }
    Bytes::from(bytes)
}

impl PartialEq for ChatMessage {
    fn eq(&self, other: &Self) -> bool {
        self.role == other.role && self.content == other.content
    }
}

impl Eq for ChatMessage {}

impl std::fmt::Debug for ChatMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatMessage")
            .field("role", &self.role)
            .field("content", &self.content)
            .finish()
    }
}

/// The original app's searchable text: `"User: ...\nAssistant: ..."`.
pub fn conversation_text<'a>(messages: impl IntoIterator<Item = &'a ChatMessage>) -> String {
    let lines: Vec<String> = messages
        .into_iter()
        .map(|m| format!("{}: {}", m.role.capitalized(), m.content))
        .collect();
    lines.join("\n").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_random_version_4_uuids() {
        let ids: std::collections::HashSet<Uuid> = (0..1000).map(|_| new_uuid()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.get_version(), Some(uuid::Version::Random));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        }
        let id = ConversationId::new();
        assert_eq!(ConversationId::parse(id.as_ref()).unwrap(), id);
    }

    #[test]
    fn new_conversation_ids_are_time_ordered_version_7_uuids() {
        let ids: Vec<ConversationId> = (0..1000).map(|_| ConversationId::new()).collect();
        let distinct: std::collections::HashSet<&ConversationId> = ids.iter().collect();
        assert_eq!(distinct.len(), 1000);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        for id in &ids {
            let uuid = Uuid::parse_str(id.as_ref()).unwrap();
            assert_eq!(uuid.get_version(), Some(uuid::Version::SortRand));
            let (seconds, nanos) = uuid.get_timestamp().unwrap().to_unix();
            let millis = seconds * 1000 + u64::from(nanos) / 1_000_000;
            assert!(now.abs_diff(millis) < 60_000, "{millis} is not about {now}");
        }
        // Made a millisecond apart, they sort in the order they were made.
        let first = ConversationId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(ConversationId::new().as_ref() > first.as_ref());
    }

    #[test]
    fn conversation_ids_must_be_uuids_and_are_canonicalised() {
        let id = ConversationId::parse("3F2504E0-4F89-11D3-9A0C-0305E82C3301").unwrap();
        assert_eq!(id.as_ref(), "3f2504e0-4f89-11d3-9a0c-0305e82c3301");
        for bad in [
            "",
            "../../etc/passwd",
            "not-a-uuid",
            "1 OR 1=1",
            &"a".repeat(100),
        ] {
            assert!(ConversationId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn account_ids_from_clients_must_be_uuids_in_the_stored_form() {
        let id = UserId::parse(" 3F2504E0-4F89-11D3-9A0C-0305E82C3301").unwrap();
        assert_eq!(id.as_ref(), "3f2504e0-4f89-11d3-9a0c-0305e82c3301");
        let made = UserId::new();
        assert_eq!(UserId::parse(made.as_ref()).unwrap(), made);
        for bad in ["", "user:1", "{\"$ne\": null}", &"f".repeat(65)] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_joined_run_is_made_once_and_shared_while_its_messages_stay() {
        let history: Vec<ChatMessage> = (0..WIRE_RUN)
            .map(|i| ChatMessage::new(Role::User, format!("m{i}")))
            .collect();
        let (last, before) = history.split_last().unwrap();
        let first = last.joined_run(before.iter());
        let again = last.clone().joined_run(before.iter());
        assert_eq!(first, again);
        assert_eq!(first.as_ptr(), again.as_ptr(), "joined again, not shared");
        let expected: String = history.iter().map(|m| format!(",{}", m.wire())).collect();
        assert_eq!(&first[..], expected.as_bytes());
    }

    #[test]
    fn a_messages_wire_form_is_its_json_and_is_shared_by_clones() {
        let message = ChatMessage::new(Role::User, "say \"hi\"\n\u{1}é");
        let copy = message.clone();
        let parsed: serde_json::Value = serde_json::from_str(copy.wire()).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"role": "user", "content": "say \"hi\"\n\u{1}é"})
        );
        assert!(std::ptr::eq(message.wire(), copy.wire()), "made twice");
        assert_eq!(
            serde_json::to_value(&message).unwrap(),
            parsed,
            "the cache must not show in the message's own JSON"
        );
    }

    #[test]
    fn conversation_text_matches_the_original_format() {
        let text = conversation_text(&[
            ChatMessage::new(Role::User, "hi"),
            ChatMessage::new(Role::Assistant, "hello"),
        ]);
        assert_eq!(text, "User: hi\nAssistant: hello");
    }
}
