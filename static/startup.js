/*
 * Starting the page: /get_config, the account check, the conversation list
 * and the first conversation, then the socket. Run again after a reconnect
 * when the first attempt failed.
 */
import { auth, config, els, state } from './state.js';
import { api, clearError, showError } from './api.js';
import { showUsage } from './transcript.js';
import { refreshList } from './sidebar.js';
import { chooseConversation } from './conversations.js';
import { describeLimits } from './upload.js';
import { updateControls } from './composer.js';
import { connectSocket, watchConversation } from './live.js';
import { checkAccount } from './accounts.js';
import { applyModels } from './models.js';

function applyConfig(data) {
  if (!data) return;
  if (typeof data.max_tokens === 'number') config.max_tokens = data.max_tokens;
  if (typeof data.reply_tokens === 'number') config.reply_tokens = data.reply_tokens;
  if (typeof data.max_message_chars === 'number') config.max_message_chars = data.max_message_chars;
  if (typeof data.demo_mode === 'boolean') config.demo_mode = data.demo_mode;
  if (typeof data.max_file_size_mb === 'number') config.max_file_size_mb = data.max_file_size_mb;
  if (Array.isArray(data.allowed_extensions)) {
    config.allowed_extensions = data.allowed_extensions.map(String).filter(Boolean);
  }
  applyModels(data.models, data.default_model);
  describeLimits();
  showUsage(state.currentId);
}

export function init() {
  if (state.initialized || state.initializing) return;
  state.initializing = true;
  var blocked = false;
  api('GET', '/get_config').then(function (data) {
    applyConfig(data);
    return checkAccount(data && data.auth);
  }).then(function (mayStart) {
    if (!mayStart) { blocked = true; return undefined; }
    return refreshList().then(chooseConversation).then(function () {
      state.initialized = true;
      clearError();
      if (!document.activeElement || document.activeElement === document.body) els.input.focus();
    });
  }).catch(function (err) {
    if (auth.required) { blocked = true; return; } // the sign-in dialog is up
    showError('Could not load the chat: ' + err.message + ' Retrying when the connection is back.');
  }).then(function () {
    state.initializing = false;
    updateControls();
    // Signed out where an account is needed: no socket, no conversations;
    // a successful sign-in reloads the page.
    if (blocked) return;
    // The socket is opened once the session cookie exists (set by the calls above).
    if (!state.socket) connectSocket();
    else if (state.initialized && state.socket.connected && state.currentId) watchConversation(state.currentId);
  });
}
