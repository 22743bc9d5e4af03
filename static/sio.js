/*
 * Minimal Socket.IO v4 client: Engine.IO protocol v4 over WebSocket only,
 * namespace "/", text packets only (no binary attachments).
 *
 *   const s = ChatSocket.createSocket();
 *   s.on('response_chunk', fn); s.emit('send_message', {message: 'hi'});
 *   s.onStatus(fn); // 'connecting' | 'connected' | 'reconnecting' | 'offline'
 *
 * Reconnects by itself with exponential backoff and jitter (0.5 s .. 10 s).
 * The browser sends the session cookie with the WebSocket handshake.
 */
(function (root) {
  'use strict';

  var MIN_DELAY_MS = 500;
  var MAX_DELAY_MS = 10000;
  var CONNECT_TIMEOUT_MS = 10000;
  // After this many failed attempts in a row the status says 'offline'
  // (the client keeps trying every <= 10 s).
  var OFFLINE_AFTER_ATTEMPTS = 5;

  function defaultUrl() {
    var loc = root.location;
    var scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
    return scheme + '//' + loc.host + '/socket.io/?EIO=4&transport=websocket';
  }

  /** Delay before reconnect attempt number `attempt` (1-based), in ms. */
  function backoffDelay(attempt, random) {
    var base = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * Math.pow(2, Math.max(0, attempt - 1)));
    var jittered = base * (0.5 + random()); // 50 % .. 150 % of the base
    return Math.round(Math.min(MAX_DELAY_MS, Math.max(MIN_DELAY_MS, jittered)));
  }

  /** Splits a Socket.IO packet (without the Engine.IO "4" prefix). */
  function parsePacket(str) {
    var type = str.charAt(0);
    var i = 1;
    var nsp = '/';
    if (str.charAt(i) === '/') {
      var comma = str.indexOf(',', i);
      nsp = comma === -1 ? str.slice(i) : str.slice(i, comma);
      i = comma === -1 ? str.length : comma + 1;
    }
    var idStart = i;
    while (i < str.length && str.charAt(i) >= '0' && str.charAt(i) <= '9') i++;
    var id = i > idStart ? Number(str.slice(idStart, i)) : null;
    var data;
    if (i < str.length) {
      try { data = JSON.parse(str.slice(i)); } catch (e) { return null; }
    }
    return { type: type, nsp: nsp, id: id, data: data };
  }

  function createSocket(options) {
    options = options || {};
    var url = options.url || defaultUrl();
    var WS = options.WebSocket || root.WebSocket;
    var random = options.random || Math.random;
    var setTimer = options.setTimeout || function (fn, ms) { return root.setTimeout(fn, ms); };
    var clearTimer = options.clearTimeout || function (t) { root.clearTimeout(t); };

    var handlers = {};        // event name -> [fn]
    var statusHandlers = [];
    var status = 'connecting';
    var ws = null;
    var state = 'idle';       // idle | opening | handshaking | connected | closed
    var attempts = 0;         // failed attempts since the last successful connect
    var everConnected = false;
    var reconnectTimer = null;
    var pingTimer = null;
    var connectTimer = null;
    var pingInterval = 25000;
    var pingTimeout = 20000;
    var nextAckId = 0;
    var acks = {};

    function fire(event, args) {
      var list = (handlers[event] || []).slice();
      for (var i = 0; i < list.length; i++) {
        try { list[i].apply(null, args); } catch (e) { if (root.console) root.console.error(e); }
      }
    }

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

    function send(str) {
      if (ws && ws.readyState === 1) { ws.send(str); return true; }
      return false;
    }

    function clearTimers() {
      if (pingTimer !== null) { clearTimer(pingTimer); pingTimer = null; }
      if (connectTimer !== null) { clearTimer(connectTimer); connectTimer = null; }
    }

    function armPingTimer() {
      if (pingTimer !== null) clearTimer(pingTimer);
      pingTimer = setTimer(function () { pingTimer = null; drop('ping timeout'); }, pingInterval + pingTimeout);
    }

    function open() {
      if (state === 'closed') return;
      reconnectTimer = null;
      setStatus(browserOffline() ? 'offline'
        : (!everConnected && attempts === 0 ? 'connecting'
          : (attempts >= OFFLINE_AFTER_ATTEMPTS ? 'offline' : 'reconnecting')));
      state = 'opening';
      var socket;
      try {
        socket = new WS(url);
      } catch (e) {
        ws = null;
        scheduleReconnect();
        return;
      }
      ws = socket;
      connectTimer = setTimer(function () { connectTimer = null; drop('connect timeout'); }, CONNECT_TIMEOUT_MS);
      socket.onmessage = function (ev) { if (ws === socket) onEnginePacket(ev.data); };
      socket.onclose = function () { if (ws === socket) drop('transport close'); };
      socket.onerror = function () { /* a close event follows */ };
    }

    // Tears the current transport down and, unless closed by the user, reconnects.
    function drop(reason) {
      var wasConnected = state === 'connected';
      var socket = ws;
      ws = null;
      clearTimers();
      if (socket) {
        socket.onmessage = socket.onclose = socket.onerror = null;
        try { socket.close(); } catch (e) { /* already closed */ }
      }
      var pending = acks;
      acks = {};
      if (state !== 'closed') state = 'idle';
      if (wasConnected) fire('disconnect', [reason]);
      for (var id in pending) {
        if (Object.prototype.hasOwnProperty.call(pending, id)) {
          try { pending[id](new Error('disconnected')); } catch (e) { /* ignore */ }
        }
      }
      if (state !== 'closed') scheduleReconnect();
    }

    function scheduleReconnect() {
      if (state === 'closed' || reconnectTimer !== null) return;
      attempts++;
      setStatus(browserOffline() || attempts > OFFLINE_AFTER_ATTEMPTS ? 'offline' : 'reconnecting');
      reconnectTimer = setTimer(open, backoffDelay(attempts, random));
    }

    function onEnginePacket(data) {
      if (typeof data !== 'string' || data.length === 0) return; // binary: unsupported
      var type = data.charAt(0);
      if (type === '0') {            // open
        var info = {};
        try { info = JSON.parse(data.slice(1)); } catch (e) { /* use defaults */ }
        if (typeof info.pingInterval === 'number') pingInterval = info.pingInterval;
        if (typeof info.pingTimeout === 'number') pingTimeout = info.pingTimeout;
        state = 'handshaking';
        armPingTimer();
        send('40');
      } else if (type === '1') {     // close
        drop('server close');
      } else if (type === '2') {     // ping
        armPingTimer();
        send('3' + data.slice(1));
      } else if (type === '4') {     // message: a Socket.IO packet
        onSocketPacket(data.slice(1));
      }
      // '3' pong, '5' upgrade, '6' noop: nothing to do
    }

    function onSocketPacket(str) {
      var p = parsePacket(str);
      if (!p || p.nsp !== '/') return;
      if (p.type === '0') {          // CONNECT acknowledged
        if (connectTimer !== null) { clearTimer(connectTimer); connectTimer = null; }
        state = 'connected';
        attempts = 0;
        var reconnected = everConnected;
        everConnected = true;
        setStatus('connected');
        fire('connect', [{ sid: p.data && p.data.sid, reconnected: reconnected }]);
      } else if (p.type === '1') {   // DISCONNECT by the server: reconnect later
        drop('server disconnect');
      } else if (p.type === '2') {   // EVENT
        if (!Array.isArray(p.data) || typeof p.data[0] !== 'string') return;
        var args = p.data.slice(1);
        if (p.id !== null) {
          var ackId = p.id;
          var answered = false;
          args.push(function () {
            if (answered) return;
            answered = true;
            send('43' + ackId + JSON.stringify(Array.prototype.slice.call(arguments)));
          });
        }
        fire(p.data[0], args);
      } else if (p.type === '3') {   // ACK
        var fn = p.id !== null ? acks[p.id] : null;
        if (fn) {
          delete acks[p.id];
          fn.apply(null, [null].concat(Array.isArray(p.data) ? p.data : []));
        }
      } else if (p.type === '4') {   // CONNECT_ERROR
        fire('connect_error', [(p.data && p.data.message) || 'connection refused']);
        drop('connect error');
      }
    }

    if (root.addEventListener) {
      root.addEventListener('online', function () {
        if (state === 'closed' || state === 'connected') return;
        if (reconnectTimer !== null) { clearTimer(reconnectTimer); reconnectTimer = null; }
        if (state === 'idle') { attempts = 0; open(); }
      });
      root.addEventListener('offline', function () {
        if (state !== 'connected' && state !== 'closed') setStatus('offline');
      });
    }

    var api = {
      /** Registers a handler for a server event (or 'connect' / 'disconnect' / 'connect_error'). */
      on: function (event, fn) { (handlers[event] = handlers[event] || []).push(fn); return api; },
      off: function (event, fn) {
        var list = handlers[event] || [];
        var i = list.indexOf(fn);
        if (i !== -1) list.splice(i, 1);
        return api;
      },
      /**
       * Sends an event. A function as the last argument gets the server's
       * acknowledgement as fn(err, ...args). Returns false when not connected
       * (nothing is queued).
       */
      emit: function (event) {
        var args = Array.prototype.slice.call(arguments, 1);
        if (state !== 'connected') return false;
        var ack = '';
        if (args.length && typeof args[args.length - 1] === 'function') {
          var id = nextAckId++;
          acks[id] = args.pop();
          ack = String(id);
        }
        return send('42' + ack + JSON.stringify([event].concat(args)));
      },
      /** Calls fn(status) now and on every change. */
      onStatus: function (fn) { statusHandlers.push(fn); fn(status); return api; },
      /** Disconnects for good (no reconnection). */
      close: function () {
        if (state === 'connected') send('41');
        if (reconnectTimer !== null) { clearTimer(reconnectTimer); reconnectTimer = null; }
        var wasConnected = state === 'connected';
        state = 'closed';
        var socket = ws;
        ws = null;
        clearTimers();
        if (socket) {
          socket.onmessage = socket.onclose = socket.onerror = null;
          try { socket.close(); } catch (e) { /* ignore */ }
        }
        setStatus('offline');
        if (wasConnected) fire('disconnect', ['client close']);
      }
    };
    Object.defineProperty(api, 'connected', { get: function () { return state === 'connected'; } });
    Object.defineProperty(api, 'status', { get: function () { return status; } });

    open();
    return api;
  }

  root.ChatSocket = { createSocket: createSocket, backoffDelay: backoffDelay, parsePacket: parsePacket };
})(typeof window !== 'undefined' ? window : globalThis);
