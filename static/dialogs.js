/*
 * The confirmation dialog and the few-shot example dialog.
 */
import { config, els, state, streams } from './state.js';
import { codePoints } from './format.js';
import { showNotice, withCurrent } from './api.js';
import { appendMessage, placeRegenerate, scrollToBottom } from './transcript.js';

export function confirmAction(title, text, okLabel) {
  if (state.confirmResolve) state.confirmResolve(false);
  els.confirmTitle.textContent = title;
  els.confirmText.textContent = text;
  els.confirmOk.textContent = okLabel;
  return new Promise(function (resolve) {
    state.confirmResolve = resolve;
    els.confirmDialog.showModal();
    els.confirmCancel.focus();
  });
}
export function closeConfirm(ok) {
  var resolve = state.confirmResolve;
  state.confirmResolve = null;
  if (els.confirmDialog.open) els.confirmDialog.close();
  if (resolve) resolve(ok);
  if (!ok) els.input.focus();
}

export function openFewShot() {
  if (!state.currentId || streams.has(state.currentId)) return;
  els.fewShotError.textContent = '';
  els.fewShotDialog.showModal();
  els.fewShotUser.focus();
}

export function submitFewShot() {
  var id = state.currentId;
  var user = els.fewShotUser.value;
  var assistant = els.fewShotAssistant.value;
  if (!user.trim() || !assistant.trim()) {
    els.fewShotError.textContent = 'Both the user prompt and the assistant response are needed.';
    (user.trim() ? els.fewShotAssistant : els.fewShotUser).focus();
    return;
  }
  if (config.max_message_chars && (codePoints(user) > config.max_message_chars || codePoints(assistant) > config.max_message_chars)) {
    els.fewShotError.textContent = 'Each field may have at most ' + config.max_message_chars.toLocaleString('en-US') + ' characters.';
    return;
  }
  if (!id || streams.has(id)) {
    els.fewShotError.textContent = 'Wait until the reply has finished.';
    return;
  }
  els.fewShotSubmit.disabled = true;
  els.fewShotError.textContent = '';
  withCurrent(id, function (call) {
    return call('POST', '/add_few_shot_example', { user_prompt: user, assistant_response: assistant });
  }).then(function () {
    els.fewShotDialog.close();
    els.fewShotUser.value = '';
    els.fewShotAssistant.value = '';
    if (id === state.currentId) {
      appendMessage('user', user);
      appendMessage('assistant', assistant);
      placeRegenerate();
      scrollToBottom();
    }
    showNotice('Few-shot example added.');
    els.input.focus();
  }, function (err) {
    els.fewShotError.textContent = err.message;
  }).then(function () {
    els.fewShotSubmit.disabled = false;
  });
}
