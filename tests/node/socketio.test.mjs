// The server's Socket.IO contract, checked with the official socket.io-client.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import {
  startFakeLlm, startServer, newSession, request, connected, runTurn, withTimeout,
} from './harness.mjs';

const REPLY_PIECES = (msg) => ['Hello', ', ', 'this is ', 'the fake model', '. You said: ', msg];
const replyText = (msg) => REPLY_PIECES(msg).join('');

let llm;
let server;
const sockets = [];

function connect(cookie, transports) {
  const opts = {
    extraHeaders: cookie ? { Cookie: cookie } : {},
    reconnection: false,
    timeout: 10000,
    forceNew: true,
  };
  if (transports) opts.transports = transports;
  const socket = io(server.url, opts);
  sockets.push(socket);
  return socket;
}

before(async () => {
  llm = await startFakeLlm({ reply: REPLY_PIECES, delayMs: 5 });
  server = await startServer({}, { llm });
});

after(async () => {
  for (const s of sockets) s.disconnect();
  await server?.stop();
  await llm?.close();
});

async function checkTurn(transports, label) {
  const { cookie, conversationId } = await newSession(server.url);
  const socket = connect(cookie, transports);
  // The engine and its first transport exist as soon as io() returns.
  const engine = socket.io.engine;
  const firstTransport = engine.transport.name;
  const upgraded = transports ? null : withTimeout(new Promise((resolve) => {
    engine.once('upgrade', () => resolve());
  }), 10000, 'the upgrade from polling to websocket');
  await connected(socket);
  assert.equal(firstTransport, transports ? 'websocket' : 'polling');

  const message = `Hi from ${label} ${Date.now()}`;
  const before = llm.streamRequests().length;
  const turn = await runTurn(socket, { message }); // no conversation_id: the session's current one
  assert.equal(turn.error, null, `unexpected error event: ${JSON.stringify(turn.error)}`);

  // token_usage first, then chunks, then response_end.
  assert.equal(turn.order[0], 'token_usage', `event order: ${turn.order.join(', ')}`);
  assert.equal(turn.order.at(-1), 'response_end');
  assert.ok(turn.usage.total_tokens_used > 0, `total_tokens_used: ${JSON.stringify(turn.usage)}`);
  assert.equal(turn.usage.conversation_id, conversationId);

  const text = turn.chunks.map((c) => c.chunk).join('');
  assert.equal(text, replyText(message));
  assert.deepEqual(turn.chunks.map((c) => c.index), turn.chunks.map((_, i) => i));
  for (const c of turn.chunks) assert.equal(c.conversation_id, conversationId);

  assert.equal(turn.end.conversation_id, conversationId);
  assert.equal(turn.end.stopped, false);
  assert.equal(turn.end.chunks, turn.chunks.length);

  // What the fake LLM was sent.
  const sent = llm.streamRequests().slice(before);
  assert.equal(sent.length, 1, 'one streamed upstream request per turn');
  assert.equal(sent[0].body.model, 'fake-model');
  assert.equal(sent[0].headers.authorization, 'Bearer test-key');
  const last = sent[0].body.messages.at(-1);
  assert.deepEqual({ role: last.role, content: last.content }, { role: 'user', content: message });

  // Stored for this user.
  const loaded = await request(`${server.url}/load_conversation/${conversationId}`, { cookie });
  assert.equal(loaded.status, 200, JSON.stringify(loaded.body));
  assert.equal(loaded.body.conversation_id, conversationId);
  assert.deepEqual(loaded.body.conversation, [
    { role: 'user', content: message },
    { role: 'assistant', content: replyText(message) },
  ]);

  // Not visible to another session.
  const other = await newSession(server.url);
  assert.notEqual(other.cookie, cookie);
  const foreign = await request(`${server.url}/load_conversation/${conversationId}`, { cookie: other.cookie });
  assert.equal(foreign.status, 404);
  assert.equal(foreign.body.message, 'Conversation not found.');
  assert.equal(foreign.body.error, 'not_found');

  // ...nor writable by it over Socket.IO.
  const otherSocket = connect(other.cookie, transports);
  await connected(otherSocket);
  const requestsBefore = llm.requests.length;
  const denied = await runTurn(otherSocket, { message: 'let me in', conversation_id: conversationId });
  assert.ok(denied.error, `expected an error event, got ${JSON.stringify(denied)}`);
  assert.equal(denied.error.message, 'Conversation not found.');
  assert.equal(llm.requests.length, requestsBefore, 'no upstream request for a refused turn');
  const still = await request(`${server.url}/load_conversation/${conversationId}`, { cookie });
  assert.equal(still.body.conversation.length, 2);

  if (upgraded) {
    await upgraded;
    assert.equal(engine.transport.name, 'websocket');
    const again = await runTurn(socket, { message: 'after the upgrade', conversation_id: conversationId });
    assert.equal(again.error, null, JSON.stringify(again.error));
    assert.equal(again.chunks.map((c) => c.chunk).join(''), replyText('after the upgrade'));
  }

  socket.disconnect();
  otherSocket.disconnect();
}

test('a turn over the websocket transport streams the fake reply and stores it', async () => {
  await checkTurn(['websocket'], 'websocket');
});

test('a turn over the default transports (polling, then upgrade) works the same', async () => {
  await checkTurn(undefined, 'polling');
});

test('an empty message is refused with an error event', async () => {
  const { cookie } = await newSession(server.url);
  const socket = connect(cookie, ['websocket']);
  await connected(socket);
  const before = llm.requests.length;
  for (const payload of [{ message: '' }, {}, { message: 42 }]) {
    const turn = await runTurn(socket, payload);
    assert.ok(turn.error, `expected an error for ${JSON.stringify(payload)}, got ${JSON.stringify(turn)}`);
    assert.equal(turn.error.message, 'No message received from user.', `payload ${JSON.stringify(payload)}`);
    assert.equal(turn.chunks.length, 0);
  }
  assert.equal(llm.requests.length, before, 'no upstream request for an empty message');
  socket.disconnect();
});

test('conversation_updated reaches every socket of the same user', async () => {
  const { cookie, conversationId } = await newSession(server.url);
  const a = connect(cookie, ['websocket']);
  const b = connect(cookie, ['websocket']);
  await Promise.all([connected(a), connected(b)]);
  const updated = withTimeout(new Promise((resolve) => {
    b.on('conversation_updated', (d) => { if (d.conversation_id === conversationId) resolve(d); });
  }), 10000, 'conversation_updated on the second tab');
  const turn = await runTurn(a, { message: 'Title me please', conversation_id: conversationId });
  assert.equal(turn.error, null, JSON.stringify(turn.error));
  const d = await updated;
  assert.equal(d.message_count, 2);
  assert.equal(typeof d.title, 'string');
  assert.ok(d.title.length > 0);
  a.disconnect();
  b.disconnect();
});

// The server must register its event handlers before the client can emit:
// an event sent the moment `connect` fires must be answered, never dropped.
test('an event emitted right on connect is never lost', async () => {
  const lost = [];
  for (let i = 0; i < 40; i++) {
    const { cookie } = await newSession(server.url); // a fresh, cold session each time
    const socket = connect(cookie, ['websocket']);
    const answered = withTimeout(new Promise((resolve) => {
      socket.once('connect', () => socket.emit('send_message', { message: '' }));
      socket.once('error', resolve);
    }), 3000, 'the answer to an event sent on connect');
    try {
      const err = await answered;
      assert.equal(err.message, 'No message received from user.');
    } catch (err) {
      lost.push(`attempt ${i}: ${err.message}`);
    } finally {
      socket.disconnect();
    }
  }
  assert.deepEqual(lost, [], 'send_message emitted on connect got no answer (handlers registered too late?)');
});
