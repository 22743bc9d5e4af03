//! Which replies are in flight: one per conversation, each with its cancel
//! handle, so `stop_generation`, a disconnect and the drain can stop it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::domain::{ConversationId, UserId};

/// In-flight replies, so `stop_generation` and disconnects can cancel them
/// and a conversation never has two replies racing.
#[derive(Default, Debug)]
pub struct TurnRegistry {
    running: Mutex<HashMap<(UserId, ConversationId), Running>>,
    next_turn: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Running {
    turn: u64,
    cancel: CancellationToken,
    socket: Option<String>,
}

/// Removes its entry when the turn ends, however it ends.
pub struct TurnGuard {
    registry: Arc<TurnRegistry>,
    key: (UserId, ConversationId),
    /// This turn's number in this process (for logs).
    pub turn: u64,
    pub cancel: CancellationToken,
}

impl TurnGuard {
    /// Lets the next turn of the conversation start: called once the turn
    /// is stored, before its last events go out, so a client that answers
    /// `response_end` at once is not told a reply is still running.
    pub fn release(&self) {
        let mut running = self.registry.lock();
        // Only our own entry: a later turn may have registered since.
        if running.get(&self.key).is_some_and(|r| r.turn == self.turn) {
            running.remove(&self.key);
        }
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.release();
    }
}

impl TurnRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, ConversationId), Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a turn; `None` when that conversation already has one.
    pub fn begin(
        self: &Arc<Self>,
        user: &UserId,
        id: &ConversationId,
        socket: Option<String>,
    ) -> Option<TurnGuard> {
        let key = (user.clone(), id.clone());
        let mut running = self.lock();
        if running.contains_key(&key) {
            return None;
        }
        let cancel = CancellationToken::new();
        let turn = self
            .next_turn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        running.insert(
            key.clone(),
            Running {
                turn,
                cancel: cancel.clone(),
                socket,
            },
        );
        Some(TurnGuard {
            registry: self.clone(),
            key,
            turn,
            cancel,
        })
    }

    /// Cancels the user's turn in `id`, or all of the user's turns; returns
    /// how many were cancelled.
    pub fn stop(&self, user: &UserId, id: Option<&ConversationId>) -> usize {
        let running = self.lock();
        let mut count = 0;
        for ((owner, conversation), turn) in running.iter() {
            if owner == user && id.is_none_or(|id| id == conversation) {
                turn.cancel.cancel();
                count += 1;
            }
        }
        count
    }

    /// Cancels every turn (shutdown); returns how many.
    pub fn stop_all(&self) -> usize {
        let running = self.lock();
        running.values().for_each(|turn| turn.cancel.cancel());
        running.len()
    }

    /// The cancel handles of the turns a socket started.
    pub fn turns_of_socket(&self, socket: &str) -> Vec<CancellationToken> {
        self.lock()
            .values()
            .filter(|turn| turn.socket.as_deref() == Some(socket))
            .map(|turn| turn.cancel.clone())
            .collect()
    }

    /// Turns in flight.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_turn_per_conversation_and_stop_cancels_only_the_users_turns() {
        let registry = Arc::new(TurnRegistry::default());
        let (alice, bob) = (UserId::new(), UserId::new());
        let id = ConversationId::new();
        let first = registry.begin(&alice, &id, Some("s1".into())).unwrap();
        assert!(registry.begin(&alice, &id, None).is_none());
        let bobs = registry.begin(&bob, &id, None).unwrap();

        assert_eq!(registry.stop(&alice, None), 1);

        assert!(first.cancel.is_cancelled());
        assert!(!bobs.cancel.is_cancelled());
        drop(first);
        assert!(registry.begin(&alice, &id, None).is_some());
    }

    #[test]
    fn a_released_turn_lets_the_next_begin_and_its_late_drop_leaves_it_alone() {
        let registry = Arc::new(TurnRegistry::default());
        let (user, id) = (UserId::new(), ConversationId::new());
        let finished = registry.begin(&user, &id, None).unwrap();

        finished.release();
        let next = registry.begin(&user, &id, None).unwrap();
        drop(finished);

        assert_eq!(registry.len(), 1, "the old guard removed the new turn");
        assert!(registry.begin(&user, &id, None).is_none());
        drop(next);
        assert!(registry.is_empty());
    }
}
