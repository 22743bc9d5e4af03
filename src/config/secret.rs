//! [`Secret`]: a setting that must never be printed (keys, client secrets).

use std::fmt;

/// A value that must never reach a log line.
#[derive(Clone, Default)]
pub struct Secret(pub(super) String);

impl Secret {
    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            write!(f, "\"{}\"", crate::redact::MASK)
        }
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Secret {}
