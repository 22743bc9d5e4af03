// static/markdown.js, an ES module (markdown-it, KaTeX, highlight.js and DOMPurify from
// static/vendor/libs.js) in headless Chromium, without the chat server but
// under the page's strict CSP: what it builds, that it is inert for hostile
// input, math, footnotes, tables, code in ten languages, and that streaming
// renders the same DOM as a full render while keeping finished blocks.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { REPO_ROOT, launchChromium } from './harness.mjs';

// The server's policy (src/http/mod.rs): no inline script, no inline style.
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'";
const ORIGIN = 'http://md.test';
const TYPES = { js: 'text/javascript', css: 'text/css', woff2: 'font/woff2' };

let browser;
let page;
const problems = [];
const fetched = [];
let katexBeforeMath;

before(async () => {
  browser = await launchChromium();
  page = await browser.newPage();
  page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => { if (msg.type() === 'error') problems.push(`console: ${msg.text()}`); });
  await page.route(`${ORIGIN}/**`, async (route) => {
    const url = new URL(route.request().url());
    fetched.push(url.pathname);
    if (url.pathname === '/') {
      await route.fulfill({
        status: 200,
        headers: { 'content-type': 'text/html; charset=utf-8', 'content-security-policy': CSP },
        body: '<!DOCTYPE html><html><head><meta charset="utf-8">'
          + '<script src="/static/vendor/libs.js?v=test"></script><script type="module" src="/test-entry.js"></script>'
          + '</head><body><div id="out" class="message-content"></div></body></html>',
      });
      return;
    }
    if (url.pathname === '/test-entry.js') {
      // The module, as the tests' `window.ChatMarkdown`.
      await route.fulfill({ status: 200, headers: { 'content-type': 'text/javascript' },
        body: "import * as md from '/static/markdown.js'; window.ChatMarkdown = md;" });
      return;
    }
    try {
      const body = await readFile(path.join(REPO_ROOT, url.pathname));
      await route.fulfill({ status: 200, headers: { 'content-type': TYPES[url.pathname.split('.').pop()] || 'application/octet-stream' }, body });
    } catch {
      await route.fulfill({ status: 404, body: '' });
    }
  });
  await page.goto(`${ORIGIN}/`);
  await page.waitForFunction(() => window.ChatMarkdown);
  await page.evaluate(() => window.ChatMarkdown.render('# No math here\n\n```js\nlet a = 1;\n```'));
  katexBeforeMath = fetched.filter((p) => /katex/i.test(p));
  assert.deepEqual(problems, []);
});

after(async () => {
  await browser?.close();
});

/** Renders `text` and returns {html, text, tags, attrs, links} of the result. */
function render(text) {
  return page.evaluate((src) => {
    const out = document.getElementById('out');
    window.ChatMarkdown.renderInto(out, src, { docId: 't' });
    const all = Array.from(out.querySelectorAll('*'));
    return {
      html: out.innerHTML,
      text: out.textContent,
      tags: [...new Set(all.map((e) => e.tagName.toLowerCase()))].sort(),
      attrs: [...new Set(all.flatMap((e) => Array.from(e.attributes).map((a) => a.name)))].sort(),
      links: Array.from(out.querySelectorAll('a')).map((a) => ({ href: a.getAttribute('href'), rel: a.rel, target: a.target, text: a.textContent })),
    };
  }, text);
}

const ALLOWED_TAGS = new Set(['a', 'blockquote', 'br', 'button', 'code', 'del', 'div', 'em', 'h1', 'h2', 'h3', 'h4',
  'h5', 'h6', 'hr', 'input', 'li', 'ol', 'p', 'pre', 'span', 'strong', 'table', 'tbody', 'td', 'th', 'thead', 'tr', 'ul',
  'sup', 'section']);
const ALLOWED_ATTRS = new Set(['class', 'href', 'rel', 'target', 'start', 'type', 'disabled', 'checked', 'aria-label',
  'aria-hidden', 'title', 'data-lang', 'data-label', 'tabindex', 'id', 'data-md-doc']);

test('hostile input stays inert text', async () => {
  const payloads = [
    '<script>window.__pwned = 1</script>',
    '<img src=x onerror="window.__pwned=1">',
    '<iframe src="javascript:window.__pwned=1"></iframe>',
    '<a href="javascript:window.__pwned=1">click</a>',
    '[click](javascript:window.__pwned=1)',
    '[click](JaVaScRiPt:window.__pwned=1)',
    '[click]( javascript:window.__pwned=1 )',
    '[click](java\tscript:window.__pwned=1)',
    '[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)',
    '[click](vbscript:msgbox)',
    '[click](//evil.example/x)',
    '![x](javascript:window.__pwned=1)',
    '<javascript:window.__pwned=1>',
    '**<svg onload=window.__pwned=1>**',
    '`<b>code</b>` and <b>bold</b> &lt;escaped&gt;',
    '```html\n<script>window.__pwned=1</script>\n```',
    '| a | b |\n|---|---|\n| <img src=x onerror=window.__pwned=1> | [x](javascript:alert(1)) |',
    '| a |\n|---|\n| x <br onclick=window.__pwned=1> y <br style="x"> |',
    '> <style>body{display:none}</style>',
    '- [ ] <input onfocus=window.__pwned=1 autofocus>',
    '[x][r]\n\n[r]: javascript:window.__pwned=1',
    'a[^n]\n\n[^n]: <img src=x onerror=window.__pwned=1>',
    '$\\href{javascript:window.__pwned=1}{x}$ and $\\htmlStyle{color:red}{y}$',
    'x style="color:red" and " style="a"',
  ];
  for (const p of payloads) {
    const r = await render(p);
    for (const tag of r.tags) {
      if (r.html.includes('class="katex')) continue; // KaTeX's own markup, checked below
      assert.ok(ALLOWED_TAGS.has(tag), `${JSON.stringify(p)} made <${tag}>: ${r.html}`);
    }
    for (const attr of r.attrs) assert.ok(ALLOWED_ATTRS.has(attr) || r.html.includes('class="katex'), `${JSON.stringify(p)} made attribute ${attr}: ${r.html}`);
    for (const l of r.links) {
      if (l.href.startsWith('#fn')) continue;
      assert.match(l.href, /^(https?:|mailto:)/, `${JSON.stringify(p)} linked ${l.href}`);
      assert.equal(l.rel, 'noopener noreferrer');
      assert.equal(l.target, '_blank');
    }
    assert.equal(await page.evaluate(() => window.__pwned), undefined, p);
  }
  // Raw HTML is shown as the text it is.
  const r = await render('Before <script>alert(1)</script> after <img src=x onerror=alert(1)>');
  assert.equal(r.text.trim(), 'Before <script>alert(1)</script> after <img src=x onerror=alert(1)>');
  assert.deepEqual(r.tags, ['p']);
  const unsafe = await render('[click me](javascript:alert(1))');
  assert.equal(unsafe.links.length, 0);
  const quoted = await render('x style="color:red" and " style="a"');
  assert.equal(quoted.text.trim(), 'x style="color:red" and " style="a"');
  assert.deepEqual(quoted.attrs, []);
  const math = await render('$\\href{javascript:alert(1)}{x}$');
  assert.equal(math.links.length, 0, 'KaTeX makes no links (trust is off)');
  assert.deepEqual(problems, []);
});

test('CommonMark renders: headings (also setext), emphasis, lists, quotes, rules, links, references, entities, indented code', async () => {
  const r = await render([
    '# Title',
    '',
    'Setext one',
    '==========',
    '',
    'Setext two',
    '----------',
    '',
    'Some **bold**, *italic*, ***both***, ~~gone~~, `code` and a [link](https://example.com/a?b=1).',
    'A second line, and a bare https://example.org/path. snake_case_name stays. &copy; &amp; &#x263A;',
    '',
    'A [reference link][ref] and [another].',
    '',
    '[ref]: https://example.net/ref "Title"',
    '[another]: https://example.net/another',
    '',
    '1. one',
    '2. two',
    '   - nested',
    '',
    '3) other list',
    '',
    '- [x] done',
    '- [ ] todo',
    '',
    '> quoted **text**',
    '',
    '---',
    '',
    '    indented code <b>',
    '',
    '![an image](https://example.com/pic.png)',
    '',
    'mail <mailto:me@example.com>',
  ].join('\n'));
  const html = r.html;
  assert.match(html, /<h1>Title<\/h1>/);
  assert.match(html, /<h1>Setext one<\/h1>/);
  assert.match(html, /<h2>Setext two<\/h2>/);
  assert.match(html, /<strong>bold<\/strong>/);
  assert.match(html, /<em>italic<\/em>/);
  assert.match(html, /<em><strong>both<\/strong><\/em>/);
  assert.match(html, /<s>gone<\/s>|<del>gone<\/del>/);
  assert.match(html, /<code>code<\/code>/);
  assert.match(html, /<br>/);
  assert.match(html, /snake_case_name stays\. © &amp; ☺/);
  assert.match(html, /<ol>\s*<li>one<\/li>\s*<li>two\s*<ul>\s*<li>nested<\/li>\s*<\/ul>\s*<\/li>\s*<\/ol>/);
  assert.match(html, /<ol start="3">\s*<li>other list<\/li>\s*<\/ol>/);
  assert.match(html, /<input class="task-list-item-checkbox" checked="" disabled="" type="checkbox" aria-label="done"> done/);
  assert.match(html, /<blockquote>\s*<p>quoted <strong>text<\/strong><\/p>\s*<\/blockquote>/);
  assert.match(html, /<hr>/);
  assert.match(html, /<code>indented code &lt;b&gt;<\/code>/);
  assert.deepEqual(r.links.map((l) => l.href), ['https://example.com/a?b=1', 'https://example.org/path', 'https://example.net/ref',
    'https://example.net/another', 'https://example.com/pic.png', 'mailto:me@example.com']);
  assert.equal(r.links[1].text, 'https://example.org/path', 'trailing punctuation is not part of a bare URL');
  assert.equal(r.links[4].text, 'an image', 'an image is a link to it: nothing loads from elsewhere');
  assert.ok(!r.tags.includes('img'));
  assert.deepEqual(problems, []);
});

test('math: inline $…$ and \\(…\\), display $$…$$ and \\[…\\], with KaTeX fonts loaded only then', async () => {
  assert.deepEqual(katexBeforeMath, [], 'no KaTeX stylesheet or font before a reply has math');
  const r = await render([
    'Inline $a*b*c$ and \\(x^2 + y_1\\), but $5 and $10 is money.',
    '',
    '$$',
    '\\int_0^1 x\\,dx = \\frac{1}{2}',
    '$$',
    '',
    '\\[\\sqrt{a^2+b^2}\\]',
  ].join('\n'));
  const info = await page.evaluate(() => {
    const out = document.getElementById('out');
    const tex = (el) => el.querySelector('annotation[encoding="application/x-tex"]')?.textContent;
    return {
      inline: Array.from(out.querySelectorAll('p .katex')).map(tex),
      display: Array.from(out.querySelectorAll('.katex-display .katex')).map((el) => tex(el).trim()),
      emphasis: out.querySelectorAll('em').length,
      firstP: out.querySelector('p').textContent,
      styled: out.querySelectorAll('.katex-html [style]').length,
    };
  });
  assert.deepEqual(info.inline, ['a*b*c', 'x^2 + y_1']);
  assert.deepEqual(info.display, ['\\int_0^1 x\\,dx = \\frac{1}{2}', '\\sqrt{a^2+b^2}']);
  assert.equal(info.emphasis, 0, '$a*b*c$ is math, not emphasis');
  assert.match(info.firstP, /but \$5 and \$10 is money\.$/);
  assert.ok(info.styled > 0, "KaTeX's layout styles are applied (through CSSOM, under the CSP)");
  assert.ok(!r.html.includes('\\(x^2'), 'the \\( \\) delimiters are not left as text');
  // The stylesheet and its fonts came from /static/vendor/.
  await page.waitForFunction(() => document.fonts.check('16px KaTeX_Main'));
  const font = await page.evaluate(() => getComputedStyle(document.querySelector('#out .katex')).fontFamily);
  assert.match(font, /KaTeX_Main/);
  assert.ok(fetched.includes('/static/vendor/katex.css'));
  assert.ok(fetched.some((p) => /^\/static\/vendor\/KaTeX_\w+-\w+\.woff2$/.test(p)), fetched.join(' '));
  assert.deepEqual(problems, [], 'no CSP violation');
});

test('footnotes and tables with <br> in cells', async () => {
  const r = await render([
    'A claim[^1] and another[^note].',
    '',
    '| Step | Detail |',
    '|:-----|-------:|',
    '| one | first line<br>second line |',
    '| two | a<br/>b<br />c |',
    '',
    '[^1]: The first note.',
    '[^note]: The second, with **bold**.',
  ].join('\n'));
  const info = await page.evaluate(() => {
    const out = document.getElementById('out');
    return {
      refs: Array.from(out.querySelectorAll('sup.footnote-ref a')).map((a) => [a.textContent, a.getAttribute('href')]),
      notes: Array.from(out.querySelectorAll('.footnotes li')).map((li) => [li.id, li.textContent.trim()]),
      cells: Array.from(out.querySelectorAll('td')).map((td) => td.innerHTML),
      aligns: Array.from(out.querySelectorAll('th')).map((th) => th.className),
    };
  });
  assert.deepEqual(info.refs, [['[1]', '#fn-t-1'], ['[2]', '#fn-t-2']]);
  assert.deepEqual(info.notes, [['fn-t-1', 'The first note. ↩︎'], ['fn-t-2', 'The second, with bold. ↩︎']]);
  assert.deepEqual(info.cells, ['one', 'first line<br>second line', 'two', 'a<br>b<br>c']);
  assert.deepEqual(info.aligns, ['align-left', 'align-right']);
  assert.ok(!r.text.includes('<br'), 'no <br> shown as text');
  assert.deepEqual(problems, []);
});

const LANGUAGES = [
  ['python', 'def area(r):\n    return 3.14 * r ** 2  # circle', ['hl-keyword:def', 'hl-title function_:area', 'hl-number:3.14', 'hl-comment:# circle']],
  ['javascript', 'const x = await fetch("/a"); // go', ['hl-keyword:const', 'hl-keyword:await', 'hl-string:"/a"', 'hl-comment:// go']],
  ['typescript', 'interface P { name: string }\nlet n: number = 1;', ['hl-keyword:interface', 'hl-built_in:string', 'hl-keyword:let', 'hl-number:1']],
  ['rust', 'fn main() {\n    let v: Vec<u8> = vec![1];\n}', ['hl-keyword:fn', 'hl-title function_:main', 'hl-keyword:let', 'hl-number:1']],
  ['go', 'func add(a int) int {\n\treturn a + 1\n}', ['hl-keyword:func', 'hl-title:add', 'hl-keyword:return', 'hl-number:1']],
  ['java', 'public class Hi {\n  static int n = 2; // two\n}', ['hl-keyword:public', 'hl-keyword:class', 'hl-title class_:Hi', 'hl-comment:// two']],
  ['c', '#include <stdio.h>\nint main(void) { return 0; }', ['hl-keyword:include', 'hl-type:int', 'hl-keyword:return', 'hl-number:0']],
  ['cpp', 'std::vector<int> v{1, 2};\nauto s = "str";', ['hl-type:int', 'hl-keyword:auto', 'hl-string:"str"', 'hl-number:1']],
  ['bash', 'for f in *.txt; do\n  echo "$f" # each\ndone', ['hl-keyword:for', 'hl-built_in:echo', 'hl-variable:$f', 'hl-comment:# each']],
  ['sql', 'SELECT name FROM users WHERE id = 42;', ['hl-keyword:SELECT', 'hl-keyword:FROM', 'hl-keyword:WHERE', 'hl-number:42']],
  ['json', '{"key": [true, null, 1.5]}', ['hl-attr:"key"', 'hl-literal:true', 'hl-literal:null', 'hl-number:1.5']],
];

test('code in ten common languages is highlighted, with a label and a copy button', async () => {
  const text = LANGUAGES.map(([lang, code]) => '```' + lang + '\n' + code + '\n```').join('\n\n') + '\n\n```\nplain <b>\n```';
  const r = await render(text);
  const blocks = await page.evaluate(() => Array.from(document.querySelectorAll('#out .code-block')).map((b) => ({
    lang: b.dataset.lang,
    copy: b.querySelector('.code-copy')?.getAttribute('aria-label'),
    code: b.querySelector('pre code').textContent,
    spans: Array.from(b.querySelectorAll('pre code span')).map((s) => `${s.className}:${s.textContent}`),
  })));
  assert.equal(blocks.length, LANGUAGES.length + 1, r.html);
  LANGUAGES.forEach(([lang, code, expected], i) => {
    assert.equal(blocks[i].lang, lang);
    assert.equal(blocks[i].copy, `Copy code (${lang})`);
    assert.equal(blocks[i].code, code, 'the block shows exactly the code');
    for (const e of expected) assert.ok(blocks[i].spans.includes(e), `${lang}: ${e} in ${blocks[i].spans.join(' | ')}`);
  });
  const plain = blocks.at(-1);
  assert.equal(plain.lang, 'text');
  assert.equal(plain.code, 'plain <b>');
  assert.deepEqual(plain.spans, []);
  // The label and button text come from CSS: the message text is only the code.
  assert.equal(r.text.includes('Copy'), false);
  assert.deepEqual(problems, []);
});

const STREAM_CORPUS = [
  '# Plan\n\nHere is **the plan** for `today`:\n\n1. Wake up\n2. Write code:\n\n   ```rust\n   fn main() {\n       println!("hi");\n   }\n   ```\n\n3. Test it\n\n> Note: *quotes* work\n> across lines\n\n| a | b |\n|---|---|\n| 1<br>x | 2 |\n\nDone. See https://example.com.\n',
  'Short answer.\n\n```python\nfor i in range(3):\n    print(i)  # loop\n```\n\n- a\n- b\n\n  continued\n- c\n\n***\n\nEnd _here_.',
  'No trailing newline and an unclosed fence:\n\n```js\nconst x = `template ${1}`;\n',
  'Setext title\n============\n\nThe area is $\\pi r^2$ and \\(e^{i\\pi} = -1\\).\n\n$$\n\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}\n$$\n\n    indented code\n\nSecond\n------\n\nText &amp; more.\n',
  'With a note[^1] and a [ref][r].\n\nMore text\nover lines.\n\n[r]: https://example.com/r\n[^1]: The note.\n',
];

test('streaming renders what a full render does, over many random splits, keeping finished blocks', async () => {
  const result = await page.evaluate((corpus) => {
    const mismatches = [];
    let kept = 0;
    let seed = 7;
    const rand = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
    const full = document.createElement('div');
    for (const text of corpus) {
      for (let round = 0; round < 25; round++) {
        const live = document.createElement('div');
        const r = window.ChatMarkdown.createStreamRenderer(live, { docId: 's' });
        let at = 0;
        const maxStep = [1, 3, 8, 40][round % 4];
        while (at < text.length) {
          at = Math.min(text.length, at + 1 + Math.floor(rand() * maxStep));
          r.update(text.slice(0, at));
          if (round % 5 === 0) { // every prefix, in some rounds
            window.ChatMarkdown.renderInto(full, text.slice(0, at), { docId: 's' });
            if (live.innerHTML !== full.innerHTML) {
              mismatches.push({ prefix: text.slice(0, at), live: live.innerHTML, full: full.innerHTML });
              break;
            }
          }
        }
        kept = Math.max(kept, r.keptNodes());
        // The end of the stream, before finish(): already the full render.
        window.ChatMarkdown.renderInto(full, text, { docId: 's' });
        if (live.innerHTML !== full.innerHTML) mismatches.push({ round, live: live.innerHTML, full: full.innerHTML });
        r.finish(text);
        if (live.innerHTML !== full.innerHTML) mismatches.push({ prefix: 'finish', live: live.innerHTML, full: full.innerHTML });
        if (mismatches.length) return { mismatches, kept };
      }
    }
    return { mismatches, kept };
  }, STREAM_CORPUS);
  assert.deepEqual(result.mismatches.slice(0, 1), []);
  assert.ok(result.kept >= 3, `finished blocks are kept while streaming (kept ${result.kept})`);
  assert.deepEqual(problems, []);
});

test('a long streamed reply rebuilds only its last blocks on each chunk', async () => {
  const added = await page.evaluate(() => {
    const para = 'Lorem ipsum dolor sit amet, **consectetur** adipiscing elit, `sed` do eiusmod $x^2$.\n\n';
    const code = '```js\nfunction f(a, b) { return a + b; } // sum\n```\n\n';
    let text = '';
    for (let i = 0; i < 300; i++) text += i % 5 === 0 ? code : para; // 300 blocks
    const el = document.createElement('div');
    const r = window.ChatMarkdown.createStreamRenderer(el, { docId: 'l' });
    // Nodes inserted per chunk (the subtree of each counts): early on, and at the end.
    const count = (from, to) => {
      let nodes = 0;
      const observer = new MutationObserver((records) => {
        for (const rec of records) for (const n of rec.addedNodes) nodes += 1 + (n.querySelectorAll ? n.querySelectorAll('*').length : 0);
      });
      observer.observe(el, { childList: true });
      for (let at = from; at < to; at += 20) r.update(text.slice(0, at));
      observer.takeRecords().forEach((rec) => { for (const n of rec.addedNodes) nodes += 1 + (n.querySelectorAll ? n.querySelectorAll('*').length : 0); });
      observer.disconnect();
      return nodes;
    };
    for (let at = 0; at < 2000; at += 20) r.update(text.slice(0, at));
    const early = count(2000, 4000);
    for (let at = 4000; at < text.length - 2000; at += 20) r.update(text.slice(0, at));
    const late = count(text.length - 2000, text.length);
    return { early, late, blocks: el.children.length };
  });
  assert.ok(added.blocks > 250, `the whole reply is shown (${added.blocks} blocks)`);
  // The same text per chunk costs the same DOM work at the end of a long reply as near its start.
  assert.ok(added.late <= added.early * 1.5 + 50, `nodes added for the last 2,000 characters: ${added.late}, for 2,000 near the start: ${added.early}`);
});

test('pathological input renders', async () => {
  const sizes = await page.evaluate(() => [
    window.ChatMarkdown.render('*a _b `c [d '.repeat(20000)).textContent.length,
    window.ChatMarkdown.render('>'.repeat(5000) + ' deep').textContent.length,
    window.ChatMarkdown.render('- '.repeat(3000) + 'x').textContent.length,
    window.ChatMarkdown.render('['.repeat(20000) + ']('.repeat(100)).textContent.length,
    window.ChatMarkdown.render('$'.repeat(5000) + '\\frac{'.repeat(2000)).textContent.length,
  ]);
  for (const n of sizes) assert.ok(n > 0);
  assert.deepEqual(problems, []);
});
