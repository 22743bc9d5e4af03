/*
 * The composer: its controls' state, sending a message, regenerating,
 * stopping a reply, and the rate-limit countdown.
 */
import { config, conversationModels, conversations, els, rawText, state, streams } from './state.js';
import { codePoints } from './format.js';
import { clearError, showError } from './api.js';
import { attachStream, failStream, lastTurn, newStream, placeRegenerate, scrollToBottom, setTitle } from './transcript.js';
import { renderList } from './sidebar.js';
import { pickedModel } from './models.js';

export function updateControls() {
  var s = state.currentId ? streams.get(state.currentId) : null;
  var connected = !!(state.socket && state.socket.connected);
  var watching = !!(state.pendingWatch && state.pendingWatch.id === state.currentId);
  var limited = state.rateLimitedUntil > Date.now();
  els.stop.hidden = !s;
  els.send.hidden = !!s;
  els.stop.disabled = !!(s && s.stopping) || !connected;
  els.send.disabled = !state.currentId || !connected || watching || limited;
  var idle = !!state.currentId && !s;
  els.reset.disabled = !idle;
  els.del.disabled = !idle;
  els.fewShot.disabled = !idle;
  els.save.disabled = !state.currentId;
  els.share.disabled = !state.currentId;
  els.exportMd.disabled = !state.currentId;
  els.exportJson.disabled = !state.currentId;
  els.attach.disabled = !!state.upload;
  els.attach.setAttribute('aria-busy', state.upload ? 'true' : 'false');
  els.transcript.setAttribute('aria-busy', s ? 'true' : 'false');
  placeRegenerate();
  if (!s && document.activeElement === els.stop) els.input.focus();
}

export function sendMessage() {
  var text = els.input.value;
  if (!text.trim()) { els.input.focus(); return; }
  if (!state.currentId) { showError('No conversation is open yet. Please wait a moment or start a new chat.'); return; }
  if (streams.has(state.currentId)) return;
  if (state.rateLimitedUntil > Date.now()) return;
  if (config.max_message_chars && codePoints(text) > config.max_message_chars) {
    showError('Message too long (max ' + config.max_message_chars.toLocaleString('en-US') + ' characters).');
    return;
  }
  if (!state.socket || !state.socket.connected) {
    showError('Not connected to the server. Your message was not sent; reconnecting…');
    return;
  }
  if (state.pendingWatch && state.pendingWatch.id === state.currentId) return;
  clearError();
  var s = newStream(state.currentId, text, 'send');
  streams.set(state.currentId, s);
  attachStream(s, true);
  scrollToBottom();
  var payload = { message: text, conversation_id: state.currentId };
  var model = pickedModel();
  if (model) {
    payload.model = model;
    conversationModels.set(state.currentId, model);
  }
  if (!state.socket.emit('send_message', payload)) {
    failStream(s, 'Not connected to the server. Your message was not sent.', true);
    return;
  }
  els.input.value = '';
  // Until the server names it (after the turn is stored), a new
  // conversation is called by its first message, as the server will.
  var conv = conversations.get(state.currentId);
  if (conv && !conv.title) {
    var words = text.trim().split(/\s+/).join(' ');
    conv.title = Array.from(words).length > 80 ? Array.from(words).slice(0, 80).join('') + '…' : words;
    setTitle(conv);
  }
  updateControls();
  renderList();
  els.input.focus();
}

export function regenerate() {
  if (!state.currentId || streams.has(state.currentId) || !lastTurn()) return;
  if (!state.socket || !state.socket.connected || state.rateLimitedUntil > Date.now()) return;
  clearError();
  var turn = lastTurn();
  var s = newStream(state.currentId, rawText.get(turn.user) || '', 'regenerate');
  streams.set(state.currentId, s);
  attachStream(s, true);
  scrollToBottom();
  if (!state.socket.emit('regenerate', { conversation_id: state.currentId })) {
    failStream(s, 'Not connected to the server.', true);
    return;
  }
  updateControls();
  els.input.focus();
}

export function stopGeneration() {
  var s = state.currentId ? streams.get(state.currentId) : null;
  if (!s || !state.socket || !state.socket.connected) return;
  s.stopping = true;
  state.socket.emit('stop_generation', { conversation_id: s.conversationId });
  updateControls();
  els.input.focus();
}

export function startRateLimit(seconds, sentence) {
  state.rateLimitedUntil = Date.now() + Math.max(1, seconds) * 1000;
  clearInterval(state.rateLimitTimer);
  var tick = function () {
    var left = Math.ceil((state.rateLimitedUntil - Date.now()) / 1000);
    if (left <= 0) {
      clearInterval(state.rateLimitTimer);
      state.rateLimitTimer = null;
      state.rateLimitedUntil = 0;
      clearError();
      updateControls();
      return;
    }
    els.error.textContent = (sentence || 'Too many messages.') + ' You can send again in ' + left + (left === 1 ? ' second.' : ' seconds.');
    els.error.classList.add('is-visible');
    els.notice.textContent = '';
  };
  tick();
  state.rateLimitTimer = setInterval(tick, 1000);
  updateControls();
}

export function startRateLimitNotice(message) {
  // Uploads: the server's sentence already says when to try again.
  showError(message);
}
