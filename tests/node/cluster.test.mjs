// Several instances behind nginx (issue 3), with the official socket.io-client: this file
// starts its own redis-server on a free loopback port, two instances of the server binary
// sharing it (own key prefix) and one SQLite file, and Debian's nginx with the project's
// deploy/nginx.conf in front of them (upstream servers and listen address made loopback).
// Through nginx: a full turn over WebSocket only and over long-polling only (which needs
// ip_hash stickiness); and tabs connected directly to each instance see the live reply
// after `watch_conversation`.
//
// Needs /usr/bin/redis-server and /usr/sbin/nginx (Debian packages redis-server, nginx)
// and CHAT_SERVER_BIN (see harness.mjs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { io } from 'socket.io-client';
import {
  startFakeLlm, startServer, newSession, request, connected, runTurn, withTimeout,
} from './harness.mjs';
import { startRedis, startNginx } from './services.mjs';

const REPLY_PIECES = (msg) => ['Cluster ', 'reply ', 'to: ', msg, ' (', 'end', ')'];
const replyText = (msg) => REPLY_PIECES(msg).join('');

// ------------------------------------------------------------------ cluster

let llm;
let redis;
let clusterDir;
let a;
let b;
let nginx;
const sockets = [];

function connect(url, cookie, transports) {
  const socket = io(url, {
    extraHeaders: { Cookie: cookie },
    transports,
    reconnection: false,
    timeout: 10000,
    forceNew: true,
  });
  sockets.push(socket);
  return socket;
}

/** Collects what a watching tab sees of one reply, up to response_end or error. */
function watchReply(socket, { timeoutMs = 20000 } = {}) {
  const seen = { started: null, chunks: [], end: null, error: null, order: [], firstChunkAt: null };
  let cleanup;
  const done = new Promise((resolve) => {
    const onStarted = (d) => { seen.order.push('reply_started'); seen.started = d; };
    const onChunk = (d) => {
      seen.order.push('response_chunk');
      seen.firstChunkAt ??= performance.now();
      seen.chunks.push(d);
    };
    const onEnd = (d) => { seen.order.push('response_end'); seen.end = d; resolve(seen); };
    const onError = (d) => { seen.order.push('error'); seen.error = d; resolve(seen); };
    socket.on('reply_started', onStarted);
    socket.on('response_chunk', onChunk);
    socket.on('response_end', onEnd);
    socket.on('error', onError);
    cleanup = () => {
      socket.off('reply_started', onStarted);
      socket.off('response_chunk', onChunk);
      socket.off('response_end', onEnd);
      socket.off('error', onError);
    };
  });
  return withTimeout(done, timeoutMs, 'the watched reply').finally(cleanup);
}

before(async () => {
  llm = await startFakeLlm({ reply: REPLY_PIECES, delayMs: 25 });
  redis = await startRedis();
  clusterDir = await mkdtemp(path.join(tmpdir(), 'cluster-node-'));
  const env = {
    REDIS_URL: redis.url,
    REDIS_PREFIX: `t${randomUUID().replaceAll('-', '')}`,
    SECRET_KEY: randomBytes(32).toString('hex'),
  };
  // One folder: both instances use the same SQLite file.
  a = await startServer(env, { llm, dir: clusterDir });
  b = await startServer(env, { llm, dir: clusterDir });
  nginx = await startNginx([a.url, b.url].map((u) => new URL(u).host));
});

after(async () => {
  for (const s of sockets) s.disconnect();
  await nginx?.stop();
  await a?.stop();
  await b?.stop();
  await redis?.stop();
  await llm?.close();
  if (clusterDir) await rm(clusterDir, { recursive: true, force: true });
});

async function turnThroughNginx(transports) {
  const { cookie, conversationId } = await newSession(nginx.url);
  const socket = connect(nginx.url, cookie, transports);
  await connected(socket);
  assert.equal(socket.io.engine.transport.name, transports[0]);

  const message = `through nginx over ${transports[0]} ${Date.now()}`;
  const turn = await runTurn(socket, { message, conversation_id: conversationId });
  assert.equal(turn.error, null, `unexpected error event: ${JSON.stringify(turn.error)}`);
  assert.equal(turn.order[0], 'token_usage', `event order: ${turn.order.join(', ')}`);
  assert.equal(turn.order.at(-1), 'response_end');
  assert.equal(turn.usage.conversation_id, conversationId);
  assert.equal(turn.chunks.map((c) => c.chunk).join(''), replyText(message));
  assert.deepEqual(turn.chunks.map((c) => c.index), REPLY_PIECES(message).map((_, i) => i));
  const replyId = turn.chunks[0].reply_id;
  assert.match(replyId, /^[0-9a-f]{32}$/);
  assert.ok(turn.chunks.every((c) => c.reply_id === replyId), 'every chunk names the reply');
  assert.deepEqual(turn.end, { conversation_id: conversationId, stopped: false, chunks: REPLY_PIECES(message).length, reply_id: replyId });
  // Still on the transport it was limited to.
  assert.equal(socket.io.engine.transport.name, transports[0]);

  const history = await request(`${nginx.url}/load_conversation/${conversationId}`, { cookie });
  assert.equal(history.status, 200, JSON.stringify(history.body));
  assert.deepEqual(history.body.conversation, [
    { role: 'user', content: message },
    { role: 'assistant', content: replyText(message) },
  ]);
  socket.disconnect();
}

test('through nginx: a full turn over WebSocket only', async () => {
  await turnThroughNginx(['websocket']);
});

test('through nginx: a full turn over long-polling only (ip_hash keeps the session on one instance)', async () => {
  await turnThroughNginx(['polling']);
});

test('tabs connected directly to A and to B see the live reply of a turn sent through nginx', async () => {
  const { cookie, conversationId } = await newSession(nginx.url);
  const sender = connect(nginx.url, cookie, ['websocket']);
  const onA = connect(a.url, cookie, ['websocket']);
  const onB = connect(b.url, cookie, ['websocket']);
  await Promise.all([connected(sender), connected(onA), connected(onB)]);
  // One of A and B is not the instance nginx sent the sender to: a cross-instance watcher.
  for (const tab of [onA, onB]) {
    const ack = await tab.timeout(10000).emitWithAck('watch_conversation', { conversation_id: conversationId });
    assert.deepEqual(ack, { ok: true, streaming: false });
  }

  const message = `watched ${Date.now()}`;
  const watching = [watchReply(onA), watchReply(onB)];
  const sent = await runTurn(sender, { message, conversation_id: conversationId });
  const senderEndAt = performance.now();
  assert.equal(sent.error, null, `unexpected error event: ${JSON.stringify(sent.error)}`);
  const expected = REPLY_PIECES(message);

  for (const [name, seen] of [['A', await watching[0]], ['B', await watching[1]]]) {
    assert.equal(seen.error, null, `tab on ${name}: ${JSON.stringify(seen.error)}`);
    const replyId = sent.chunks[0].reply_id;
    assert.deepEqual(seen.started, { conversation_id: conversationId, message, reply_id: replyId }, `tab on ${name}`);
    assert.equal(seen.order[0], 'reply_started', `tab on ${name}: ${seen.order.join(', ')}`);
    assert.deepEqual(seen.chunks.map((c) => c.index), expected.map((_, i) => i), `tab on ${name}`);
    assert.equal(seen.chunks.map((c) => c.chunk).join(''), expected.join(''), `tab on ${name}`);
    assert.deepEqual(seen.end, { conversation_id: conversationId, stopped: false, chunks: expected.length, reply_id: replyId });
    // Live: the first chunk was there while the reply was still streaming (pieces come
    // 25 ms apart upstream), not replayed after the end.
    assert.ok(seen.firstChunkAt < senderEndAt, `tab on ${name} got its first chunk only after the reply ended`);
  }
});
