/*
 * Branches: the ‹ 2 / 3 › arrows that show another version of a message
 * (`switch_branch`), and the Edit box that answers an edited user message
 * in place of the stored one (`edit_message`; the server keeps the old
 * version as a branch). The arrows and the Edit button are drawn by
 * transcript.js (renderHistory).
 */
import { config, rawText, state, streams } from './state.js';
import { codePoints } from './format.js';
import { clearError, showError } from './api.js';
import { attachStream, failStream, newStream, scrollToBottom } from './transcript.js';
import { refreshHistory } from './conversations.js';
import { updateControls } from './composer.js';

/** Shows the sibling at `position` of the message at `index`. */
export function switchBranch(index, position) {
  var id = state.currentId;
  if (!id || streams.has(id) || !state.socket || !state.socket.connected) return;
  clearError();
  state.socket.emit('switch_branch', { conversation_id: id, index: index, position: position }, function (ack) {
    if (ack && ack.ok) {
      if (id === state.currentId) refreshHistory(id);
    } else {
      showError((ack && ack.message) || 'Could not show that version.');
    }
  });
}

/** Turns the user's message `el` into a box to edit it. */
export function startEdit(el) {
  if (!state.currentId || streams.has(state.currentId) || el.querySelector('.edit-box')) return;
  var content = el.querySelector('.message-content');
  var box = document.createElement('form');
  box.className = 'edit-box';
  var area = document.createElement('textarea');
  area.value = rawText.get(el) || content.textContent;
  area.setAttribute('aria-label', 'Edit message');
  area.rows = Math.min(10, Math.max(2, area.value.split('\n').length));
  var save = document.createElement('button');
  save.type = 'submit';
  save.className = 'edit-save';
  save.textContent = 'Send';
  var cancel = document.createElement('button');
  cancel.type = 'button';
  cancel.className = 'edit-cancel';
  cancel.textContent = 'Cancel';
  var buttons = document.createElement('div');
  buttons.className = 'edit-buttons';
  buttons.append(cancel, save);
  box.append(area, buttons);
  content.hidden = true;
  content.after(box);
  area.focus();
  var close = function () { box.remove(); content.hidden = false; };
  cancel.addEventListener('click', close);
  area.addEventListener('keydown', function (e) {
    if (e.key === 'Escape') { e.preventDefault(); close(); }
  });
  box.addEventListener('submit', function (e) {
    e.preventDefault();
    var text = area.value;
    if (!text.trim()) { area.focus(); return; }
    editMessage(el, Number(el.dataset.index), text);
  });
}

/** Answers `text` in place of the stored user message `el` at `index`. */
function editMessage(el, index, text) {
  if (!state.currentId || streams.has(state.currentId) || !Number.isInteger(index)) return;
  if (state.rateLimitedUntil > Date.now()) return;
  if (config.max_message_chars && codePoints(text) > config.max_message_chars) {
    showError('Message too long (max ' + config.max_message_chars.toLocaleString('en-US') + ' characters).');
    return;
  }
  if (!state.socket || !state.socket.connected) {
    showError('Not connected to the server. Your message was not sent; reconnecting…');
    return;
  }
  clearError();
  // The message and what followed it leave the screen (the server keeps
  // them as a branch); the new version streams in their place.
  var after = [];
  for (var node = el; node; node = node.nextElementSibling) {
    if (node.classList.contains('message')) after.push(node);
  }
  after.forEach(function (e) { e.remove(); });
  var s = newStream(state.currentId, text, 'send');
  s.edit = true;
  streams.set(state.currentId, s);
  attachStream(s, true);
  scrollToBottom();
  if (!state.socket.emit('edit_message', { conversation_id: state.currentId, index: index, message: text })) {
    failStream(s, 'Not connected to the server. Your message was not sent.', true);
    return;
  }
  updateControls();
}
