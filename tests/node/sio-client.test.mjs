// Unit checks of static/sio.js (our minimal Socket.IO client) with a scripted
// fake WebSocket and fake timers: no server, no network.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';
import { REPO_ROOT } from './harness.mjs';

const SOURCE = readFileSync(path.join(REPO_ROOT, 'static', 'sio.js'), 'utf8');

/** Loads sio.js into a fresh browser-like context with controllable time. */
function load({ onLine = true } = {}) {
  let now = 0;
  let nextId = 1;
  const timers = new Map(); // id -> {at, fn}
  const listeners = {};
  const sockets = [];

  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closed = false;
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.sent.push(data);
    }
    close() { this.closed = true; this.readyState = 3; }
    // test side
    serverOpen() { this.readyState = 1; this.onopen?.({}); }
    serverSend(data) { this.onmessage?.({ data }); }
    serverClose() { this.readyState = 3; this.onclose?.({ code: 1006 }); }
  }

  const window = {
    location: { protocol: 'http:', host: 'chat.test:5000' },
    navigator: { onLine },
    WebSocket: FakeWebSocket,
    console,
    setTimeout(fn, ms) { const id = nextId++; timers.set(id, { at: now + ms, fn }); return id; },
    clearTimeout(id) { timers.delete(id); },
    addEventListener(type, fn) { (listeners[type] ||= []).push(fn); },
    dispatch(type) { for (const fn of listeners[type] || []) fn({ type }); },
    Math, JSON, Object, Array, String, Number, Error,
  };
  window.window = window;
  vm.createContext(window);
  vm.runInContext(SOURCE, window, { filename: 'sio.js' });

  return {
    window,
    sockets,
    ChatSocket: window.ChatSocket,
    get now() { return now; },
    /** Runs due timers while advancing the clock by `ms`. */
    advance(ms) {
      const end = now + ms;
      for (;;) {
        let next = null;
        for (const [id, t] of timers) if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
        if (!next) break;
        timers.delete(next[0]);
        now = next[1].at;
        next[1].fn();
      }
      now = end;
    },
    pendingDelays() { return [...timers.values()].map((t) => t.at - now).sort((a, b) => a - b); },
  };
}

/** Drives a fake socket through the Engine.IO open and namespace connect. */
function handshake(ws, { pingInterval = 25000, pingTimeout = 20000 } = {}) {
  ws.serverOpen();
  ws.serverSend(`0${JSON.stringify({ sid: 'eio1', upgrades: [], pingInterval, pingTimeout, maxPayload: 1000000 })}`);
  assert.deepEqual(ws.sent, ['40']);
  ws.serverSend('40{"sid":"sio1"}');
}

test('connects over websocket to /socket.io/ with EIO=4 and reports status', () => {
  const env = load();
  const s = env.ChatSocket.createSocket();
  const statuses = [];
  s.onStatus((st) => statuses.push(st));
  assert.equal(env.sockets.length, 1);
  assert.equal(env.sockets[0].url, 'ws://chat.test:5000/socket.io/?EIO=4&transport=websocket');
  assert.equal(s.connected, false);
  assert.equal(s.emit('x', 1), false, 'emit before connect sends nothing');
  let connectInfo = null;
  s.on('connect', (info) => { connectInfo = info; });
  handshake(env.sockets[0]);
  assert.equal(s.connected, true);
  assert.deepEqual(statuses, ['connecting', 'connected']);
  assert.equal(connectInfo.sid, 'sio1');
  assert.equal(connectInfo.reconnected, false);
});

test('uses wss: on https pages', () => {
  const env = load();
  env.window.location = { protocol: 'https:', host: 'chat.example' };
  env.ChatSocket.createSocket();
  assert.equal(env.sockets[0].url, 'wss://chat.example/socket.io/?EIO=4&transport=websocket');
});

test('answers ping with pong and parses events', () => {
  const env = load();
  const s = env.ChatSocket.createSocket();
  const ws = env.sockets[0];
  handshake(ws);
  ws.serverSend('2');
  assert.equal(ws.sent.at(-1), '3');

  const got = [];
  s.on('response_chunk', (d) => got.push(d));
  s.on('multi', (a, b) => got.push([a, b]));
  ws.serverSend('42["response_chunk",{"chunk":"Hel","index":0}]');
  ws.serverSend('42["multi",1,"two"]');
  ws.serverSend('42/other,["response_chunk",{"chunk":"ignored"}]'); // other namespace
  ws.serverSend('42not json');                                      // malformed: ignored
  assert.deepEqual(got, [{ chunk: 'Hel', index: 0 }, [1, 'two']]);

  assert.equal(s.emit('send_message', { message: 'hi "there"', conversation_id: 'c1' }), true);
  assert.equal(ws.sent.at(-1), '42["send_message",{"message":"hi \\"there\\"","conversation_id":"c1"}]');
});

test('acknowledgements both ways', () => {
  const env = load();
  const s = env.ChatSocket.createSocket();
  const ws = env.sockets[0];
  handshake(ws);
  let acked = null;
  s.emit('ping_me', { a: 1 }, (err, value) => { acked = [err, value]; });
  assert.equal(ws.sent.at(-1), '420["ping_me",{"a":1}]');
  ws.serverSend('430["pong"]');
  assert.deepEqual(acked, [null, 'pong']);

  s.on('ask', (q, reply) => reply(`answer to ${q}`));
  ws.serverSend('4212["ask","q1"]');
  assert.equal(ws.sent.at(-1), '4312["answer to q1"]');
});

test('reconnects with exponential backoff and jitter between 0.5 s and 10 s', () => {
  const env = load();
  const s = env.ChatSocket.createSocket();
  const statuses = [];
  s.onStatus((st) => statuses.push(st));
  handshake(env.sockets[0]);
  let disconnects = 0;
  s.on('disconnect', () => { disconnects++; });

  env.sockets[0].serverClose();
  assert.equal(disconnects, 1);
  assert.equal(s.connected, false);
  assert.equal(statuses.at(-1), 'reconnecting');

  const delays = [];
  for (let attempt = 1; attempt <= 9; attempt++) {
    const [delay] = env.pendingDelays();
    delays.push(delay);
    assert.ok(delay >= 500 && delay <= 10000, `delay ${delay} of attempt ${attempt}`);
    const count = env.sockets.length;
    env.advance(delay);
    assert.equal(env.sockets.length, count + 1, 'a new attempt was made');
    env.sockets.at(-1).serverClose(); // refused again
  }
  // Grows, then stays at the cap.
  assert.ok(delays[0] <= 750, `first delay ${delays[0]}`);
  assert.ok(delays[4] > delays[0], `delays grow: ${delays}`);
  assert.ok(delays.slice(-2).every((d) => d >= 5000), `late delays near the cap: ${delays}`);
  assert.equal(statuses.at(-1), 'offline', 'many failures in a row read as offline');

  // Eventually the server is back.
  env.advance(env.pendingDelays()[0]);
  let info = null;
  s.on('connect', (i) => { info = i; });
  handshake(env.sockets.at(-1));
  assert.equal(statuses.at(-1), 'connected');
  assert.equal(info.reconnected, true);
  // Backoff starts over after a success.
  env.sockets.at(-1).serverClose();
  assert.ok(env.pendingDelays()[0] <= 750);
});

test('the backoff function itself stays within bounds', () => {
  const { ChatSocket } = load();
  for (const r of [0, 0.5, 0.999]) {
    for (let attempt = 1; attempt < 30; attempt++) {
      const d = ChatSocket.backoffDelay(attempt, () => r);
      assert.ok(d >= 500 && d <= 10000, `attempt ${attempt}, random ${r}: ${d}`);
    }
  }
  assert.equal(ChatSocket.backoffDelay(20, () => 0.99), 10000);
  assert.equal(ChatSocket.backoffDelay(1, () => 0), 500);
});

test('a silent server (no ping) is dropped after pingInterval + pingTimeout', () => {
  const env = load();
  const s = env.ChatSocket.createSocket();
  handshake(env.sockets[0], { pingInterval: 1000, pingTimeout: 500 });
  env.advance(1400);
  assert.equal(s.connected, true);
  env.sockets[0].serverSend('2'); // ping re-arms the timer
  env.advance(1400);
  assert.equal(s.connected, true);
  env.advance(200);
  assert.equal(s.connected, false);
  assert.equal(env.sockets[0].closed, true);
  assert.equal(env.pendingDelays().length, 1, 'a reconnect is scheduled');
});

test('connect_error (44) and server disconnect (41) lead to a reconnect', () => {
  const env = load();
  const s = env.ChatSocket.createSocket();
  const errors = [];
  s.on('connect_error', (m) => errors.push(m));
  env.sockets[0].serverOpen();
  env.sockets[0].serverSend('0{"sid":"a","pingInterval":25000,"pingTimeout":20000}');
  env.sockets[0].serverSend('44{"message":"not authorized"}');
  assert.deepEqual(errors, ['not authorized']);
  assert.equal(env.sockets[0].closed, true);
  env.advance(env.pendingDelays()[0]);
  assert.equal(env.sockets.length, 2);

  handshake(env.sockets[1]);
  assert.equal(s.connected, true);
  env.sockets[1].serverSend('41');
  assert.equal(s.connected, false);
  assert.equal(env.sockets[1].closed, true);
  env.advance(env.pendingDelays()[0]);
  assert.equal(env.sockets.length, 3);
});

test('a handshake that never completes times out and retries', () => {
  const env = load();
  env.ChatSocket.createSocket();
  env.sockets[0].serverOpen(); // TCP open, but no Engine.IO open packet
  env.advance(10000);
  assert.equal(env.sockets[0].closed, true);
  env.advance(env.pendingDelays()[0]);
  assert.equal(env.sockets.length, 2);
});

test('close() stops for good; the browser going offline is reported', () => {
  const env = load();
  const s = env.ChatSocket.createSocket();
  const statuses = [];
  s.onStatus((st) => statuses.push(st));
  handshake(env.sockets[0]);
  env.sockets[0].serverClose();
  env.window.navigator.onLine = false;
  env.window.dispatch('offline');
  assert.equal(statuses.at(-1), 'offline');
  env.window.navigator.onLine = true;
  env.window.dispatch('online'); // retries at once
  assert.equal(env.sockets.length, 2);
  handshake(env.sockets[1]);
  assert.equal(statuses.at(-1), 'connected');

  s.close();
  assert.equal(env.sockets[1].sent.at(-1), '41');
  assert.equal(s.connected, false);
  env.advance(60000);
  assert.equal(env.sockets.length, 2, 'no reconnection after close()');
});
