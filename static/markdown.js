/*
 * Model replies as HTML, by the libraries in static/vendor/libs.js
 * (ChatLibs): markdown-it (CommonMark + tables, strikethrough, footnotes,
 * task lists, math by markdown-it-texmath and KaTeX), highlight.js for code,
 * and DOMPurify over every HTML string before it becomes DOM.
 *
 * Safe by construction: raw HTML in the text stays text (markdown-it with
 * html: false), links are made only for http:, https: and mailto: URLs and
 * open in a new tab with rel="noopener noreferrer", images become such links
 * (nothing is fetched from elsewhere), and DOMPurify removes whatever could
 * run. The page's CSP allows no inline style, so the few style attributes of
 * KaTeX's layout (and of table alignment) are set through CSSOM instead.
 *
 * An ES module (static/vendor/libs.js is loaded before it, as ChatLibs):
 *   render(text, {docId})             -> DocumentFragment
 *   renderInto(el, text)              -> replaces el's children
 *   createStreamRenderer(el, {docId}) -> {update(text), finish(text), reset()}
 *     re-renders only the blocks that can still change while a reply streams
 *   safeUrl(href)                     -> normalised URL or null
 */
var doc = globalThis.document;
var libs = globalThis.ChatLibs;

// ------------------------------------------------------------------ URLs

function safeUrl(raw) {
  if (typeof raw !== 'string') return null;
  var s = raw.trim();
  if (!/^(?:https?:\/\/|mailto:)/i.test(s)) return null;
  var url;
  try { url = new URL(s); } catch (e) { return null; }
  if (url.protocol !== 'http:' && url.protocol !== 'https:' && url.protocol !== 'mailto:') return null;
  return url.href;
}

// --------------------------------------------------------------- parsing

var hljs = libs.hljs;
hljs.configure({ classPrefix: 'hl-' });

function languageOf(info) {
  var lang = String(info || '').trim().split(/\s+/)[0].replace(/[^\w+#.-]/g, '').slice(0, 24);
  return lang.toLowerCase();
}

var md = libs.MarkdownIt({
  html: false,
  linkify: true,
  breaks: true,
  highlight: function (code, info) {
    var lang = languageOf(info);
    if (!lang || !hljs.getLanguage(lang)) return '';
    try {
      return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
    } catch (e) {
      return '';
    }
  }
});
md.validateLink = function (url) { return safeUrl(url) !== null; };
// A line break is just <br>, and blocks are not separated by newline text
// (see toDom): the DOM's text is the reply's text.
md.renderer.rules.softbreak = function () { return '<br>'; };
md.renderer.rules.hardbreak = function () { return '<br>'; };
md.use(libs.markdownItFootnote);
md.use(libs.markdownItTaskLists, { enabled: false });
var texmath = libs.markdownItTexmath;
var KATEX_OPTIONS = { throwOnError: false, maxSize: 50, maxExpand: 500 };
md.use(texmath, { engine: libs.katex, delimiters: ['dollars', 'brackets'], katexOptions: KATEX_OPTIONS });
// The plugin puts KaTeX's HTML into its template with String.replace,
// which reads `$'` and `$&` in that HTML as patterns: insert it as is.
['dollars', 'brackets'].forEach(function (set) {
  var rules = texmath.rules[set];
  rules.inline.concat(rules.block).forEach(function (rule) {
    var display = rules.block.indexOf(rule) >= 0 || !!rule.displayMode;
    md.renderer.rules[rule.name] = function (tokens, idx) {
      var html = texmath.render(tokens[idx].content, display, KATEX_OPTIONS);
      var info = md.utils.escapeHtml(tokens[idx].info || '');
      return rule.tmpl.replace(/\$2/, function () { return info; }).replace(/\$1/, function () { return html; });
    };
  });
});

// An image is a link to it: the page loads nothing from elsewhere.
md.renderer.rules.image = function (tokens, idx, options, env, self) {
  var token = tokens[idx];
  var alt = self.renderInlineAsText(token.children, options, env) || token.attrGet('src');
  return '<a href="' + md.utils.escapeHtml(token.attrGet('src')) + '">' + md.utils.escapeHtml(alt) + '</a>';
};

// `<br>` in a table cell is a line break (models write it there for lines
// inside a cell); elsewhere raw HTML stays text.
md.core.ruler.push('table_cell_breaks', function (state) {
  var inCell = false;
  state.tokens.forEach(function (token) {
    if (token.type === 'td_open' || token.type === 'th_open') inCell = true;
    else if (token.type === 'td_close' || token.type === 'th_close') inCell = false;
    else if (inCell && token.type === 'inline' && token.children) {
      var out = [];
      token.children.forEach(function (child) {
        if (child.type !== 'text' || !/<br\s*\/?>/i.test(child.content)) { out.push(child); return; }
        child.content.split(/<br\s*\/?>/i).forEach(function (part, k) {
          if (k > 0) out.push(new state.Token('hardbreak', 'br', 0));
          if (part) {
            var text = new state.Token('text', '', 0);
            text.content = part;
            out.push(text);
          }
        });
      });
      token.children = out;
    }
  });
});

// ------------------------------------------------------------ HTML to DOM

var purify = libs.DOMPurify;
// The strict CSP refuses style attributes in parsed HTML (DOMPurify's
// parse included): KaTeX's are renamed before parsing and set through
// CSSOM after. The text itself cannot make one: markdown-it escapes every
// quote outside the attributes it writes (html: false).
var STYLE_ATTR = / style="([^"]*)"/g;
purify.addHook('uponSanitizeAttribute', function (node, data) {
  if (data.attrName === 'style') data.keepAttr = false;
});
var PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  USE_PROFILES: { html: true, mathMl: true, svg: true },
  // KaTeX's MathML keeps the TeX source (for copy and screen readers).
  ADD_TAGS: ['semantics', 'annotation'],
  ADD_ATTR: ['encoding'],
  FORBID_TAGS: ['style', 'form', 'textarea', 'select', 'button', 'img', 'video', 'audio', 'iframe'],
  FORBID_ATTR: ['srcset']
};

var mathCss = null;
/** KaTeX's stylesheet and fonts load once a reply contains math. */
function loadMathCss() {
  if (mathCss || !doc.head) return;
  mathCss = doc.createElement('link');
  mathCss.rel = 'stylesheet';
  mathCss.href = '/static/vendor/katex.css' + ASSET_QUERY;
  doc.head.appendChild(mathCss);
}
// The page's asset version, as the bundle was loaded under it.
var ASSET_QUERY = (function () {
  var script = doc && doc.querySelector('script[src*="/static/vendor/libs.js"]');
  var m = script && /\?v=([\w-]+)/.exec(script.getAttribute('src') || '');
  return m ? '?v=' + m[1] : '';
})();

function codeBlock(pre) {
  var code = pre.querySelector('code');
  var m = code && /(?:^|\s)language-(\S+)/.exec(code.className);
  var lang = m ? languageOf(m[1]) : '';
  var wrap = doc.createElement('div');
  wrap.className = 'code-block';
  wrap.dataset.lang = lang || 'text';
  var header = doc.createElement('div');
  header.className = 'code-header';
  var label = doc.createElement('span');
  label.className = 'code-lang';
  label.dataset.label = lang || 'text';
  label.setAttribute('aria-hidden', 'true');
  var copy = doc.createElement('button');
  copy.className = 'code-copy';
  copy.type = 'button';
  copy.setAttribute('aria-label', 'Copy code' + (lang ? ' (' + lang + ')' : ''));
  copy.title = 'Copy code';
  header.append(label, copy);
  // markdown-it ends the code with a newline: the block shows (and its
  // copy button copies) the code as written.
  var last = code && code.lastChild;
  while (last && last.nodeType !== 3) last = last.lastChild;
  if (last && /\n$/.test(last.data)) last.data = last.data.slice(0, -1);
  pre.tabIndex = 0; // scrollable by keyboard
  pre.replaceWith(wrap);
  wrap.append(header, pre);
}

/** Sanitised DOM of an HTML string from markdown-it. */
function toDom(html) {
  var frag = purify.sanitize(html.replace(STYLE_ATTR, ' data-md-style="$1"'), PURIFY);
  Array.prototype.forEach.call(frag.querySelectorAll('[data-md-style]'), function (node) {
    var css = node.getAttribute('data-md-style');
    node.removeAttribute('data-md-style');
    var align = /^text-align:\s*(left|right|center)$/.exec(css.trim());
    if (align && (node.nodeName === 'TD' || node.nodeName === 'TH')) node.classList.add('align-' + align[1]);
    else if (node.style) node.style.cssText = css.replace(/&quot;/g, '"').replace(/&amp;/g, '&');
  });
  // The newlines markdown-it writes between block tags.
  var walker = doc.createTreeWalker(frag, 4 /* NodeFilter.SHOW_TEXT */);
  var blank = [];
  for (var t = walker.nextNode(); t; t = walker.nextNode()) {
    if (/^\n+$/.test(t.data) && !t.parentNode.closest?.('pre, code, p, h1, h2, h3, h4, h5, h6, td, th, .katex')) blank.push(t);
  }
  blank.forEach(function (t) { t.remove(); });
  // Task-list checkboxes are the only inputs, and always disabled.
  Array.prototype.forEach.call(frag.querySelectorAll('input'), function (input) {
    if (input.type !== 'checkbox' || !input.disabled) { input.remove(); return; }
    input.setAttribute('aria-label', input.checked ? 'done' : 'not done');
  });
  Array.prototype.forEach.call(frag.querySelectorAll('a[href]'), function (a) {
    if (a.getAttribute('href').charAt(0) === '#') return; // a footnote in this reply
    a.rel = 'noopener noreferrer';
    a.target = '_blank';
  });
  Array.prototype.forEach.call(frag.querySelectorAll('pre'), codeBlock);
  Array.prototype.forEach.call(frag.querySelectorAll('table'), function (table) {
    var wrap = doc.createElement('div');
    wrap.className = 'table-wrap';
    table.replaceWith(wrap);
    wrap.appendChild(table);
  });
  if (frag.querySelector('.katex')) loadMathCss();
  return frag;
}

function normalise(text) {
  return String(text == null ? '' : text).replace(/\r\n?/g, '\n').replace(/\u0000/g, '\uFFFD');
}

function envFor(options) {
  var env = {};
  if (options && typeof options.docId === 'string') env.docId = options.docId;
  return env;
}

/** Whether markdown-it dropped a long text whole. */
function lostText(node, source) {
  return source.trim().length > 100 && !node.textContent.trim() && !node.querySelector('hr, input');
}

function render(text, options) {
  var source = normalise(text);
  var frag = toDom(md.render(source, envFor(options)));
  // markdown-it drops what is nested deeper than it parses (100 levels):
  // such a text is shown as it is rather than not at all.
  if (lostText(frag, source)) {
    var p = doc.createElement('p');
    p.textContent = source;
    frag.replaceChildren(p);
  }
  return frag;
}

var docIds = 0;
/** Footnote ids unique on the page: one id per container. */
function docIdOf(container) {
  if (!container.dataset.mdDoc) container.dataset.mdDoc = 'r' + (++docIds);
  return container.dataset.mdDoc;
}

function renderInto(container, text, options) {
  container.replaceChildren(render(text, { docId: (options && options.docId) || docIdOf(container) }));
}

// A reference definition or footnote anywhere changes blocks before it:
// such a reply is rendered whole on each update.
var DEFINITION = /^ {0,3}\[[^\]\n]+\]:/m;

/**
 * Renders a growing text into `container`. Top-level blocks that can no
 * longer change are rendered once and kept; only the rest is parsed and
 * rebuilt on each update, so a long reply costs about O(n) overall.
 */
function createStreamRenderer(container, options) {
  var docId = (options && options.docId) || docIdOf(container);
  var done = 0;          // characters of text rendered into kept nodes
  var kept = 0;          // number of kept child nodes
  var live = [];         // nodes of the blocks that may still change
  var lastText = '';

  function reset() {
    done = 0;
    kept = 0;
    live = [];
    lastText = '';
    container.replaceChildren();
  }

  function update(raw) {
    var text = normalise(raw);
    if (text.slice(0, lastText.length) !== lastText) reset();
    lastText = text;
    if (DEFINITION.test(text)) {
      if (done > 0) reset();
      lastText = text;
      container.replaceChildren(render(text, { docId: docId }));
      live = Array.prototype.slice.call(container.childNodes);
      return text.length;
    }
    var tail = text.slice(done);
    var env = { docId: docId };
    var tokens = md.parse(tail, env);
    // Where each top-level block starts: [token index, line].
    var starts = [];
    tokens.forEach(function (t, i) {
      if (t.level === 0 && t.nesting >= 0 && t.map) starts.push([i, t.map[0]]);
    });
    // The last line may be incomplete: a block is final only when the
    // block after it starts on a complete line.
    var partial = tail.split('\n').length - 1;
    var fin = 0;
    while (fin < starts.length - 1 && starts[fin + 1][1] < partial) fin++;
    for (var r = 0; r < live.length; r++) live[r].remove();
    live = [];
    var cut = fin > 0 ? starts[fin][0] : 0;
    if (fin > 0) {
      container.appendChild(toDom(md.renderer.render(tokens.slice(0, cut), md.options, env)));
      kept = container.childNodes.length;
      var line = starts[fin][1];
      var offset = 0;
      for (var k = 0; k < line; k++) offset = tail.indexOf('\n', offset) + 1;
      done += offset;
    }
    var rest = toDom(md.renderer.render(tokens.slice(cut), md.options, env));
    live = Array.prototype.slice.call(rest.childNodes);
    container.appendChild(rest);
    if (lostText(container, text)) {
      done = 0;
      kept = 0;
      container.replaceChildren(render(text, { docId: docId }));
      live = Array.prototype.slice.call(container.childNodes);
    }
    return tail.length;
  }

  function finish(raw) {
    // One full render at the end: exactly what a reload would show.
    reset();
    lastText = normalise(raw);
    renderInto(container, lastText, { docId: docId });
    done = lastText.length;
    kept = container.childNodes.length;
  }

  return { update: update, finish: finish, reset: reset, keptNodes: function () { return kept; } };
}

export { render, renderInto, createStreamRenderer, safeUrl };
