/*
 * The shared conversation page (templates/share.html, GET /share/<token>):
 * reads the snapshot from GET /api/share/<token> and shows it read-only,
 * the user's messages as text and the assistant's as sanitised markdown
 * (static/markdown.js). No socket, no session, nothing of anyone's other
 * conversations: the page knows only its own link.
 */
import * as md from './markdown.js';

var root = document.getElementById('share');
var titleEl = document.getElementById('share-title');
var noteEl = document.getElementById('share-note');
var errorEl = document.getElementById('share-error');
var transcript = document.getElementById('share-transcript');

function showError(text) {
  errorEl.textContent = text;
  errorEl.hidden = false;
  root.dataset.state = 'error';
}

function messageElement(role, text) {
  var el = document.createElement('div');
  var kind = role === 'user' || role === 'assistant' ? role : 'system';
  el.className = 'message message-' + kind;
  el.dataset.role = role;
  var content = document.createElement('div');
  content.className = 'message-content';
  if (kind === 'assistant') {
    md.renderInto(content, text);
  } else {
    content.textContent = text; // text only, never HTML
  }
  el.append(content);
  return el;
}

function formatDate(raw) {
  var at = new Date(raw);
  if (isNaN(at.getTime())) return '';
  return at.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

async function load() {
  var token = location.pathname.split('/').pop();
  var response;
  try {
    response = await fetch('/api/share/' + encodeURIComponent(token), {
      credentials: 'omit',
      headers: { Accept: 'application/json' }
    });
  } catch (e) {
    showError('The conversation could not be loaded. Check your connection and reload the page.');
    return;
  }
  if (response.status === 404) {
    showError('This link does not exist: it is wrong, or its owner revoked it.');
    return;
  }
  if (!response.ok) {
    showError('The conversation could not be loaded. Please try again later.');
    return;
  }
  var body = await response.json();
  var title = typeof body.title === 'string' && body.title ? body.title : 'Shared conversation';
  titleEl.textContent = title;
  document.title = title + ' · LLM Chat';
  var when = formatDate(body.created_at);
  if (when) noteEl.textContent = 'A copy of the conversation as it was on ' + when + '.';
  var messages = Array.isArray(body.messages) ? body.messages : [];
  var fragment = document.createDocumentFragment();
  messages.forEach(function (m) {
    if (m && typeof m.content === 'string') fragment.append(messageElement(m.role, m.content));
  });
  transcript.replaceChildren(fragment);
  root.dataset.state = 'ready';
}

// The code blocks' Copy buttons (static/markdown.js makes them).
transcript.addEventListener('click', function (e) {
  var button = e.target.closest('.code-copy');
  if (!button || !navigator.clipboard) return;
  var code = button.closest('.code-block').querySelector('pre code');
  navigator.clipboard.writeText(code ? code.textContent : '').then(function () {
    var label = button.getAttribute('aria-label') || '';
    button.classList.add('is-copied');
    button.setAttribute('aria-label', 'Copied');
    setTimeout(function () {
      button.classList.remove('is-copied');
      button.setAttribute('aria-label', label);
    }, 1500);
  }, function () { /* nothing copied: the code can still be selected */ });
});

load();
