/*
 * The pure rules of a streamed reply on the page (ES module, no DOM):
 * which chunks to take, which events to hold while a watch is not yet
 * acknowledged, and which held events to replay once it is.
 * Unit-tested by tests/node/page-modules.test.mjs.
 */

/** Events about a reply that wait for the watch acknowledgement. */
export const HELD = Object.freeze({ reply_started: true, response_chunk: true, response_end: true, error: true });

/**
 * Whether an event for the conversation being watched (`watchId`, or null)
 * must wait for the acknowledgement. Refusals of the watch itself pass.
 */
export function shouldHold(watchId, name, data) {
  if (!watchId || !HELD[name] || !data || data.conversation_id !== watchId) return false;
  if (name === 'error' && (data.error === 'not_found' || data.error === 'invalid')) return false;
  return true;
}

/**
 * Takes one response_chunk into the stream `s` ({lastIndex, text}):
 * chunks carry an index, and one already taken (a replay overlapping the
 * live stream) is dropped. A chunk without an index comes next. Returns
 * whether the chunk was taken.
 */
export function acceptChunk(s, data) {
  if (!s || !data || typeof data.chunk !== 'string') return false;
  const index = typeof data.index === 'number' ? data.index : s.lastIndex + 1;
  if (index <= s.lastIndex) return false;
  s.lastIndex = index;
  s.acknowledged = true;
  s.text += data.chunk;
  return true;
}

/**
 * The held events to replay once the watch is answered.
 * `streaming` is the server's answer (true, false, or null when none came);
 * `mine` is this page's stream for the conversation ({lastIndex, userText})
 * or null. When the server's log holds a reply that has already ended, it is
 * this page's own reply if the server filtered it by our last index, or if it
 * answers the message our bubble waits for; otherwise it is an older reply,
 * already in the loaded history, and its replay is dropped (`dropped`).
 * Returns {events, dropped}.
 */
export function replayAfterWatch(events, streaming, mine) {
  if (streaming !== false) return { events, dropped: false };
  const cut = events.findIndex((e) => e[0] === 'response_end' || e[0] === 'error');
  if (cut < 0) return { events, dropped: false };
  const start = events.slice(0, cut + 1).find((e) => e[0] === 'reply_started');
  const ours = !!mine && (mine.lastIndex >= 0 || (!!start && !!start[1] && start[1].message === mine.userText));
  if (ours) return { events, dropped: false };
  return { events: events.slice(cut + 1), dropped: true };
}
