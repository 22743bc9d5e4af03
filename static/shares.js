/*
 * The share links dialog (Share… in the conversation menu): listing,
 * creating and revoking read-only links to the user's conversations.
 */
import { els, state } from './state.js';
import { copyText, formatDate, sendJson, showNotice } from './api.js';
import { confirmAction } from './dialogs.js';
import { setDialogError } from './accounts.js';

// Share links: GET/POST/DELETE /api/shares. A new link is shown once,
// in a read-only field with a Copy button (only its hash is kept); the
// list names each link by its conversation's title.

function shareRow(share) {
  var li = document.createElement('li');
  li.className = 'token-item share-item';
  var text = document.createElement('span');
  text.className = 'token-item-text';
  var name = document.createElement('span');
  name.className = 'token-item-name';
  var title = String(share.title || 'Untitled conversation');
  name.textContent = title;
  var date = document.createElement('span');
  date.className = 'token-item-date';
  var count = Number(share.message_count) || 0;
  date.textContent = 'Shared ' + formatDate(share.created_at) + ' · ' + count + (count === 1 ? ' message' : ' messages');
  text.appendChild(name);
  text.appendChild(date);
  var revoke = document.createElement('button');
  revoke.type = 'button';
  revoke.className = 'button button-quiet token-revoke';
  revoke.textContent = 'Revoke';
  revoke.setAttribute('aria-label', 'Revoke the link to ' + title);
  revoke.addEventListener('click', function () { revokeShare(share, revoke); });
  li.appendChild(text);
  li.appendChild(revoke);
  return li;
}

function loadShares() {
  return sendJson('GET', '/api/shares').then(function (data) {
    var shares = (data && Array.isArray(data.shares)) ? data.shares : [];
    els.sharesList.textContent = '';
    shares.forEach(function (share) { els.sharesList.appendChild(shareRow(share)); });
    els.sharesEmpty.hidden = shares.length > 0;
  }, function (err) {
    setDialogError(els.sharesError, 'Could not list your links: ' + err.message);
  });
}

function forgetNewShare() {
  els.shareUrl.value = '';
  els.shareCreated.hidden = true;
}

export function openSharesDialog() {
  forgetNewShare();
  setDialogError(els.sharesError, '');
  els.sharesList.textContent = '';
  els.sharesEmpty.hidden = true;
  els.shareCreate.disabled = !state.currentId;
  els.sharesDialog.showModal();
  els.shareCreate.focus();
  loadShares();
}

function createShare() {
  if (els.shareCreate.disabled || !state.currentId) return;
  els.shareCreate.disabled = true;
  setDialogError(els.sharesError, '');
  sendJson('POST', '/api/shares', { conversation_id: state.currentId }).then(function (data) {
    els.shareUrl.value = new URL(String((data && data.url) || ''), window.location.href).href;
    els.shareCreated.hidden = false;
    els.shareUrl.focus();
    els.shareUrl.select();
    return loadShares();
  }, function (err) {
    setDialogError(els.sharesError, err.message);
  }).then(function () {
    els.shareCreate.disabled = !state.currentId;
  });
}

function revokeShare(share, button) {
  var title = String(share.title || 'Untitled conversation');
  confirmAction('Revoke this link?', 'Whoever has the link to “' + title + '” will no longer see it.', 'Revoke').then(function (ok) {
    if (!ok) { button.focus(); return; }
    button.disabled = true;
    sendJson('DELETE', '/api/shares/' + encodeURIComponent(String(share.id))).then(function () {
      showNotice('Link to “' + title + '” revoked.');
      return loadShares();
    }, function (err) {
      button.disabled = false;
      setDialogError(els.sharesError, 'Could not revoke the link: ' + err.message);
    }).then(function () {
      els.shareCreate.focus();
    });
  });
}

export function bindSharesUi() {
  els.sharesForm.addEventListener('submit', function (e) { e.preventDefault(); createShare(); });
  els.sharesClose.addEventListener('click', function () { els.sharesDialog.close(); });
  els.sharesDialog.addEventListener('close', function () {
    forgetNewShare();
    els.input.focus();
  });
  els.shareCopy.addEventListener('click', function () {
    copyText(els.shareUrl.value).then(function () {
      els.shareCopy.textContent = 'Copied';
      setTimeout(function () { els.shareCopy.textContent = 'Copy'; }, 1500);
    }, function () {
      els.shareUrl.select();
      setDialogError(els.sharesError, 'Could not copy: select the link and copy it yourself.');
    });
  });
}
