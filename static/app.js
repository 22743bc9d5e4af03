/*
 * Chat page. Talks to the server over plain HTTP (JSON) and Socket.IO
 * (static/sio.js). Model output is only ever inserted as text.
 */
(function () {
  'use strict';

  var STORAGE_KEY = 'llmChat.currentConversation';
  var STATUS_TEXT = {
    connecting: 'Connecting…',
    connected: 'Connected',
    reconnecting: 'Reconnecting…',
    offline: 'Offline'
  };

  function byId(id) { return document.getElementById(id); }

  var els = {
    body: document.body,
    input: byId('message-input'),
    form: byId('composer'),
    send: byId('send-button'),
    stop: byId('stop-button'),
    newChat: byId('new-chat-button'),
    reset: byId('reset-button'),
    transcript: byId('transcript'),
    empty: byId('transcript-empty'),
    list: byId('conversation-list'),
    usage: byId('token-usage'),
    meter: byId('token-meter'),
    error: byId('error-line'),
    status: byId('connection-status'),
    title: byId('conversation-title'),
    sidebar: byId('sidebar'),
    sidebarToggle: byId('sidebar-toggle')
  };

  var config = {
    max_tokens: Number(els.body.dataset.maxTokens) || 0,
    demo_mode: els.body.dataset.demoMode === 'true',
    max_message_chars: 0
  };

  var conversations = new Map(); // conversation_id -> summary from the server
  var currentId = null;
  // conversation_id -> {userText, text, userEl, bubble, started, acknowledged, stopping}
  var streams = new Map();
  var socket = null;
  var initialized = false;
  var initializing = false;
  var loadSeq = 0;
  var disconnectedOnce = false;

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

  function api(method, path, body) {
    var opts = { method: method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!res.ok) {
          var err = new Error((data && data.message) || ('The server answered ' + res.status + '.'));
          err.status = res.status;
          err.code = data && data.error;
          throw err;
        }
        return data;
      });
    }, function () {
      var err = new Error('Could not reach the server.');
      err.status = 0;
      throw err;
    });
  }

  function showError(message) {
    els.error.textContent = message;
    els.error.classList.add('is-visible');
  }
  function clearError() {
    els.error.textContent = '';
    els.error.classList.remove('is-visible');
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

  // ------------------------------------------------------------- transcript

  function isNearBottom() {
    var t = els.transcript;
    return t.scrollHeight - t.scrollTop - t.clientHeight < 48;
  }
  function scrollToBottom() {
    els.transcript.scrollTop = els.transcript.scrollHeight;
  }

  function messageElement(role, text) {
    var el = document.createElement('div');
    var kind = role === 'user' || role === 'assistant' ? role : 'system';
    el.className = 'message message-' + kind;
    el.dataset.role = role;
    el.textContent = text; // text only, never HTML
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

  function clearTranscript() {
    var nodes = els.transcript.querySelectorAll('.message');
    for (var i = 0; i < nodes.length; i++) nodes[i].remove();
    updateEmptyState();
  }

  function updateEmptyState() {
    els.empty.hidden = !!els.transcript.querySelector('.message');
  }

  function renderHistory(history) {
    clearTranscript();
    var frag = document.createDocumentFragment();
    for (var i = 0; i < history.length; i++) {
      var m = history[i] || {};
      frag.appendChild(messageElement(String(m.role || 'system'), String(m.content == null ? '' : m.content)));
    }
    els.transcript.appendChild(frag);
    // A reply still streaming for this conversation (not stored yet).
    var s = streams.get(currentId);
    if (s) attachStream(s);
    updateEmptyState();
    scrollToBottom();
  }

  function attachStream(s) {
    s.userEl = appendMessage('user', s.userText);
    s.bubble = messageElement('assistant', s.text);
    s.bubble.classList.add('is-streaming');
    s.bubble.setAttribute('aria-busy', 'true');
    els.transcript.appendChild(s.bubble);
    updateEmptyState();
  }

  function setTitle(conv) {
    var title = conv && conv.title ? conv.title : 'New conversation';
    els.title.textContent = title;
    document.title = (conv && conv.title ? conv.title + ' · ' : '') + 'LLM Chat';
  }

  function setUsage(used, max) {
    if (typeof max === 'number' && max > 0) config.max_tokens = max;
    var maxTokens = config.max_tokens;
    if (typeof used === 'number') {
      els.usage.textContent = used.toLocaleString('en-US') + ' / ' + maxTokens.toLocaleString('en-US') + ' tokens';
      els.meter.max = maxTokens || 1;
      els.meter.value = Math.min(used, maxTokens || used);
      els.meter.high = Math.round((maxTokens || 1) * 0.8);
      els.meter.optimum = 0;
    } else {
      els.usage.textContent = '– / ' + maxTokens.toLocaleString('en-US') + ' tokens';
      els.meter.max = maxTokens || 1;
      els.meter.value = 0;
    }
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

  function renderList() {
    var frag = document.createDocumentFragment();
    var list = sortedConversations();
    for (var i = 0; i < list.length; i++) {
      var c = list[i];
      var li = document.createElement('li');
      var btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'conversation-item';
      btn.dataset.id = c.conversation_id;
      if (c.conversation_id === currentId) btn.setAttribute('aria-current', 'true');
      var title = document.createElement('span');
      title.className = 'conversation-item-title';
      title.textContent = c.title || 'New conversation';
      var meta = document.createElement('span');
      meta.className = 'conversation-item-meta';
      var count = typeof c.message_count === 'number' ? c.message_count : 0;
      meta.textContent = formatDate(c.updated_at || c.created_at) + ' · ' + count + (count === 1 ? ' message' : ' messages');
      btn.append(title, meta);
      li.appendChild(btn);
      frag.appendChild(li);
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

  function refreshList() {
    return api('GET', '/list_conversations').then(function (data) {
      conversations.clear();
      var list = (data && data.conversations) || [];
      for (var i = 0; i < list.length; i++) rememberConversation(list[i]);
      if (currentId && !conversations.has(currentId)) {
        rememberConversation({ conversation_id: currentId, title: null, message_count: 0 });
      }
      renderList();
    });
  }

  // ----------------------------------------------------------- conversations

  function selectConversation(id, history, title) {
    currentId = id;
    storageSet(id);
    var conv = conversations.get(id) || rememberConversation({ conversation_id: id, title: title || null });
    if (title && !conv.title) conv.title = title;
    setTitle(conv);
    setUsage(null);
    renderHistory(history || []);
    renderList();
    updateControls();
    closeSidebar();
  }

  function loadConversation(id) {
    var seq = ++loadSeq;
    clearError();
    return api('GET', '/load_conversation/' + encodeURIComponent(id)).then(function (data) {
      if (seq !== loadSeq) return;
      selectConversation(id, (data && data.conversation) || [], data && data.title);
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

  function startConversation() {
    var seq = ++loadSeq;
    clearError();
    return api('POST', '/start_conversation').then(function (data) {
      var id = data.conversation_id;
      rememberConversation({
        conversation_id: id,
        title: null,
        message_count: 0,
        created_at: new Date().toISOString(),
        updated_at: new Date().toISOString()
      });
      if (seq === loadSeq) selectConversation(id, []);
      else renderList();
      els.input.focus();
      return id;
    });
  }

  function resetConversation() {
    if (!currentId || streams.has(currentId)) return;
    var id = currentId;
    clearError();
    els.reset.disabled = true;
    // The session's current conversation may have been changed by another
    // tab: make this one current first, then reset it.
    api('GET', '/load_conversation/' + encodeURIComponent(id)).then(function () {
      return api('POST', '/reset_conversation');
    }).then(function () {
      if (currentId === id) {
        clearTranscript();
        setUsage(null);
      }
      var conv = conversations.get(id);
      if (conv) { conv.message_count = 0; renderList(); }
    }).catch(function (err) {
      showError(err.message);
    }).then(function () {
      updateControls();
      els.input.focus();
    });
  }

  // --------------------------------------------------------------- sending

  function updateControls() {
    var s = currentId ? streams.get(currentId) : null;
    var connected = !!(socket && socket.connected);
    els.stop.hidden = !s;
    els.send.hidden = !!s;
    els.stop.disabled = !!(s && s.stopping);
    els.send.disabled = !currentId || !connected;
    els.reset.disabled = !currentId || !!s;
    els.transcript.setAttribute('aria-busy', s ? 'true' : 'false');
    if (!s && document.activeElement === els.stop) els.input.focus();
  }

  function sendMessage() {
    var text = els.input.value;
    if (!text.trim()) { els.input.focus(); return; }
    if (!currentId) { showError('No conversation is open yet. Please wait a moment or start a new chat.'); return; }
    if (streams.has(currentId)) return;
    if (config.max_message_chars && codePoints(text) > config.max_message_chars) {
      showError('Message too long (max ' + config.max_message_chars + ' characters).');
      return;
    }
    if (!socket || !socket.connected) {
      showError('Not connected to the server. Your message was not sent; reconnecting…');
      return;
    }
    clearError();
    var s = {
      conversationId: currentId,
      userText: text,
      text: '',
      userEl: null,
      bubble: null,
      started: Date.now(),
      acknowledged: false,
      stopping: false
    };
    streams.set(currentId, s);
    attachStream(s);
    scrollToBottom();
    if (!socket.emit('send_message', { message: text, conversation_id: currentId })) {
      failStream(s, 'Not connected to the server. Your message was not sent.', true);
      return;
    }
    els.input.value = '';
    updateControls();
    els.input.focus();
  }

  function stopGeneration() {
    var s = currentId ? streams.get(currentId) : null;
    if (!s || !socket) return;
    s.stopping = true;
    socket.emit('stop_generation', { conversation_id: s.conversationId });
    updateControls();
    els.input.focus();
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

  function finishStream(s, note) {
    streams.delete(s.conversationId);
    if (s.bubble) {
      s.bubble.classList.remove('is-streaming');
      s.bubble.removeAttribute('aria-busy');
      if (note) {
        s.bubble.classList.add('is-interrupted');
        s.bubble.dataset.note = note;
      }
      if (!s.text) s.bubble.remove();
    }
    updateEmptyState();
    if (s.conversationId === currentId) updateControls();
  }

  // notStored: the server did not store the user's message, so put it back.
  function failStream(s, message, notStored) {
    finishStream(s, s.text ? 'Reply interrupted' : null);
    if (notStored) {
      if (s.userEl) s.userEl.remove();
      if (!els.input.value) els.input.value = s.userText;
      updateEmptyState();
    }
    if (message) showError(message);
    updateControls();
  }

  // ---------------------------------------------------------------- socket

  function connectSocket() {
    socket = window.ChatSocket.createSocket();

    socket.onStatus(function (status) {
      els.status.dataset.status = status;
      els.status.textContent = STATUS_TEXT[status] || status;
      updateControls();
    });

    socket.on('connect', function () {
      updateControls();
      if (!initialized) { init(); return; }
      if (disconnectedOnce && currentId && !streams.has(currentId)) {
        // Catch up with what was stored while we were away.
        loadConversation(currentId).catch(function () { /* shown elsewhere */ });
        refreshList().catch(function () { /* keep the old list */ });
      }
    });

    socket.on('disconnect', function () {
      disconnectedOnce = true;
      streams.forEach(function (s) {
        finishStream(s, s.text ? 'Connection lost; the partial reply was saved' : null);
      });
      streams.clear();
      updateControls();
    });

    socket.on('token_usage', function (data) {
      var s = streamFor(data);
      if (s) s.acknowledged = true;
      if (!data || (data.conversation_id && data.conversation_id !== currentId)) return;
      setUsage(Number(data.total_tokens_used), Number(data.max_tokens) || undefined);
    });

    socket.on('response_chunk', function (data) {
      var s = streamFor(data);
      if (!s || !data || typeof data.chunk !== 'string') return;
      s.acknowledged = true;
      s.text += data.chunk;
      if (s.conversationId === currentId && s.bubble && s.bubble.isConnected) {
        var stick = isNearBottom();
        s.bubble.appendChild(document.createTextNode(data.chunk));
        if (stick) scrollToBottom();
      }
    });

    socket.on('response_end', function (data) {
      var s = streamFor(data);
      if (!s) return;
      finishStream(s, data && data.stopped ? 'Stopped' : null);
    });

    socket.on('error', function (data) {
      var message = (data && data.message) || 'Something went wrong.';
      var s = streamFor(data);
      if (s) {
        var stored = s.acknowledged || (data && data.error === 'llm_unavailable');
        failStream(s, message, !stored);
      } else {
        showError(message);
      }
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
      renderList();
      // A conversation started in another tab: fetch the list for its created_at.
      if (!known) refreshList().catch(function () { /* keep the local list */ });
    });
  }

  // ------------------------------------------------------------------ init

  function applyConfig(data) {
    if (!data) return;
    if (typeof data.max_tokens === 'number') config.max_tokens = data.max_tokens;
    if (typeof data.max_message_chars === 'number') config.max_message_chars = data.max_message_chars;
    if (typeof data.demo_mode === 'boolean') config.demo_mode = data.demo_mode;
    setUsage(null);
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
    api('GET', '/get_config').then(function (data) {
      applyConfig(data);
      return refreshList();
    }).then(chooseConversation).then(function () {
      initialized = true;
      clearError();
    }).catch(function (err) {
      showError('Could not load the chat: ' + err.message + ' Retrying when the connection is back.');
    }).then(function () {
      initializing = false;
      updateControls();
      // The socket is opened once the session cookie exists (set by the calls above).
      if (!socket) connectSocket();
    });
  }

  function closeSidebar() {
    els.sidebar.classList.remove('is-open');
    els.sidebarToggle.setAttribute('aria-expanded', 'false');
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
      }
    });
    els.stop.addEventListener('click', stopGeneration);
    els.reset.addEventListener('click', resetConversation);
    els.newChat.addEventListener('click', function () {
      startConversation().catch(function (err) { showError(err.message); });
    });
    els.list.addEventListener('click', function (e) {
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
  }

  bindUi();
  setUsage(null);
  updateControls();
  init();
})();
