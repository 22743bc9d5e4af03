/*
 * Chat page (an ES module). Talks to the server over plain HTTP (JSON) and
 * Socket.IO (static/socket.js, on the official socket.io-client); replies
 * are rendered by static/markdown.js (markdown-it, KaTeX, highlight.js,
 * through DOMPurify). The pure rules live in modules of their own, with
 * unit tests: stream-events.js (chunks, held events, replay) and search.js.
 */
import { acceptChunk, replayAfterWatch, shouldHold } from './stream-events.js';
import { highlightParts, searchTerms } from './search.js';
import { createSocket } from './socket.js';
import * as md from './markdown.js';

(function () {
  'use strict';

  var STORAGE_KEY = 'llmChat.currentConversation';
  var PAGE_SIZE = 40;            // conversations per sidebar page
  var WATCH_ACK_TIMEOUT_MS = 8000;
  var NOTICE_MS = 6000;
  var STATUS_TEXT = {
    connecting: 'Connecting…',
    connected: 'Connected',
    reconnecting: 'Reconnecting…',
    offline: 'Offline'
  };
  var TRANSPORT_TEXT = {
    websocket: 'Connected over WebSocket',
    polling: 'Connected over HTTP long-polling (WebSocket is unavailable)'
  };

  function byId(id) { return document.getElementById(id); }

  var els = {
    body: document.body,
    input: byId('message-input'),
    form: byId('composer'),
    send: byId('send-button'),
    modelPicker: byId('model-picker'),
    stop: byId('stop-button'),
    newChat: byId('new-chat-button'),
    shortcutsButton: byId('shortcuts-button'),
    shortcutsDialog: byId('shortcuts-dialog'),
    transcript: byId('transcript'),
    empty: byId('transcript-empty'),
    list: byId('conversation-list'),
    search: byId('search-input'),
    searchStatus: byId('search-status'),
    usage: byId('token-usage'),
    meter: byId('token-meter'),
    meterWrap: byId('token-meter-wrap'),
    tokenNote: byId('token-note'),
    error: byId('error-line'),
    notice: byId('notice'),
    status: byId('connection-status'),
    title: byId('conversation-title'),
    sidebar: byId('sidebar'),
    sidebarToggle: byId('sidebar-toggle'),
    chat: byId('chat'),
    menu: byId('conversation-menu'),
    menuButton: byId('conversation-menu-button'),
    share: byId('share-button'),
    save: byId('save-button'),
    exportMd: byId('export-md-button'),
    exportJson: byId('export-json-button'),
    fewShot: byId('few-shot-button'),
    reset: byId('reset-button'),
    del: byId('delete-button'),
    attach: byId('attach-button'),
    fileInput: byId('file-input'),
    fileLimits: byId('file-limits'),
    hint: byId('composer-hint'),
    uploadStatus: byId('upload-status'),
    uploadLabel: byId('upload-label'),
    uploadProgress: byId('upload-progress'),
    dropText: byId('drop-overlay-text'),
    fewShotDialog: byId('few-shot-dialog'),
    fewShotForm: byId('few-shot-form'),
    fewShotUser: byId('few-shot-user'),
    fewShotAssistant: byId('few-shot-assistant'),
    fewShotError: byId('few-shot-error'),
    fewShotCancel: byId('few-shot-cancel'),
    fewShotSubmit: byId('few-shot-submit'),
    confirmDialog: byId('confirm-dialog'),
    confirmForm: byId('confirm-form'),
    confirmTitle: byId('confirm-title'),
    confirmText: byId('confirm-text'),
    confirmOk: byId('confirm-ok'),
    confirmCancel: byId('confirm-cancel'),
    account: byId('account'),
    signIn: byId('sign-in-button'),
    accountMenu: byId('account-menu'),
    accountMenuButton: byId('account-menu-button'),
    accountEmail: byId('account-email'),
    accountWho: byId('account-who'),
    accountUsage: byId('account-usage'),
    accountUsageText: byId('account-usage-text'),
    changePassword: byId('change-password-button'),
    adminLink: byId('admin-link'),
    signOut: byId('sign-out-button'),
    signOutEverywhere: byId('sign-out-everywhere-button'),
    authDialog: byId('auth-dialog'),
    authForm: byId('auth-form'),
    authTitle: byId('auth-title'),
    authHelp: byId('auth-help'),
    authNameField: byId('auth-name-field'),
    authName: byId('auth-name'),
    authLocal: byId('auth-local-fields'),
    authEmail: byId('auth-email'),
    authPassword: byId('auth-password'),
    authPasswordHint: byId('auth-password-hint'),
    authError: byId('auth-error'),
    authCancel: byId('auth-cancel'),
    authSubmit: byId('auth-submit'),
    authSwitchLine: byId('auth-switch-line'),
    authSwitchText: byId('auth-switch-text'),
    authSwitch: byId('auth-switch'),
    authProviders: byId('auth-providers'),
    authOr: byId('auth-or'),
    passwordDialog: byId('password-dialog'),
    passwordForm: byId('password-form'),
    passwordUsername: byId('password-username'),
    passwordCurrent: byId('password-current'),
    passwordNew: byId('password-new'),
    passwordError: byId('password-error'),
    passwordCancel: byId('password-cancel'),
    passwordSubmit: byId('password-submit'),
    tokensButton: byId('tokens-button'),
    tokensDialog: byId('tokens-dialog'),
    tokensForm: byId('tokens-form'),
    tokensList: byId('tokens-list'),
    tokensEmpty: byId('tokens-empty'),
    tokensError: byId('tokens-error'),
    tokensClose: byId('tokens-close'),
    tokenCreated: byId('token-created'),
    tokenValue: byId('token-value'),
    tokenCopy: byId('token-copy'),
    tokenName: byId('token-name'),
    tokenCreate: byId('token-create'),
    sharesDialog: byId('shares-dialog'),
    sharesForm: byId('shares-form'),
    sharesList: byId('shares-list'),
    sharesEmpty: byId('shares-empty'),
    sharesError: byId('shares-error'),
    sharesClose: byId('shares-close'),
    shareCreated: byId('share-created'),
    shareUrl: byId('share-url'),
    shareCopy: byId('share-copy'),
    shareCreate: byId('share-create')
  };

  var config = {
    max_tokens: Number(els.body.dataset.maxTokens) || 0,
    reply_tokens: 0,
    demo_mode: els.body.dataset.demoMode === 'true',
    max_message_chars: 0,
    max_file_size_mb: 0,
    allowed_extensions: []
  };

  var conversations = new Map(); // conversation_id -> summary from the server
  var listLoaded = 0;            // rows of /list_conversations this page holds
  var listHasMore = false;
  var listLoading = false;
  var search = null;             // {query, results|null, error}
  var searchSeq = 0;
  var searchTimer = null;
  var currentId = null;
  // conversation_id -> the model id it uses (from the server, or picked)
  var conversationModels = new Map();
  // conversation_id -> stream (see newStream)
  var streams = new Map();
  var socket = null;
  var initialized = false;
  var initializing = false;
  var loadSeq = 0;
  var disconnectedOnce = false;
  var connectEpoch = 0;          // counts socket connections
  var pendingWatch = null;       // {id, buffer, timer}
  var usageById = new Map();     // conversation_id -> last token_usage
  var summarisedIds = new Set(); // conversations whose older turns were summarised
  var analyses = new Map();      // conversation_id -> [{after, el}] (this tab only)
  var rawText = new WeakMap();   // message element -> its text
  var upload = null;             // {name, xhr}
  var rateLimitedUntil = 0;
  var rateLimitTimer = null;
  var noticeTimer = null;
  // Accounts (GET /get_config `auth`; see the "accounts" section below).
  var auth = {
    mode: 'none',        // 'none': no accounts and no account UI at all
    signupOpen: false,
    anonymous: true,     // false: nothing works before signing in
    providers: [],       // single sign-on providers: [{id, name}]
    me: null,            // the /auth/me body when signed in
    checked: false,      // /auth/me has answered
    required: false,     // the page waits behind the sign-in dialog
    signup: false,       // the dialog is in "Create an account" mode
    rechecking: false
  };

  var regenerateButton = document.createElement('button');
  regenerateButton.type = 'button';
  regenerateButton.id = 'regenerate-button';
  regenerateButton.className = 'message-action regenerate';

  // ---------------------------------------------------------------- helpers

  function storageGet() {
    try { return window.localStorage.getItem(STORAGE_KEY); } catch (e) { return null; }
  }
  function storageSet(id) {
    try {
      if (id) window.localStorage.setItem(STORAGE_KEY, id);
      else window.localStorage.removeItem(STORAGE_KEY);
    } catch (e) { /* storage unavailable */ }
  }

  function apiError(res, data) {
    var err = new Error((data && data.message) || ('The server answered ' + res.status + '.'));
    err.status = res.status;
    err.code = data && data.error;
    if (data && typeof data.retry_after === 'number') err.retryAfter = data.retry_after;
    if (err.code === 'quota_exceeded') err.message = quotaMessage(data);
    return err;
  }

  /** A `quota_exceeded` error's sentence, with the reset time in the reader's own time zone. */
  function quotaMessage(data) {
    var message = (data && typeof data.message === 'string' && data.message) || 'You have used your tokens for today.';
    var at = data && typeof data.resets_at === 'string' ? new Date(data.resets_at) : null;
    if (!at || isNaN(at.getTime())) return message;
    var when = at.toLocaleString([], { weekday: 'short', hour: '2-digit', minute: '2-digit' });
    return message.replace(/\s*The quota resets at .*$/, '') + ' It resets on ' + when + ' (your time).';
  }

  /** 12345 as "12 345" (no-break spaces, so a number never wraps). */
  function groupDigits(n) {
    return String(Math.max(0, Math.floor(Number(n) || 0))).replace(/\B(?=(\d{3})+(?!\d))/g, '\u00a0');
  }

  /** The account menu's "Used today" line, from GET /usage. */
  function refreshUsage() {
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

  function sendJson(method, path, body) {
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

  // The server keeps the "current conversation" in the session, and every
  // request writes the session back: a request running while another one
  // changes the current conversation can undo that change. So the page's
  // requests wait while a "make X current, then act on it" sequence runs,
  // and such a sequence waits for the requests already on their way.
  var sessionLock = Promise.resolve();
  var inFlight = new Set();

  function api(method, path, body) {
    var p = sessionLock.then(function () { return rawApi(method, path, body); });
    var tracked = p.catch(function () { /* settled */ });
    inFlight.add(tracked);
    tracked.then(function () { inFlight.delete(tracked); });
    return p;
  }

  /** Makes `id` the session's current conversation, then runs `then(call)`; `call` is the API inside the lock. */
  function withCurrent(id, then) {
    var run = sessionLock.then(function () {
      return Promise.all(Array.from(inFlight));
    }).then(function () {
      return rawApi('GET', '/load_conversation/' + encodeURIComponent(id));
    }).then(function (data) {
      return then(rawApi, data);
    });
    sessionLock = run.catch(function () { /* the next one may go */ });
    return run;
  }

  function showError(message) {
    els.error.textContent = message;
    els.error.classList.add('is-visible');
    els.notice.textContent = '';
  }
  function clearError() {
    if (rateLimitedUntil > Date.now()) return; // the countdown owns the line
    els.error.textContent = '';
    els.error.classList.remove('is-visible');
  }
  function showNotice(message) {
    clearTimeout(noticeTimer);
    if (!els.error.classList.contains('is-visible')) els.notice.textContent = message;
    noticeTimer = setTimeout(function () { els.notice.textContent = ''; }, NOTICE_MS);
  }

  function codePoints(text) {
    return Array.from(text).length;
  }

  function formatDate(iso) {
    if (!iso) return '';
    var d = new Date(iso);
    if (isNaN(d.getTime())) return '';
    var now = new Date();
    if (d.toDateString() === now.toDateString()) {
      return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    }
    return d.toLocaleDateString([], { month: 'short', day: 'numeric' });
  }

  function formatBytes(n) {
    if (n < 1024) return n + ' bytes';
    if (n < 1024 * 1024) return (n / 1024).toFixed(n < 10240 ? 1 : 0) + ' KB';
    return (n / 1024 / 1024).toFixed(1) + ' MB';
  }

  function copyText(text) {
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

  function flashCopied(button) {
    var label = button.getAttribute('aria-label') || '';
    button.classList.add('is-copied');
    button.setAttribute('aria-label', 'Copied');
    setTimeout(function () {
      button.classList.remove('is-copied');
      button.setAttribute('aria-label', label);
    }, 1500);
  }

  // ------------------------------------------------------------- transcript

  function isNearBottom() {
    var t = els.transcript;
    return t.scrollHeight - t.scrollTop - t.clientHeight < 64;
  }
  function scrollToBottom() {
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

  function appendMessage(role, text) {
    var stick = isNearBottom();
    var el = messageElement(role, text);
    els.transcript.appendChild(el);
    updateEmptyState();
    if (stick || role === 'user') scrollToBottom();
    return el;
  }

  function chatMessages() {
    return els.transcript.querySelectorAll('.message-user, .message-assistant, .message-system');
  }

  function clearTranscript() {
    var nodes = els.transcript.querySelectorAll('.message');
    for (var i = 0; i < nodes.length; i++) nodes[i].remove();
    updateEmptyState();
  }

  function updateEmptyState() {
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

  function renderHistory(history, branches) {
    clearTranscript();
    var frag = document.createDocumentFragment();
    var count = 0;
    var notes = (analyses.get(currentId) || []).slice();
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
    var s = streams.get(currentId);
    if (s) attachStream(s, false);
    updateEmptyState();
    placeRegenerate();
    scrollToBottom();
  }

  /** The last user message element and the messages after it. */
  function lastTurn() {
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
  function attachStream(s, initial) {
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
  function placeRegenerate() {
    var s = currentId ? streams.get(currentId) : null;
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
    regenerateButton.disabled = !(socket && socket.connected) || rateLimitedUntil > Date.now();
    if (regenerateButton.parentNode !== bar) bar.appendChild(regenerateButton);
  }

  function setTitle(conv) {
    var title = conv && conv.title ? conv.title : 'New conversation';
    els.title.textContent = title;
    els.title.title = title;
    document.title = (conv && conv.title ? conv.title + ' · ' : '') + 'LLM Chat';
  }

  function promptBudget() {
    var max = config.max_tokens;
    return config.reply_tokens > 0 && config.reply_tokens < max ? max - config.reply_tokens : max;
  }

  function showUsage(id) {
    var u = id ? usageById.get(id) : null;
    setUsage(u ? u.used : null, u ? u.max : undefined, id);
  }

  function setUsage(used, max, id) {
    if (typeof max === 'number' && max > 0) config.max_tokens = max;
    var maxTokens = config.max_tokens;
    var budget = promptBudget() || 1;
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

  // ---------------------------------------------------------------- sidebar

  function sortedConversations() {
    return Array.from(conversations.values()).sort(function (a, b) {
      var ta = Date.parse(a.created_at) || 0;
      var tb = Date.parse(b.created_at) || 0;
      if (tb !== ta) return tb - ta;
      return String(b.conversation_id).localeCompare(String(a.conversation_id));
    });
  }

  /** Appends `text` to `parent`, with whole-word matches of `terms` in <mark>. */
  function appendHighlighted(parent, text, terms) {
    if (!terms || !terms.length) { parent.textContent = text; return; }
    highlightParts(text, terms).forEach(function (part) {
      if (!part.mark) { parent.appendChild(document.createTextNode(part.text)); return; }
      var mark = document.createElement('mark');
      mark.textContent = part.text;
      parent.appendChild(mark);
    });
  }

  function conversationItem(c, terms, metaText) {
    var li = document.createElement('li');
    var btn = document.createElement('button');
    btn.type = 'button';
    btn.className = 'conversation-item';
    btn.dataset.id = c.conversation_id;
    if (c.conversation_id === currentId) btn.setAttribute('aria-current', 'true');
    var title = document.createElement('span');
    title.className = 'conversation-item-title';
    appendHighlighted(title, c.title || 'New conversation', terms);
    var meta = document.createElement('span');
    meta.className = 'conversation-item-meta';
    meta.textContent = metaText;
    if (streams.has(c.conversation_id)) btn.classList.add('is-streaming');
    btn.append(title, meta);
    li.appendChild(btn);
    return li;
  }

  var loadMoreItem = document.createElement('li');
  loadMoreItem.className = 'load-more-item';
  var loadMoreButton = document.createElement('button');
  loadMoreButton.type = 'button';
  loadMoreButton.id = 'load-more-button';
  loadMoreButton.className = 'button button-quiet load-more';
  loadMoreButton.textContent = 'Load older conversations';
  loadMoreItem.appendChild(loadMoreButton);

  function renderList() {
    var frag = document.createDocumentFragment();
    if (search) {
      var terms = searchTerms(search.query);
      var results = search.results || [];
      for (var r = 0; r < results.length; r++) {
        var hit = results[r];
        var known = conversations.get(hit.conversation_id) || {};
        var merged = Object.assign({}, known, hit);
        var inTitle = !!merged.title && terms.some(function (t) {
          return new RegExp('(?<![\\p{L}\\p{N}])' + t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '(?![\\p{L}\\p{N}])', 'iu').test(merged.title);
        });
        frag.appendChild(conversationItem(merged, terms,
          formatDate(merged.updated_at || merged.created_at) + (inTitle ? '' : ' · match in messages')));
      }
      if (search.error) els.searchStatus.textContent = search.error;
      else if (search.pending) els.searchStatus.textContent = 'Searching…';
      else if (!results.length) els.searchStatus.textContent = 'No conversation matches “' + search.query + '”.';
      else els.searchStatus.textContent = results.length + (results.length === 1 ? ' conversation matches' : ' conversations match') + ' “' + search.query + '”.';
    } else {
      var list = sortedConversations();
      for (var i = 0; i < list.length; i++) {
        var c = list[i];
        var count = typeof c.message_count === 'number' ? c.message_count : 0;
        frag.appendChild(conversationItem(c, null,
          formatDate(c.updated_at || c.created_at) + ' · ' + count + (count === 1 ? ' message' : ' messages')));
      }
      if (listHasMore) {
        loadMoreButton.disabled = listLoading;
        frag.appendChild(loadMoreItem);
      }
      els.searchStatus.textContent = '';
    }
    els.list.replaceChildren(frag);
  }

  function rememberConversation(summary) {
    var prev = conversations.get(summary.conversation_id) || {};
    var merged = Object.assign({}, prev, summary);
    if (!merged.created_at) merged.created_at = prev.created_at || summary.updated_at || new Date().toISOString();
    conversations.set(summary.conversation_id, merged);
    return merged;
  }

  /** Reloads the first rows of the list (as many as are shown). */
  function refreshList() {
    var limit = Math.min(1000, Math.max(PAGE_SIZE, listLoaded));
    return api('GET', '/list_conversations?limit=' + limit + '&offset=0').then(function (data) {
      var list = (data && data.conversations) || [];
      conversations.clear();
      for (var i = 0; i < list.length; i++) rememberConversation(list[i]);
      listLoaded = list.length;
      listHasMore = list.length >= limit;
      if (currentId && !conversations.has(currentId)) {
        rememberConversation({ conversation_id: currentId, title: null, message_count: 0 });
      }
      renderList();
    });
  }

  /** Loads the next page of older conversations. */
  function loadMore() {
    if (listLoading || !listHasMore || search) return;
    listLoading = true;
    loadMoreButton.disabled = true;
    loadMoreButton.textContent = 'Loading…';
    api('GET', '/list_conversations?limit=' + PAGE_SIZE + '&offset=' + listLoaded).then(function (data) {
      var list = (data && data.conversations) || [];
      for (var i = 0; i < list.length; i++) {
        if (!conversations.has(list[i].conversation_id)) rememberConversation(list[i]);
      }
      listLoaded += list.length;
      listHasMore = list.length >= PAGE_SIZE;
    }, function (err) {
      showError('Could not load older conversations: ' + err.message);
    }).then(function () {
      listLoading = false;
      loadMoreButton.textContent = 'Load older conversations';
      renderList();
      // Still in view (a tall sidebar): keep going.
      if (listHasMore && loadMoreVisible) setTimeout(loadMore, 0);
    });
  }

  var loadMoreVisible = false;
  if ('IntersectionObserver' in window) {
    new IntersectionObserver(function (entries) {
      loadMoreVisible = entries.some(function (e) { return e.isIntersecting; });
      if (loadMoreVisible) loadMore();
    }, { root: els.list, rootMargin: '0px 0px 200px 0px' }).observe(loadMoreButton);
  }

  function runSearch(query) {
    var seq = ++searchSeq;
    // The previous results stay up until the new ones arrive.
    search = { query: query, results: search ? search.results : null, error: null, pending: true };
    renderList();
    api('GET', '/search_conversations?q=' + encodeURIComponent(query)).then(function (data) {
      if (seq !== searchSeq || !search) return;
      search.results = (data && data.conversations) || [];
      search.pending = false;
      renderList();
    }, function (err) {
      if (seq !== searchSeq || !search) return;
      search.pending = false;
      search.error = err.message;
      search.results = [];
      renderList();
    });
  }

  function onSearchInput() {
    clearTimeout(searchTimer);
    var query = els.search.value.trim();
    if (!query) {
      searchSeq++;
      if (search) { search = null; renderList(); }
      return;
    }
    searchTimer = setTimeout(function () { runSearch(query); }, 200);
  }

  // ----------------------------------------------------------- conversations

  function selectConversation(id, history, title, branches) {
    var changed = currentId !== id;
    if (changed) dropOtherWatchStreams(id);
    currentId = id;
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

  function loadConversation(id) {
    var seq = ++loadSeq;
    clearError();
    return api('GET', '/load_conversation/' + encodeURIComponent(id)).then(function (data) {
      if (seq !== loadSeq) return;
      if (data && typeof data.model === 'string') conversationModels.set(id, data.model);
      selectConversation(id, (data && data.conversation) || [], data && data.title, data && data.branches);
      showModel(id);
    }, function (err) {
      if (seq !== loadSeq) return;
      if (err.status === 404) {
        conversations.delete(id);
        if (storageGet() === id) storageSet(null);
        renderList();
      }
      throw err;
    });
  }

  /** Re-reads the stored history of the open conversation (after a reply from elsewhere). */
  function refreshHistory(id) {
    api('GET', '/load_conversation/' + encodeURIComponent(id)).then(function (data) {
      if (id !== currentId || streams.has(id)) return;
      var stick = isNearBottom();
      var top = els.transcript.scrollTop;
      renderHistory((data && data.conversation) || [], data && data.branches);
      if (!stick) els.transcript.scrollTop = top;
    }, function () { /* keep what is shown */ });
  }

  function startConversation() {
    var seq = ++loadSeq;
    clearError();
    return api('POST', '/start_conversation').then(function (data) {
      var id = data.conversation_id;
      if (typeof data.model === 'string') conversationModels.set(id, data.model);
      var now = new Date().toISOString();
      rememberConversation({ conversation_id: id, title: null, message_count: 0, created_at: now, updated_at: now });
      listLoaded++;
      if (seq === loadSeq) { selectConversation(id, []); showModel(id); }
      else renderList();
      els.input.focus();
      return id;
    });
  }

  function newChat() {
    // The open conversation is still empty: it is the new chat.
    if (currentId && !streams.has(currentId) && !els.transcript.querySelector('.message')) {
      if (search) { els.search.value = ''; onSearchInput(); }
      closeSidebar();
      els.input.focus();
      return;
    }
    startConversation().catch(function (err) { showError(err.message); });
  }

  function handleConversationGone(id) {
    conversations.delete(id);
    analyses.delete(id);
    if (storageGet() === id) storageSet(null);
    renderList();
    if (id === currentId) {
      currentId = null;
      clearTranscript();
      chooseConversation().catch(function (err) { showError(err.message); });
    }
  }

  function resetConversation() {
    if (!currentId || streams.has(currentId)) return;
    var id = currentId;
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
        if (currentId === id) {
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

  function deleteConversation() {
    if (!currentId || streams.has(currentId)) return;
    var id = currentId;
    var conv = conversations.get(id);
    var name = conv && conv.title ? '“' + conv.title + '”' : 'This conversation';
    confirmAction('Delete this conversation?', name + ' and all of its messages are deleted for good.', 'Delete').then(function (ok) {
      if (!ok) return;
      clearError();
      api('DELETE', '/conversation/' + encodeURIComponent(id)).then(function () {
        if (conversations.has(id)) listLoaded = Math.max(0, listLoaded - 1);
        usageById.delete(id);
        summarisedIds.delete(id);
        handleConversationGone(id);
        if (search) runSearch(search.query);
        showNotice('Conversation deleted.');
      }, function (err) {
        if (err.status === 404) handleConversationGone(id);
        else showError(err.message);
      }).then(function () { els.input.focus(); });
    });
  }

  function saveOnServer() {
    if (!currentId) return;
    var id = currentId;
    clearError();
    withCurrent(id, function (call) {
      return call('POST', '/save_history');
    }).then(function (data) {
      showNotice('Saved on the server as ' + ((data && data.file_name) || 'a file') + '.');
    }, function (err) {
      showError(err.message);
    }).then(function () { els.input.focus(); });
  }

  function slug(text) {
    var s = String(text || '').toLowerCase().normalize('NFKD').replace(/[\u0300-\u036f]/g, '')
      .replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 48).replace(/-+$/, '');
    return s || 'conversation';
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

  function exportConversation(format) {
    if (!currentId) return;
    var id = currentId;
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

  // ----------------------------------------------------------------- dialogs

  var confirmResolve = null;
  function confirmAction(title, text, okLabel) {
    if (confirmResolve) confirmResolve(false);
    els.confirmTitle.textContent = title;
    els.confirmText.textContent = text;
    els.confirmOk.textContent = okLabel;
    return new Promise(function (resolve) {
      confirmResolve = resolve;
      els.confirmDialog.showModal();
      els.confirmCancel.focus();
    });
  }
  function closeConfirm(ok) {
    var resolve = confirmResolve;
    confirmResolve = null;
    if (els.confirmDialog.open) els.confirmDialog.close();
    if (resolve) resolve(ok);
    if (!ok) els.input.focus();
  }

  function openFewShot() {
    if (!currentId || streams.has(currentId)) return;
    els.fewShotError.textContent = '';
    els.fewShotDialog.showModal();
    els.fewShotUser.focus();
  }

  function submitFewShot() {
    var id = currentId;
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
      if (id === currentId) {
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

  // ------------------------------------------------------------------ files

  function allowedList() {
    return config.allowed_extensions.map(function (e) { return '.' + e; }).join(', ');
  }

  function describeLimits() {
    var text = 'Allowed files: ' + (allowedList() || 'text files') +
      (config.max_file_size_mb ? ', up to ' + config.max_file_size_mb + ' MB' : '') + '.';
    els.fileLimits.textContent = text;
    els.attach.title = 'Attach a file to analyse (or drop it here). ' + text;
    els.fileInput.accept = config.allowed_extensions.map(function (e) { return '.' + e; }).join(',');
    els.dropText.textContent = 'Drop a file to analyse it (' + (allowedList() || 'text files') + ')';
  }

  /** The reason the page will not upload `file`, or null. */
  function fileProblem(file) {
    var name = file.name || '';
    var dot = name.lastIndexOf('.');
    var ext = dot > 0 ? name.slice(dot + 1).toLowerCase() : '';
    var allowed = config.allowed_extensions.map(function (e) { return String(e).toLowerCase(); });
    if (allowed.length && allowed.indexOf(ext) === -1) {
      return '“' + name + '” is not a supported file type. Allowed: ' + allowedList() + '.';
    }
    var max = config.max_file_size_mb * 1024 * 1024;
    if (max && file.size > max) {
      return '“' + name + '” is too large (' + formatBytes(file.size) + '). The limit is ' + config.max_file_size_mb + ' MB.';
    }
    return null;
  }

  function setUploadStatus(label, done, total) {
    els.uploadStatus.hidden = false;
    els.hint.hidden = true;
    els.uploadLabel.textContent = label;
    if (typeof done === 'number' && total > 0) {
      els.uploadProgress.max = total;
      els.uploadProgress.value = done;
    } else {
      els.uploadProgress.removeAttribute('value'); // indeterminate
    }
  }

  function endUploadStatus() {
    els.uploadStatus.hidden = true;
    els.hint.hidden = false;
  }

  function uploadFile(file) {
    if (!file) return;
    if (upload) { showError('A file is being analysed already; please wait for it.'); return; }
    var problem = fileProblem(file);
    if (problem) { showError(problem); return; }
    clearError();
    var id = currentId;
    var xhr = new XMLHttpRequest();
    upload = { name: file.name, xhr: xhr, conversationId: id, analysing: false };
    updateControls();
    setUploadStatus('Uploading ' + file.name + '…', 0, 1);
    xhr.open('POST', '/upload_file');
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable && upload && !upload.analysing) {
        setUploadStatus('Uploading ' + file.name + '… ' + Math.round((e.loaded / e.total) * 100) + '%', e.loaded, e.total);
      }
    };
    xhr.upload.onload = function () {
      if (upload && !upload.analysing) setUploadStatus('Analysing ' + file.name + '…');
    };
    xhr.onload = function () {
      var data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
      finishUpload();
      if (xhr.status >= 200 && xhr.status < 300 && data) {
        showAnalysis(id, data.file_name || file.name, String(data.analysis || ''), data.chunks);
        showNotice('“' + (data.file_name || file.name) + '” was analysed.');
      } else {
        var err = apiError({ status: xhr.status }, data);
        if (err.code === 'rate_limited' && err.retryAfter) startRateLimitNotice(err.message);
        else showError(err.message);
      }
    };
    xhr.onerror = function () {
      finishUpload();
      showError('Could not upload “' + file.name + '”: the server could not be reached.');
    };
    xhr.onabort = function () { finishUpload(); };
    var body = new FormData();
    body.append('file', file, file.name);
    xhr.send(body);
  }

  function finishUpload() {
    upload = null;
    endUploadStatus();
    els.fileInput.value = '';
    updateControls();
  }

  function showAnalysis(id, name, analysis, chunks) {
    var block = document.createElement('section');
    block.className = 'message message-analysis';
    block.dataset.role = 'analysis';
    block.setAttribute('aria-label', 'Analysis of ' + name);
    var head = document.createElement('div');
    head.className = 'analysis-head';
    var title = document.createElement('strong');
    title.textContent = 'File analysis: ' + name;
    var meta = document.createElement('span');
    meta.className = 'analysis-meta';
    var n = Number(chunks) || 0;
    meta.textContent = n + (n === 1 ? ' part' : ' parts') + ' · shown in this tab only';
    head.append(title, meta);
    var content = document.createElement('div');
    content.className = 'message-content';
    // "-- Analysis for Chunk i --" lines become small headings.
    var text = analysis.replace(/^-- Analysis for Chunk (\d+) --$/gm, '#### Part $1').trim();
    md.renderInto(content, text);
    block.append(head, content);
    rawText.set(block, analysis);
    var entry = { after: chatMessages().length, el: block };
    if (!analyses.has(id)) analyses.set(id, []);
    analyses.get(id).push(entry);
    if (id === currentId) {
      els.transcript.appendChild(block);
      updateEmptyState();
      // Show the analysis from its start (it may be long).
      els.transcript.scrollTop = Math.max(0, block.offsetTop - els.transcript.offsetTop - 8);
    }
  }

  var dragDepth = 0;
  function hasFiles(e) {
    var types = e.dataTransfer && e.dataTransfer.types;
    return !!types && Array.prototype.indexOf.call(types, 'Files') !== -1;
  }

  // --------------------------------------------------------------- sending

  function updateControls() {
    var s = currentId ? streams.get(currentId) : null;
    var connected = !!(socket && socket.connected);
    var watching = !!(pendingWatch && pendingWatch.id === currentId);
    var limited = rateLimitedUntil > Date.now();
    els.stop.hidden = !s;
    els.send.hidden = !!s;
    els.stop.disabled = !!(s && s.stopping) || !connected;
    els.send.disabled = !currentId || !connected || watching || limited;
    var idle = !!currentId && !s;
    els.reset.disabled = !idle;
    els.del.disabled = !idle;
    els.fewShot.disabled = !idle;
    els.save.disabled = !currentId;
    els.share.disabled = !currentId;
    els.exportMd.disabled = !currentId;
    els.exportJson.disabled = !currentId;
    els.attach.disabled = !!upload;
    els.attach.setAttribute('aria-busy', upload ? 'true' : 'false');
    els.transcript.setAttribute('aria-busy', s ? 'true' : 'false');
    placeRegenerate();
    if (!s && document.activeElement === els.stop) els.input.focus();
  }

  function sendMessage() {
    var text = els.input.value;
    if (!text.trim()) { els.input.focus(); return; }
    if (!currentId) { showError('No conversation is open yet. Please wait a moment or start a new chat.'); return; }
    if (streams.has(currentId)) return;
    if (rateLimitedUntil > Date.now()) return;
    if (config.max_message_chars && codePoints(text) > config.max_message_chars) {
      showError('Message too long (max ' + config.max_message_chars.toLocaleString('en-US') + ' characters).');
      return;
    }
    if (!socket || !socket.connected) {
      showError('Not connected to the server. Your message was not sent; reconnecting…');
      return;
    }
    if (pendingWatch && pendingWatch.id === currentId) return;
    clearError();
    var s = newStream(currentId, text, 'send');
    streams.set(currentId, s);
    attachStream(s, true);
    scrollToBottom();
    var payload = { message: text, conversation_id: currentId };
    var model = pickedModel();
    if (model) {
      payload.model = model;
      conversationModels.set(currentId, model);
    }
    if (!socket.emit('send_message', payload)) {
      failStream(s, 'Not connected to the server. Your message was not sent.', true);
      return;
    }
    els.input.value = '';
    // Until the server names it (after the turn is stored), a new
    // conversation is called by its first message, as the server will.
    var conv = conversations.get(currentId);
    if (conv && !conv.title) {
      var words = text.trim().split(/\s+/).join(' ');
      conv.title = Array.from(words).length > 80 ? Array.from(words).slice(0, 80).join('') + '…' : words;
      setTitle(conv);
    }
    updateControls();
    renderList();
    els.input.focus();
  }

  function regenerate() {
    if (!currentId || streams.has(currentId) || !lastTurn()) return;
    if (!socket || !socket.connected || rateLimitedUntil > Date.now()) return;
    clearError();
    var turn = lastTurn();
    var s = newStream(currentId, rawText.get(turn.user) || '', 'regenerate');
    streams.set(currentId, s);
    attachStream(s, true);
    scrollToBottom();
    if (!socket.emit('regenerate', { conversation_id: currentId })) {
      failStream(s, 'Not connected to the server.', true);
      return;
    }
    updateControls();
    els.input.focus();
  }

  /** Shows the sibling at `position` of the message at `index`. */
  function switchBranch(index, position) {
    var id = currentId;
    if (!id || streams.has(id) || !socket || !socket.connected) return;
    clearError();
    socket.emit('switch_branch', { conversation_id: id, index: index, position: position }, function (ack) {
      if (ack && ack.ok) {
        if (id === currentId) refreshHistory(id);
      } else {
        showError((ack && ack.message) || 'Could not show that version.');
      }
    });
  }

  /** Turns the user's message `el` into a box to edit it. */
  function startEdit(el) {
    if (!currentId || streams.has(currentId) || el.querySelector('.edit-box')) return;
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
    if (!currentId || streams.has(currentId) || !Number.isInteger(index)) return;
    if (rateLimitedUntil > Date.now()) return;
    if (config.max_message_chars && codePoints(text) > config.max_message_chars) {
      showError('Message too long (max ' + config.max_message_chars.toLocaleString('en-US') + ' characters).');
      return;
    }
    if (!socket || !socket.connected) {
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
    var s = newStream(currentId, text, 'send');
    s.edit = true;
    streams.set(currentId, s);
    attachStream(s, true);
    scrollToBottom();
    if (!socket.emit('edit_message', { conversation_id: currentId, index: index, message: text })) {
      failStream(s, 'Not connected to the server. Your message was not sent.', true);
      return;
    }
    updateControls();
  }

  function stopGeneration() {
    var s = currentId ? streams.get(currentId) : null;
    if (!s || !socket || !socket.connected) return;
    s.stopping = true;
    socket.emit('stop_generation', { conversation_id: s.conversationId });
    updateControls();
    els.input.focus();
  }

  function newStream(id, userText, kind) {
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
      epoch: connectEpoch,   // the connection the turn was sent on
      stopping: false,
      dirty: false
    };
  }

  function streamFor(data) {
    if (data && data.conversation_id && streams.has(data.conversation_id)) return streams.get(data.conversation_id);
    if (data && data.conversation_id) return null;
    // No id: the newest turn that the server has not started yet, else the current one.
    var best = null;
    streams.forEach(function (s) {
      if (!s.acknowledged && (!best || s.started > best.started)) best = s;
    });
    return best || (currentId ? streams.get(currentId) || null : null);
  }

  // Rendering a streamed reply: at most once per frame; the markdown
  // renderer keeps finished blocks and rebuilds only the last ones.
  function scheduleRender(s) {
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

  function finishStream(s, note) {
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
    if (s.reconcile && s.conversationId === currentId) refreshHistory(s.conversationId);
    if (s.conversationId === currentId) updateControls();
    renderList();
  }

  // notStored: the server did not take the turn, so undo it on the page.
  function failStream(s, message, notStored) {
    finishStream(s, s.text ? 'Reply interrupted' : null);
    if (notStored) {
      if (s.kind === 'regenerate') {
        if (s.removed && s.userEl && s.userEl.isConnected) {
          var anchor = s.userEl;
          s.removed.forEach(function (e) { anchor.after(e); anchor = e; });
        }
      } else if (s.edit) {
        if (s.conversationId === currentId) refreshHistory(s.conversationId);
      } else if (s.kind === 'send') {
        if (s.userEl) s.userEl.remove();
        if (!els.input.value) els.input.value = s.userText;
      }
      updateEmptyState();
    } else if (s.kind === 'regenerate' && s.conversationId === currentId) {
      refreshHistory(s.conversationId);
    }
    if (message) showError(message);
    updateControls();
  }

  function startRateLimit(seconds, sentence) {
    rateLimitedUntil = Date.now() + Math.max(1, seconds) * 1000;
    clearInterval(rateLimitTimer);
    var tick = function () {
      var left = Math.ceil((rateLimitedUntil - Date.now()) / 1000);
      if (left <= 0) {
        clearInterval(rateLimitTimer);
        rateLimitTimer = null;
        rateLimitedUntil = 0;
        clearError();
        updateControls();
        return;
      }
      els.error.textContent = (sentence || 'Too many messages.') + ' You can send again in ' + left + (left === 1 ? ' second.' : ' seconds.');
      els.error.classList.add('is-visible');
      els.notice.textContent = '';
    };
    tick();
    rateLimitTimer = setInterval(tick, 1000);
    updateControls();
  }

  function startRateLimitNotice(message) {
    // Uploads: the server's sentence already says when to try again.
    showError(message);
  }

  // --------------------------------------------------- watching a conversation

  /**
   * Follows `id` on the server: replies from other tabs, and the rest of a
   * reply in flight (after a reload or a reconnect). Events for `id` that
   * arrive before the acknowledgement are held, because a replay of a reply
   * that has already ended (and is in the loaded history) must be dropped.
   */
  function watchConversation(id) {
    if (!socket || !socket.connected || !id) return;
    if (pendingWatch) clearTimeout(pendingWatch.timer);
    var s = streams.get(id);
    var payload = { conversation_id: id };
    if (s && s.lastIndex >= 0) payload.last_index = s.lastIndex;
    var w = { id: id, buffer: [], timer: null };
    pendingWatch = w;
    var settle = function (streaming) {
      if (pendingWatch !== w) return;
      clearTimeout(w.timer);
      pendingWatch = null;
      var mine = streams.get(id);
      // An ended reply that is not ours is in the loaded history already.
      var replay = replayAfterWatch(w.buffer, streaming, mine || null);
      if (replay.dropped && !mine && id === currentId) refreshHistory(id);
      replay.events.forEach(function (e) { dispatch(e[0], e[1]); });
      var left = streams.get(id);
      if (streaming === false && left && (left.kind === 'watch' || left.epoch !== connectEpoch)) {
        // The server no longer has this reply (it restarted, or the reply
        // ended too long ago): show what it stored.
        finishStream(left, left.text ? 'Connection lost; showing what was saved' : null);
        if (id === currentId) refreshHistory(id);
      }
      updateControls();
    };
    w.timer = setTimeout(function () { settle(null); }, WATCH_ACK_TIMEOUT_MS);
    var sent = socket.emit('watch_conversation', payload, function (err, res) {
      if (err) {
        if (pendingWatch === w) { clearTimeout(w.timer); pendingWatch = null; updateControls(); }
        return;
      }
      settle(!!(res && res.streaming));
    });
    if (!sent) { clearTimeout(w.timer); pendingWatch = null; }
    updateControls();
  }

  /** Holds an event for a conversation whose watch is not acknowledged yet. */
  function held(name, data) {
    if (!shouldHold(pendingWatch && pendingWatch.id, name, data)) return false;
    pendingWatch.buffer.push([name, data]);
    return true;
  }

  function dispatch(name, data) {
    var fn = handlers[name];
    if (fn) fn(data);
  }

  var handlers = {
    token_usage: function (data) {
      var s = streamFor(data);
      if (s) s.acknowledged = true;
      if (!data) return;
      var id = data.conversation_id || (s && s.conversationId);
      if (!id) return;
      if (data.summarised) summarisedIds.add(id);
      usageById.set(id, { used: Number(data.total_tokens_used), max: Number(data.max_tokens) || undefined });
      if (id === currentId) showUsage(id);
    },

    reply_started: function (data) {
      if (!data || !data.conversation_id) return;
      var id = data.conversation_id;
      if (streams.has(id)) return; // ours, or already followed
      if (id !== currentId) return;
      var s = newStream(id, typeof data.message === 'string' ? data.message : '', 'watch');
      streams.set(id, s);
      attachStream(s, true);
      updateControls();
      renderList();
    },

    response_chunk: function (data) {
      var s = streamFor(data);
      if (!acceptChunk(s, data)) return; // not a chunk, or had it already (replay and live overlap)
      if (s.conversationId === currentId && s.bubble && s.bubble.isConnected) scheduleRender(s);
    },

    response_end: function (data) {
      var s = streamFor(data);
      if (!s) return;
      finishStream(s, data && data.stopped ? 'Stopped' : null);
      if (s.conversationId === currentId && document.activeElement === document.body) els.input.focus();
    },

    error: function (data) {
      var message = (data && data.message) || 'Something went wrong.';
      if (pendingWatch && data && data.conversation_id === pendingWatch.id && data.error === 'not_found') {
        clearTimeout(pendingWatch.timer);
        pendingWatch = null;
        showError('That conversation no longer exists.');
        handleConversationGone(data.conversation_id);
        return;
      }
      var s = streamFor(data);
      if (data && data.error === 'quota_exceeded') {
        // Refused before anything was stored or sent upstream.
        if (s && !s.acknowledged) failStream(s, quotaMessage(data), true);
        else showError(quotaMessage(data));
        refreshUsage();
        return;
      }
      if (data && data.error === 'rate_limited') {
        if (s && !s.acknowledged) failStream(s, null, true);
        startRateLimit(Number(data.retry_after) || 1, message.replace(/\s*Try again in \d+ seconds?\.?$/, ''));
        return;
      }
      if (s) {
        var stored = s.acknowledged || (data && data.error === 'llm_unavailable');
        failStream(s, message, !stored);
      } else {
        showError(message);
      }
    }
  };

  // ---------------------------------------------------------------- socket

  function connectSocket() {
    socket = createSocket();

    socket.onStatus(function (status) {
      var transport = status === 'connected' ? socket.transport : null;
      els.status.dataset.status = status;
      els.status.textContent = (STATUS_TEXT[status] || status) + (transport === 'polling' ? ' (polling)' : '');
      if (transport) els.status.dataset.transport = transport;
      else delete els.status.dataset.transport;
      els.status.title = TRANSPORT_TEXT[transport] || '';
      updateControls();
    });

    socket.on('connect', function () {
      connectEpoch++;
      updateControls();
      if (!initialized) { init(); return; }
      // This new socket gets nothing more for replies elsewhere: they are
      // stored by the server and shown when their conversation is opened.
      streams.forEach(function (s) {
        if (s.conversationId !== currentId) finishStream(s, s.text ? 'Connection lost; reopen the conversation to see the saved reply' : null);
      });
      if (disconnectedOnce) refreshList().catch(function () { /* keep the old list */ });
      if (!currentId) return;
      if (streams.has(currentId) || !disconnectedOnce) {
        watchConversation(currentId);
      } else {
        // Catch up with what was stored while we were away, then follow.
        loadConversation(currentId).catch(function (err) {
          if (err.status === 404) handleConversationGone(currentId);
        });
      }
    });

    socket.on('connect_error', function () {
      // With accounts the handshake is refused once the session has ended.
      if (accountsOn()) recheckSession();
    });

    socket.on('disconnect', function (reason) {
      disconnectedOnce = true;
      // The server disconnects every socket of an account signed out
      // everywhere (or disabled): still signed in?
      if (reason === 'server disconnect' && accountsOn() && auth.me) recheckSession();
      if (pendingWatch) { clearTimeout(pendingWatch.timer); pendingWatch = null; }
      // Streams wait for the reconnect: the server keeps the reply going and
      // replays what was missed (watch_conversation with last_index).
      streams.forEach(function (s) { s.stopping = false; });
      updateControls();
    });

    Object.keys(handlers).forEach(function (name) {
      socket.on(name, function (data) {
        if (held(name, data)) return;
        dispatch(name, data);
      });
    });

    socket.on('conversation_updated', function (data) {
      if (!data || !data.conversation_id) return;
      var known = conversations.has(data.conversation_id);
      var conv = rememberConversation({
        conversation_id: data.conversation_id,
        title: data.title == null ? null : data.title,
        updated_at: data.updated_at,
        message_count: data.message_count
      });
      if (data.conversation_id === currentId) setTitle(conv);
      if (data.branched === true && data.conversation_id === currentId && !streams.has(currentId)) {
        refreshHistory(currentId);
      }
      if (!search) renderList();
      // A conversation started in another tab: fetch the list for its created_at.
      if (!known) refreshList().catch(function () { /* keep the local list */ });
    });

    socket.on('upload_progress', function (data) {
      if (!upload || !data) return;
      var done = Number(data.done) || 0;
      var total = Number(data.total) || 0;
      upload.analysing = true;
      setUploadStatus('Analysing ' + upload.name + ': ' + done + ' of ' + total + (total === 1 ? ' part' : ' parts'), done, total);
    });
  }

  // -------------------------------------------------------------- accounts
  // Local accounts (AUTH_MODE=local). GET /get_config says {mode, signup_open,
  // anonymous}; with mode "none" nothing here shows. Signed out where an
  // account is needed, the page waits behind the sign-in dialog (no socket,
  // no conversations). Signing in, up or out reloads the page, so the socket
  // and every request start again with the new session cookie.

  function accountsOn() {
    return auth.mode !== 'none';
  }

  /** Email and password accounts (`local` in AUTH_MODE). */
  function localOn() {
    return auth.mode.split(',').indexOf('local') >= 0;
  }

  /** Reads `auth` from /get_config, then asks /auth/me. Resolves true when the chat may start. */
  function checkAccount(cfg) {
    if (cfg && typeof cfg === 'object') {
      auth.mode = typeof cfg.mode === 'string' && cfg.mode ? cfg.mode : 'none';
      auth.signupOpen = cfg.signup_open === true;
      auth.anonymous = cfg.anonymous !== false;
      auth.providers = Array.isArray(cfg.providers) ? cfg.providers.filter(function (p) {
        return p && typeof p.id === 'string' && /^[a-z0-9_-]{1,32}$/.test(p.id) && typeof p.name === 'string';
      }) : [];
      showProviders();
    }
    if (!accountsOn()) {
      showAccount();
      return Promise.resolve(true);
    }
    if (auth.checked) return Promise.resolve(!auth.required && (!!auth.me || auth.anonymous));
    return sendJson('GET', '/auth/me').then(function (me) {
      auth.me = me && typeof me === 'object' ? me : null;
      auth.checked = true;
      showAccount();
      return true;
    }, function (err) {
      if (err.status !== 401) throw err;
      auth.me = null;
      auth.checked = true;
      showAccount();
      if (auth.anonymous) return true;
      requireSignIn();
      return false;
    });
  }

  /**
   * The sign-in dialog's single sign-on buttons, one per provider: links to
   * GET /auth/oidc/{id}/login, which sends the browser to the provider and
   * back here signed in.
   */
  function showProviders() {
    els.authProviders.textContent = '';
    auth.providers.forEach(function (provider) {
      var link = document.createElement('a');
      link.className = 'button provider-button';
      link.href = '/auth/oidc/' + encodeURIComponent(provider.id) + '/login';
      link.dataset.provider = provider.id;
      link.textContent = 'Sign in with ' + provider.name;
      els.authProviders.appendChild(link);
    });
    var sso = auth.providers.length > 0;
    els.authProviders.hidden = !sso;
    els.authOr.hidden = !(sso && localOn());
  }

  /** The header: a Sign in button, or the account menu with the email. */
  function showAccount() {
    els.account.hidden = !accountsOn();
    if (!accountsOn()) return;
    var me = auth.me;
    var email = me && me.email ? String(me.email) : '';
    els.signIn.hidden = !!me;
    els.accountMenu.hidden = !me;
    if (!me) { els.accountMenu.open = false; return; }
    var name = me.name ? String(me.name) : '';
    els.accountEmail.textContent = email;
    els.accountMenuButton.setAttribute('aria-label', 'Account: ' + email);
    els.accountWho.textContent = (name ? name + ' <' + email + '>' : email) + (me.is_admin ? ' (administrator)' : '');
    els.passwordUsername.value = email;
    // A single sign-on account has no password here.
    els.changePassword.hidden = !localOn() || me.auth !== 'local';
    els.adminLink.hidden = !me.is_admin;
    refreshUsage();
  }

  /** Nothing works without an account: stop the socket and ask to sign in. */
  function requireSignIn(message) {
    auth.required = true;
    if (socket) socket.close();
    els.status.dataset.status = 'signed-out';
    els.status.textContent = 'Signed out';
    updateControls();
    if (els.confirmDialog.open) closeConfirm(false);
    [els.fewShotDialog, els.passwordDialog, els.tokensDialog, els.sharesDialog].forEach(function (d) { if (d.open) d.close(); });
    openAuthDialog(false);
    if (message) setAuthError(message);
  }

  /** A conversation route answered 401 "unauthenticated". */
  function onUnauthenticated() {
    if (!accountsOn() || auth.required) return;
    auth.me = null;
    showAccount();
    requireSignIn('Your session has ended. Sign in to continue.');
  }

  /** The socket handshake was refused, or the server disconnected it: still signed in? */
  function recheckSession() {
    if (auth.required || auth.rechecking) return;
    auth.rechecking = true;
    sendJson('GET', '/auth/me').then(function (me) {
      auth.me = me && typeof me === 'object' ? me : null;
      showAccount();
    }, function (err) {
      if (err.status !== 401) return;
      var was = auth.me;
      auth.me = null;
      showAccount();
      if (!auth.anonymous) {
        requireSignIn(was ? 'Your session has ended. Sign in to continue.' : null);
      } else if (was) {
        // Signed out elsewhere where the page also works signed out: start
        // again as this browser's anonymous user (the account's conversations go).
        window.location.reload();
      }
    }).then(function () {
      auth.rechecking = false;
    });
  }

  /** A dialog's error line (an alert region): text only, with a warning sign when set. */
  function setDialogError(el, message) {
    el.textContent = message || '';
    el.classList.toggle('is-visible', !!message);
  }
  function setAuthError(message) { setDialogError(els.authError, message); }

  /** Switches the dialog between signing in and creating an account. */
  function setAuthMode(signup) {
    auth.signup = !!signup && auth.signupOpen;
    var up = auth.signup;
    els.authTitle.textContent = up ? 'Create an account' : 'Sign in';
    els.authSubmit.textContent = up ? 'Create account' : 'Sign in';
    els.authHelp.textContent = up
      ? (auth.anonymous ? 'The conversations of this browser move to your new account.' : 'Create an account to start chatting.')
      : (auth.required ? 'Sign in to continue.' : 'Sign in to keep your conversations with your account.');
    els.authNameField.hidden = !up;
    els.authPasswordHint.hidden = !up;
    els.authPassword.setAttribute('autocomplete', up ? 'new-password' : 'current-password');
    els.authEmail.setAttribute('autocomplete', up ? 'email' : 'username');
    els.authSwitchLine.hidden = !auth.signupOpen || !localOn();
    els.authLocal.hidden = !localOn();
    els.authSubmit.hidden = !localOn();
    if (auth.mode === 'proxy') {
      els.authHelp.textContent = 'Sign in through your organisation\u2019s sign-in page, then reload this page.';
    }
    els.authSwitchText.textContent = up ? 'Already have an account?' : 'No account yet?';
    els.authSwitch.textContent = up ? 'Sign in instead' : 'Create an account';
    setAuthError('');
    [els.authEmail, els.authPassword].forEach(function (f) { f.removeAttribute('aria-invalid'); });
  }

  /** Opens the sign-in dialog; `optional`: it may be closed (the page works signed out). */
  function openAuthDialog(optional) {
    var dismissable = !!optional && !auth.required;
    els.authCancel.hidden = !dismissable;
    els.authDialog.dataset.required = dismissable ? 'false' : 'true';
    setAuthMode(false);
    if (!els.authDialog.open) els.authDialog.showModal();
    focusAuthDialog();
  }

  /** The email field, or the first provider's button without local accounts. */
  function focusAuthDialog() {
    var first = els.authProviders.querySelector('a');
    if (localOn()) els.authEmail.focus();
    else if (first) first.focus();
  }

  function closeAuthDialog() {
    if (auth.required || !els.authDialog.open) return;
    els.authDialog.close();
  }

  function submitAuth() {
    if (els.authSubmit.disabled) return;
    var up = auth.signup;
    var email = els.authEmail.value.trim();
    var password = els.authPassword.value;
    if (!email || !password) {
      setAuthError(up ? 'Enter an email address and a password.' : 'Enter your email and password.');
      var empty = !email ? els.authEmail : els.authPassword;
      empty.setAttribute('aria-invalid', 'true');
      empty.focus();
      return;
    }
    var body = { email: email, password: password };
    if (up && els.authName.value.trim()) body.name = els.authName.value.trim();
    els.authSubmit.disabled = true;
    els.authForm.setAttribute('aria-busy', 'true');
    setAuthError('');
    sendJson('POST', up ? '/auth/signup' : '/auth/login', body).then(function () {
      // Signed in: start again with the new session cookie.
      els.authHelp.textContent = 'Signed in. Loading your conversations…';
      window.location.reload();
    }, function (err) {
      els.authSubmit.disabled = false;
      els.authForm.removeAttribute('aria-busy');
      setAuthError(err.message);
      if (err.code === 'invalid_credentials' || (err.code === 'invalid' && /password/i.test(err.message))) {
        els.authPassword.setAttribute('aria-invalid', 'true');
        els.authPassword.focus();
        els.authPassword.select();
      } else if (err.code === 'conflict' || (err.code === 'invalid' && /email/i.test(err.message))) {
        els.authEmail.setAttribute('aria-invalid', 'true');
        els.authEmail.focus();
      } else if (err.code === 'signup_closed') {
        auth.signupOpen = false;
        els.authSwitchLine.hidden = true;
      }
    });
  }

  /** Signs out here, or (`everywhere`) on every device: the server ends every
   * session of the account and disconnects its other tabs, which then ask to sign in. */
  function signOut(everywhere) {
    var buttons = [els.signOut, els.signOutEverywhere];
    if (buttons.some(function (b) { return b.disabled; })) return;
    buttons.forEach(function (b) { b.disabled = true; });
    var request = everywhere
      ? sendJson('POST', '/auth/logout', { everywhere: true })
      : sendJson('POST', '/auth/logout');
    request.then(function (done) {
      // Behind a sign-in proxy (or a provider), its own sign-out comes next.
      var next = done && typeof done.logout_url === 'string' ? done.logout_url : '';
      if (/^(https?:\/\/|\/(?!\/))/.test(next)) window.location.assign(next);
      else window.location.reload();
    }, function (err) {
      buttons.forEach(function (b) { b.disabled = false; });
      showError('Could not sign out: ' + err.message);
    });
  }

  function openPasswordDialog() {
    els.passwordCurrent.value = '';
    els.passwordNew.value = '';
    setDialogError(els.passwordError, '');
    [els.passwordCurrent, els.passwordNew].forEach(function (f) { f.removeAttribute('aria-invalid'); });
    els.passwordDialog.showModal();
    els.passwordCurrent.focus();
  }

  function submitPassword() {
    if (els.passwordSubmit.disabled) return;
    var current = els.passwordCurrent.value;
    var next = els.passwordNew.value;
    if (!current || !next) {
      setDialogError(els.passwordError, 'Enter your current password and a new one.');
      var empty = !current ? els.passwordCurrent : els.passwordNew;
      empty.setAttribute('aria-invalid', 'true');
      empty.focus();
      return;
    }
    els.passwordSubmit.disabled = true;
    setDialogError(els.passwordError, '');
    sendJson('POST', '/auth/password', { current: current, new: next }).then(function (data) {
      els.passwordDialog.close();
      els.passwordCurrent.value = '';
      els.passwordNew.value = '';
      showNotice((data && data.message) || 'Password changed.');
    }, function (err) {
      setDialogError(els.passwordError, err.message);
      var field = err.code === 'invalid_credentials' ? els.passwordCurrent : els.passwordNew;
      field.setAttribute('aria-invalid', 'true');
      field.focus();
      field.select();
    }).then(function () {
      els.passwordSubmit.disabled = false;
    });
  }

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

  function bindTokensUi() {
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

  function openSharesDialog() {
    forgetNewShare();
    setDialogError(els.sharesError, '');
    els.sharesList.textContent = '';
    els.sharesEmpty.hidden = true;
    els.shareCreate.disabled = !currentId;
    els.sharesDialog.showModal();
    els.shareCreate.focus();
    loadShares();
  }

  function createShare() {
    if (els.shareCreate.disabled || !currentId) return;
    els.shareCreate.disabled = true;
    setDialogError(els.sharesError, '');
    sendJson('POST', '/api/shares', { conversation_id: currentId }).then(function (data) {
      els.shareUrl.value = new URL(String((data && data.url) || ''), window.location.href).href;
      els.shareCreated.hidden = false;
      els.shareUrl.focus();
      els.shareUrl.select();
      return loadShares();
    }, function (err) {
      setDialogError(els.sharesError, err.message);
    }).then(function () {
      els.shareCreate.disabled = !currentId;
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

  function bindSharesUi() {
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

  function bindAccountUi() {
    bindTokensUi();
    bindSharesUi();
    els.signIn.addEventListener('click', function () { openAuthDialog(true); });
    els.authForm.addEventListener('submit', function (e) { e.preventDefault(); submitAuth(); });
    els.authCancel.addEventListener('click', closeAuthDialog);
    els.authDialog.addEventListener('cancel', function (e) {
      // Escape: only where the page works signed out.
      e.preventDefault();
      closeAuthDialog();
    });
    els.authDialog.addEventListener('close', function () {
      // Chromium lets a repeated Escape close a modal dialog even when its
      // cancel event is refused: the page cannot be used signed out, so back it comes.
      if (auth.required) { els.authDialog.showModal(); focusAuthDialog(); return; }
      if (!els.signIn.hidden) els.signIn.focus();
    });
    els.authSwitch.addEventListener('click', function () {
      setAuthMode(!auth.signup);
      (auth.signup ? els.authName : els.authEmail).focus();
    });
    [els.authName, els.authEmail, els.authPassword].forEach(function (field) {
      field.addEventListener('input', function () {
        field.removeAttribute('aria-invalid');
        if (els.authError.textContent) setAuthError('');
      });
    });

    els.changePassword.addEventListener('click', function () {
      els.accountMenu.open = false;
      openPasswordDialog();
    });
    els.signOut.addEventListener('click', function () {
      els.accountMenu.open = false;
      signOut(false);
    });
    els.signOutEverywhere.addEventListener('click', function () {
      els.accountMenu.open = false;
      signOut(true);
    });
    els.passwordForm.addEventListener('submit', function (e) { e.preventDefault(); submitPassword(); });
    els.passwordCancel.addEventListener('click', function () { els.passwordDialog.close(); });
    els.passwordDialog.addEventListener('close', function () { els.input.focus(); });
    [els.passwordCurrent, els.passwordNew].forEach(function (field) {
      field.addEventListener('input', function () {
        field.removeAttribute('aria-invalid');
        setDialogError(els.passwordError, '');
      });
    });
  }

  // ------------------------------------------------------------------ init

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
    showUsage(currentId);
  }

  // ------------------------------------------------------------------ models

  /**
   * The model picker: shown when GET /get_config lists more than one model.
   * Each conversation's model (from load/start) is remembered; a pick is
   * sent with the next message (`send_message {model}`), which switches
   * the conversation to it on the server.
   */
  function applyModels(models, defaultModel) {
    var picker = els.modelPicker;
    if (!picker || !Array.isArray(models)) return;
    config.default_model = typeof defaultModel === 'string' ? defaultModel : null;
    while (picker.firstChild) picker.removeChild(picker.firstChild);
    models.forEach(function (model) {
      if (!model || typeof model.id !== 'string') return;
      var option = document.createElement('option');
      option.value = model.id;
      option.textContent = typeof model.name === 'string' && model.name ? model.name : model.id;
      picker.appendChild(option);
    });
    picker.hidden = picker.options.length < 2;
    showModel(currentId);
  }

  /** Shows the model of conversation `id` (its own, else the default) in the picker. */
  function showModel(id) {
    var picker = els.modelPicker;
    if (!picker || picker.hidden) return;
    var model = (id && conversationModels.get(id)) || config.default_model;
    if (model) picker.value = model;
  }

  /** The model to send with a message: the picker's, when it is shown. */
  function pickedModel() {
    var picker = els.modelPicker;
    return picker && !picker.hidden && picker.value ? picker.value : null;
  }

  function chooseConversation() {
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

  function init() {
    if (initialized || initializing) return;
    initializing = true;
    var blocked = false;
    api('GET', '/get_config').then(function (data) {
      applyConfig(data);
      return checkAccount(data && data.auth);
    }).then(function (mayStart) {
      if (!mayStart) { blocked = true; return undefined; }
      return refreshList().then(chooseConversation).then(function () {
        initialized = true;
        clearError();
        if (!document.activeElement || document.activeElement === document.body) els.input.focus();
      });
    }).catch(function (err) {
      if (auth.required) { blocked = true; return; } // the sign-in dialog is up
      showError('Could not load the chat: ' + err.message + ' Retrying when the connection is back.');
    }).then(function () {
      initializing = false;
      updateControls();
      // Signed out where an account is needed: no socket, no conversations;
      // a successful sign-in reloads the page.
      if (blocked) return;
      // The socket is opened once the session cookie exists (set by the calls above).
      if (!socket) connectSocket();
      else if (initialized && socket.connected && currentId) watchConversation(currentId);
    });
  }

  function closeSidebar() {
    els.sidebar.classList.remove('is-open');
    els.sidebarToggle.setAttribute('aria-expanded', 'false');
  }

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
      } else if (e.key === 'Escape' && currentId && streams.has(currentId)) {
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
        clearTimeout(searchTimer);
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
      dragDepth++;
      els.chat.classList.add('is-dragging');
    });
    els.chat.addEventListener('dragover', function (e) {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = 'copy';
    });
    els.chat.addEventListener('dragleave', function (e) {
      if (!hasFiles(e)) return;
      dragDepth = Math.max(0, dragDepth - 1);
      if (!dragDepth) els.chat.classList.remove('is-dragging');
    });
    els.chat.addEventListener('drop', function (e) {
      if (!hasFiles(e)) return;
      e.preventDefault();
      dragDepth = 0;
      els.chat.classList.remove('is-dragging');
      var files = e.dataTransfer.files;
      if (files && files.length > 1) showError('Please drop one file at a time.');
      else if (files && files[0]) uploadFile(files[0]);
      els.input.focus();
    });

    els.shortcutsButton.addEventListener('click', openShortcuts);
    document.addEventListener('keydown', onShortcut);
  }

  // ------------------------------------------------------------ shortcuts
  // Listed in the help dialog (#shortcuts-dialog); Ctrl or Cmd alike.

  function openShortcuts() {
    if (els.shortcutsDialog.open) return;
    els.shortcutsDialog.showModal();
    byId('shortcuts-close').focus();
  }

  function anyDialogOpen() {
    return !!document.querySelector('dialog[open]');
  }

  function onShortcut(e) {
    var mod = (e.ctrlKey || e.metaKey) && !e.altKey;
    if (e.defaultPrevented || e.isComposing) return;
    if (mod && e.key === '/') {
      e.preventDefault();
      openShortcuts();
      return;
    }
    if (anyDialogOpen() || auth.required) return;
    if (mod && !e.shiftKey && (e.key === 'k' || e.key === 'K')) {
      e.preventDefault();
      els.sidebar.classList.add('is-open');
      els.sidebarToggle.setAttribute('aria-expanded', 'true');
      els.search.focus();
      els.search.select();
    } else if (mod && e.shiftKey && e.code === 'KeyO') {
      e.preventDefault();
      newChat();
    } else if (mod && e.shiftKey && e.key === 'Enter') {
      e.preventDefault();
      regenerate();
    } else if (e.key === 'Escape' && !mod && currentId && streams.has(currentId)
      && !e.target.closest('details[open], .search')) {
      e.preventDefault();
      stopGeneration();
    }
  }

  bindUi();
  bindAccountUi();
  describeLimits();
  setUsage(null);
  updateControls();
  init();
})();
