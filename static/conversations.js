/*
 * Conversations: choosing, loading, starting, resetting, deleting, saving
 * and exporting one; the one that is current is remembered per browser.
 */
import { analyses, conversationModels, conversations, els, state, streams, summarisedIds, usageById } from './state.js';
import { slug } from './format.js';
import { api, clearError, showError, showNotice, storageGet, storageSet, withCurrent } from './api.js';
import { clearTranscript, isNearBottom, placeRegenerate, renderHistory, setTitle, showUsage } from './transcript.js';
import { closeSidebar, onSearchInput, rememberConversation, renderList, runSearch, sortedConversations } from './sidebar.js';
import { confirmAction } from './dialogs.js';
import { updateControls } from './composer.js';
import { watchConversation } from './live.js';
import { showModel } from './models.js';

function selectConversation(id, history, title, branches) {
  var changed = state.currentId !== id;
  if (changed) dropOtherWatchStreams(id);
  state.currentId = id;
  storageSet(id);
  var conv = conversations.get(id) || rememberConversation({ conversation_id: id, title: title || null });
  if (title && !conv.title) conv.title = title;
  setTitle(conv);
  showUsage(id);
  renderHistory(history || [], branches);
  renderList();
  updateControls();
  closeSidebar();
  watchConversation(id);
}

/** Replies from other tabs are followed only in the open conversation. */
function dropOtherWatchStreams(keepId) {
  streams.forEach(function (s) {
    if (s.kind === 'watch' && s.conversationId !== keepId) streams.delete(s.conversationId);
  });
}

export function loadConversation(id) {
  var seq = ++state.loadSeq;
  clearError();
  return api('GET', '/load_conversation/' + encodeURIComponent(id)).then(function (data) {
    if (seq !== state.loadSeq) return;
    if (data && typeof data.model === 'string') conversationModels.set(id, data.model);
    selectConversation(id, (data && data.conversation) || [], data && data.title, data && data.branches);
    showModel(id);
  }, function (err) {
    if (seq !== state.loadSeq) return;
    if (err.status === 404) {
      conversations.delete(id);
      if (storageGet() === id) storageSet(null);
      renderList();
    }
    throw err;
  });
}

/** Re-reads the stored history of the open conversation (after a reply from elsewhere). */
export function refreshHistory(id) {
  api('GET', '/load_conversation/' + encodeURIComponent(id)).then(function (data) {
    if (id !== state.currentId || streams.has(id)) return;
    var stick = isNearBottom();
    var top = els.transcript.scrollTop;
    renderHistory((data && data.conversation) || [], data && data.branches);
    if (!stick) els.transcript.scrollTop = top;
  }, function () { /* keep what is shown */ });
}

function startConversation() {
  return startConversationWith(undefined);
}

/** Starts a conversation (`body`: its settings or preset_id, see settings.js) and opens it. */
export function startConversationWith(body) {
  var seq = ++state.loadSeq;
  clearError();
  return api('POST', '/start_conversation', body).then(function (data) {
    var id = data.conversation_id;
    if (typeof data.model === 'string') conversationModels.set(id, data.model);
    var now = new Date().toISOString();
    rememberConversation({ conversation_id: id, title: null, message_count: 0, created_at: now, updated_at: now });
    state.listLoaded++;
    if (seq === state.loadSeq) { selectConversation(id, []); showModel(id); }
    else renderList();
    els.input.focus();
    return id;
  });
}

export function newChat() {
  // The open conversation is still empty: it is the new chat.
  if (state.currentId && !streams.has(state.currentId) && !els.transcript.querySelector('.message')) {
    if (state.search) { els.search.value = ''; onSearchInput(); }
    closeSidebar();
    els.input.focus();
    return;
  }
  startConversation().catch(function (err) { showError(err.message); });
}

export function handleConversationGone(id) {
  conversations.delete(id);
  analyses.delete(id);
  if (storageGet() === id) storageSet(null);
  renderList();
  if (id === state.currentId) {
    state.currentId = null;
    clearTranscript();
    chooseConversation().catch(function (err) { showError(err.message); });
  }
}

export function resetConversation() {
  if (!state.currentId || streams.has(state.currentId)) return;
  var id = state.currentId;
  confirmAction('Reset this conversation?', 'All of its messages are removed. The conversation itself stays in the list.', 'Reset').then(function (ok) {
    if (!ok) return;
    clearError();
    els.reset.disabled = true;
    // The session's current conversation may have been changed by another
    // tab: make this one current first, then reset it.
    withCurrent(id, function (call) {
      return call('POST', '/reset_conversation');
    }).then(function () {
      analyses.delete(id);
      usageById.delete(id);
      summarisedIds.delete(id);
      if (state.currentId === id) {
        clearTranscript();
        showUsage(id);
        placeRegenerate();
      }
      var conv = conversations.get(id);
      if (conv) { conv.message_count = 0; renderList(); }
      showNotice('The conversation was reset.');
    }).catch(function (err) {
      showError(err.message);
    }).then(function () {
      updateControls();
      els.input.focus();
    });
  });
}

export function deleteConversation() {
  if (!state.currentId || streams.has(state.currentId)) return;
  var id = state.currentId;
  var conv = conversations.get(id);
  var name = conv && conv.title ? '“' + conv.title + '”' : 'This conversation';
  confirmAction('Delete this conversation?', name + ' and all of its messages are deleted for good.', 'Delete').then(function (ok) {
    if (!ok) return;
    clearError();
    api('DELETE', '/conversation/' + encodeURIComponent(id)).then(function () {
      if (conversations.has(id)) state.listLoaded = Math.max(0, state.listLoaded - 1);
      usageById.delete(id);
      summarisedIds.delete(id);
      handleConversationGone(id);
      if (state.search) runSearch(state.search.query);
      showNotice('Conversation deleted.');
    }, function (err) {
      if (err.status === 404) handleConversationGone(id);
      else showError(err.message);
    }).then(function () { els.input.focus(); });
  });
}

export function saveOnServer() {
  if (!state.currentId) return;
  var id = state.currentId;
  clearError();
  withCurrent(id, function (call) {
    return call('POST', '/save_history');
  }).then(function (data) {
    showNotice('Saved on the server as ' + ((data && data.file_name) || 'a file') + '.');
  }, function (err) {
    showError(err.message);
  }).then(function () { els.input.focus(); });
}


function download(name, type, text) {
  var blob = new Blob([text], { type: type });
  var url = URL.createObjectURL(blob);
  var a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.className = 'download-helper';
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(function () { URL.revokeObjectURL(url); }, 30000);
}

export function exportConversation(format) {
  if (!state.currentId) return;
  var id = state.currentId;
  clearError();
  Promise.all([
    api('GET', '/load_conversation/' + encodeURIComponent(id)),
    format === 'json' ? api('GET', '/conversation/' + encodeURIComponent(id) + '/branches') : null
  ]).then(function (both) {
    var data = both[0];
    var pool = both[1] && both[1].branches;
    var messages = (data && data.conversation) || [];
    var conv = conversations.get(id) || {};
    var title = (data && data.title) || conv.title || 'Conversation';
    var stamp = new Date();
    var day = stamp.toISOString().slice(0, 10);
    var base = 'chat-' + slug(title) + '-' + day;
    if (format === 'json') {
      download(base + '.json', 'application/json', JSON.stringify({
        conversation_id: id,
        title: title,
        created_at: conv.created_at || null,
        updated_at: conv.updated_at || null,
        exported_at: stamp.toISOString(),
        messages: messages.map(function (m) { return { role: m.role, content: m.content }; }),
        branches: pool || null
      }, null, 2) + '\n');
    } else {
      var names = { user: 'You', assistant: 'Assistant', system: 'System' };
      var out = '# ' + title.replace(/\n/g, ' ') + '\n\n_Exported from LLM Chat on ' + stamp.toUTCString() + '_\n';
      messages.forEach(function (m) {
        out += '\n## ' + (names[m.role] || String(m.role)) + '\n\n' + String(m.content == null ? '' : m.content).replace(/\s+$/, '') + '\n';
      });
      download(base + '.md', 'text/markdown', out);
    }
    showNotice('Exported ' + messages.length + (messages.length === 1 ? ' message' : ' messages') + ' as ' + (format === 'json' ? 'JSON' : 'Markdown') + '.');
  }, function (err) {
    showError('Could not export: ' + err.message);
  });
}

export function chooseConversation() {
  var remembered = storageGet();
  if (remembered && conversations.has(remembered)) {
    return loadConversation(remembered).catch(function (err) {
      if (err.status === 404 || err.status === 400) return chooseConversation();
      throw err;
    });
  }
  var newest = sortedConversations()[0];
  if (newest && !newest.message_count) return loadConversation(newest.conversation_id);
  return startConversation();
}
