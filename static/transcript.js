/*
 * The transcript: message bubbles (rendered by markdown.js), their copy and
 * regenerate buttons, the token meter, and the live reply streams (one per
 * conversation, chunks taken by index through stream-events.js).
 */
import * as md from './markdown.js';
import { promptBudget } from './limits.js';
import { analyses, config, els, rawText, regenerateButton, state, streams, summarisedIds, usageById } from './state.js';
import { showError } from './api.js';
import { renderList } from './sidebar.js';
import { refreshHistory } from './conversations.js';
import { updateControls } from './composer.js';

export function isNearBottom() {
  var t = els.transcript;
  return t.scrollHeight - t.scrollTop - t.clientHeight < 64;
}
export function scrollToBottom() {
  els.transcript.scrollTop = els.transcript.scrollHeight;
}

function actionsBar(role) {
  var bar = document.createElement('div');
  bar.className = 'message-actions';
  if (role === 'assistant') {
    var copy = document.createElement('button');
    copy.type = 'button';
    copy.className = 'message-action copy-message';
    copy.setAttribute('aria-label', 'Copy reply');
    copy.title = 'Copy reply (markdown)';
    bar.appendChild(copy);
  }
  return bar;
}

function messageElement(role, text) {
  var el = document.createElement('div');
  var kind = role === 'user' || role === 'assistant' ? role : 'system';
  el.className = 'message message-' + kind;
  el.dataset.role = role;
  var content = document.createElement('div');
  content.className = 'message-content';
  if (kind === 'assistant') {
    if (text) md.renderInto(content, text);
    el.append(content, actionsBar('assistant'));
  } else {
    content.textContent = text; // text only, never HTML
    el.appendChild(content);
  }
  rawText.set(el, text);
  return el;
}

export function appendMessage(role, text) {
  var stick = isNearBottom();
  var el = messageElement(role, text);
  els.transcript.appendChild(el);
  updateEmptyState();
  if (stick || role === 'user') scrollToBottom();
  return el;
}

export function chatMessages() {
  return els.transcript.querySelectorAll('.message-user, .message-assistant, .message-system');
}

export function clearTranscript() {
  var nodes = els.transcript.querySelectorAll('.message');
  for (var i = 0; i < nodes.length; i++) nodes[i].remove();
  updateEmptyState();
}

export function updateEmptyState() {
  els.empty.hidden = !!els.transcript.querySelector('.message');
}

/**
 * The "2 / 3" arrows of a message with siblings (an edit, a regenerate):
 * `sibling` is {index, position, count} from GET /load_conversation.
 */
function branchNav(sibling) {
  var nav = document.createElement('div');
  nav.className = 'branch-nav';
  var prev = document.createElement('button');
  prev.type = 'button';
  prev.className = 'branch-prev';
  prev.setAttribute('aria-label', 'Previous version');
  prev.title = 'Previous version';
  prev.textContent = '\u2039';
  prev.disabled = sibling.position <= 1;
  var position = document.createElement('span');
  position.className = 'branch-position';
  position.textContent = sibling.position + ' / ' + sibling.count;
  var next = document.createElement('button');
  next.type = 'button';
  next.className = 'branch-next';
  next.setAttribute('aria-label', 'Next version');
  next.title = 'Next version';
  next.textContent = '\u203a';
  next.disabled = sibling.position >= sibling.count;
  nav.dataset.index = String(sibling.index);
  nav.dataset.position = String(sibling.position);
  nav.append(prev, position, next);
  return nav;
}

/** An Edit button for one of the user's stored messages. */
function editButton() {
  var edit = document.createElement('button');
  edit.type = 'button';
  edit.className = 'message-action edit-message';
  edit.setAttribute('aria-label', 'Edit message');
  edit.title = 'Edit and answer again (the old version is kept)';
  return edit;
}

export function renderHistory(history, branches) {
  clearTranscript();
  var frag = document.createDocumentFragment();
  var count = 0;
  var notes = (analyses.get(state.currentId) || []).slice();
  var siblings = new Map();
  (Array.isArray(branches) ? branches : []).forEach(function (b) {
    if (b && Number.isInteger(b.index) && Number.isInteger(b.position) && Number.isInteger(b.count)) siblings.set(b.index, b);
  });
  for (var i = 0; i < history.length; i++) {
    while (notes.length && notes[0].after <= count) frag.appendChild(notes.shift().el);
    var m = history[i] || {};
    var el = messageElement(String(m.role || 'system'), String(m.content == null ? '' : m.content));
    el.dataset.index = String(i);
    if (m.role === 'user') {
      var bar = actionsBar('user');
      bar.appendChild(editButton());
      el.appendChild(bar);
    }
    if (siblings.has(i)) el.appendChild(branchNav(siblings.get(i)));
    frag.appendChild(el);
    count++;
  }
  while (notes.length) frag.appendChild(notes.shift().el);
  els.transcript.appendChild(frag);
  // A reply still streaming for this conversation (not stored yet).
  var s = streams.get(state.currentId);
  if (s) attachStream(s, false);
  updateEmptyState();
  placeRegenerate();
  scrollToBottom();
}

/** The last user message element and the messages after it. */
export function lastTurn() {
  var msgs = chatMessages();
  for (var i = msgs.length - 1; i >= 0; i--) {
    if (msgs[i].classList.contains('message-user')) {
      return { user: msgs[i], after: Array.prototype.slice.call(msgs, i + 1) };
    }
  }
  return null;
}

/**
 * Shows a stream in the transcript: its user message and a bubble that
 * fills as chunks arrive. `initial`: the turn has just begun here (not a
 * re-render of the conversation while it streams).
 */
export function attachStream(s, initial) {
  var turn = lastTurn();
  var onlyReplies = turn && turn.after.every(function (e) { return e.classList.contains('message-assistant'); });
  if (initial && s.kind === 'regenerate' && turn) {
    s.userEl = turn.user;
    s.removed = turn.after;
    turn.after.forEach(function (e) { e.remove(); });
  } else if (initial && s.kind === 'watch' && turn && onlyReplies && rawText.get(turn.user) === s.userText) {
    // Most likely Regenerate in another tab; the stored history is fetched at the end.
    s.userEl = turn.user;
    turn.after.forEach(function (e) { e.remove(); });
    s.reconcile = true;
  } else {
    s.userEl = appendMessage('user', s.userText);
  }
  s.bubble = messageElement('assistant', '');
  s.content = s.bubble.querySelector('.message-content');
  s.renderer = md.createStreamRenderer(s.content);
  if (s.text) s.renderer.update(s.text);
  s.bubble.classList.add('is-streaming');
  s.bubble.setAttribute('aria-busy', 'true');
  els.transcript.appendChild(s.bubble);
  updateEmptyState();
  placeRegenerate();
}

/** Puts the single Regenerate button under the last message. */
export function placeRegenerate() {
  var s = state.currentId ? streams.get(state.currentId) : null;
  var msgs = els.transcript.querySelectorAll('.message-user, .message-assistant');
  var last = msgs[msgs.length - 1];
  if (!last || s || !lastTurn()) {
    if (regenerateButton.parentNode) {
      var hadFocus = document.activeElement === regenerateButton;
      regenerateButton.remove();
      if (hadFocus) els.input.focus();
    }
    return;
  }
  var bar = last.querySelector('.message-actions');
  if (!bar) {
    bar = actionsBar(last.dataset.role);
    last.appendChild(bar);
  }
  var retry = last.classList.contains('message-user');
  regenerateButton.dataset.mode = retry ? 'retry' : 'regenerate';
  regenerateButton.setAttribute('aria-label', retry ? 'Answer this message again' : 'Regenerate reply');
  regenerateButton.title = retry ? 'Answer this message again' : 'Regenerate reply';
  regenerateButton.disabled = !(state.socket && state.socket.connected) || state.rateLimitedUntil > Date.now();
  if (regenerateButton.parentNode !== bar) bar.appendChild(regenerateButton);
}

export function setTitle(conv) {
  var title = conv && conv.title ? conv.title : 'New conversation';
  els.title.textContent = title;
  els.title.title = title;
  document.title = (conv && conv.title ? conv.title + ' · ' : '') + 'LLM Chat';
}


export function showUsage(id) {
  var u = id ? usageById.get(id) : null;
  setUsage(u ? u.used : null, u ? u.max : undefined, id);
}

export function setUsage(used, max, id) {
  if (typeof max === 'number' && max > 0) config.max_tokens = max;
  var maxTokens = config.max_tokens;
  var budget = promptBudget(config) || 1;
  els.meter.max = maxTokens || 1;
  els.meter.low = Math.round(budget * 0.6);
  els.meter.high = Math.round(budget * 0.8);
  els.meter.optimum = 0;
  var warn = false;
  if (typeof used === 'number' && !isNaN(used)) {
    els.usage.textContent = used.toLocaleString('en-US') + ' / ' + maxTokens.toLocaleString('en-US') + ' tokens';
    els.meter.value = Math.min(used, maxTokens || used);
    warn = used >= budget * 0.8;
  } else {
    els.usage.textContent = '– / ' + maxTokens.toLocaleString('en-US') + ' tokens';
    els.meter.value = 0;
  }
  var summarised = !!(id && summarisedIds.has(id));
  var note = '';
  var detail = '';
  if (summarised) {
    note = 'Older turns summarised';
    detail = 'The conversation no longer fits the context window: its older turns are sent to the model as a summary. The full history is kept.';
  } else if (warn) {
    note = 'Near the limit';
    detail = 'The prompt is close to the context window; older turns will be summarised to make room.';
  }
  if (els.tokenNote.textContent !== note) els.tokenNote.textContent = note;
  els.tokenNote.title = detail;
  els.meterWrap.title = detail || 'Tokens of the last prompt sent to the model, out of the context window';
  els.meterWrap.classList.toggle('is-warning', warn);
  els.meterWrap.classList.toggle('is-summarised', summarised);
}

export function newStream(id, userText, kind) {
  return {
    conversationId: id,
    userText: userText,
    kind: kind,            // 'send' | 'regenerate' | 'watch' (a turn from another tab)
    text: '',
    lastIndex: -1,         // highest chunk index rendered
    userEl: null,
    bubble: null,
    content: null,
    renderer: null,
    removed: null,         // replies hidden by Regenerate (put back if it fails early)
    reconcile: false,      // re-read the stored history at the end
    started: Date.now(),
    acknowledged: kind === 'watch',
    epoch: state.connectEpoch,   // the connection the turn was sent on
    stopping: false,
    dirty: false
  };
}

export function streamFor(data) {
  if (data && data.conversation_id && streams.has(data.conversation_id)) return streams.get(data.conversation_id);
  if (data && data.conversation_id) return null;
  // No id: the newest turn that the server has not started yet, else the current one.
  var best = null;
  streams.forEach(function (s) {
    if (!s.acknowledged && (!best || s.started > best.started)) best = s;
  });
  return best || (state.currentId ? streams.get(state.currentId) || null : null);
}

// Rendering a streamed reply: at most once per frame; the markdown
// renderer keeps finished blocks and rebuilds only the last ones.
export function scheduleRender(s) {
  if (s.dirty) return;
  s.dirty = true;
  var run = function () {
    if (!s.dirty) return;
    s.dirty = false;
    renderStream(s);
  };
  if (s.slow) setTimeout(run, 150);
  else {
    window.requestAnimationFrame(run);
    setTimeout(run, 250); // hidden tabs get no animation frames
  }
}

function renderStream(s) {
  if (!s.bubble || !s.bubble.isConnected) return;
  var stick = isNearBottom();
  var tail = s.renderer.update(s.text);
  s.slow = tail > 30000; // a very long last block: fewer re-renders
  if (stick) scrollToBottom();
}

export function finishStream(s, note) {
  if (streams.get(s.conversationId) === s) streams.delete(s.conversationId);
  s.dirty = false;
  if (s.bubble) {
    var stick = isNearBottom();
    s.bubble.classList.remove('is-streaming');
    s.bubble.removeAttribute('aria-busy');
    if (s.text) {
      s.renderer.finish(s.text);
      rawText.set(s.bubble, s.text);
    }
    if (note) {
      s.bubble.classList.add('is-interrupted');
      s.bubble.dataset.note = note;
      var bar = s.bubble.querySelector('.message-actions');
      if (bar) bar.dataset.note = note;
    }
    if (!s.text) s.bubble.remove();
    if (stick) scrollToBottom();
  }
  updateEmptyState();
  if (s.reconcile && s.conversationId === state.currentId) refreshHistory(s.conversationId);
  if (s.conversationId === state.currentId) updateControls();
  renderList();
}

// notStored: the server did not take the turn, so undo it on the page.
export function failStream(s, message, notStored) {
  finishStream(s, s.text ? 'Reply interrupted' : null);
  if (notStored) {
    if (s.kind === 'regenerate') {
      if (s.removed && s.userEl && s.userEl.isConnected) {
        var anchor = s.userEl;
        s.removed.forEach(function (e) { anchor.after(e); anchor = e; });
      }
    } else if (s.edit) {
      if (s.conversationId === state.currentId) refreshHistory(s.conversationId);
    } else if (s.kind === 'send') {
      if (s.userEl) s.userEl.remove();
      if (!els.input.value) els.input.value = s.userText;
    }
    updateEmptyState();
  } else if (s.kind === 'regenerate' && s.conversationId === state.currentId) {
    refreshHistory(s.conversationId);
  }
  if (message) showError(message);
  updateControls();
}
