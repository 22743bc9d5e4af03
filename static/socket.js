/*
 * The page's connection (an ES module): the official Socket.IO client (socket.io-client,
 * bundled in static/vendor/libs.js as ChatLibs.io) with the few rules of
 * this page on top:
 *
 *   import { createSocket } from './socket.js';
 *   const s = createSocket();
 *   s.on('response_chunk', fn); s.emit('send_message', {message: 'hi'});
 *   s.onStatus(fn); // 'connecting' | 'connected' | 'reconnecting' | 'offline'
 *   s.transport     // 'websocket' | 'polling' | null
 *
 * - WebSocket first, HTTP long-polling when WebSocket fails (a proxy or
 *   network that blocks it): the page still works, and says which it uses.
 * - Reconnects by itself with exponential backoff and jitter (0.5 s .. 10 s),
 *   also after the server disconnected the socket or refused the handshake
 *   (which socket.io-client leaves to the page); after `server_restarting`
 *   it waits the time the server named.
 * - emit() sends only when connected and returns false otherwise: nothing is
 *   queued to go out later (a message typed while offline is not sent).
 * - An acknowledged emit calls fn(err, ...args); err is set when the
 *   connection drops before the answer.
 */
var MIN_DELAY_MS = 500;
var MAX_DELAY_MS = 10000;
var CONNECT_TIMEOUT_MS = 10000;
var ACK_TIMEOUT_MS = 30000;
// After this many failed attempts in a row the status says 'offline'
// (the client keeps trying every <= 10 s).
var OFFLINE_AFTER_ATTEMPTS = 5;

// socket.io-client's reasons, in this page's words.
var REASONS = { 'io server disconnect': 'server disconnect', 'io client disconnect': 'client close' };

export function createSocket(options) {
  options = options || {};
  var root = options.window || globalThis;
  var io = options.io || root.ChatLibs.io;
  var random = options.random || Math.random;
  var socket = io({
    transports: ['websocket', 'polling'],
    tryAllTransports: true,
    reconnectionDelay: MIN_DELAY_MS,
    reconnectionDelayMax: MAX_DELAY_MS,
    randomizationFactor: 0.5,
    timeout: CONNECT_TIMEOUT_MS
  });
  var manager = socket.io;

  var statusHandlers = [];
  var status = 'connecting';
  var transport = null;
  var closed = false;
  var everConnected = false;
  var retryTimer = null;  // a reconnect socket.io-client does not make itself
  var retries = 0;
  var restartDelay = null; // the wait a draining server asked for (server_restarting)

  function setStatus(next) {
    if (next === status) return;
    status = next;
    var list = statusHandlers.slice();
    for (var i = 0; i < list.length; i++) {
      try { list[i](status); } catch (e) { if (root.console) root.console.error(e); }
    }
  }

  function browserOffline() {
    return !!(root.navigator && root.navigator.onLine === false);
  }

  function failedAttempt(attempt) {
    setStatus(browserOffline() || attempt > OFFLINE_AFTER_ATTEMPTS ? 'offline' : 'reconnecting');
  }

  function setTransport(name) {
    if (name === transport) return;
    transport = name;
    // Listeners hear of it as a status change.
    var list = statusHandlers.slice();
    for (var i = 0; i < list.length; i++) {
      try { list[i](status); } catch (e) { if (root.console) root.console.error(e); }
    }
  }

  /** Connects again later: after a server disconnect or a refused handshake. */
  function retryLater() {
    if (closed || retryTimer !== null) return;
    retries++;
    failedAttempt(retries);
    var base = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * Math.pow(2, retries - 1));
    var delay = Math.round(Math.min(MAX_DELAY_MS, Math.max(MIN_DELAY_MS, base * (0.5 + random()))));
    if (restartDelay !== null) { delay = restartDelay; restartDelay = null; }
    retryTimer = root.setTimeout(function () {
      retryTimer = null;
      if (!closed && !socket.connected) socket.connect();
    }, delay);
  }

  socket.on('connect', function () {
    retries = 0;
    restartDelay = null;
    everConnected = true;
    var engine = manager.engine;
    transport = engine && engine.transport ? engine.transport.name : null;
    if (engine) {
      engine.on('upgrade', function (t) { if (manager.engine === engine) setTransport(t.name); });
    }
    setStatus('connected');
  });
  socket.on('disconnect', function (reason) {
    transport = null;
    if (closed) return;
    if (socket.active) setStatus(browserOffline() ? 'offline' : 'reconnecting');
    else retryLater();
  });
  socket.on('connect_error', function () {
    // The server refused the handshake: socket.io-client gives up there.
    if (!socket.active) retryLater();
  });
  manager.on('reconnect_attempt', function (attempt) { failedAttempt(attempt); });
  // A server that drains says when to come back (to any instance): its
  // disconnect follows, and the reconnect waits that long, not the backoff.
  socket.on('server_restarting', function (data) {
    var ms = data && Number(data.reconnect_in_ms);
    if (ms >= 0) restartDelay = Math.round(Math.min(MAX_DELAY_MS, Math.max(100, ms)));
  });

  if (root.addEventListener) {
    root.addEventListener('online', function () {
      if (closed || socket.connected) return;
      if (retryTimer !== null) { root.clearTimeout(retryTimer); retryTimer = null; }
      // Try now rather than at the end of the backoff.
      socket.disconnect();
      socket.connect();
    });
    root.addEventListener('offline', function () {
      if (!closed && !socket.connected) setStatus('offline');
    });
  }
  if (browserOffline()) setStatus('offline');

  var api = {
    /** Registers a handler for a server event (or 'connect' / 'disconnect' / 'connect_error'). */
    on: function (event, fn) {
      if (event === 'disconnect') {
        socket.on(event, function (reason) { fn(REASONS[reason] || reason); });
      } else {
        socket.on(event, fn);
      }
      return api;
    },
    /**
     * Sends an event. A function as the last argument gets the server's
     * acknowledgement as fn(err, ...args). Returns false when not connected
     * (nothing is queued).
     */
    emit: function (event) {
      if (!socket.connected) return false;
      var args = Array.prototype.slice.call(arguments, 1);
      if (args.length && typeof args[args.length - 1] === 'function') {
        var fn = args.pop();
        var target = socket.timeout(ACK_TIMEOUT_MS);
        target.emit.apply(target, [event].concat(args, [function (err) {
          fn.apply(null, [err || null].concat(Array.prototype.slice.call(arguments, 1)));
        }]));
      } else {
        socket.emit.apply(socket, [event].concat(args));
      }
      return true;
    },
    /** Calls fn(status) now and on every change (of status or transport). */
    onStatus: function (fn) { statusHandlers.push(fn); fn(status); return api; },
    /** Disconnects for good (no reconnection). */
    close: function () {
      closed = true;
      if (retryTimer !== null) { root.clearTimeout(retryTimer); retryTimer = null; }
      socket.disconnect();
      transport = null;
      setStatus('offline');
    }
  };
  Object.defineProperty(api, 'connected', { get: function () { return socket.connected; } });
  Object.defineProperty(api, 'status', { get: function () { return status; } });
  Object.defineProperty(api, 'transport', { get: function () { return socket.connected ? transport : null; } });
  Object.defineProperty(api, 'everConnected', { get: function () { return everConnected; } });
  return api;
}

