/*
 * "Import from ChatGPT…" (the sidebar's button): a dialog that sends a
 * ChatGPT export's conversations.json as it is to POST /import/chatgpt,
 * with upload progress, then says what was imported (or the server's
 * sentence naming what is wrong with the file) and refreshes the sidebar.
 * Its elements are looked up here, not in state.js: the dialog is its own.
 */
import { byId, els, state } from './state.js';
import { apiError, showError, showNotice } from './api.js';
import { onUnauthenticated } from './accounts.js';
import { closeSidebar, refreshList } from './sidebar.js';
import { loadConversation } from './conversations.js';

const ui = {
  button: byId('import-button'),
  dialog: byId('import-dialog'),
  form: byId('import-form'),
  file: byId('import-file'),
  progressRow: byId('import-progress-row'),
  progressLabel: byId('import-progress-label'),
  progress: byId('import-progress'),
  result: byId('import-result'),
  list: byId('import-list'),
  error: byId('import-error'),
  close: byId('import-close'),
  submit: byId('import-submit')
};

// How many imported titles the dialog lists (the count says the rest).
const LISTED = 20;

// The request on its way: {xhr, uploaded}. Once the whole file is sent the
// server is storing it, and the dialog stays until it answers (closing the
// connection then would stop the import halfway through).
let running = null;

function plural(n, one, many) {
  return n + ' ' + (n === 1 ? one : many);
}

/** "Imported 3 conversations, 1 already there." from the route's answer. */
export function importSummary(imported, skipped) {
  if (!imported && !skipped) return 'The file holds no conversations to import.';
  if (!imported) return 'Nothing new: ' + (skipped === 1 ? 'its conversation is' : 'all ' + skipped + ' conversations are') + ' already there.';
  return 'Imported ' + plural(imported, 'conversation', 'conversations') + (skipped ? ', ' + skipped + ' already there.' : '.');
}

function setError(message) {
  ui.error.textContent = message || '';
  ui.error.classList.toggle('is-visible', !!message);
}

function setProgress(label, done, total) {
  ui.progressRow.hidden = false;
  ui.progressLabel.textContent = label;
  if (typeof done === 'number' && total > 0) {
    ui.progress.max = total;
    ui.progress.value = done;
  } else {
    ui.progress.removeAttribute('value'); // indeterminate
  }
}

function setBusy(busy) {
  ui.submit.disabled = busy;
  ui.file.disabled = busy;
  ui.form.setAttribute('aria-busy', busy ? 'true' : 'false');
  // While uploading, the other button cancels; while the server stores, it waits.
  ui.close.textContent = busy ? 'Cancel' : 'Close';
  ui.close.disabled = !!(running && running.uploaded);
}

function clearResult() {
  ui.result.textContent = '';
  ui.list.textContent = '';
  ui.list.hidden = true;
  setError('');
}

function openDialog() {
  if (running) { ui.dialog.showModal(); return; }
  clearResult();
  ui.progressRow.hidden = true;
  ui.file.value = '';
  setBusy(false);
  ui.dialog.showModal();
  ui.file.focus();
}

function closeDialog() {
  if (running) {
    if (running.uploaded) return; // the server is storing: wait for its answer
    running.xhr.abort();
    return;
  }
  ui.dialog.close();
}

/** The imported conversations, each a button that opens it. */
function showImported(list) {
  ui.list.textContent = '';
  list.slice(0, LISTED).forEach(function (c) {
    if (!c || typeof c.conversation_id !== 'string') return;
    var li = document.createElement('li');
    var open = document.createElement('button');
    open.type = 'button';
    open.className = 'link-button import-open';
    open.dataset.id = c.conversation_id;
    open.textContent = String(c.title || 'Untitled conversation');
    var count = Number(c.messages) || 0;
    var meta = document.createElement('span');
    meta.className = 'field-hint';
    meta.textContent = ' · ' + plural(count, 'message', 'messages');
    li.append(open, meta);
    ui.list.appendChild(li);
  });
  if (list.length > LISTED) {
    var more = document.createElement('li');
    more.className = 'field-hint';
    more.textContent = 'and ' + (list.length - LISTED) + ' more, in the sidebar.';
    ui.list.appendChild(more);
  }
  ui.list.hidden = !ui.list.children.length;
}

// The file stays picked after a failure, to try again.
function finish() {
  running = null;
  ui.progressRow.hidden = true;
  setBusy(false);
}

/** The sidebar, with room for what was imported (older conversations sort last). */
function refreshSidebar(added) {
  state.listLoaded += added;
  return refreshList().catch(function () { /* the socket's updates still arrive */ });
}

/** An error in the dialog, or on the page when the dialog was closed meanwhile. */
function failed(message) {
  if (!ui.dialog.open) { showError(message); return; }
  setError(message);
  ui.file.focus();
}

function startImport() {
  if (running) return;
  var file = ui.file.files && ui.file.files[0];
  clearResult();
  if (!file) {
    setError('Choose the conversations.json file of your ChatGPT export.');
    ui.file.focus();
    return;
  }
  var xhr = new XMLHttpRequest();
  running = { xhr: xhr, uploaded: false };
  setBusy(true);
  ui.close.focus(); // Import is disabled now; Cancel is the one thing to do
  setProgress('Uploading ' + file.name + '…', 0, 1);
  xhr.open('POST', '/import/chatgpt');
  xhr.setRequestHeader('Accept', 'application/json');
  xhr.setRequestHeader('Content-Type', 'application/json');
  xhr.upload.onprogress = function (e) {
    if (running && !running.uploaded && e.lengthComputable) {
      setProgress('Uploading ' + file.name + '… ' + Math.round((e.loaded / e.total) * 100) + '%', e.loaded, e.total);
    }
  };
  xhr.upload.onload = function () {
    if (!running) return;
    running.uploaded = true;
    setBusy(true);
    setProgress('Importing…');
  };
  xhr.onload = function () {
    var data = null;
    try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
    finish();
    if (xhr.status >= 200 && xhr.status < 300 && data) {
      ui.file.value = '';
      var imported = Number(data.imported) || 0;
      var list = Array.isArray(data.conversations) ? data.conversations : [];
      ui.result.textContent = importSummary(imported, Number(data.skipped) || 0);
      showImported(list);
      refreshSidebar(imported);
      if (ui.dialog.open) ui.close.focus();
      else showNotice(ui.result.textContent);
      return;
    }
    var err = apiError({ status: xhr.status }, data);
    if (err.code === 'unauthenticated') { ui.dialog.close(); onUnauthenticated(); return; }
    failed(err.message);
  };
  xhr.onerror = function () {
    finish();
    failed('Could not import “' + file.name + '”: the server could not be reached. Importing the same file again does not add anything twice.');
  };
  xhr.onabort = function () {
    finish();
    ui.result.textContent = 'Import cancelled.';
    ui.file.focus();
  };
  xhr.send(file);
}

export function bindImportUi() {
  ui.button.addEventListener('click', openDialog);
  ui.form.addEventListener('submit', function (e) { e.preventDefault(); startImport(); });
  ui.close.addEventListener('click', closeDialog);
  ui.dialog.addEventListener('cancel', function (e) { e.preventDefault(); closeDialog(); });
  ui.dialog.addEventListener('close', function () {
    if (!els.authDialog.open) ui.button.focus();
  });
  ui.file.addEventListener('change', function () {
    clearResult();
    if (ui.file.files && ui.file.files[0]) ui.submit.focus();
  });
  ui.list.addEventListener('click', function (e) {
    var open = e.target.closest('.import-open');
    if (!open || !open.dataset.id) return;
    ui.dialog.close();
    closeSidebar();
    loadConversation(open.dataset.id).then(function () { els.input.focus(); }, function (err) { showError(err.message); });
  });
}
