//! Reading variables: trimmed, typed, with one line per problem collected
//! instead of stopping at the first.

use std::time::Duration;

pub(super) struct Reader<'a> {
    pub(super) lookup: &'a dyn Fn(&str) -> Option<String>,
    /// Every problem found so far, one line each.
    pub(super) errors: Vec<String>,
}

impl Reader<'_> {
    /// The trimmed value, `None` when unset or empty.
    pub(super) fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_string())
    }

    pub(super) fn parse<T: std::str::FromStr>(&mut self, name: &str, default: T, what: &str) -> T {
        match self.raw(name) {
            None => default,
            Some(v) => match v.parse::<T>() {
                Ok(parsed) => parsed,
                Err(_) => {
                    self.errors.push(format!("{name}={v:?} is not {what}"));
                    default
                }
            },
        }
    }

    pub(super) fn positive(&mut self, name: &str, default: u64) -> u64 {
        let value = self.parse::<u64>(name, default, "a whole number");
        if value == 0 {
            self.errors.push(format!("{name} must be greater than 0"));
            return default;
        }
        value
    }

    pub(super) fn seconds(&mut self, name: &str, default: f64) -> Duration {
        let value = self.parse::<f64>(name, default, "a number of seconds");
        if !(value > 0.0 && value.is_finite() && value < 86_400.0) {
            self.errors
                .push(format!("{name} must be between 0 and 86400 seconds"));
            return Duration::from_secs_f64(default);
        }
        Duration::from_secs_f64(value)
    }

    pub(super) fn boolean(&mut self, name: &str, default: bool) -> bool {
        match self.raw(name).map(|v| v.to_ascii_lowercase()) {
            None => default,
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => {
                self.errors
                    .push(format!("{name}={v:?} is not true or false"));
                default
            }
        }
    }
}
