//! A socket following a conversation, and the filter that gives it every
//! event of a reply exactly once, whether it comes live or from the log.
//!
//! The filter keys on (reply id, chunk index): an event of another reply
//! than the one the watcher follows opens that reply only if it is its
//! `Started` event, so a replay of the reply that just started and its
//! live events are never taken for two replies. A live event that shows
//! something was missed (a chunk index jumps, an end comes early, a reply's
//! chunk comes without its start) is held, and the reply log is read again
//! to fill the gap before anything later goes out.

use std::sync::{Arc, Mutex};

use super::event::{Logged, ReplyEvent};
use crate::domain::ConversationId;
use crate::events::EventSink;

/// A socket following a conversation.
pub(super) struct Watcher {
    pub(super) socket: String,
    pub(super) sink: Arc<dyn EventSink>,
    pub(super) state: Mutex<WatchState>,
}

#[derive(Debug, Default)]
pub(super) struct WatchState {
    /// The reply followed now (its events are filtered by index; another
    /// reply's start opens that one).
    pub(super) reply: Option<Arc<str>>,
    /// Highest chunk index of `reply` delivered (-1: none yet).
    pub(super) last_index: i64,
    /// The end (or error) of `reply` was delivered, or is not wanted.
    pub(super) ended: bool,
    /// The user's message of `reply` was delivered, or is not wanted.
    pub(super) started: bool,
    /// While the log is read (a replay or a repair): the live events that
    /// came meanwhile, to pass through the filter afterwards.
    pub(super) held: Option<Vec<Logged>>,
    /// Another read of the log is wanted once the current one is done
    /// (the listener lost events while it ran).
    pub(super) repair_again: bool,
}

/// Where a resuming socket is: the reply it saw (when it says) and the
/// last chunk index it has of it.
#[derive(Debug, Clone)]
pub(super) struct Resume {
    pub(super) reply: Option<Arc<str>>,
    pub(super) last_index: i64,
}

enum Verdict {
    Emit,
    Skip,
    /// Something before this event was missed: read the log first.
    Gap,
}

/// Whether `item` is new to a watcher in `state` (and records it). With
/// `gaps`, an event that shows something was missed is a `Gap` instead.
fn admit(state: &mut WatchState, item: &Logged, gaps: bool) -> Verdict {
    if state.reply.as_deref() != Some(&*item.reply) {
        return match item.event {
            ReplyEvent::Started { .. } => {
                state.reply = Some(item.reply.clone());
                state.last_index = -1;
                state.ended = false;
                state.started = true;
                Verdict::Emit
            }
            // A reply whose start this watcher never got.
            _ if gaps => Verdict::Gap,
            _ => Verdict::Skip,
        };
    }
    match item.event {
        ReplyEvent::Started { .. } => {
            if std::mem::replace(&mut state.started, true) {
                Verdict::Skip
            } else {
                Verdict::Emit
            }
        }
        ReplyEvent::Chunk { index, .. } => {
            let index = index as i64;
            if state.ended || index <= state.last_index {
                Verdict::Skip
            } else if gaps && index > state.last_index + 1 {
                Verdict::Gap
            } else {
                state.last_index = index;
                Verdict::Emit
            }
        }
        ReplyEvent::End { chunks, .. } if gaps && !state.ended => {
            if chunks as i64 > state.last_index + 1 {
                Verdict::Gap
            } else {
                state.ended = true;
                Verdict::Emit
            }
        }
        ReplyEvent::End { .. } | ReplyEvent::Error { .. } => {
            if std::mem::replace(&mut state.ended, true) {
                Verdict::Skip
            } else {
                Verdict::Emit
            }
        }
    }
}

impl Watcher {
    pub(super) fn new(socket: &str, sink: Arc<dyn EventSink>, state: WatchState) -> Self {
        Self {
            socket: socket.to_string(),
            sink,
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers a live event unless this watcher already has it (held back
    /// while the log is read). Returns true when it showed a gap: the
    /// caller reads the log and calls [`finish_repair`](Self::finish_repair).
    #[must_use]
    pub(super) fn deliver(&self, conversation: &ConversationId, item: &Logged) -> bool {
        let mut state = self.lock();
        if let Some(held) = &mut state.held {
            held.push(item.clone());
            return false;
        }
        match admit(&mut state, item, true) {
            Verdict::Emit => self.sink.emit(item.to_socket(conversation)),
            Verdict::Skip => {}
            Verdict::Gap => {
                tracing::debug!(socket = %self.socket, "a reply event was missed; reading the reply log");
                state.held = Some(vec![item.clone()]);
                return true;
            }
        }
        false
    }

    /// Holds live events until the log has been read again; returns false
    /// when a read is already under way (it will be followed by another),
    /// or when this watcher has followed no reply yet: the log's reply may
    /// be older than the watcher, and a reply it missed the start of shows
    /// as a gap with its next event.
    pub(super) fn begin_repair(&self) -> bool {
        let mut state = self.lock();
        if state.held.is_some() {
            state.repair_again = true;
            false
        } else if state.reply.is_none() {
            false
        } else {
            state.held = Some(Vec::new());
            true
        }
    }

    /// Ends a resume: `logged` (the log as read, oldest first) and then the
    /// live events held meanwhile go through the filter, under one hold of
    /// the lock, so nothing live slips in between. Returns true when the
    /// log must be read again (see [`finish_repair`](Self::finish_repair)).
    #[must_use]
    pub(super) fn finish_replay(
        &self,
        conversation: &ConversationId,
        logged: &[Logged],
        resume: Resume,
    ) -> bool {
        let mut state = self.lock();
        // The index is about the reply the socket names, else (an older
        // client) about the reply in the log.
        state.reply = resume
            .reply
            .or_else(|| logged.first().map(|l| l.reply.clone()));
        state.last_index = resume.last_index;
        state.started = resume.last_index >= 0;
        state.ended = false;
        self.pass(&mut state, conversation, logged.iter(), false)
    }

    /// Ends a read of the log for a repair: the events of `logged` this
    /// watcher misses, then the held live ones up to the next gap. Returns
    /// true when the log must be read again (events were lost while it was
    /// read, or a held event shows a gap): the watcher goes on holding.
    /// With `last`, whatever the log lacks is given up on and the held
    /// events go out: false.
    #[must_use]
    pub(super) fn finish_repair(
        &self,
        conversation: &ConversationId,
        logged: &[Logged],
        last: bool,
    ) -> bool {
        let mut state = self.lock();
        // The socket that sent the message gets the reply from its turn.
        let missed = logged
            .iter()
            .filter(|l| l.origin.as_deref() != Some(self.socket.as_str()));
        self.pass(&mut state, conversation, missed, last)
    }

    fn pass<'a>(
        &self,
        state: &mut WatchState,
        conversation: &ConversationId,
        logged: impl Iterator<Item = &'a Logged>,
        last: bool,
    ) -> bool {
        for item in logged {
            if let Verdict::Emit = admit(state, item, false) {
                self.sink.emit(item.to_socket(conversation));
            }
        }
        let held = state.held.take().unwrap_or_default();
        if std::mem::take(&mut state.repair_again) && !last {
            state.held = Some(held);
            return true;
        }
        let mut held = held.into_iter();
        while let Some(item) = held.next() {
            match admit(state, &item, !last) {
                Verdict::Emit => self.sink.emit(item.to_socket(conversation)),
                Verdict::Skip => {}
                Verdict::Gap => {
                    state.held = Some(std::iter::once(item).chain(held).collect());
                    return true;
                }
            }
        }
        false
    }
}
