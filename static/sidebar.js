/*
 * The sidebar: the conversation list (paged, newest first), its search
 * (words highlighted through search.js) and the narrow-screen drawer.
 */
import { highlightParts, searchTerms } from './search.js';
import { PAGE_SIZE, conversations, els, state, streams } from './state.js';
import { api, formatDate, showError } from './api.js';

export function sortedConversations() {
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
  if (c.conversation_id === state.currentId) btn.setAttribute('aria-current', 'true');
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

const loadMoreItem = document.createElement('li');
loadMoreItem.className = 'load-more-item';
const loadMoreButton = document.createElement('button');
loadMoreButton.type = 'button';
loadMoreButton.id = 'load-more-button';
loadMoreButton.className = 'button button-quiet load-more';
loadMoreButton.textContent = 'Load older conversations';
loadMoreItem.appendChild(loadMoreButton);

export function renderList() {
  var frag = document.createDocumentFragment();
  if (state.search) {
    var terms = searchTerms(state.search.query);
    var results = state.search.results || [];
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
    if (state.search.error) els.searchStatus.textContent = state.search.error;
    else if (state.search.pending) els.searchStatus.textContent = 'Searching…';
    else if (!results.length) els.searchStatus.textContent = 'No conversation matches “' + state.search.query + '”.';
    else els.searchStatus.textContent = results.length + (results.length === 1 ? ' conversation matches' : ' conversations match') + ' “' + state.search.query + '”.';
  } else {
    var list = sortedConversations();
    for (var i = 0; i < list.length; i++) {
      var c = list[i];
      var count = typeof c.message_count === 'number' ? c.message_count : 0;
      frag.appendChild(conversationItem(c, null,
        formatDate(c.updated_at || c.created_at) + ' · ' + count + (count === 1 ? ' message' : ' messages')));
    }
    if (state.listHasMore) {
      loadMoreButton.disabled = state.listLoading;
      frag.appendChild(loadMoreItem);
    }
    els.searchStatus.textContent = '';
  }
  els.list.replaceChildren(frag);
}

export function rememberConversation(summary) {
  var prev = conversations.get(summary.conversation_id) || {};
  var merged = Object.assign({}, prev, summary);
  if (!merged.created_at) merged.created_at = prev.created_at || summary.updated_at || new Date().toISOString();
  conversations.set(summary.conversation_id, merged);
  return merged;
}

/** Reloads the first rows of the list (as many as are shown). */
export function refreshList() {
  var limit = Math.min(1000, Math.max(PAGE_SIZE, state.listLoaded));
  return api('GET', '/list_conversations?limit=' + limit + '&offset=0').then(function (data) {
    var list = (data && data.conversations) || [];
    conversations.clear();
    for (var i = 0; i < list.length; i++) rememberConversation(list[i]);
    state.listLoaded = list.length;
    state.listHasMore = list.length >= limit;
    if (state.currentId && !conversations.has(state.currentId)) {
      rememberConversation({ conversation_id: state.currentId, title: null, message_count: 0 });
    }
    renderList();
  });
}

/** Loads the next page of older conversations. */
export function loadMore() {
  if (state.listLoading || !state.listHasMore || state.search) return;
  state.listLoading = true;
  loadMoreButton.disabled = true;
  loadMoreButton.textContent = 'Loading…';
  api('GET', '/list_conversations?limit=' + PAGE_SIZE + '&offset=' + state.listLoaded).then(function (data) {
    var list = (data && data.conversations) || [];
    for (var i = 0; i < list.length; i++) {
      if (!conversations.has(list[i].conversation_id)) rememberConversation(list[i]);
    }
    state.listLoaded += list.length;
    state.listHasMore = list.length >= PAGE_SIZE;
  }, function (err) {
    showError('Could not load older conversations: ' + err.message);
  }).then(function () {
    state.listLoading = false;
    loadMoreButton.textContent = 'Load older conversations';
    renderList();
    // Still in view (a tall sidebar): keep going.
    if (state.listHasMore && state.loadMoreVisible) setTimeout(loadMore, 0);
  });
}
if ('IntersectionObserver' in window) {
  new IntersectionObserver(function (entries) {
    state.loadMoreVisible = entries.some(function (e) { return e.isIntersecting; });
    if (state.loadMoreVisible) loadMore();
  }, { root: els.list, rootMargin: '0px 0px 200px 0px' }).observe(loadMoreButton);
}

export function runSearch(query) {
  var seq = ++state.searchSeq;
  // The previous results stay up until the new ones arrive.
  state.search = { query: query, results: state.search ? state.search.results : null, error: null, pending: true };
  renderList();
  api('GET', '/search_conversations?q=' + encodeURIComponent(query)).then(function (data) {
    if (seq !== state.searchSeq || !state.search) return;
    state.search.results = (data && data.conversations) || [];
    state.search.pending = false;
    renderList();
  }, function (err) {
    if (seq !== state.searchSeq || !state.search) return;
    state.search.pending = false;
    state.search.error = err.message;
    state.search.results = [];
    renderList();
  });
}

export function onSearchInput() {
  clearTimeout(state.searchTimer);
  var query = els.search.value.trim();
  if (!query) {
    state.searchSeq++;
    if (state.search) { state.search = null; renderList(); }
    return;
  }
  state.searchTimer = setTimeout(function () { runSearch(query); }, 200);
}

export function closeSidebar() {
  els.sidebar.classList.remove('is-open');
  els.sidebarToggle.setAttribute('aria-expanded', 'false');
}
