//! How large one conversation may grow (`MAX_CONVERSATION_*`), in every
//! store: past it, appends are refused with one sentence, the same over
//! HTTP (413) and over the socket (`error`).

use super::reader::Reader;

/// The cap on one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationLimits {
    /// `MAX_CONVERSATION_MESSAGES`: stored messages.
    pub max_messages: u64,
    /// `MAX_CONVERSATION_BYTES`: UTF-8 bytes of message text.
    pub max_bytes: u64,
}

const MIB: u64 = 1024 * 1024;

impl Default for ConversationLimits {
    /// 10 000 messages, 6 MiB of text: MongoDB keeps the text twice in one
    /// document (under its 15 MiB guard), so this stays below it.
    fn default() -> Self {
        Self {
            max_messages: 10_000,
            max_bytes: 6 * MIB,
        }
    }
}

impl ConversationLimits {
    /// The one sentence a user is told when a conversation is full.
    pub fn full_message(&self) -> String {
        format!(
            "This conversation is full (at most {} messages / {} of text). Start a new conversation.",
            self.max_messages,
            human_bytes(self.max_bytes)
        )
    }

    /// Whether a conversation of `messages` messages and `bytes` bytes of
    /// text may take `more_messages` more holding `more_bytes` bytes.
    pub fn has_room(&self, messages: u64, bytes: u64, more_messages: u64, more_bytes: u64) -> bool {
        messages.saturating_add(more_messages) <= self.max_messages
            && bytes.saturating_add(more_bytes) <= self.max_bytes
    }
}

/// `6 MB`, `1.5 MB`, `4 KB`, `300 bytes`.
fn human_bytes(bytes: u64) -> String {
    if bytes >= MIB {
        let mb = bytes as f64 / MIB as f64;
        if bytes % MIB == 0 {
            format!("{} MB", bytes / MIB)
        } else {
            format!("{mb:.1} MB")
        }
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

pub(super) fn read(r: &mut Reader<'_>) -> ConversationLimits {
    let default = ConversationLimits::default();
    let max_messages = r.positive("MAX_CONVERSATION_MESSAGES", default.max_messages);
    if max_messages > 1_000_000 {
        r.errors
            .push("MAX_CONVERSATION_MESSAGES must be at most 1000000".to_string());
    }
    let max_bytes = r.positive("MAX_CONVERSATION_BYTES", default.max_bytes);
    if max_bytes > 64 * MIB {
        r.errors.push(format!(
            "MAX_CONVERSATION_BYTES must be at most {} (64 MiB)",
            64 * MIB
        ));
    }
    ConversationLimits {
        max_messages: max_messages.min(1_000_000),
        max_bytes: max_bytes.min(64 * MIB),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentence_names_both_limits_readably() {
        assert_eq!(
            ConversationLimits::default().full_message(),
            "This conversation is full (at most 10000 messages / 6 MB of text). Start a new conversation."
        );
        let small = ConversationLimits {
            max_messages: 6,
            max_bytes: 300,
        };
        assert_eq!(
            small.full_message(),
            "This conversation is full (at most 6 messages / 300 bytes of text). Start a new conversation."
        );
        assert_eq!(human_bytes(3 * MIB / 2), "1.5 MB");
        assert_eq!(human_bytes(4096), "4 KB");
    }

    fn read_from(vars: &[(&str, &str)]) -> (ConversationLimits, Vec<String>) {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        };
        let mut r = Reader {
            lookup: &lookup,
            errors: Vec::new(),
        };
        let limits = read(&mut r);
        (limits, r.errors)
    }

    #[test]
    fn the_settings_are_read_and_checked() {
        assert_eq!(read_from(&[]), (ConversationLimits::default(), vec![]));
        let (limits, errors) = read_from(&[
            ("MAX_CONVERSATION_MESSAGES", "6"),
            ("MAX_CONVERSATION_BYTES", "2000"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((limits.max_messages, limits.max_bytes), (6, 2000));
        let (_, errors) = read_from(&[
            ("MAX_CONVERSATION_MESSAGES", "0"),
            ("MAX_CONVERSATION_BYTES", "100000000"),
        ]);
        assert_eq!(
            errors,
            [
                "MAX_CONVERSATION_MESSAGES must be greater than 0",
                "MAX_CONVERSATION_BYTES must be at most 67108864 (64 MiB)",
            ]
        );
    }

    #[test]
    fn room_counts_messages_and_bytes() {
        let limits = ConversationLimits {
            max_messages: 4,
            max_bytes: 100,
        };
        assert!(limits.has_room(2, 50, 2, 50));
        assert!(!limits.has_room(3, 0, 2, 0));
        assert!(!limits.has_room(0, 60, 1, 41));
    }
}
