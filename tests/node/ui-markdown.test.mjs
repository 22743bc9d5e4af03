// static/markdown.js in headless Chromium, without the server: what it builds,
// that it is inert for hostile input, and that streaming renders the same DOM
// as a full render while keeping finished blocks.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { REPO_ROOT, launchChromium } from './harness.mjs';

let browser;
let page;

before(async () => {
  browser = await launchChromium();
  page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (err) => problems.push(err.message));
  await page.setContent('<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><div id="out"></div></body></html>');
  await page.addScriptTag({ path: path.join(REPO_ROOT, 'static', 'markdown.js') });
  assert.deepEqual(problems, []);
});

after(async () => {
  await browser?.close();
});

/** Renders `text` and returns {html, text, tags, attrs, links} of the result. */
function render(text) {
  return page.evaluate((src) => {
    const out = document.getElementById('out');
    window.ChatMarkdown.renderInto(out, src);
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
  'h5', 'h6', 'hr', 'input', 'li', 'ol', 'p', 'pre', 'span', 'strong', 'table', 'tbody', 'td', 'th', 'thead', 'tr', 'ul']);
const ALLOWED_ATTRS = new Set(['class', 'href', 'rel', 'target', 'start', 'type', 'disabled', 'checked', 'aria-label',
  'aria-hidden', 'title', 'data-lang', 'data-label', 'tabindex']);

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
    '> <style>body{display:none}</style>',
    '- [ ] <input onfocus=window.__pwned=1 autofocus>',
  ];
  for (const p of payloads) {
    const r = await render(p);
    for (const tag of r.tags) assert.ok(ALLOWED_TAGS.has(tag), `${JSON.stringify(p)} made <${tag}>: ${r.html}`);
    for (const attr of r.attrs) assert.ok(ALLOWED_ATTRS.has(attr), `${JSON.stringify(p)} made attribute ${attr}: ${r.html}`);
    for (const l of r.links) {
      assert.match(l.href, /^(https?:|mailto:)/, `${JSON.stringify(p)} linked ${l.href}`);
      assert.equal(l.rel, 'noopener noreferrer');
      assert.equal(l.target, '_blank');
    }
    assert.equal(await page.evaluate(() => window.__pwned), undefined, p);
  }
  // Raw HTML is shown as the text it is.
  const r = await render('Before <script>alert(1)</script> after <img src=x onerror=alert(1)>');
  assert.equal(r.text, 'Before <script>alert(1)</script> after <img src=x onerror=alert(1)>');
  assert.deepEqual(r.tags, ['p']);
  const unsafe = await render('[click me](javascript:alert(1))');
  assert.equal(unsafe.links.length, 0);
  assert.equal(unsafe.text, 'click me');
});

test('the safe subset renders: headings, emphasis, lists, quotes, rules, links, tables', async () => {
  const r = await render([
    '# Title',
    '',
    'Some **bold**, *italic*, ***both***, ~~gone~~, `code` and a [link](https://example.com/a?b=1).',
    'A second line, and a bare https://example.org/path. snake_case_name stays.',
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
    '| left | right |',
    '|:-----|------:|',
    '| a    | 1     |',
    '',
    'mail <mailto:me@example.com>',
  ].join('\n'));
  const html = r.html;
  assert.match(html, /<h1>Title<\/h1>/);
  assert.match(html, /<strong>bold<\/strong>/);
  assert.match(html, /<em>italic<\/em>/);
  assert.match(html, /<em><strong>both<\/strong><\/em>/);
  assert.match(html, /<del>gone<\/del>/);
  assert.match(html, /<code>code<\/code>/);
  assert.match(html, /<br>/);
  assert.match(html, /snake_case_name stays/);
  assert.match(html, /<ol><li>one<\/li><li>two<ul><li>nested<\/li><\/ul><\/li><\/ol>/);
  assert.match(html, /<ol start="3"><li>other list<\/li><\/ol>/);
  assert.match(html, /<input type="checkbox" disabled="" aria-label="done">done/);
  assert.match(html, /<blockquote><p>quoted <strong>text<\/strong><\/p><\/blockquote>/);
  assert.match(html, /<hr>/);
  assert.match(html, /<th class="align-left">left<\/th><th class="align-right">right<\/th>/);
  assert.deepEqual(r.links.map((l) => l.href), ['https://example.com/a?b=1', 'https://example.org/path', 'mailto:me@example.com']);
  assert.equal(r.links[1].text, 'https://example.org/path', 'trailing punctuation is not part of a bare URL');
});

test('fenced code gets a language label, a copy button and highlighting', async () => {
  const r = await render('```js\n// greet\nconst name = "world"; // x\nif (n > 42) { greet(name); }\n```\n\n```\nplain <b>\n```\n\n~~~python\ndef f():\n    return None  # done\n~~~');
  const info = await page.evaluate(() => {
    const blocks = Array.from(document.querySelectorAll('#out .code-block'));
    return blocks.map((b) => ({
      lang: b.dataset.lang,
      copy: b.querySelector('.code-copy')?.getAttribute('aria-label'),
      code: b.querySelector('pre code').textContent,
      spans: Array.from(b.querySelectorAll('pre code span')).map((s) => `${s.className}:${s.textContent}`),
    }));
  });
  assert.equal(info.length, 3, r.html);
  assert.equal(info[0].lang, 'js');
  assert.match(info[0].copy, /Copy code/);
  assert.equal(info[0].code, '// greet\nconst name = "world"; // x\nif (n > 42) { greet(name); }');
  for (const expected of ['hl-comment:// greet', 'hl-keyword:const', 'hl-string:"world"', 'hl-number:42', 'hl-keyword:if', 'hl-function:greet']) {
    assert.ok(info[0].spans.includes(expected), `${expected} in ${info[0].spans}`);
  }
  assert.equal(info[1].lang, 'text');
  assert.equal(info[1].code, 'plain <b>');
  assert.deepEqual(info[1].spans, []);
  assert.ok(info[2].spans.includes('hl-keyword:def') && info[2].spans.includes('hl-literal:None')
    && info[2].spans.includes('hl-comment:# done'), info[2].spans.join(' '));
  // The label and button text come from CSS: the message text is only the code.
  assert.equal(r.text.includes('Copy'), false);
});

const STREAM_CORPUS = [
  '# Plan\n\nHere is **the plan** for `today`:\n\n1. Wake up\n2. Write code:\n\n   ```rust\n   fn main() {\n       println!("hi");\n   }\n   ```\n\n3. Test it\n\n> Note: *quotes* work\n> across lines\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nDone. See https://example.com.\n',
  'Short answer.\n\n```python\nfor i in range(3):\n    print(i)  # loop\n```\n\n- a\n- b\n\n  continued\n- c\n\n***\n\nEnd _here_.',
  'No trailing newline and an unclosed fence:\n\n```js\nconst x = `template ${1}`;\n',
];

test('streaming renders what a full render does, keeping finished blocks', async () => {
  const result = await page.evaluate((corpus) => {
    const mismatches = [];
    let kept = 0;
    let seed = 7;
    const rand = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
    for (const text of corpus) {
      const live = document.createElement('div');
      const full = document.createElement('div');
      const r = window.ChatMarkdown.createStreamRenderer(live);
      let at = 0;
      while (at < text.length) {
        at = Math.min(text.length, at + 1 + Math.floor(rand() * 6));
        r.update(text.slice(0, at));
        window.ChatMarkdown.renderInto(full, text.slice(0, at));
        if (live.innerHTML !== full.innerHTML) {
          mismatches.push({ prefix: text.slice(0, at), live: live.innerHTML, full: full.innerHTML });
          break;
        }
      }
      kept = Math.max(kept, r.keptNodes());
      r.finish(text);
      window.ChatMarkdown.renderInto(full, text);
      if (live.innerHTML !== full.innerHTML) mismatches.push({ prefix: 'finish', live: live.innerHTML, full: full.innerHTML });
    }
    return { mismatches, kept };
  }, STREAM_CORPUS);
  assert.deepEqual(result.mismatches.slice(0, 1), []);
  assert.ok(result.kept >= 3, `finished blocks are kept while streaming (kept ${result.kept})`);
});

test('a long streamed reply stays fast (no O(n^2) re-rendering)', async () => {
  const ms = await page.evaluate(() => {
    const para = 'Lorem ipsum dolor sit amet, **consectetur** adipiscing elit, `sed` do eiusmod tempor.\n\n';
    const code = '```js\nfunction f(a, b) { return a + b; } // sum\n```\n\n';
    let text = '';
    for (let i = 0; i < 400; i++) text += i % 5 === 0 ? code : para; // ~35 kB, 400 blocks
    const el = document.createElement('div');
    const r = window.ChatMarkdown.createStreamRenderer(el);
    const t0 = performance.now();
    for (let at = 0; at < text.length; at += 20) r.update(text.slice(0, at)); // ~1,800 updates
    r.finish(text);
    return performance.now() - t0;
  });
  assert.ok(ms < 4000, `streaming 35 kB in 20-character chunks took ${Math.round(ms)} ms`);
});

test('pathological input renders in linear-ish time', async () => {
  const ms = await page.evaluate(() => {
    const t0 = performance.now();
    window.ChatMarkdown.render('*a _b `c [d '.repeat(20000));
    window.ChatMarkdown.render('>'.repeat(5000) + ' deep');
    window.ChatMarkdown.render('- '.repeat(3000) + 'x');
    window.ChatMarkdown.render('['.repeat(20000) + ']('.repeat(100));
    return performance.now() - t0;
  });
  assert.ok(ms < 3000, `took ${Math.round(ms)} ms`);
});
