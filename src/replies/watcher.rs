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
//!
//! A socket takes a bounded number of events at a time (see
//! [`EventSink`]). An event it has no room for is not counted as
//! delivered: it and everything after it are held, and offered again after
//! a pause ([`ReplyHub::pace`](super::ReplyHub)), so a replay of a long
//! reply, or a burst after a repair, reaches a slow client whole.

use std::sync::{Arc, Mutex};

use super::event::{Logged, ReplyEvent};
use crate::domain::ConversationId;
use crate::events::{EventSink, Offer};

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
    /// Events the socket took so far (pacing watches it move).
    pub(super) queued: u64,
    /// Registered without a replay (its socket is starting a turn), and no
    /// reply has started since: an event of a reply it never saw start is
    /// older than the watcher (published late; the log may still hold that
    /// reply whole), so it is skipped, not repaired. It ends with the first
    /// reply that starts: another tab's, or the socket's own
    /// ([`own_reply_started`](Watcher::own_reply_started)); the log then
    /// holds that reply or a later one.
    pub(super) quiet: bool,
}

/// What a watcher needs after its events went through the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Nothing: it is live again.
    Done,
    /// The log must be read again (something was missed).
    Read,
    /// Its socket had no room: the held events wait for a pause.
    Wait,
}

/// Where the filter stands, to go back when the socket refuses an event.
struct Position {
    reply: Option<Arc<str>>,
    last_index: i64,
    ended: bool,
    started: bool,
}

impl WatchState {
    fn position(&self) -> Position {
        Position {
            reply: self.reply.clone(),
            last_index: self.last_index,
            ended: self.ended,
            started: self.started,
        }
    }

    fn restore(&mut self, position: Position) {
        self.reply = position.reply;
        self.last_index = position.last_index;
        self.ended = position.ended;
        self.started = position.started;
    }
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

/// What became of one event at a watcher.
enum Step {
    /// Sent, or not wanted.
    Passed,
    /// Something before it was missed.
    Gap,
    /// The socket had no room: not sent, and the filter is where it was.
    Full,
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
                state.quiet = false;
                Verdict::Emit
            }
            // A reply whose start this watcher never got.
            _ if gaps && !state.quiet => Verdict::Gap,
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

    /// The socket's own turn started reply `reply` (logged; its events
    /// reach the socket from the turn, not from here): the watcher follows
    /// it as ended, and a reply it misses the start of from now on is newer
    /// than the watcher, so it is read from the log.
    pub(super) fn own_reply_started(&self, reply: &Arc<str>) {
        let mut state = self.lock();
        state.reply = Some(reply.clone());
        state.last_index = -1;
        state.started = true;
        state.ended = true;
        state.quiet = false;
    }

    /// Events this watcher's socket took so far.
    pub(super) fn queued(&self) -> u64 {
        self.lock().queued
    }

    /// Sends `item` if the filter admits it and the socket has room; when
    /// it has none, the filter goes back to where it was.
    fn send(
        &self,
        state: &mut WatchState,
        conversation: &ConversationId,
        item: &Logged,
        gaps: bool,
    ) -> Step {
        let before = state.position();
        match admit(state, item, gaps) {
            Verdict::Emit => match self.sink.offer(&item.to_socket(conversation)) {
                Offer::Full => {
                    state.restore(before);
                    Step::Full
                }
                Offer::Queued | Offer::Gone => {
                    state.queued += 1;
                    Step::Passed
                }
            },
            Verdict::Skip => Step::Passed,
            Verdict::Gap => Step::Gap,
        }
    }

    /// Delivers a live event unless this watcher already has it (held back
    /// while the log is read or the socket is full). `Read`: it showed a
    /// gap (the caller reads the log and calls
    /// [`finish_repair`](Self::finish_repair)); `Wait`: the socket had no
    /// room (the caller paces it).
    #[must_use]
    pub(super) fn deliver(&self, conversation: &ConversationId, item: &Logged) -> Next {
        let mut state = self.lock();
        if let Some(held) = &mut state.held {
            held.push(item.clone());
            return Next::Done;
        }
        let next = match self.send(&mut state, conversation, item, true) {
            Step::Passed => return Next::Done,
            Step::Gap => {
                tracing::debug!(socket = %self.socket, "a reply event was missed; reading the reply log");
                Next::Read
            }
            Step::Full => Next::Wait,
        };
        state.held = Some(vec![item.clone()]);
        next
    }

    /// Holds live events until the log has been read again; returns false
    /// when a read is already under way (it will be followed by another),
    /// or when this watcher has followed no reply yet: the log's reply may
    /// be older than the watcher. A reply it missed the start of then shows
    /// as a gap with its next event, unless the watcher is `quiet` (it
    /// cannot tell that reply from an older one, and misses it).
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
    /// the lock, so nothing live slips in between. Returns what the watcher
    /// needs next (see [`finish_repair`](Self::finish_repair)).
    #[must_use]
    pub(super) fn finish_replay(
        &self,
        conversation: &ConversationId,
        logged: &[Logged],
        resume: Resume,
    ) -> Next {
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

    /// Ends a read of the log for a repair (or, with `logged` empty, a
    /// pause for room): the events of `logged` this watcher misses, then
    /// the held live ones up to the next gap. `Read`: the log must be read
    /// again (events were lost while it was read, or a held event shows a
    /// gap); `Wait`: the socket ran out of room. Either way the watcher
    /// goes on holding. With `last`, whatever the log lacks is given up on
    /// and the held events go out.
    #[must_use]
    pub(super) fn finish_repair(
        &self,
        conversation: &ConversationId,
        logged: &[Logged],
        last: bool,
    ) -> Next {
        let mut state = self.lock();
        // The socket that sent the message gets the reply from its turn.
        let missed = logged
            .iter()
            .filter(|l| l.origin.as_deref() != Some(self.socket.as_str()));
        self.pass(&mut state, conversation, missed, last)
    }

    /// A socket that took nothing for too long: its held events are
    /// dropped and it is disconnected (its client reconnects and resumes).
    pub(super) fn give_up(&self) {
        self.lock().held = None;
        self.sink.disconnect();
    }

    fn pass<'a>(
        &self,
        state: &mut WatchState,
        conversation: &ConversationId,
        logged: impl Iterator<Item = &'a Logged>,
        last: bool,
    ) -> Next {
        let mut logged = logged;
        while let Some(item) = logged.next() {
            if let Step::Full = self.send(state, conversation, item, false) {
                // The rest of the log goes before the held events, once
                // the socket has room.
                let held = state.held.take().unwrap_or_default();
                let rest = std::iter::once(item).chain(logged).cloned();
                state.held = Some(rest.chain(held).collect());
                return Next::Wait;
            }
        }
        let held = state.held.take().unwrap_or_default();
        if std::mem::take(&mut state.repair_again) && !last {
            state.held = Some(held);
            return Next::Read;
        }
        let mut held = held.into_iter();
        while let Some(item) = held.next() {
            let next = match self.send(state, conversation, &item, !last) {
                Step::Passed => continue,
                Step::Gap => Next::Read,
                Step::Full => Next::Wait,
            };
            state.held = Some(std::iter::once(item).chain(held).collect());
            return next;
        }
        Next::Done
    }
}
