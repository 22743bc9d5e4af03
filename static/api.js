/*
 * The page's HTTP calls (JSON, one session lock for "make X current, then
 * act on it"), error and notice lines, and small formatting helpers.
 */
import { groupDigits, quotaMessage } from './format.js';
import { NOTICE_MS, STORAGE_KEY, auth, els, state } from './state.js';
import { accountsOn, onUnauthenticated } from './accounts.js';

export function storageGet() {
  try { return window.localStorage.getItem(STORAGE_KEY); } catch (e) { return null; }
}
export function storageSet(id) {
  try {
    if (id) window.localStorage.setItem(STORAGE_KEY, id);
    else window.localStorage.removeItem(STORAGE_KEY);
  } catch (e) { /* storage unavailable */ }
}

export function apiError(res, data) {
  var err = new Error((data && data.message) || ('The server answered ' + res.status + '.'));
  err.status = res.status;
  err.code = data && data.error;
  if (data && typeof data.retry_after === 'number') err.retryAfter = data.retry_after;
  if (err.code === 'quota_exceeded') err.message = quotaMessage(data);
  return err;
}


/** The account menu's "Used today" line, from GET /usage. */
export function refreshUsage() {
  if (!accountsOn() || !auth.me) return;
  sendJson('GET', '/usage').then(function (usage) {
    if (!usage || typeof usage !== 'object') return;
    var used = (Number(usage.prompt_tokens) || 0) + (Number(usage.completion_tokens) || 0);
    var quota = Number(usage.quota_tokens_per_day) || 0;
    var text = groupDigits(used) + (quota > 0 ? ' / ' + groupDigits(quota) : '') + ' tokens today';
    if (quota > 0 && used >= quota) text += ' (quota used up)';
    els.accountUsageText.textContent = text;
    els.accountUsage.hidden = false;
  }, function () {
    els.accountUsage.hidden = true;
  });
}

function rawApi(method, path, body) {
  return sendJson(method, path, body).catch(function (err) {
    // A conversation route refused for want of an account: the session has
    // ended (signed out in another tab, expired) or never started.
    if (err.code === 'unauthenticated' && path.indexOf('/auth/') !== 0) onUnauthenticated();
    throw err;
  });
}

export function sendJson(method, path, body) {
  var opts = { method: method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  return fetch(path, opts).then(function (res) {
    return res.text().then(function (text) {
      var data = null;
      try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
      if (!res.ok) throw apiError(res, data);
      return data;
    });
  }, function () {
    var err = new Error('Could not reach the server.');
    err.status = 0;
    throw err;
  });
}
const inFlight = new Set();

export function api(method, path, body) {
  var p = state.sessionLock.then(function () { return rawApi(method, path, body); });
  var tracked = p.catch(function () { /* settled */ });
  inFlight.add(tracked);
  tracked.then(function () { inFlight.delete(tracked); });
  return p;
}

/** Makes `id` the session's current conversation, then runs `then(call)`; `call` is the API inside the lock. */
export function withCurrent(id, then) {
  var run = state.sessionLock.then(function () {
    return Promise.all(Array.from(inFlight));
  }).then(function () {
    return rawApi('GET', '/load_conversation/' + encodeURIComponent(id));
  }).then(function (data) {
    return then(rawApi, data);
  });
  state.sessionLock = run.catch(function () { /* the next one may go */ });
  return run;
}

export function showError(message) {
  els.error.textContent = message;
  els.error.classList.add('is-visible');
  els.notice.textContent = '';
}
export function clearError() {
  if (state.rateLimitedUntil > Date.now()) return; // the countdown owns the line
  els.error.textContent = '';
  els.error.classList.remove('is-visible');
}
export function showNotice(message) {
  clearTimeout(state.noticeTimer);
  if (!els.error.classList.contains('is-visible')) els.notice.textContent = message;
  state.noticeTimer = setTimeout(function () { els.notice.textContent = ''; }, NOTICE_MS);
}

export function formatDate(iso) {
  if (!iso) return '';
  var d = new Date(iso);
  if (isNaN(d.getTime())) return '';
  var now = new Date();
  if (d.toDateString() === now.toDateString()) {
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }
  return d.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

export function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text);
  }
  return new Promise(function (resolve, reject) {
    var area = document.createElement('textarea');
    area.value = text;
    area.setAttribute('readonly', '');
    area.className = 'clipboard-helper';
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
    area.remove();
    if (ok) resolve(); else reject(new Error('copy failed'));
  });
}

export function flashCopied(button) {
  var label = button.getAttribute('aria-label') || '';
  button.classList.add('is-copied');
  button.setAttribute('aria-label', 'Copied');
  setTimeout(function () {
    button.classList.remove('is-copied');
    button.setAttribute('aria-label', label);
  }, 1500);
}
