//! A socket following a conversation, and the filter that gives it every
//! event of a reply exactly once, whether it comes live or from the log.

use std::sync::{Arc, Mutex};

use super::event::ReplyEvent;
use crate::domain::ConversationId;
use crate::events::EventSink;

/// A socket following a conversation.
pub(super) struct Watcher {
    pub(super) socket: String,
    pub(super) sink: Arc<dyn EventSink>,
    pub(super) state: Mutex<WatchState>,
}

#[derive(Debug)]
pub(super) struct WatchState {
    /// Highest chunk index delivered (-1: none of this reply yet).
    pub(super) last_index: i64,
    /// The reply's end (or error) was delivered.
    pub(super) ended: bool,
    /// The turn's user message was delivered.
    pub(super) started: bool,
    /// While the log is replayed: the live events that came meanwhile, to
    /// pass through the filter after the replay.
    pub(super) held: Option<Vec<ReplyEvent>>,
}

/// Whether `event` is new to a watcher in `state` (and records it). `live`
/// events come from the turn as it runs (a `Started` one opens a new reply);
/// others are replayed from the log.
fn admit(state: &mut WatchState, event: &ReplyEvent, live: bool) -> bool {
    match event {
        ReplyEvent::Started { .. } if live => {
            state.last_index = -1;
            state.ended = false;
            state.started = true;
            true
        }
        ReplyEvent::Started { .. } => {
            let send = !state.started && state.last_index < 0;
            state.started = true;
            send
        }
        ReplyEvent::Chunk { index, .. } => {
            let fresh = (*index as i64) > state.last_index && !state.ended;
            if fresh {
                state.last_index = *index as i64;
            }
            fresh
        }
        ReplyEvent::End { .. } | ReplyEvent::Error { .. } => {
            !std::mem::replace(&mut state.ended, true)
        }
    }
}

impl Watcher {
    fn emit(&self, conversation: &ConversationId, event: &ReplyEvent) {
        self.sink.emit(event.to_socket(conversation));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers a live event unless this watcher already has it (held back
    /// while the watcher's replay runs).
    pub(super) fn deliver(&self, conversation: &ConversationId, event: &ReplyEvent) {
        let mut state = self.lock();
        if let Some(held) = &mut state.held {
            held.push(event.clone());
        } else if admit(&mut state, event, true) {
            self.emit(conversation, event);
        }
    }

    /// Ends the replay: `logged` (the log as read, oldest first) and then
    /// the live events held meanwhile go through the filter, under one hold
    /// of the lock, so nothing live slips in between.
    pub(super) fn finish_replay(&self, conversation: &ConversationId, logged: &[ReplyEvent]) {
        let mut state = self.lock();
        for event in logged {
            if admit(&mut state, event, false) {
                self.emit(conversation, event);
            }
        }
        for event in state.held.take().unwrap_or_default() {
            if admit(&mut state, &event, true) {
                self.emit(conversation, &event);
            }
        }
    }
}
