/*
 * The API tokens dialog: listing, creating (shown once) and revoking tokens.
 */
import { els } from './state.js';
import { copyText, formatDate, sendJson, showNotice } from './api.js';
import { confirmAction } from './dialogs.js';
import { setDialogError } from './accounts.js';

// Personal access tokens: GET/POST/DELETE /api/tokens. A new token is
// shown once, in a read-only field with a Copy button; it is forgotten
// when the dialog closes.

function tokenRow(token) {
  var li = document.createElement('li');
  li.className = 'token-item';
  var text = document.createElement('span');
  text.className = 'token-item-text';
  var name = document.createElement('span');
  name.className = 'token-item-name';
  name.textContent = String(token.name || '');
  var date = document.createElement('span');
  date.className = 'token-item-date';
  date.textContent = 'Created ' + formatDate(token.created_at);
  text.appendChild(name);
  text.appendChild(date);
  var revoke = document.createElement('button');
  revoke.type = 'button';
  revoke.className = 'button button-quiet token-revoke';
  revoke.textContent = 'Revoke';
  revoke.setAttribute('aria-label', 'Revoke ' + String(token.name || 'token'));
  revoke.addEventListener('click', function () { revokeToken(token, revoke); });
  li.appendChild(text);
  li.appendChild(revoke);
  return li;
}

function showTokens(tokens) {
  els.tokensList.textContent = '';
  tokens.forEach(function (token) { els.tokensList.appendChild(tokenRow(token)); });
  els.tokensEmpty.hidden = tokens.length > 0;
}

function loadTokens() {
  return sendJson('GET', '/api/tokens').then(function (data) {
    showTokens((data && Array.isArray(data.tokens)) ? data.tokens : []);
  }, function (err) {
    setDialogError(els.tokensError, 'Could not list your tokens: ' + err.message);
  });
}

function forgetNewToken() {
  els.tokenValue.value = '';
  els.tokenCreated.hidden = true;
}

function openTokensDialog() {
  forgetNewToken();
  els.tokenName.value = '';
  els.tokenName.removeAttribute('aria-invalid');
  setDialogError(els.tokensError, '');
  els.tokensList.textContent = '';
  els.tokensEmpty.hidden = true;
  els.tokensDialog.showModal();
  els.tokenName.focus();
  loadTokens();
}

function createToken() {
  if (els.tokenCreate.disabled) return;
  var name = els.tokenName.value.trim();
  if (!name) {
    setDialogError(els.tokensError, 'Give the token a name.');
    els.tokenName.setAttribute('aria-invalid', 'true');
    els.tokenName.focus();
    return;
  }
  els.tokenCreate.disabled = true;
  setDialogError(els.tokensError, '');
  sendJson('POST', '/api/tokens', { name: name }).then(function (data) {
    els.tokenName.value = '';
    els.tokenValue.value = String((data && data.token) || '');
    els.tokenCreated.hidden = false;
    els.tokenValue.focus();
    els.tokenValue.select();
    return loadTokens();
  }, function (err) {
    setDialogError(els.tokensError, err.message);
    els.tokenName.setAttribute('aria-invalid', 'true');
    els.tokenName.focus();
  }).then(function () {
    els.tokenCreate.disabled = false;
  });
}

function revokeToken(token, button) {
  var name = String(token.name || '');
  confirmAction('Revoke this token?', 'Scripts that use “' + name + '” will stop working at once.', 'Revoke').then(function (ok) {
    if (!ok) { button.focus(); return; }
    button.disabled = true;
    sendJson('DELETE', '/api/tokens/' + encodeURIComponent(String(token.id))).then(function () {
      showNotice('Token “' + name + '” revoked.');
      return loadTokens();
    }, function (err) {
      button.disabled = false;
      setDialogError(els.tokensError, 'Could not revoke the token: ' + err.message);
    }).then(function () {
      els.tokenName.focus();
    });
  });
}

export function bindTokensUi() {
  els.tokensButton.addEventListener('click', function () {
    els.accountMenu.open = false;
    openTokensDialog();
  });
  els.tokensForm.addEventListener('submit', function (e) { e.preventDefault(); createToken(); });
  els.tokensClose.addEventListener('click', function () { els.tokensDialog.close(); });
  els.tokensDialog.addEventListener('close', function () {
    forgetNewToken();
    els.input.focus();
  });
  els.tokenName.addEventListener('input', function () {
    els.tokenName.removeAttribute('aria-invalid');
    setDialogError(els.tokensError, '');
  });
  els.tokenCopy.addEventListener('click', function () {
    copyText(els.tokenValue.value).then(function () {
      els.tokenCopy.textContent = 'Copied';
      setTimeout(function () { els.tokenCopy.textContent = 'Copy'; }, 1500);
    }, function () {
      els.tokenValue.select();
      setDialogError(els.tokensError, 'Could not copy: select the token and copy it yourself.');
    });
  });
}
