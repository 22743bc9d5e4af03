/*
 * Chat page, the entry ES module: wires the page's controls to the modules
 * that do the work, then starts. The page talks to the server over plain
 * HTTP (JSON, api.js) and Socket.IO (live.js on socket.js, the official
 * socket.io-client); replies are rendered by markdown.js (markdown-it,
 * KaTeX, highlight.js, through DOMPurify). The pure rules live in modules of
 * their own, with unit tests: stream-events.js (chunks, held events,
 * replay), search.js, format.js and limits.js. Shared state: state.js; the rest by concern:
 * transcript.js, sidebar.js, conversations.js, composer.js, upload.js,
 * dialogs.js, accounts.js, tokens.js, shares.js, import.js, models.js, branches.js,
 * shortcuts.js, settings.js, startup.js.
 */
import { els, rawText, regenerateButton, state, streams } from './state.js';
import { copyText, flashCopied, refreshUsage, showError } from './api.js';
import { setUsage } from './transcript.js';
import { loadMore, onSearchInput, runSearch } from './sidebar.js';
import { deleteConversation, exportConversation, loadConversation, newChat, resetConversation, saveOnServer } from './conversations.js';
import { closeConfirm, openFewShot, submitFewShot } from './dialogs.js';
import { startEdit, switchBranch } from './branches.js';
import { openSharesDialog } from './shares.js';
import { describeLimits, hasFiles, uploadFile } from './upload.js';
import { regenerate, sendMessage, stopGeneration, updateControls } from './composer.js';
import { bindAccountUi } from './accounts.js';
import { init } from './startup.js';
import { onShortcut, openShortcuts } from './shortcuts.js';
import { bindSettings } from './settings.js';
import { bindImportUi } from './import.js';

function closeMenu() {
  if (els.menu.open) els.menu.open = false;
}

/** A <details> menu: focus its first item on open, arrows move, Escape closes. */
function bindMenuKeys(menu, button) {
  menu.addEventListener('toggle', function () {
    if (menu.open) {
      var first = menu.querySelector('.menu-item:not(:disabled)');
      if (first) first.focus();
    }
  });
  menu.addEventListener('keydown', function (e) {
    if (e.key === 'Escape' && menu.open) {
      e.preventDefault();
      menu.open = false;
      button.focus();
    } else if ((e.key === 'ArrowDown' || e.key === 'ArrowUp') && menu.open) {
      var items = Array.prototype.slice.call(menu.querySelectorAll('.menu-item:not(:disabled)'));
      var at = items.indexOf(document.activeElement);
      var next = items[(at + (e.key === 'ArrowDown' ? 1 : items.length - 1)) % items.length];
      if (next) { e.preventDefault(); next.focus(); }
    }
  });
}

function bindUi() {
  els.form.addEventListener('submit', function (e) {
    e.preventDefault();
    sendMessage();
  });
  els.input.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      sendMessage();
    } else if (e.key === 'Escape' && state.currentId && streams.has(state.currentId)) {
      e.preventDefault();
      stopGeneration();
    }
  });
  els.stop.addEventListener('click', stopGeneration);
  regenerateButton.addEventListener('click', regenerate);
  els.newChat.addEventListener('click', newChat);

  els.list.addEventListener('click', function (e) {
    if (e.target.closest('#load-more-button')) { loadMore(); return; }
    var btn = e.target.closest('.conversation-item');
    if (!btn || !btn.dataset.id) return;
    loadConversation(btn.dataset.id).then(function () {
      els.input.focus();
    }, function (err) { showError(err.message); });
  });
  els.sidebarToggle.addEventListener('click', function () {
    var open = !els.sidebar.classList.contains('is-open');
    els.sidebar.classList.toggle('is-open', open);
    els.sidebarToggle.setAttribute('aria-expanded', open ? 'true' : 'false');
  });
  els.search.addEventListener('input', onSearchInput);
  els.search.addEventListener('keydown', function (e) {
    if (e.key === 'Escape' && els.search.value) {
      e.preventDefault();
      els.search.value = '';
      onSearchInput();
    } else if (e.key === 'Enter') {
      e.preventDefault();
      clearTimeout(state.searchTimer);
      if (els.search.value.trim()) runSearch(els.search.value.trim());
    }
  });

  // Copy buttons (code blocks and replies), wherever they are.
  els.transcript.addEventListener('click', function (e) {
    var codeCopy = e.target.closest('.code-copy');
    if (codeCopy) {
      var code = codeCopy.closest('.code-block').querySelector('pre code');
      copyText(code ? code.textContent : '').then(function () { flashCopied(codeCopy); },
        function () { showError('Could not copy to the clipboard.'); });
      return;
    }
    var arrow = e.target.closest('.branch-prev, .branch-next');
    if (arrow) {
      var nav = arrow.closest('.branch-nav');
      var step = arrow.classList.contains('branch-next') ? 1 : -1;
      switchBranch(Number(nav.dataset.index), Number(nav.dataset.position) + step);
      return;
    }
    var edit = e.target.closest('.edit-message');
    if (edit) {
      startEdit(edit.closest('.message'));
      return;
    }
    var msgCopy = e.target.closest('.copy-message');
    if (msgCopy) {
      var message = msgCopy.closest('.message');
      copyText(rawText.get(message) || message.querySelector('.message-content').textContent).then(function () {
        flashCopied(msgCopy);
      }, function () { showError('Could not copy to the clipboard.'); });
    }
  });

  // Conversation actions menu.
  var actions = [
    [els.share, openSharesDialog],
    [els.save, saveOnServer],
    [els.exportMd, function () { exportConversation('md'); }],
    [els.exportJson, function () { exportConversation('json'); }],
    [els.fewShot, openFewShot],
    [els.reset, resetConversation],
    [els.del, deleteConversation]
  ];
  actions.forEach(function (pair) {
    pair[0].addEventListener('click', function () {
      closeMenu();
      pair[1]();
      // Back to the message box, unless the action opened a dialog.
      if (!els.confirmDialog.open && !els.fewShotDialog.open && !els.sharesDialog.open) els.input.focus();
    });
  });
  bindMenuKeys(els.menu, els.menuButton);
  bindMenuKeys(els.accountMenu, els.accountMenuButton);
  els.accountMenu.addEventListener('toggle', function () {
    if (els.accountMenu.open) refreshUsage();
  });
  document.addEventListener('click', function (e) {
    if (els.menu.open && !els.menu.contains(e.target)) closeMenu();
    if (els.accountMenu.open && !els.accountMenu.contains(e.target)) els.accountMenu.open = false;
  });

  // Dialogs.
  els.confirmForm.addEventListener('submit', function (e) { e.preventDefault(); closeConfirm(true); });
  els.confirmCancel.addEventListener('click', function () { closeConfirm(false); });
  els.confirmDialog.addEventListener('cancel', function (e) { e.preventDefault(); closeConfirm(false); });
  els.fewShotForm.addEventListener('submit', function (e) { e.preventDefault(); submitFewShot(); });
  els.fewShotCancel.addEventListener('click', function () { els.fewShotDialog.close(); });
  [els.fewShotUser, els.fewShotAssistant].forEach(function (field) {
    field.addEventListener('input', function () { els.fewShotError.textContent = ''; });
  });
  els.fewShotDialog.addEventListener('close', function () { els.input.focus(); });

  // Files: pick, or drop anywhere on the chat.
  els.attach.addEventListener('click', function () { els.fileInput.click(); });
  els.fileInput.addEventListener('change', function () {
    if (els.fileInput.files && els.fileInput.files[0]) uploadFile(els.fileInput.files[0]);
  });
  els.chat.addEventListener('dragenter', function (e) {
    if (!hasFiles(e)) return;
    e.preventDefault();
    state.dragDepth++;
    els.chat.classList.add('is-dragging');
  });
  els.chat.addEventListener('dragover', function (e) {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = 'copy';
  });
  els.chat.addEventListener('dragleave', function (e) {
    if (!hasFiles(e)) return;
    state.dragDepth = Math.max(0, state.dragDepth - 1);
    if (!state.dragDepth) els.chat.classList.remove('is-dragging');
  });
  els.chat.addEventListener('drop', function (e) {
    if (!hasFiles(e)) return;
    e.preventDefault();
    state.dragDepth = 0;
    els.chat.classList.remove('is-dragging');
    var files = e.dataTransfer.files;
    if (files && files.length > 1) showError('Please drop one file at a time.');
    else if (files && files[0]) uploadFile(files[0]);
    els.input.focus();
  });

  els.shortcutsButton.addEventListener('click', openShortcuts);
  document.addEventListener('keydown', onShortcut);
}

bindUi();
bindAccountUi();
bindSettings();
bindImportUi();
describeLimits();
setUsage(null);
updateControls();
init();
