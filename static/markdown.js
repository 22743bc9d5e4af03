/*
 * A small, safe markdown renderer for model replies, and a tiny highlighter
 * for code blocks. No third-party code.
 *
 * Safe by construction: the output is built with createElement and
 * textContent only, from a fixed set of elements (p, h1-h6, em, strong, del,
 * code, pre, ul, ol, li, blockquote, hr, br, a, table parts, span, div,
 * button, input[type=checkbox disabled]). Raw HTML in the text stays visible
 * text; links are made only for http:, https: and mailto: URLs and open in
 * a new tab with rel="noopener noreferrer". Nothing here ever assigns
 * innerHTML or an attribute from which script could run.
 *
 *   ChatMarkdown.render(text)            -> DocumentFragment
 *   ChatMarkdown.renderInto(el, text)    -> replaces el's children
 *   ChatMarkdown.createStreamRenderer(el) -> {update(text), finish(text), reset()}
 *     re-renders only the blocks that can still change while a reply streams
 *   ChatMarkdown.highlight(code, lang)   -> DocumentFragment of text and spans
 *   ChatMarkdown.safeUrl(href)           -> normalised URL or null
 */
(function (root) {
  'use strict';

  var doc = root.document;
  var MAX_DEPTH = 12; // nesting of quotes/lists/emphasis; deeper is plain text

  // ------------------------------------------------------------------ URLs

  function safeUrl(raw) {
    if (typeof raw !== 'string') return null;
    var s = raw.trim();
    if (s.charAt(0) === '<' && s.charAt(s.length - 1) === '>') s = s.slice(1, -1).trim();
    if (!/^(?:https?:\/\/|mailto:)/i.test(s)) return null;
    var url;
    try { url = new URL(s); } catch (e) { return null; }
    if (url.protocol !== 'http:' && url.protocol !== 'https:' && url.protocol !== 'mailto:') return null;
    return url.href;
  }

  function el(tag, className) {
    var node = doc.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  function link(href) {
    var a = el('a');
    a.href = href;
    a.rel = 'noopener noreferrer';
    a.target = '_blank';
    return a;
  }

  // ----------------------------------------------------------- highlighter

  function words(list) {
    var set = Object.create(null);
    list.split(/\s+/).forEach(function (w) { if (w) set[w] = true; });
    return set;
  }

  var C_LIKE = 'break case continue default do else for goto if return switch while sizeof typedef struct union enum static const extern volatile inline';
  var JS_KW = 'async await break case catch class const continue debugger default delete do else export extends finally for from function get if import in instanceof let new of return set static super switch this throw try typeof var void while with yield';
  var LANGS = {
    js: { kw: words(JS_KW), lit: words('true false null undefined NaN Infinity'), line: ['//'], block: ['/*', '*/'], str: ['`', '"', "'"] },
    ts: { kw: words(JS_KW + ' abstract as declare enum implements interface keyof namespace private protected public readonly type satisfies'),
      lit: words('true false null undefined NaN Infinity'), line: ['//'], block: ['/*', '*/'], str: ['`', '"', "'"] },
    python: { kw: words('and as assert async await break class continue def del elif else except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield match case print'),
      lit: words('True False None self cls'), hash: true, str: ['"""', "'''", '"', "'"] },
    rust: { kw: words('as async await break const continue crate dyn else enum extern fn for if impl in let loop match mod move mut pub ref return static struct super trait type unsafe use where while macro_rules'),
      lit: words('true false self Self None Some Ok Err'), line: ['//'], block: ['/*', '*/'], str: ['"'] },
    go: { kw: words('break case chan const continue default defer else fallthrough for func go goto if import interface map package range return select struct switch type var'),
      lit: words('true false nil iota'), line: ['//'], block: ['/*', '*/'], str: ['`', '"', "'"] },
    c: { kw: words(C_LIKE + ' auto char double float int long short signed unsigned void bool class namespace template typename public private protected virtual override new delete this using try catch throw operator friend constexpr nullptr include define ifdef ifndef endif'),
      lit: words('true false NULL nullptr'), line: ['//'], block: ['/*', '*/'], str: ['"', "'"] },
    java: { kw: words('abstract assert boolean break byte case catch char class const continue default do double else enum extends final finally float for if implements import instanceof int interface long native new package private protected public return short static super switch synchronized this throw throws transient try void volatile while var record fun val when object companion override data sealed'),
      lit: words('true false null'), line: ['//'], block: ['/*', '*/'], str: ['"""', '"', "'"] },
    csharp: { kw: words('abstract as async await base bool break byte case catch char class const continue decimal default delegate do double else enum event explicit extern finally fixed float for foreach if implicit in int interface internal is lock long namespace new object operator out override params private protected public readonly ref return sealed short static string struct switch this throw try typeof uint ulong using var virtual void volatile while'),
      lit: words('true false null'), line: ['//'], block: ['/*', '*/'], str: ['"', "'"] },
    sh: { kw: words('if then else elif fi for while until do done case esac function in return export local readonly echo exit set unset source alias cd sudo'),
      lit: words('true false'), hash: true, str: ['"', "'"], vars: true },
    sql: { kw: words('select from where and or not insert into values update set delete create table drop alter add index primary key foreign references join left right inner outer full on group by order having limit offset as distinct union all exists in is like between case when then else end with returning begin commit rollback view trigger default unique check'),
      lit: words('null true false'), line: ['--'], block: ['/*', '*/'], str: ["'", '"'], nocase: true },
    json: { kw: words(''), lit: words('true false null'), str: ['"'] },
    css: { kw: words('important media import keyframes supports font-face'), lit: words(''), block: ['/*', '*/'], str: ['"', "'"] },
    yaml: { kw: words(''), lit: words('true false null yes no on off'), hash: true, str: ['"', "'"] },
    toml: { kw: words(''), lit: words('true false'), hash: true, str: ['"""', "'''", '"', "'"] },
    markup: { kw: words(''), lit: words(''), block: ['<!--', '-->'], str: ['"', "'"] },
    generic: { kw: words(''), lit: words('true false null'), line: ['//'], block: ['/*', '*/'], hash: true, str: ['"', "'"] }
  };
  var ALIASES = {
    javascript: 'js', jsx: 'js', mjs: 'js', cjs: 'js', node: 'js', typescript: 'ts', tsx: 'ts',
    py: 'python', python3: 'python', rs: 'rust', golang: 'go', h: 'c', cpp: 'c', 'c++': 'c', cc: 'c',
    hpp: 'c', cxx: 'c', objc: 'c', kotlin: 'java', kt: 'java', scala: 'java', swift: 'java', cs: 'csharp',
    'c#': 'csharp', bash: 'sh', shell: 'sh', zsh: 'sh', console: 'sh', shellscript: 'sh', dockerfile: 'sh',
    postgres: 'sql', postgresql: 'sql', mysql: 'sql', sqlite: 'sql', jsonc: 'json', json5: 'json',
    scss: 'css', less: 'css', yml: 'yaml', ini: 'toml', html: 'markup', xml: 'markup', svg: 'markup',
    vue: 'markup', php: 'generic', ruby: 'generic', rb: 'generic', perl: 'generic', lua: 'generic', r: 'generic'
  };

  function langOf(name) {
    var key = String(name || '').toLowerCase();
    key = ALIASES[key] || key;
    return LANGS[key] || (key ? LANGS.generic : null);
  }

  var NUMBER = /^(?:0[xX][\da-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|\d[\d_]*(?:\.\d[\d_]*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)[a-zA-Z\d_]*/;
  var IDENT = /^[A-Za-z_$][\w$]*/;

  function highlight(code, langName) {
    var frag = doc.createDocumentFragment();
    var lang = langOf(langName);
    if (!lang || code.length > 200000) {
      frag.appendChild(doc.createTextNode(code));
      return frag;
    }
    var plain = '';
    function flush() {
      if (plain) { frag.appendChild(doc.createTextNode(plain)); plain = ''; }
    }
    function token(cls, text) {
      flush();
      var span = el('span', 'hl-' + cls);
      span.textContent = text;
      frag.appendChild(span);
    }
    var i = 0;
    var n = code.length;
    var strs = lang.str || [];
    outer:
    while (i < n) {
      var ch = code.charAt(i);
      var prev = i > 0 ? code.charAt(i - 1) : '\n';
      // comments
      if (lang.line) {
        for (var a = 0; a < lang.line.length; a++) {
          if (code.startsWith(lang.line[a], i)) {
            var eol = code.indexOf('\n', i);
            if (eol === -1) eol = n;
            token('comment', code.slice(i, eol));
            i = eol;
            continue outer;
          }
        }
      }
      if (lang.hash && ch === '#' && /\s/.test(prev) && !(lang === LANGS.generic && code.charAt(i + 1) === '[')) {
        var end = code.indexOf('\n', i);
        if (end === -1) end = n;
        token('comment', code.slice(i, end));
        i = end;
        continue;
      }
      if (lang.block && code.startsWith(lang.block[0], i)) {
        var close = code.indexOf(lang.block[1], i + lang.block[0].length);
        var stop = close === -1 ? n : close + lang.block[1].length;
        token('comment', code.slice(i, stop));
        i = stop;
        continue;
      }
      // strings
      for (var s = 0; s < strs.length; s++) {
        var q = strs[s];
        if (!code.startsWith(q, i)) continue;
        // Rust lifetimes and the like: a quote that does not close soon is no string.
        var j = i + q.length;
        var multi = q.length === 3 || q === '`';
        while (j < n) {
          var c = code.charAt(j);
          if (c === '\\') { j += 2; continue; }
          if (code.startsWith(q, j)) { j += q.length; break; }
          if (c === '\n' && !multi) break;
          j++;
        }
        if (j > n) j = n;
        token('string', code.slice(i, j));
        i = j;
        continue outer;
      }
      // numbers (not inside identifiers)
      if (/[\d.]/.test(ch) && !/[\w$]/.test(prev)) {
        var num = NUMBER.exec(code.slice(i, i + 64));
        if (num) {
          token('number', num[0]);
          i += num[0].length;
          continue;
        }
      }
      if (lang.vars && ch === '$') {
        var v = /^\$(?:\{[^}\n]*\}|[A-Za-z_][\w]*|[0-9@#?*!$-])/.exec(code.slice(i, i + 128));
        if (v) {
          token('variable', v[0]);
          i += v[0].length;
          continue;
        }
      }
      // words
      if (/[A-Za-z_$]/.test(ch) && !/[\w$]/.test(prev)) {
        var id = IDENT.exec(code.slice(i, i + 256))[0];
        var key = lang.nocase ? id.toLowerCase() : id;
        if (lang.kw[key]) token('keyword', id);
        else if (lang.lit[key]) token('literal', id);
        else if (code.charAt(i + id.length) === '(' && lang !== LANGS.json) token('function', id);
        else plain += id;
        i += id.length;
        continue;
      }
      plain += ch;
      i++;
    }
    flush();
    return frag;
  }

  // ---------------------------------------------------------------- inline

  var PUNCT = /[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~]/;
  var WORDCHAR = /[\p{L}\p{N}]/u;
  var SPACE = /\s/;

  /**
   * Appends the inline content of `text` to `parent`. `memo` remembers
   * delimiters that have no closer in this string, so pathological input
   * stays linear.
   */
  function inline(text, parent, depth, noLinks) {
    var memo = Object.create(null);
    var buf = '';
    var i = 0;
    var n = text.length;

    function flush() {
      if (buf) { parent.appendChild(doc.createTextNode(buf)); buf = ''; }
    }

    // Index of the closing backtick run of exactly `len` after `from`, or -1.
    function findBackticks(from, len) {
      var k = from;
      while (k < n) {
        var at = text.indexOf('`', k);
        if (at === -1) return -1;
        var run = at;
        while (run < n && text.charAt(run) === '`') run++;
        if (run - at === len) return at;
        k = run;
      }
      return -1;
    }

    // Index of a closing delimiter run (char ch, length exactly len) after `from`, or -1.
    function findCloser(from, ch, len) {
      var key = ch + len;
      if (memo[key] !== undefined && memo[key] !== -2 && memo[key] >= from) return memo[key];
      if (memo[key] === -1) return -1;
      var k = from;
      while (k < n) {
        var c = text.charAt(k);
        if (c === '\\') { k += 2; continue; }
        if (c === '`') {
          var r = k;
          while (r < n && text.charAt(r) === '`') r++;
          var closeAt = findBackticks(r, r - k);
          k = closeAt === -1 ? r : closeAt + (r - k);
          continue;
        }
        if (c === ch) {
          var e = k;
          while (e < n && text.charAt(e) === ch) e++;
          var before = text.charAt(k - 1);
          var after = e < n ? text.charAt(e) : ' ';
          if (e - k === len && !SPACE.test(before) && (ch !== '_' || !WORDCHAR.test(after))) {
            memo[key] = k;
            return k;
          }
          k = e;
          continue;
        }
        k++;
      }
      memo[key] = -1;
      return -1;
    }

    // Parses [label](url "title") at i; returns {end, label, url} or null.
    function parseLink(start) {
      if (memo.link === -1) return null;
      var depthB = 0;
      var k = start;
      for (; k < n; k++) {
        var c = text.charAt(k);
        if (c === '\\') { k++; continue; }
        if (c === '`') {
          var r = k;
          while (r < n && text.charAt(r) === '`') r++;
          var closeAt = findBackticks(r, r - k);
          if (closeAt !== -1) k = closeAt + (r - k) - 1;
          else k = r - 1;
          continue;
        }
        if (c === '[') depthB++;
        else if (c === ']') {
          depthB--;
          if (depthB === 0) break;
        }
      }
      if (k >= n) { memo.link = -1; return null; }
      if (text.charAt(k + 1) !== '(') return null;
      var m = /^\(\s*(<[^<>\n]*>|[^\s()<>]*(?:\([^\s()<>]*\)[^\s()<>]*)*)(?:\s+("[^"]*"|'[^']*'|\([^()]*\)))?\s*\)/.exec(text.slice(k + 1, k + 2050));
      if (!m) return null;
      return { end: k + 1 + m[0].length, label: text.slice(start + 1, k), url: m[1] };
    }

    while (i < n) {
      var ch = text.charAt(i);

      if (ch === '\\' && i + 1 < n && PUNCT.test(text.charAt(i + 1))) {
        buf += text.charAt(i + 1);
        i += 2;
        continue;
      }

      if (ch === '\n') {
        buf = buf.replace(/[ \t]+$/, '');
        flush();
        parent.appendChild(el('br'));
        i++;
        while (i < n && (text.charAt(i) === ' ' || text.charAt(i) === '\t')) i++;
        continue;
      }

      if (ch === '`') {
        var runEnd = i;
        while (runEnd < n && text.charAt(runEnd) === '`') runEnd++;
        var len = runEnd - i;
        var closeAt = memo['`' + len] === -1 ? -1 : findBackticks(runEnd, len);
        if (closeAt === -1) {
          memo['`' + len] = -1;
          buf += text.slice(i, runEnd);
          i = runEnd;
          continue;
        }
        var codeText = text.slice(runEnd, closeAt).replace(/\n/g, ' ');
        if (codeText.length > 2 && codeText.charAt(0) === ' ' && codeText.charAt(codeText.length - 1) === ' ' && codeText.trim()) {
          codeText = codeText.slice(1, -1);
        }
        flush();
        var code = el('code');
        code.textContent = codeText;
        parent.appendChild(code);
        i = closeAt + len;
        continue;
      }

      if ((ch === '[' || (ch === '!' && text.charAt(i + 1) === '[')) && !noLinks && depth < MAX_DEPTH) {
        var isImage = ch === '!';
        var parsed = parseLink(isImage ? i + 1 : i);
        if (parsed) {
          var href = safeUrl(parsed.url);
          flush();
          if (href) {
            var a = link(href);
            if (isImage) a.className = 'md-image-link';
            inline(parsed.label || href, a, depth + 1, true);
            parent.appendChild(a);
          } else {
            // Not a link we make (javascript:, data:, relative...): the label only.
            var span = el('span', 'md-unlinked');
            inline(parsed.label, span, depth + 1, true);
            parent.appendChild(span);
          }
          i = parsed.end;
          continue;
        }
      }

      if (ch === '<' && !noLinks) {
        var auto = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i.exec(text.slice(i, i + 2050));
        if (auto && safeUrl(auto[1])) {
          flush();
          var al = link(safeUrl(auto[1]));
          al.textContent = auto[1];
          parent.appendChild(al);
          i += auto[0].length;
          continue;
        }
      }

      if ((ch === 'h' || ch === 'H') && !noLinks && !WORDCHAR.test(text.charAt(i - 1) || ' ')) {
        var bare = /^https?:\/\/[^\s<>"]+/i.exec(text.slice(i, i + 2050));
        if (bare) {
          var u = bare[0];
          // Trailing punctuation is not part of the URL; nor is an unbalanced ')'.
          for (;;) {
            var last = u.charAt(u.length - 1);
            if (/[.,:;!?'*_~]/.test(last)) { u = u.slice(0, -1); continue; }
            if (last === ')' && (u.split('(').length < u.split(')').length)) { u = u.slice(0, -1); continue; }
            break;
          }
          var safe = safeUrl(u);
          if (safe && u.length > 8) {
            flush();
            var bl = link(safe);
            bl.textContent = u;
            parent.appendChild(bl);
            i += u.length;
            continue;
          }
        }
      }

      if ((ch === '*' || ch === '_' || ch === '~') && depth < MAX_DEPTH) {
        var e = i;
        while (e < n && text.charAt(e) === ch) e++;
        var runLen = e - i;
        var prevCh = i > 0 ? text.charAt(i - 1) : ' ';
        var nextCh = e < n ? text.charAt(e) : ' ';
        var canOpen = !SPACE.test(nextCh) && (ch !== '_' || !WORDCHAR.test(prevCh))
          && (ch !== '~' || runLen === 2) && runLen <= 3;
        if (canOpen) {
          var closer = findCloser(e, ch, runLen);
          if (closer > e) {
            flush();
            var inner = text.slice(e, closer);
            var node;
            if (ch === '~') node = el('del');
            else if (runLen === 1) node = el('em');
            else if (runLen === 2) node = el('strong');
            else { node = el('em'); var strong = el('strong'); node.appendChild(strong); }
            inline(inner, node.firstChild || node, depth + 1, noLinks);
            parent.appendChild(node);
            i = closer + runLen;
            continue;
          }
        }
        buf += text.slice(i, e);
        i = e;
        continue;
      }

      buf += ch;
      i++;
    }
    flush();
  }

  // ---------------------------------------------------------------- blocks

  var RE = {
    fence: /^( {0,3})(`{3,}|~{3,})(.*)$/,
    heading: /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$/,
    hr: /^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$/,
    quote: /^ {0,3}> ?/,
    bullet: /^( {0,3})([-*+])([ \t]+|$)/,
    ordered: /^( {0,3})(\d{1,9})([.)])([ \t]+|$)/,
    blank: /^[ \t]*$/,
    delim: /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/,
    task: /^\[([ xX])\][ \t]+/
  };

  function isBlank(line) { return RE.blank.test(line); }

  /** Columns of leading whitespace (tabs to multiples of 4). */
  function indentOf(line) {
    var col = 0;
    for (var k = 0; k < line.length; k++) {
      var c = line.charAt(k);
      if (c === ' ') col++;
      else if (c === '\t') col += 4 - (col % 4);
      else break;
    }
    return col;
  }

  /** Removes up to `cols` columns of leading whitespace. */
  function stripIndent(line, cols) {
    var col = 0;
    var k = 0;
    while (k < line.length && col < cols) {
      var c = line.charAt(k);
      if (c === ' ') { col++; k++; } else if (c === '\t') {
        var w = 4 - (col % 4);
        if (col + w > cols) return repeat(' ', col + w - cols) + line.slice(k + 1);
        col += w;
        k++;
      } else break;
    }
    return line.slice(k);
  }

  function repeat(s, count) { var out = ''; while (count-- > 0) out += s; return out; }

  function fenceOpen(line) {
    var m = RE.fence.exec(line);
    if (!m) return null;
    if (m[2].charAt(0) === '`' && m[3].indexOf('`') !== -1) return null;
    return { indent: m[1].length, ch: m[2].charAt(0), len: m[2].length, info: m[3].trim() };
  }

  function listMarker(line) {
    var m = RE.bullet.exec(line);
    var ordered = false;
    if (!m) {
      m = RE.ordered.exec(line);
      if (!m) return null;
      ordered = true;
    }
    var spaces = ordered ? m[4] : m[3];
    var markerEnd = m[0].length - spaces.length;
    var rest = line.slice(m[0].length);
    var spaceCols = indentOf(spaces + 'x');
    var width = markerEnd + (spaceCols >= 1 && spaceCols <= 4 ? spaceCols : 1);
    return {
      ordered: ordered,
      kind: ordered ? m[3] : m[2],
      start: ordered ? parseInt(m[2], 10) : null,
      width: width,
      content: spaceCols > 4 ? stripIndent(line.slice(markerEnd), 1) : rest,
      empty: isBlank(rest)
    };
  }

  /** Whether `line` starts a block that ends a paragraph. */
  function interrupts(line) {
    if (fenceOpen(line) || RE.heading.test(line) || RE.hr.test(line) || RE.quote.test(line)) return true;
    var lm = listMarker(line);
    return !!(lm && !lm.empty && (!lm.ordered || lm.start === 1));
  }

  function splitRow(line) {
    var s = line.trim();
    if (s.charAt(0) === '|') s = s.slice(1);
    if (s.charAt(s.length - 1) === '|' && s.charAt(s.length - 2) !== '\\') s = s.slice(0, -1);
    var cells = [];
    var cur = '';
    var inCode = false;
    for (var k = 0; k < s.length; k++) {
      var c = s.charAt(k);
      if (c === '\\' && s.charAt(k + 1) === '|') { cur += '|'; k++; continue; }
      if (c === '`') inCode = !inCode;
      if (c === '|' && !inCode) { cells.push(cur.trim()); cur = ''; continue; }
      cur += c;
    }
    cells.push(cur.trim());
    return cells;
  }

  /**
   * Parses lines into blocks, each with `line`: the index of its first line.
   * A block's end is decided only by its own lines and the first line of
   * what follows, which the stream renderer relies on.
   */
  function parseBlocks(lines, depth) {
    var blocks = [];
    var i = 0;
    var n = lines.length;
    while (i < n) {
      var line = lines[i];
      if (isBlank(line)) { i++; continue; }
      var start = i;
      var f;
      var m;

      if (depth >= MAX_DEPTH) {
        var flat = [];
        while (i < n && !isBlank(lines[i])) flat.push(lines[i++]);
        blocks.push({ type: 'p', text: flat.join('\n'), line: start });
        continue;
      }

      if ((f = fenceOpen(line))) {
        var body = [];
        var closed = false;
        i++;
        while (i < n) {
          var cm = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(lines[i]);
          if (cm && cm[1].charAt(0) === f.ch && cm[1].length >= f.len) { closed = true; i++; break; }
          body.push(stripIndent(lines[i], f.indent));
          i++;
        }
        blocks.push({ type: 'code', lang: f.info.split(/\s+/)[0] || '', text: body.join('\n'), closed: closed, line: start });
        continue;
      }

      if ((m = RE.heading.exec(line))) {
        var htext = (m[2] || '').replace(/(?:^|[ \t]+)#+$/, '');
        blocks.push({ type: 'h', level: m[1].length, text: htext, line: start });
        i++;
        continue;
      }

      if (RE.hr.test(line)) {
        blocks.push({ type: 'hr', line: start });
        i++;
        continue;
      }

      if (RE.quote.test(line)) {
        var inner = [];
        var lastWasText = false;
        while (i < n) {
          var ql = lines[i];
          if (RE.quote.test(ql)) {
            var stripped = ql.replace(RE.quote, '');
            inner.push(stripped);
            lastWasText = !isBlank(stripped) && !fenceOpen(stripped);
          } else if (lastWasText && !isBlank(ql) && !interrupts(ql)) {
            inner.push(ql); // lazy continuation of a quoted paragraph
          } else break;
          i++;
        }
        blocks.push({ type: 'quote', children: parseBlocks(inner, depth + 1), line: start });
        continue;
      }

      var lm = listMarker(line);
      if (lm && !RE.hr.test(line)) {
        var list = { type: 'list', ordered: lm.ordered, start: lm.start, items: [], loose: false, line: start };
        var blankBeforeNext = false;
        while (i < n) {
          var cur = listMarker(lines[i]);
          if (!cur || cur.ordered !== lm.ordered || cur.kind !== lm.kind || RE.hr.test(lines[i])) break;
          if (blankBeforeNext) list.loose = true;
          var itemLines = [cur.content];
          var contentIndent = cur.width;
          var prevBlank = cur.empty;
          var inFence = !!fenceOpen(cur.content);
          i++;
          while (i < n) {
            var il = lines[i];
            if (isBlank(il)) { itemLines.push(''); prevBlank = true; i++; continue; }
            if (indentOf(il) >= contentIndent) {
              var sl = stripIndent(il, contentIndent);
              if (prevBlank && !inFence && itemLines.some(function (x) { return !isBlank(x); })) list.loose = list.loose || 'maybe';
              if (fenceOpen(sl)) inFence = !inFence;
              itemLines.push(sl);
              prevBlank = false;
              i++;
              continue;
            }
            if (!prevBlank && !inFence && !interrupts(il) && !listMarker(il)) {
              itemLines.push(il); // lazy continuation
              i++;
              continue;
            }
            break;
          }
          blankBeforeNext = false;
          while (itemLines.length && isBlank(itemLines[itemLines.length - 1])) {
            itemLines.pop();
            blankBeforeNext = true;
          }
          var task = null;
          var tm = RE.task.exec(itemLines[0] || '');
          if (tm) {
            task = tm[1] !== ' ';
            itemLines[0] = itemLines[0].slice(tm[0].length);
          }
          var children = parseBlocks(itemLines, depth + 1);
          if (list.loose === 'maybe') list.loose = children.length > 1;
          list.items.push({ children: children, task: task });
        }
        blocks.push(list);
        continue;
      }

      // A table: a header row, then a delimiter row with as many cells.
      if (line.indexOf('|') !== -1 && i + 1 < n && RE.delim.test(lines[i + 1]) && lines[i + 1].indexOf('-') !== -1) {
        var head = splitRow(line);
        var aligns = splitRow(lines[i + 1]).map(function (c) {
          var left = c.charAt(0) === ':';
          var right = c.charAt(c.length - 1) === ':';
          return left && right ? 'center' : right ? 'right' : left ? 'left' : '';
        });
        if (aligns.length === head.length) {
          var rows = [];
          i += 2;
          while (i < n && !isBlank(lines[i]) && lines[i].indexOf('|') !== -1 && !interrupts(lines[i])) {
            rows.push(splitRow(lines[i]));
            i++;
          }
          blocks.push({ type: 'table', head: head, aligns: aligns, rows: rows, line: start });
          continue;
        }
      }

      var para = [line];
      i++;
      while (i < n && !isBlank(lines[i]) && !interrupts(lines[i])) para.push(lines[i++]);
      blocks.push({ type: 'p', text: para.join('\n').trim(), line: start });
    }
    return blocks;
  }

  // -------------------------------------------------------------- building

  function renderCode(block) {
    var wrap = el('div', 'code-block');
    var lang = block.lang.replace(/[^\w+#.-]/g, '').slice(0, 24);
    wrap.dataset.lang = lang || 'text';
    var header = el('div', 'code-header');
    var label = el('span', 'code-lang');
    label.dataset.label = lang || 'text';
    label.setAttribute('aria-hidden', 'true');
    var copy = el('button', 'code-copy');
    copy.type = 'button';
    copy.setAttribute('aria-label', 'Copy code' + (lang ? ' (' + lang + ')' : ''));
    copy.title = 'Copy code';
    header.append(label, copy);
    var pre = el('pre');
    var code = el('code');
    if (lang) code.className = 'language-' + lang.toLowerCase();
    code.appendChild(highlight(block.text, lang));
    pre.appendChild(code);
    pre.tabIndex = 0; // scrollable by keyboard
    wrap.append(header, pre);
    return wrap;
  }

  function renderBlock(block, depth, tight) {
    var node;
    switch (block.type) {
      case 'p':
        if (tight) {
          var frag = doc.createDocumentFragment();
          inline(block.text, frag, depth, false);
          return frag;
        }
        node = el('p');
        inline(block.text, node, depth, false);
        return node;
      case 'h':
        node = el('h' + block.level);
        inline(block.text, node, depth, false);
        return node;
      case 'hr':
        return el('hr');
      case 'code':
        return renderCode(block);
      case 'quote':
        node = el('blockquote');
        appendBlocks(node, block.children, depth + 1, false);
        return node;
      case 'list':
        node = el(block.ordered ? 'ol' : 'ul');
        if (block.ordered && block.start !== 1) node.start = block.start;
        for (var k = 0; k < block.items.length; k++) {
          var item = block.items[k];
          var li = el('li');
          if (item.task !== null) {
            li.className = 'task-item';
            var box = el('input');
            box.type = 'checkbox';
            box.disabled = true;
            box.checked = item.task;
            box.setAttribute('aria-label', item.task ? 'done' : 'not done');
            li.appendChild(box);
          }
          appendBlocks(li, item.children, depth + 1, !block.loose);
          node.appendChild(li);
        }
        return node;
      case 'table':
        var wrap = el('div', 'table-wrap');
        var table = el('table');
        var thead = el('thead');
        var hr = el('tr');
        block.head.forEach(function (cell, c) {
          var th = el('th');
          if (block.aligns[c]) th.className = 'align-' + block.aligns[c];
          inline(cell, th, depth + 1, false);
          hr.appendChild(th);
        });
        thead.appendChild(hr);
        table.appendChild(thead);
        if (block.rows.length) {
          var tbody = el('tbody');
          block.rows.forEach(function (row) {
            var tr = el('tr');
            for (var c = 0; c < block.head.length; c++) {
              var td = el('td');
              if (block.aligns[c]) td.className = 'align-' + block.aligns[c];
              inline(row[c] || '', td, depth + 1, false);
              tr.appendChild(td);
            }
            tbody.appendChild(tr);
          });
          table.appendChild(tbody);
        }
        wrap.appendChild(table);
        return wrap;
      default:
        return doc.createTextNode('');
    }
  }

  function appendBlocks(parent, blocks, depth, tight) {
    for (var k = 0; k < blocks.length; k++) {
      if (tight && k > 0 && blocks[k].type === 'p' && blocks[k - 1].type === 'p') parent.appendChild(el('br'));
      parent.appendChild(renderBlock(blocks[k], depth, tight));
    }
  }

  function normalise(text) {
    return String(text == null ? '' : text).replace(/\r\n?/g, '\n').replace(/\u0000/g, '\uFFFD');
  }

  function render(text) {
    var frag = doc.createDocumentFragment();
    appendBlocks(frag, parseBlocks(normalise(text).split('\n'), 0), 0, false);
    return frag;
  }

  function renderInto(container, text) {
    container.replaceChildren(render(text));
  }

  /**
   * Renders a growing text into `container`. Blocks that can no longer
   * change are rendered once and kept; only the rest is rebuilt on each
   * update, so a long reply costs about O(n) overall, not O(n^2).
   */
  function createStreamRenderer(container) {
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
      var tail = text.slice(done);
      var lines = tail.split('\n');
      var offsets = [0];
      for (var k = 0; k < lines.length - 1; k++) offsets.push(offsets[k] + lines[k].length + 1);
      var blocks = parseBlocks(lines, 0);
      // The last line may be incomplete: a block is final only when the
      // block after it starts on a complete line.
      var partial = lines.length - 1;
      var fin = 0;
      while (fin < blocks.length - 1 && blocks[fin + 1].line < partial) fin++;
      for (var r = 0; r < live.length; r++) live[r].remove();
      live = [];
      if (fin > 0) {
        appendBlocks(container, blocks.slice(0, fin), 0, false);
        kept = container.childNodes.length;
        done += offsets[blocks[fin].line];
      }
      var rest = doc.createDocumentFragment();
      appendBlocks(rest, blocks.slice(fin), 0, false);
      live = Array.prototype.slice.call(rest.childNodes);
      container.appendChild(rest);
      return tail.length;
    }

    function finish(raw) {
      // One full render at the end: exactly what a reload would show.
      reset();
      lastText = normalise(raw);
      renderInto(container, lastText);
      done = lastText.length;
      kept = container.childNodes.length;
    }

    return { update: update, finish: finish, reset: reset, keptNodes: function () { return kept; } };
  }

  root.ChatMarkdown = {
    render: render,
    renderInto: renderInto,
    createStreamRenderer: createStreamRenderer,
    highlight: highlight,
    safeUrl: safeUrl,
    parseBlocks: function (text) { return parseBlocks(normalise(text).split('\n'), 0); }
  };
})(typeof window !== 'undefined' ? window : globalThis);
