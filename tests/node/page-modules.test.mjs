// Unit checks of the page's pure ES modules (no browser, no server):
// static/stream-events.js (chunks by index, held events, replay after a
// watch) and static/search.js (query words, highlighted parts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { acceptChunk, replayAfterWatch, shouldHold } from '../../static/stream-events.js';
import { highlightParts, searchTerms } from '../../static/search.js';

const stream = () => ({ lastIndex: -1, text: '', acknowledged: false });

test('chunks are taken once each, by index, whatever the overlap of replay and live stream', () => {
  const s = stream();
  const arrivals = [0, 1, 2, 1, 2, 3, 0, 4, 4, 5].map((i) => ({ index: i, chunk: `c${i} ` }));
  const taken = arrivals.map((d) => acceptChunk(s, d));
  assert.deepEqual(taken, [true, true, true, false, false, true, false, true, false, true]);
  assert.equal(s.text, 'c0 c1 c2 c3 c4 c5 ');
  assert.equal(s.lastIndex, 5);
  assert.equal(s.acknowledged, true);
  // Without an index, a chunk comes next.
  assert.equal(acceptChunk(s, { chunk: 'more' }), true);
  assert.equal(s.lastIndex, 6);
  assert.equal(s.text, 'c0 c1 c2 c3 c4 c5 more');
  // Not a chunk: nothing changes.
  for (const bad of [null, {}, { chunk: 5 }, { chunk: null, index: 9 }]) assert.equal(acceptChunk(s, bad), false);
  assert.equal(acceptChunk(null, { chunk: 'x' }), false);
  assert.equal(s.lastIndex, 6);
});

test('events of the watched conversation wait for the acknowledgement; a refused watch does not', () => {
  const d = { conversation_id: 'a' };
  for (const name of ['reply_started', 'response_chunk', 'response_end', 'error']) assert.equal(shouldHold('a', name, d), true, name);
  assert.equal(shouldHold('a', 'token_usage', d), false);
  assert.equal(shouldHold('a', 'conversation_updated', d), false);
  assert.equal(shouldHold('b', 'response_chunk', d), false, 'another conversation');
  assert.equal(shouldHold(null, 'response_chunk', d), false, 'no watch pending');
  assert.equal(shouldHold('a', 'response_chunk', null), false);
  assert.equal(shouldHold('a', 'error', { conversation_id: 'a', error: 'not_found' }), false);
  assert.equal(shouldHold('a', 'error', { conversation_id: 'a', error: 'invalid' }), false);
  assert.equal(shouldHold('a', 'error', { conversation_id: 'a', error: 'llm_unavailable' }), true);
});

const ended = (message) => [
  ['reply_started', { conversation_id: 'a', message }],
  ['response_chunk', { conversation_id: 'a', index: 0, chunk: 'old' }],
  ['response_end', { conversation_id: 'a' }],
];

test('after the watch: an ended reply that is not ours is dropped, ours and live ones are replayed in order', () => {
  const later = [['reply_started', { conversation_id: 'a', message: 'next' }], ['response_chunk', { conversation_id: 'a', index: 0, chunk: 'n' }]];
  // Still streaming (or no answer): everything, in arrival order.
  for (const streaming of [true, null]) {
    const events = [...ended('hi'), ...later];
    assert.deepEqual(replayAfterWatch(events, streaming, null), { events, dropped: false });
  }
  // Ended, and this page has no stream for it: an older reply, dropped; what follows stays.
  assert.deepEqual(replayAfterWatch([...ended('hi'), ...later], false, null), { events: later, dropped: true });
  // Ended, and it answers the message our bubble waits for: ours.
  const waiting = { lastIndex: -1, userText: 'hi' };
  assert.equal(replayAfterWatch(ended('hi'), false, waiting).dropped, false);
  // Ended, answering another message, and we have taken no chunk: not ours.
  assert.equal(replayAfterWatch(ended('other'), false, waiting).dropped, true);
  // We had taken chunks: the server filtered by our index, so it is ours.
  assert.equal(replayAfterWatch(ended('other'), false, { lastIndex: 3, userText: 'x' }).dropped, false);
  // An error ends a reply the same way.
  const failed = [['reply_started', { conversation_id: 'a', message: 'q' }], ['error', { conversation_id: 'a', error: 'llm_unavailable' }]];
  assert.deepEqual(replayAfterWatch(failed, false, null), { events: [], dropped: true });
  // Nothing ended in the log: nothing to drop.
  const partial = ended('hi').slice(0, 2);
  assert.deepEqual(replayAfterWatch(partial, false, null), { events: partial, dropped: false });
});

test('search words and whole-word, case-insensitive highlighting', () => {
  assert.deepEqual(searchTerms('  Rust, async/await — café 42!'), ['Rust', 'async', 'await', 'café', '42']);
  assert.deepEqual(searchTerms('***'), []);
  assert.equal(searchTerms(Array.from({ length: 30 }, (_, i) => `w${i}`).join(' ')).length, 16);

  const parts = highlightParts('Rusty rust and RUST; trust Rust.', ['rust']);
  assert.deepEqual(parts, [
    { text: 'Rusty ', mark: false }, { text: 'rust', mark: true }, { text: ' and ', mark: false },
    { text: 'RUST', mark: true }, { text: '; trust ', mark: false }, { text: 'Rust', mark: true }, { text: '.', mark: false },
  ]);
  assert.equal(parts.map((p) => p.text).join(''), 'Rusty rust and RUST; trust Rust.', 'the parts are the whole text');
  // Terms are text, not patterns.
  assert.deepEqual(highlightParts('a.b axb', ['a.b']), [{ text: 'a.b', mark: true }, { text: ' axb', mark: false }]);
  assert.deepEqual(highlightParts('Café au lait', ['café', 'lait']), [
    { text: 'Café', mark: true }, { text: ' au ', mark: false }, { text: 'lait', mark: true }]);
  assert.deepEqual(highlightParts('plain', []), [{ text: 'plain', mark: false }]);
  assert.deepEqual(highlightParts('', ['x']), []);
});
