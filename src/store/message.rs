//! A message about to be stored: what a store appends, and what a branch
//! holds (a leaf of `store`, so `branches` needs nothing else of it).

use crate::domain::Role;

/// A message about to be stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub role: Role,
    pub content: String,
    pub tokens: Option<u32>,
}
