//! A tiny `--name value` parser (no extra dependency).

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};

pub struct Args {
    values: HashMap<String, String>,
}

impl Args {
    pub fn parse(raw: Vec<String>) -> Result<Self> {
        let mut values = HashMap::new();
        let mut iter = raw.into_iter();
        while let Some(flag) = iter.next() {
            let Some(name) = flag.strip_prefix("--") else {
                bail!("unexpected argument {flag:?}");
            };
            let value = iter
                .next()
                .ok_or_else(|| anyhow!("--{name} needs a value"))?;
            values.insert(name.to_string(), value);
        }
        Ok(Self { values })
    }

    pub fn opt_str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn str(&self, name: &str) -> Result<&str> {
        self.opt_str(name)
            .ok_or_else(|| anyhow!("--{name} is required"))
    }

    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>> {
        self.values
            .get(name)
            .map(|v| {
                v.parse()
                    .with_context(|| format!("--{name}: not a number: {v:?}"))
            })
            .transpose()
    }

    pub fn u64_or(&self, name: &str, default: u64) -> Result<u64> {
        Ok(self.opt_u64(name)?.unwrap_or(default))
    }

    pub fn u64(&self, name: &str) -> Result<u64> {
        self.opt_u64(name)?
            .ok_or_else(|| anyhow!("--{name} is required"))
    }
}
