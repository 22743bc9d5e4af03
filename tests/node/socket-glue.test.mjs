// Unit checks of static/socket.js, the page's rules on top of the official
// socket.io-client: a scripted stand-in for io() and fake timers, no server.
// (The real client against the real server: browser.test.mjs, ui-chat.test.mjs.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from '../../static/socket.js';

function emitter() {
  const handlers = {};
  return {
    on(event, fn) { (handlers[event] ||= []).push(fn); return this; },
    fire(event, ...args) { for (const fn of handlers[event] || []) fn(...args); },
  };
}

/** A fake io() (as window.ChatLibs.io) and a window with controllable time. */
function load({ onLine = true } = {}) {
  let now = 0;
  let nextId = 1;
  const timers = new Map();
  const listeners = {};
  const calls = { io: [], emits: [], connects: 0, disconnects: 0 };

  const engine = Object.assign(emitter(), { transport: { name: 'websocket' } });
  const manager = Object.assign(emitter(), { engine });
  const socket = Object.assign(emitter(), {
    connected: false,
    active: true,
    io: manager,
    emit(...args) { calls.emits.push(args); return this; },
    timeout(ms) {
      return { emit: (...args) => { calls.emits.push(['timeout', ms, ...args]); } };
    },
    connect() { calls.connects++; this.active = true; return this; },
    disconnect() {
      calls.disconnects++;
      this.active = false;
      if (this.connected) { this.connected = false; this.fire('disconnect', 'io client disconnect'); }
      return this;
    },
  });

  const window = {
    navigator: { onLine },
    console,
    setTimeout(fn, ms) { const id = nextId++; timers.set(id, { at: now + ms, fn }); return id; },
    clearTimeout(id) { timers.delete(id); },
    addEventListener(type, fn) { (listeners[type] ||= []).push(fn); },
    dispatch(type) { for (const fn of listeners[type] || []) fn({ type }); },
    ChatLibs: { io(opts) { calls.io.push(opts); return socket; } },
  };

  return {
    window, socket, manager, engine, calls,
    create: (opts) => createSocket({ ...opts, window }),
    serverConnects() { socket.connected = true; socket.active = true; socket.fire('connect'); },
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
    pendingDelays() { return [...timers.values()].map((t) => t.at - now); },
  };
}

test('asks socket.io-client for WebSocket first, then long-polling, and reports the transport', () => {
  const t = load();
  const s = t.create();
  const seen = [];
  s.onStatus((status) => seen.push([status, s.transport]));
  assert.equal(t.calls.io.length, 1);
  const opts = t.calls.io[0];
  assert.deepEqual(Array.from(opts.transports), ['websocket', 'polling']);
  assert.equal(opts.tryAllTransports, true);
  assert.equal(opts.reconnectionDelay, 500);
  assert.equal(opts.reconnectionDelayMax, 10000);
  assert.equal(opts.randomizationFactor, 0.5);

  t.engine.transport = { name: 'polling' };
  t.serverConnects();
  assert.deepEqual(seen, [['connecting', null], ['connected', 'polling']]);
  // An upgrade later is reported too.
  t.engine.fire('upgrade', { name: 'websocket' });
  assert.deepEqual(seen.at(-1), ['connected', 'websocket']);
  assert.equal(s.transport, 'websocket');
});

test('emit sends only while connected and queues nothing', () => {
  const t = load();
  const s = t.create();
  assert.equal(s.emit('send_message', { message: 'hi' }), false);
  assert.deepEqual(t.calls.emits, [], 'nothing handed to socket.io-client (it would buffer it)');
  t.serverConnects();
  assert.equal(s.emit('send_message', { message: 'hi' }), true);
  assert.deepEqual(t.calls.emits, [['send_message', { message: 'hi' }]]);
});

test('an acknowledged emit calls back with (err, ...args)', () => {
  const t = load();
  const s = t.create();
  t.serverConnects();
  const got = [];
  assert.equal(s.emit('watch_conversation', { conversation_id: 'c' }, (...args) => got.push(args)), true);
  const [kind, ms, event, payload, ack] = t.calls.emits[0];
  assert.equal(kind, 'timeout');
  assert.ok(ms >= 10000);
  assert.equal(event, 'watch_conversation');
  assert.deepEqual(payload, { conversation_id: 'c' });
  ack(null, { streaming: true });
  const lost = new Error('socket has been disconnected');
  ack(lost);
  assert.deepEqual(got, [[null, { streaming: true }], [lost]]);
});

test('failed reconnect attempts say reconnecting, then offline after five', () => {
  const t = load();
  const s = t.create();
  t.serverConnects();
  t.socket.connected = false;
  t.socket.fire('disconnect', 'transport close');
  assert.equal(s.status, 'reconnecting');
  for (let n = 1; n <= 5; n++) {
    t.manager.fire('reconnect_attempt', n);
    assert.equal(s.status, 'reconnecting', `attempt ${n}`);
  }
  t.manager.fire('reconnect_attempt', 6);
  assert.equal(s.status, 'offline');
  t.serverConnects();
  assert.equal(s.status, 'connected');
});

test('a server disconnect and a refused handshake reconnect with backoff and jitter (socket.io-client would not)', () => {
  for (const random of [0, 0.5, 0.999]) {
    const t = load();
    const s = t.create({ random: () => random });
    const reasons = [];
    s.on('disconnect', (reason) => reasons.push(reason));
    t.serverConnects();
    t.socket.connected = false;
    t.socket.active = false;
    t.socket.fire('disconnect', 'io server disconnect');
    assert.deepEqual(reasons, ['server disconnect'], 'the reason in the page\'s words');
    assert.equal(s.status, 'reconnecting');
    // 0.5 s base, 50 % .. 150 % jitter, never under 0.5 s.
    assert.deepEqual(t.pendingDelays(), [Math.max(500, Math.round(500 * (0.5 + random)))]);
    t.advance(10000);
    assert.equal(t.calls.connects, 1);
    // The handshake is refused this time: the next wait is longer.
    t.socket.active = false;
    t.socket.fire('connect_error', new Error('refused'));
    assert.deepEqual(t.pendingDelays(), [Math.max(500, Math.round(1000 * (0.5 + random)))]);
    t.advance(10000);
    assert.equal(t.calls.connects, 2);
  }
});

test('the delay grows to at most 10 s', () => {
  const t = load();
  t.create({ random: () => 0.999 });
  const delays = [];
  for (let n = 0; n < 8; n++) {
    t.socket.active = false;
    t.socket.fire('connect_error', new Error('refused'));
    delays.push(t.pendingDelays()[0]);
    t.advance(20000);
  }
  for (let i = 1; i < delays.length; i++) assert.ok(delays[i] >= delays[i - 1], delays.join(' '));
  assert.equal(delays.at(-1), 10000);
  assert.ok(delays[0] <= 750);
});

test('close() stops for good; the browser going offline is reported', () => {
  const t = load();
  const s = t.create();
  t.serverConnects();
  const reasons = [];
  s.on('disconnect', (reason) => reasons.push(reason));
  s.close();
  assert.equal(s.status, 'offline');
  assert.deepEqual(reasons, ['client close']);
  t.socket.fire('connect_error', new Error('x'));
  t.advance(60000);
  assert.equal(t.calls.connects, 0, 'no reconnect after close()');

  const u = load({ onLine: false });
  const s2 = u.create();
  assert.equal(s2.status, 'offline');
  u.window.navigator.onLine = true;
  u.window.dispatch('online');
  assert.equal(u.calls.connects, 1, 'back online: try at once');
});

test('server_restarting: the reconnect waits the time the draining server named', () => {
  const t = load();
  t.create({ random: () => 0.5 });
  t.serverConnects();
  t.socket.fire('server_restarting', { reconnect_in_ms: 3200 });
  t.socket.connected = false;
  t.socket.active = false;
  t.socket.fire('disconnect', 'io server disconnect');
  assert.deepEqual(t.pendingDelays(), [3200]);
  t.advance(3199);
  assert.equal(t.calls.connects, 0);
  t.advance(1);
  assert.equal(t.calls.connects, 1);
  // Only that once: a refused handshake after it backs off as usual.
  t.socket.active = false;
  t.socket.fire('connect_error', new Error('refused'));
  assert.deepEqual(t.pendingDelays(), [1000]);
});
