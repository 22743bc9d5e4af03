/*
 * The live connection: the Socket.IO socket (socket.js), watching the
 * current conversation (events held until the watch is acknowledged, then
 * replayed through stream-events.js), and the server's events.
 */
import { acceptChunk, replayAfterWatch, shouldHold } from './stream-events.js';
import { createSocket } from './socket.js';
import { STATUS_TEXT, TRANSPORT_TEXT, WATCH_ACK_TIMEOUT_MS, auth, conversations, els, state, streams, summarisedIds, usageById } from './state.js';
import { quotaMessage } from './format.js';
import { refreshUsage, showError } from './api.js';
import { attachStream, failStream, finishStream, newStream, scheduleRender, setTitle, showUsage, streamFor } from './transcript.js';
import { refreshList, rememberConversation, renderList } from './sidebar.js';
import { handleConversationGone, loadConversation, refreshHistory } from './conversations.js';
import { setUploadStatus } from './upload.js';
import { startRateLimit, updateControls } from './composer.js';
import { accountsOn, recheckSession } from './accounts.js';
import { init } from './startup.js';
import { onSettingsChanged } from './settings.js';

/**
 * Follows `id` on the server: replies from other tabs, and the rest of a
 * reply in flight (after a reload or a reconnect). Events for `id` that
 * arrive before the acknowledgement are held, because a replay of a reply
 * that has already ended (and is in the loaded history) must be dropped.
 */
export function watchConversation(id) {
  if (!state.socket || !state.socket.connected || !id) return;
  if (state.pendingWatch) clearTimeout(state.pendingWatch.timer);
  var s = streams.get(id);
  var payload = { conversation_id: id };
  if (s && s.lastIndex >= 0) payload.last_index = s.lastIndex;
  var w = { id: id, buffer: [], timer: null };
  state.pendingWatch = w;
  var settle = function (streaming) {
    if (state.pendingWatch !== w) return;
    clearTimeout(w.timer);
    state.pendingWatch = null;
    var mine = streams.get(id);
    // An ended reply that is not ours is in the loaded history already.
    var replay = replayAfterWatch(w.buffer, streaming, mine || null);
    if (replay.dropped && !mine && id === state.currentId) refreshHistory(id);
    replay.events.forEach(function (e) { dispatch(e[0], e[1]); });
    var left = streams.get(id);
    if (streaming === false && left && (left.kind === 'watch' || left.epoch !== state.connectEpoch)) {
      // The server no longer has this reply (it restarted, or the reply
      // ended too long ago): show what it stored.
      finishStream(left, left.text ? 'Connection lost; showing what was saved' : null);
      if (id === state.currentId) refreshHistory(id);
    }
    updateControls();
  };
  w.timer = setTimeout(function () { settle(null); }, WATCH_ACK_TIMEOUT_MS);
  var sent = state.socket.emit('watch_conversation', payload, function (err, res) {
    if (err) {
      if (state.pendingWatch === w) { clearTimeout(w.timer); state.pendingWatch = null; updateControls(); }
      return;
    }
    settle(!!(res && res.streaming));
  });
  if (!sent) { clearTimeout(w.timer); state.pendingWatch = null; }
  updateControls();
}

/** Holds an event for a conversation whose watch is not acknowledged yet. */
function held(name, data) {
  if (!shouldHold(state.pendingWatch && state.pendingWatch.id, name, data)) return false;
  state.pendingWatch.buffer.push([name, data]);
  return true;
}

function dispatch(name, data) {
  var fn = handlers[name];
  if (fn) fn(data);
}

const handlers = {
  token_usage: function (data) {
    var s = streamFor(data);
    if (s) s.acknowledged = true;
    if (!data) return;
    var id = data.conversation_id || (s && s.conversationId);
    if (!id) return;
    if (data.summarised) summarisedIds.add(id);
    usageById.set(id, { used: Number(data.total_tokens_used), max: Number(data.max_tokens) || undefined });
    if (id === state.currentId) showUsage(id);
  },

  reply_started: function (data) {
    if (!data || !data.conversation_id) return;
    var id = data.conversation_id;
    if (streams.has(id)) return; // ours, or already followed
    if (id !== state.currentId) return;
    var s = newStream(id, typeof data.message === 'string' ? data.message : '', 'watch');
    streams.set(id, s);
    attachStream(s, true);
    updateControls();
    renderList();
  },

  response_chunk: function (data) {
    var s = streamFor(data);
    if (!acceptChunk(s, data)) return; // not a chunk, or had it already (replay and live overlap)
    if (s.conversationId === state.currentId && s.bubble && s.bubble.isConnected) scheduleRender(s);
  },

  response_end: function (data) {
    var s = streamFor(data);
    if (!s) return;
    finishStream(s, data && data.stopped ? 'Stopped' : null);
    if (s.conversationId === state.currentId && document.activeElement === document.body) els.input.focus();
  },

  error: function (data) {
    var message = (data && data.message) || 'Something went wrong.';
    if (state.pendingWatch && data && data.conversation_id === state.pendingWatch.id && data.error === 'not_found') {
      clearTimeout(state.pendingWatch.timer);
      state.pendingWatch = null;
      showError('That conversation no longer exists.');
      handleConversationGone(data.conversation_id);
      return;
    }
    var s = streamFor(data);
    if (data && data.error === 'quota_exceeded') {
      // Refused before anything was stored or sent upstream.
      if (s && !s.acknowledged) failStream(s, quotaMessage(data), true);
      else showError(quotaMessage(data));
      refreshUsage();
      return;
    }
    if (data && data.error === 'rate_limited') {
      if (s && !s.acknowledged) failStream(s, null, true);
      startRateLimit(Number(data.retry_after) || 1, message.replace(/\s*Try again in \d+ seconds?\.?$/, ''));
      return;
    }
    if (s) {
      var stored = s.acknowledged || (data && data.error === 'llm_unavailable');
      failStream(s, message, !stored);
    } else {
      showError(message);
    }
  }
};

export function connectSocket() {
  state.socket = createSocket();

  state.socket.onStatus(function (status) {
    var transport = status === 'connected' ? state.socket.transport : null;
    els.status.dataset.status = status;
    els.status.textContent = (STATUS_TEXT[status] || status) + (transport === 'polling' ? ' (polling)' : '');
    if (transport) els.status.dataset.transport = transport;
    else delete els.status.dataset.transport;
    els.status.title = TRANSPORT_TEXT[transport] || '';
    updateControls();
  });

  state.socket.on('connect', function () {
    state.connectEpoch++;
    updateControls();
    if (!state.initialized) { init(); return; }
    // This new socket gets nothing more for replies elsewhere: they are
    // stored by the server and shown when their conversation is opened.
    streams.forEach(function (s) {
      if (s.conversationId !== state.currentId) finishStream(s, s.text ? 'Connection lost; reopen the conversation to see the saved reply' : null);
    });
    if (state.disconnectedOnce) refreshList().catch(function () { /* keep the old list */ });
    if (!state.currentId) return;
    if (streams.has(state.currentId) || !state.disconnectedOnce) {
      watchConversation(state.currentId);
    } else {
      // Catch up with what was stored while we were away, then follow.
      loadConversation(state.currentId).catch(function (err) {
        if (err.status === 404) handleConversationGone(state.currentId);
      });
    }
  });

  state.socket.on('connect_error', function () {
    // With accounts the handshake is refused once the session has ended.
    if (accountsOn()) recheckSession();
  });

  state.socket.on('disconnect', function (reason) {
    state.disconnectedOnce = true;
    // The server disconnects every socket of an account signed out
    // everywhere (or disabled): still signed in?
    if (reason === 'server disconnect' && accountsOn() && auth.me) recheckSession();
    if (state.pendingWatch) { clearTimeout(state.pendingWatch.timer); state.pendingWatch = null; }
    // Streams wait for the reconnect: the server keeps the reply going and
    // replays what was missed (watch_conversation with last_index).
    streams.forEach(function (s) { s.stopping = false; });
    updateControls();
  });

  Object.keys(handlers).forEach(function (name) {
    state.socket.on(name, function (data) {
      if (held(name, data)) return;
      dispatch(name, data);
    });
  });

  state.socket.on('conversation_updated', function (data) {
    if (!data || !data.conversation_id) return;
    var known = conversations.has(data.conversation_id);
    var conv = rememberConversation({
      conversation_id: data.conversation_id,
      title: data.title == null ? null : data.title,
      updated_at: data.updated_at,
      message_count: data.message_count
    });
    if (data.conversation_id === state.currentId) setTitle(conv);
    if (data.settings) onSettingsChanged(data.conversation_id, data.settings);
    if (data.branched === true && data.conversation_id === state.currentId && !streams.has(state.currentId)) {
      refreshHistory(state.currentId);
    }
    if (!state.search) renderList();
    // A conversation started in another tab: fetch the list for its created_at.
    if (!known) refreshList().catch(function () { /* keep the local list */ });
  });

  state.socket.on('upload_progress', function (data) {
    if (!state.upload || !data) return;
    var done = Number(data.done) || 0;
    var total = Number(data.total) || 0;
    state.upload.analysing = true;
    setUploadStatus('Analysing ' + state.upload.name + ': ' + done + ' of ' + total + (total === 1 ? ' part' : ' parts'), done, total);
  });
}
