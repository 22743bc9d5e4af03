// Unit checks of the page's pure ES modules (no browser, no server):
// static/stream-events.js (chunks by index, held events, replay after a
// watch), static/search.js (query words, highlighted parts), static/format.js
// and static/limits.js (numbers, sizes, file names, file checks); and the
// page's module graph (every module served, none importing the entry).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { acceptChunk, replayAfterWatch, shouldHold } from '../../static/stream-events.js';
import { highlightParts, searchTerms } from '../../static/search.js';
import { codePoints, formatBytes, groupDigits, quotaMessage, slug } from '../../static/format.js';
import { allowedList, fileProblem, promptBudget } from '../../static/limits.js';

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

test('every module app.js reaches is compiled into the binary, and none imports app.js', () => {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
  const served = new Set([...fs.readFileSync(path.join(root, 'src/http/page.rs'), 'utf8')
    .matchAll(/include_bytes!\("\.\.\/\.\.\/static\/([\w.-]+)"\)/g)].map((m) => m[1]));
  const seen = new Set();
  const queue = ['app.js'];
  while (queue.length) {
    const name = queue.shift();
    if (seen.has(name)) continue;
    seen.add(name);
    assert.ok(served.has(name), `static/${name} is imported but not in STATIC_FILES (src/http/page.rs)`);
    const source = fs.readFileSync(path.join(root, 'static', name), 'utf8');
    for (const [, target] of source.matchAll(/^import\s[^;]*?from\s+'\.\/([\w.-]+)';/gms)) {
      // The page loads app.js as /static/app.js?v=...: an import of ./app.js
      // would be a second copy of the entry, run again.
      assert.notEqual(target, 'app.js', `static/${name} imports app.js`);
      queue.push(target);
    }
  }
  for (const name of ['state.js', 'api.js', 'transcript.js', 'sidebar.js', 'conversations.js', 'composer.js',
    'upload.js', 'dialogs.js', 'live.js', 'accounts.js', 'tokens.js', 'shortcuts.js', 'startup.js',
    'shares.js', 'models.js', 'branches.js',
    'socket.js', 'markdown.js', 'stream-events.js', 'search.js', 'format.js', 'limits.js']) {
    assert.ok(seen.has(name), `app.js reaches ${name}`);
  }
});

test('numbers, sizes, lengths and file-name parts as the page writes them', () => {
  assert.equal(groupDigits(1234567), '1\u00a0234\u00a0567');
  assert.equal(groupDigits(999), '999');
  for (const odd of [-5, 'x', null, undefined]) assert.equal(groupDigits(odd), '0');
  assert.equal(groupDigits(12.9), '12');
  assert.equal(formatBytes(512), '512 bytes');
  assert.equal(formatBytes(1536), '1.5 KB');
  assert.equal(formatBytes(120 * 1024), '120 KB');
  assert.equal(formatBytes(2 * 1024 * 1024), '2.0 MB');
  // Code points, not UTF-16 units: an emoji counts once, as the server counts it.
  assert.equal(codePoints('a😀é'), 3);
  assert.equal(slug('  Café au lait: Rust & async/await!! '), 'cafe-au-lait-rust-async-await');
  assert.equal(slug('***'), 'conversation');
  assert.equal(slug(null), 'conversation');
  const long = slug('word '.repeat(30));
  assert.ok(long.length <= 48 && !long.endsWith('-'), long);
});

test('the quota sentence names the reset time in the reader\'s zone, or keeps the server\'s words', () => {
  const at = '2026-03-02T00:00:00Z';
  const when = new Date(at).toLocaleString([], { weekday: 'short', hour: '2-digit', minute: '2-digit' });
  assert.equal(quotaMessage({ message: 'Daily quota reached. The quota resets at 00:00 UTC.', resets_at: at }),
    `Daily quota reached. It resets on ${when} (your time).`);
  assert.equal(quotaMessage({ message: 'Daily quota reached.' }), 'Daily quota reached.');
  assert.equal(quotaMessage({ message: 'Daily quota reached.', resets_at: 'soon' }), 'Daily quota reached.');
  assert.equal(quotaMessage(null), 'You have used your tokens for today.');
});

test('files are checked against the allowed types and the size limit before uploading', () => {
  const config = { allowed_extensions: ['md', 'TXT'], max_file_size_mb: 1 };
  assert.equal(allowedList(config), '.md, .TXT');
  assert.equal(fileProblem({ name: 'notes.txt', size: 1024 * 1024 }, config), null);
  assert.equal(fileProblem({ name: 'Notes.MD', size: 10 }, config), null);
  assert.equal(fileProblem({ name: 'photo.png', size: 10 }, config),
    '“photo.png” is not a supported file type. Allowed: .md, .TXT.');
  assert.equal(fileProblem({ name: '.md', size: 10 }, config), '“.md” is not a supported file type. Allowed: .md, .TXT.');
  assert.equal(fileProblem({ name: 'big.md', size: 1024 * 1024 + 1 }, config),
    '“big.md” is too large (1.0 MB). The limit is 1 MB.');
  // No list and no limit from the server: anything goes.
  assert.equal(fileProblem({ name: 'x.bin', size: 1e9 }, { allowed_extensions: [], max_file_size_mb: 0 }), null);
});

test('the prompt budget leaves room for the reply only when that fits in the window', () => {
  assert.equal(promptBudget({ max_tokens: 8000, reply_tokens: 1000 }), 7000);
  assert.equal(promptBudget({ max_tokens: 8000, reply_tokens: 0 }), 8000);
  assert.equal(promptBudget({ max_tokens: 8000, reply_tokens: 9000 }), 8000);
  assert.equal(promptBudget({ max_tokens: 0, reply_tokens: 0 }), 0);
});
