//! Branches of a conversation: what an edit or a regenerate set aside.
//!
//! The stored history stays the *active path*, exactly as before (the
//! original app's `conversation_history`, summaries, caps, search and paging
//! all read it). Everything else lives beside it in a [`BranchPool`]: nodes
//! with ids and parent ids. A node whose `parent` is `None` hangs off the
//! active path: its parent is the active message at `depth - 1` (or the
//! start, at depth 0), so it is a sibling of the active message at `depth`.
//! Active messages have no ids of their own; those that ever had a sibling
//! carry one in `marks`, which orders siblings (an active message without a
//! mark is the newest of its siblings).
//!
//! Every node was once on the active path; `left` stamps when it left it, so
//! switching to a sibling follows, below it, the children last shown.
//! This module is pure: the stores read the active suffix and the pool,
//! call [`BranchPool::fork`] or [`BranchPool::switch`], and write both back
//! in one transaction (SQLite) or one conditional update (MongoDB).

use serde::{Deserialize, Serialize};

use super::message::NewMessage;
use crate::domain::Role;

/// Most nodes a conversation's pool may hold (on top of the cap on what is
/// stored), so one document or row stays bounded.
pub const MAX_NODES: usize = 10_000;

/// One message set aside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchNode {
    pub id: u64,
    /// The node above it in the pool; `None`: the active message at
    /// `depth - 1` (or the start).
    #[serde(default)]
    pub parent: Option<u64>,
    /// The history index it would have on the active path.
    pub depth: u64,
    pub role: Role,
    pub content: String,
    #[serde(default)]
    pub tokens: Option<u32>,
    /// When it left the active path (a value of the pool's counter).
    #[serde(default)]
    pub left: u64,
}

/// An active message's id: `(index, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub index: u64,
    pub id: u64,
}

/// The nodes beside a conversation's active path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BranchPool {
    /// The next id or stamp to give.
    #[serde(default)]
    pub next: u64,
    #[serde(default)]
    pub nodes: Vec<BranchNode>,
    #[serde(default)]
    pub marks: Vec<Mark>,
}

/// Where an active message stands among its siblings (`position` from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Siblings {
    pub index: u64,
    pub position: u64,
    pub count: u64,
}

/// Why a switch cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchError {
    /// No sibling at that index and position.
    NoSuchBranch,
    /// The pool would grow past [`MAX_NODES`].
    Full,
}

impl BranchPool {
    /// Whether there is nothing set aside.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Bytes of text set aside (counted against the conversation's cap).
    pub fn bytes(&self) -> u64 {
        self.nodes.iter().map(|n| n.content.len() as u64).sum()
    }

    fn take_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn take_mark(&mut self, index: u64) -> Option<u64> {
        let at = self.marks.iter().position(|m| m.index == index)?;
        Some(self.marks.swap_remove(at).id)
    }

    fn mark_of(&self, index: u64) -> Option<u64> {
        self.marks.iter().find(|m| m.index == index).map(|m| m.id)
    }

    /// Sets aside the active suffix from `at` (`removed`, the history's
    /// messages from index `at` on), to be replaced by `added` new messages
    /// (which the caller appends at `at`).
    pub fn fork(
        &mut self,
        at: u64,
        removed: Vec<NewMessage>,
        added: usize,
    ) -> Result<(), BranchError> {
        if self.nodes.len() + removed.len() > MAX_NODES {
            return Err(BranchError::Full);
        }
        let stamp = self.take_id();
        let ids: Vec<u64> = (0..removed.len() as u64)
            .map(|k| self.take_mark(at + k).unwrap_or_else(|| self.take_id()))
            .collect();
        // Siblings of the messages that move now hang off the moved nodes.
        for node in &mut self.nodes {
            if node.parent.is_none() && node.depth > at && node.depth <= at + ids.len() as u64 {
                node.parent = Some(ids[(node.depth - at - 1) as usize]);
            }
        }
        for (k, message) in removed.into_iter().enumerate() {
            self.nodes.push(BranchNode {
                id: ids[k],
                parent: k.checked_sub(1).map(|p| ids[p]),
                depth: at + k as u64,
                role: message.role,
                content: message.content,
                tokens: message.tokens,
                left: stamp,
            });
        }
        self.marks.retain(|m| m.index < at);
        if added > 0
            && self
                .nodes
                .iter()
                .any(|n| n.parent.is_none() && n.depth == at)
        {
            let id = self.take_id();
            self.marks.push(Mark { index: at, id });
        }
        Ok(())
    }

    /// The sibling at `position` (from 1) of the active message at `index`
    /// in a history of `len` messages: `Ok(None)` when it is the active one.
    pub fn sibling_at(
        &self,
        len: u64,
        index: u64,
        position: u64,
    ) -> Result<Option<u64>, BranchError> {
        if index >= len {
            return Err(BranchError::NoSuchBranch);
        }
        let order = self.order_at(index);
        match order.get((position as usize).wrapping_sub(1)) {
            None => Err(BranchError::NoSuchBranch),
            Some(&None) => Ok(None),
            Some(&Some(id)) => Ok(Some(id)),
        }
    }

    /// The siblings at `index`, oldest first: pool nodes by id, the active
    /// message (`None`) by its mark, or last when it has none.
    fn order_at(&self, index: u64) -> Vec<Option<u64>> {
        let mut keyed: Vec<(u64, Option<u64>)> = self
            .nodes
            .iter()
            .filter(|n| n.parent.is_none() && n.depth == index)
            .map(|n| (n.id, Some(n.id)))
            .collect();
        keyed.push((self.mark_of(index).unwrap_or(u64::MAX), None));
        keyed.sort_by_key(|(key, _)| *key);
        keyed.into_iter().map(|(_, node)| node).collect()
    }

    /// Makes the pool node `target` (a sibling of the active message at
    /// `at`) active: the active suffix from `at` (`removed`) is set aside,
    /// and the new suffix (returned) is `target` followed, at each level,
    /// by the child that left the active path last.
    pub fn switch(
        &mut self,
        at: u64,
        removed: Vec<NewMessage>,
        target: u64,
    ) -> Result<Vec<NewMessage>, BranchError> {
        let is_sibling = self
            .nodes
            .iter()
            .any(|n| n.id == target && n.parent.is_none() && n.depth == at);
        if !is_sibling {
            return Err(BranchError::NoSuchBranch);
        }
        self.fork(at, removed, 0)?;
        let mut suffix = Vec::new();
        let mut current = Some(target);
        while let Some(id) = current {
            let Some(place) = self.nodes.iter().position(|n| n.id == id) else {
                break;
            };
            let node = self.nodes.swap_remove(place);
            let mut next: Option<(u64, u64)> = None;
            for child in self.nodes.iter_mut().filter(|n| n.parent == Some(id)) {
                child.parent = None;
                if next.is_none_or(|best| (child.left, child.id) > best) {
                    next = Some((child.left, child.id));
                }
            }
            self.marks.push(Mark {
                index: node.depth,
                id: node.id,
            });
            suffix.push(NewMessage {
                role: node.role,
                content: node.content,
                tokens: node.tokens,
            });
            current = next.map(|(_, id)| id);
        }
        self.nodes.sort_by_key(|n| n.id);
        Ok(suffix)
    }

    /// For each message of a history of `len` messages that has siblings:
    /// its position among them and how many there are.
    pub fn siblings(&self, len: u64) -> Vec<Siblings> {
        let mut indexes: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.parent.is_none() && n.depth < len)
            .map(|n| n.depth)
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        indexes
            .into_iter()
            .map(|index| {
                let order = self.order_at(index);
                let position = order.iter().position(Option::is_none).unwrap_or(0) as u64 + 1;
                Siblings {
                    index,
                    position,
                    count: order.len() as u64,
                }
            })
            .collect()
    }

    /// Empties the pool (a reset).
    pub fn clear(&mut self) {
        *self = BranchPool::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: Role, content: &str) -> NewMessage {
        NewMessage {
            role,
            content: content.into(),
            tokens: None,
        }
    }

    /// A history and its pool, changed as a store would change them.
    struct Tree {
        history: Vec<NewMessage>,
        pool: BranchPool,
    }

    impl Tree {
        fn new(texts: &[&str]) -> Self {
            let history = texts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    m(
                        if i % 2 == 0 {
                            Role::User
                        } else {
                            Role::Assistant
                        },
                        t,
                    )
                })
                .collect();
            Tree {
                history,
                pool: BranchPool::default(),
            }
        }

        fn fork(&mut self, at: usize, added: &[&str]) {
            let removed = self.history.split_off(at);
            self.pool.fork(at as u64, removed, added.len()).unwrap();
            let start = self.history.len();
            for (k, text) in added.iter().enumerate() {
                let role = if (start + k) % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                self.history.push(m(role, text));
            }
        }

        fn switch(&mut self, index: usize, position: u64) {
            let len = self.history.len() as u64;
            let Some(target) = self.pool.sibling_at(len, index as u64, position).unwrap() else {
                return;
            };
            let removed = self.history.split_off(index);
            let suffix = self.pool.switch(index as u64, removed, target).unwrap();
            self.history.extend(suffix);
        }

        fn texts(&self) -> Vec<&str> {
            self.history.iter().map(|m| m.content.as_str()).collect()
        }

        fn siblings(&self) -> Vec<(u64, u64, u64)> {
            self.pool
                .siblings(self.history.len() as u64)
                .into_iter()
                .map(|s| (s.index, s.position, s.count))
                .collect()
        }
    }

    #[test]
    fn regenerating_twice_makes_three_siblings_in_order() {
        let mut tree = Tree::new(&["q", "a1"]);

        tree.fork(1, &["a2"]);
        tree.fork(1, &["a3"]);

        assert_eq!(tree.texts(), ["q", "a3"]);
        assert_eq!(tree.siblings(), [(1, 3, 3)]);
        tree.switch(1, 1);
        assert_eq!(tree.texts(), ["q", "a1"]);
        assert_eq!(tree.siblings(), [(1, 1, 3)]);
        tree.switch(1, 2);
        assert_eq!(tree.texts(), ["q", "a2"]);
        assert_eq!(tree.siblings(), [(1, 2, 3)]);
        tree.switch(1, 3);
        assert_eq!(tree.texts(), ["q", "a3"]);
        assert_eq!(tree.pool.nodes.len(), 2);
    }

    #[test]
    fn switching_back_to_an_edit_follows_the_children_last_shown() {
        // q1 a1 q2 a2; edit q2 → q2' b2; regenerate → b2'; continue q3 b3.
        let mut tree = Tree::new(&["q1", "a1", "q2", "a2"]);
        tree.fork(2, &["q2'", "b2"]);
        tree.fork(3, &["b2'"]);
        tree.history.push(m(Role::User, "q3"));
        tree.history.push(m(Role::Assistant, "b3"));
        assert_eq!(tree.siblings(), [(2, 2, 2), (3, 2, 2)]);

        tree.switch(2, 1);
        assert_eq!(tree.texts(), ["q1", "a1", "q2", "a2"]);
        assert_eq!(tree.siblings(), [(2, 1, 2)]);

        tree.switch(2, 2);
        assert_eq!(tree.texts(), ["q1", "a1", "q2'", "b2'", "q3", "b3"]);
        assert_eq!(tree.siblings(), [(2, 2, 2), (3, 2, 2)]);
        tree.switch(3, 1);
        assert_eq!(tree.texts(), ["q1", "a1", "q2'", "b2"]);
        // Away and back: the regenerated branch was left last below q2'?
        // No: b2 is the one shown now, so it is followed.
        tree.switch(2, 1);
        tree.switch(2, 2);
        assert_eq!(tree.texts(), ["q1", "a1", "q2'", "b2"]);
        // Every message is kept exactly once.
        let mut all: Vec<String> = tree.history.iter().map(|m| m.content.clone()).collect();
        all.extend(tree.pool.nodes.iter().map(|n| n.content.clone()));
        all.sort();
        assert_eq!(
            all,
            ["a1", "a2", "b2", "b2'", "b3", "q1", "q2", "q2'", "q3"]
        );
    }

    #[test]
    fn editing_the_first_message_keeps_the_whole_old_conversation() {
        let mut tree = Tree::new(&["q1", "a1", "q2", "a2"]);
        tree.fork(0, &["other", "reply"]);
        assert_eq!(tree.siblings(), [(0, 2, 2)]);
        tree.switch(0, 1);
        assert_eq!(tree.texts(), ["q1", "a1", "q2", "a2"]);
        assert!(tree.pool.sibling_at(4, 0, 3).is_err());
        assert!(tree.pool.sibling_at(4, 4, 1).is_err());
        assert_eq!(tree.pool.sibling_at(4, 0, 1), Ok(None));
    }

    #[test]
    fn the_pool_round_trips_through_json() {
        let mut tree = Tree::new(&["q", "a1"]);
        tree.fork(1, &["a2"]);
        let json = serde_json::to_string(&tree.pool).unwrap();
        let back: BranchPool = serde_json::from_str(&json).unwrap();
        assert_eq!(back, tree.pool);
        assert_eq!(back.bytes(), 2);
    }
}
