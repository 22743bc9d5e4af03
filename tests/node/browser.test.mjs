// The chat page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core), against the real server and the fake LLM.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startFakeLlm, startServer, splitPieces, REPO_ROOT } from './harness.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const SCREENSHOTS = path.join(REPO_ROOT, 'target', 'screenshots');
const XSS = '<script>window.__xss=2</script> <img src=x onerror="window.__xss=1"> [link](javascript:window.__xss=3)';
// The strict policy the server is meant to send; applied here to prove the page works under it.
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
  + "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

function replyFor(msg) {
  if (msg.includes('xss')) return `Here is some markup: ${XSS} and the end.`;
  if (msg.includes('long story')) return Array.from({ length: 60 }, (_, i) => `word${i}`).join(' ');
  return `Hello from the fake model. You wrote "${msg}". This reply arrives in several pieces.`;
}

let llm;
let server;
let browser;

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: install it with 'apt-get install -y chromium' (or set CHROMIUM_PATH)`);
  }
  llm = await startFakeLlm({ reply: (msg) => splitPieces(replyFor(msg)), delayMs: 25 });
  server = await startServer({}, { llm });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // A document fulfilled by page.route() (to add the CSP header) loses its
      // loopback address space, and Chromium's Local Network Access checks
      // would then refuse its WebSocket to 127.0.0.1. Not needed without the route.
      '--disable-features=LocalNetworkAccessChecks'],
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await llm?.close();
});

/** Serves the page with the strict CSP header added. */
async function withCsp(page) {
  await page.route(`${server.url}/`, async (route) => {
    const response = await route.fetch();
    await route.fulfill({ response, headers: { ...response.headers(), 'content-security-policy': CSP } });
  });
}

/** A page whose document gets the strict CSP, with console errors collected. */
async function openPage(context) {
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const problems = [];
  page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    // A missing favicon is checked on its own ('the favicon ... is served').
    if (msg.type() === 'error' && !/favicon/.test(msg.location()?.url || '')) {
      problems.push(`console: ${msg.text()}`);
    }
  });
  await withCsp(page);
  await page.goto(`${server.url}/`);
  await page.waitForSelector('#connection-status[data-status="connected"]');
  await page.waitForFunction(() => !document.querySelector('#send-button').disabled);
  return { page, problems };
}

async function sendAndWait(page, message, expected) {
  const before = await page.locator('.message-assistant').count();
  await page.locator('#message-input').fill(message);
  await page.locator('#message-input').press('Enter');
  await page.waitForFunction(
    ({ n, text }) => {
      const all = document.querySelectorAll('#transcript .message-assistant');
      return all.length > n && all[all.length - 1].textContent === text
        && !document.querySelector('#transcript .is-streaming');
    },
    { n: before, text: expected },
  );
}

test('the page has no inline script, handler or style (CSP-ready)', async () => {
  const res = await fetch(`${server.url}/`, { signal: AbortSignal.timeout(10000) });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') || '', /text\/html/);
  const html = await res.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, 'inline <script>');
  assert.doesNotMatch(html, /\son[a-z]+\s*=/i, 'inline event handler');
  assert.doesNotMatch(html, /\sstyle\s*=/i, 'inline style attribute');
  assert.match(html, /\/static\/app\.js\?v=/);
  const types = { js: /javascript/, css: /text\/css/, woff2: /^font\/woff2$/ };
  for (const asset of ['/static/app.js', '/static/socket.js', '/static/style.css', '/static/vendor/libs.js',
    '/static/vendor/katex.css', '/static/vendor/KaTeX_Main-Regular.woff2']) {
    const r = await fetch(`${server.url}${asset}`, { signal: AbortSignal.timeout(10000) });
    assert.equal(r.status, 200, asset);
    assert.match(r.headers.get('content-type') || '', types[asset.split('.').pop()], asset);
  }
  // The bundle under the page's version is cached for good; what the page
  // fetches without a version (module imports, fonts) is revalidated by ETag.
  const version = /\/static\/vendor\/libs\.js\?v=(\w+)/.exec(html)?.[1];
  assert.ok(version, 'the page loads the bundle under its version');
  const bundle = await fetch(`${server.url}/static/vendor/libs.js?v=${version}`, { signal: AbortSignal.timeout(10000) });
  assert.equal(bundle.headers.get('cache-control'), 'public, max-age=31536000, immutable');
  await bundle.arrayBuffer();
  const module = await fetch(`${server.url}/static/search.js`, { signal: AbortSignal.timeout(10000) });
  assert.equal(module.headers.get('cache-control'), 'no-cache');
  const etag = module.headers.get('etag');
  assert.ok(etag, 'an ETag');
  await module.text();
  const again = await fetch(`${server.url}/static/search.js`, { headers: { 'if-none-match': etag }, signal: AbortSignal.timeout(10000) });
  assert.equal(again.status, 304);
  assert.equal(await again.text(), '');

  // The CSP that the other tests add really is in force: an injected inline script does not run.
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await withCsp(page);
    await page.goto(`${server.url}/`);
    const inlineRan = await page.evaluate(() => {
      const s = document.createElement('script');
      s.textContent = 'window.__inline = 1';
      document.head.appendChild(s);
      return window.__inline;
    });
    assert.equal(inlineRan, undefined, 'the CSP header was not applied');
  } finally {
    await context.close();
  }
});

test('the favicon the page links to is served', async () => {
  const html = await (await fetch(`${server.url}/`, { signal: AbortSignal.timeout(10000) })).text();
  const href = /<link rel="icon" href="([^"]+)"/.exec(html)?.[1];
  assert.ok(href, 'the page links an icon');
  const r = await fetch(new URL(href, server.url), { signal: AbortSignal.timeout(10000) });
  assert.equal(r.status, 200, `${href}: static/favicon.svg must be served (STATIC_FILES in src/http/page.rs)`);
  assert.match(r.headers.get('content-type') || '', /image\/svg\+xml/);
});

test('chatting in the page streams the reply as text', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  try {
    const { page, problems } = await openPage(context);
    assert.equal(await page.locator('#demo-banner').count(), 0, 'no demo banner with a configured LLM');
    await page.waitForSelector('#conversation-list .conversation-item[aria-current="true"]');

    const first = 'What is the capital of France?';
    await sendAndWait(page, first, replyFor(first));
    assert.equal(await page.locator('#transcript .message-user').last().textContent(), first);
    assert.equal(await page.locator('#transcript .message-user').last().getAttribute('data-role'), 'user');
    assert.equal(await page.locator('#transcript .message-assistant').last().getAttribute('data-role'), 'assistant');
    assert.match(await page.locator('#token-usage').textContent(), /\d+ \/ [\d,]+ tokens/);
    assert.ok(await page.locator('#stop-button').isHidden(), 'Stop is hidden once the reply ended');
    assert.equal(await page.locator('#message-input').inputValue(), '');
    assert.ok(await page.locator('#message-input').evaluate((el) => el === document.activeElement), 'focus stays on the input');
    assert.ok(llm.streamRequests().length >= 1, 'the fake LLM was asked');

    // Model output containing markup is shown as text.
    const second = 'please show xss';
    // (A link to an unsafe URL is no link: its markdown stays text, as CommonMark has it.)
    await sendAndWait(page, second, replyFor(second));
    assert.equal(await page.locator('#transcript img, #transcript script, #transcript a').count(), 0,
      'no <img>, <script> or javascript: link created from model output');
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    // Raw HTML is shown as text.
    assert.ok((await page.locator('#transcript .message-assistant').last().textContent())
      .includes('<script>window.__xss=2</script> <img src=x onerror="window.__xss=1"> [link](javascript:window.__xss=3)'));

    // The sidebar picked up the title (conversation_updated).
    await page.waitForFunction(() => {
      const cur = document.querySelector('#conversation-list [aria-current="true"] .conversation-item-title');
      return cur && cur.textContent !== 'New conversation';
    });

    // Shift+Enter adds a new line instead of sending.
    await page.locator('#message-input').fill('line one');
    await page.locator('#message-input').press('Shift+Enter');
    await page.locator('#message-input').type('line two');
    assert.equal(await page.locator('#message-input').inputValue(), 'line one\nline two');
    assert.equal(await page.locator('#transcript .message-user').count(), 2);
    await page.locator('#message-input').fill('');

    await mkdir(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOTS, 'chat.png') });

    // A reload shows the same conversation from the server.
    await page.reload();
    await page.waitForSelector('#connection-status[data-status="connected"]');
    await page.waitForFunction(() => document.querySelectorAll('#transcript .message').length === 4);
    const roles = await page.locator('#transcript .message').evaluateAll((els) => els.map((e) => e.dataset.role));
    assert.deepEqual(roles, ['user', 'assistant', 'user', 'assistant']);
    assert.equal(await page.locator('#transcript .message-assistant').first().textContent(), replyFor(first));

    // New chat, then back to the first conversation from the sidebar.
    await page.locator('#new-chat-button').click();
    await page.waitForFunction(() => document.querySelectorAll('#transcript .message').length === 0
      && document.querySelectorAll('#conversation-list .conversation-item').length === 2);
    const titles = await page.locator('#conversation-list .conversation-item-title').allTextContents();
    assert.equal(titles[0], 'New conversation', `newest first: ${titles}`);
    await page.locator('#conversation-list .conversation-item').nth(1).click();
    await page.waitForFunction(() => document.querySelectorAll('#transcript .message').length === 4);
    assert.equal(await page.locator('#conversation-list .conversation-item').nth(1).getAttribute('aria-current'), 'true');
    assert.ok(await page.locator('#message-input').evaluate((el) => el === document.activeElement));

    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('Stop ends a streaming reply, New chat and Reset clear the transcript', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'dark' });
  llm.setDelay(150);
  try {
    const { page, problems } = await openPage(context);
    await page.locator('#new-chat-button').click();
    await page.waitForFunction(() => document.querySelectorAll('#transcript .message').length === 0);
    const items = await page.locator('#conversation-list .conversation-item').count();

    await page.locator('#message-input').fill('tell me a long story');
    await page.locator('#send-button').click();
    await page.locator('#stop-button').waitFor({ state: 'visible' });
    await page.waitForFunction(() => {
      const a = document.querySelector('#transcript .message-assistant');
      return a && a.textContent.length > 0;
    });
    await page.locator('#stop-button').click();
    await page.locator('#stop-button').waitFor({ state: 'hidden' });
    const partial = await page.locator('#transcript .message-assistant').last().textContent();
    assert.ok(partial.length > 0 && partial.length < replyFor('long story').length, `partial reply: ${partial}`);
    assert.ok(await page.locator('#send-button').isVisible());
    assert.ok(await page.locator('#message-input').evaluate((el) => el === document.activeElement), 'focus back on the input');

    await mkdir(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOTS, 'chat-dark-stopped.png') });

    // Reset (conversation menu, then confirm) empties this conversation on the server too.
    await page.locator('#conversation-menu-button').click();
    await page.locator('#reset-button').click();
    await page.locator('#confirm-dialog').waitFor({ state: 'visible' });
    await page.locator('#confirm-ok').click();
    await page.waitForFunction(() => document.querySelectorAll('#transcript .message').length === 0);
    assert.equal(await page.locator('#error-line').textContent(), '');
    await page.reload();
    await page.waitForSelector('#connection-status[data-status="connected"]');
    await page.waitForFunction(() => document.querySelector('#transcript-empty') && !document.querySelector('#transcript-empty').hidden);
    assert.equal(await page.locator('#transcript .message').count(), 0);
    assert.ok(await page.locator('#conversation-list .conversation-item').count() >= items);
    assert.deepEqual(problems, []);
  } finally {
    llm.setDelay(25);
    await context.close();
  }
});

test('the page works at 375 px wide and shows the demo banner in demo mode', async () => {
  const demo = await startServer({
    LLM_PROVIDER: 'demo', OPENAI_BASE_URL: undefined, OPENAI_API_KEY: undefined, LLM_MODEL: undefined,
  });
  const saved = server;
  server = demo;
  const context = await browser.newContext({ viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true });
  try {
    const { page, problems } = await openPage(context);
    await page.locator('#demo-banner').waitFor({ state: 'visible' });
    assert.match(await page.locator('#demo-banner').textContent(), /Demo mode/);
    assert.match(await page.locator('#demo-banner').textContent(), /AZURE_API_URL/);

    await page.locator('#message-input').fill('Hello demo');
    await page.locator('#message-input').press('Enter');
    await page.waitForFunction(() => {
      const a = document.querySelectorAll('#transcript .message-assistant');
      return a.length === 1 && a[0].textContent.length > 0 && !document.querySelector('#transcript .is-streaming');
    }, null, { timeout: 20000 });

    // Nothing wider than the viewport.
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `horizontal overflow of ${overflow}px at 375px`);
    // The sidebar sits above the chat, its list collapsed until asked for.
    const boxes = await page.evaluate(() => ({
      sidebar: document.querySelector('#sidebar').getBoundingClientRect().toJSON(),
      transcript: document.querySelector('#transcript').getBoundingClientRect().toJSON(),
      input: document.querySelector('#message-input').getBoundingClientRect().toJSON(),
    }));
    assert.ok(boxes.sidebar.bottom <= boxes.transcript.top + 1, JSON.stringify(boxes));
    assert.ok(boxes.input.bottom <= 740, `input is on screen: ${JSON.stringify(boxes.input)}`);
    assert.ok(await page.locator('#conversation-list').isHidden());

    await mkdir(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOTS, 'chat-375.png') });
    await page.locator('#sidebar-toggle').click();
    assert.ok(await page.locator('#conversation-list').isVisible());
    await page.screenshot({ path: path.join(SCREENSHOTS, 'chat-375-list.png') });
    assert.deepEqual(problems, []);
  } finally {
    server = saved;
    await context.close();
    await demo.stop();
  }
});

test('the page reconnects by itself after a server restart', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'llm-chat-restart-'));
  let own = await startServer({}, { llm, dir });
  const saved = server;
  server = own;
  const context = await browser.newContext({ viewport: { width: 1024, height: 700 } });
  try {
    const { page } = await openPage(context);
    const first = 'Before the restart';
    await sendAndWait(page, first, replyFor(first));

    // Marks the transcript shown now: after reconnecting, the page loads the
    // conversation again (a new transcript) and only then follows it.
    await page.evaluate(() => { document.querySelector('#transcript .message').dataset.old = '1'; });
    const port = new URL(own.url).port;
    await own.stop();
    await page.waitForFunction(() => ['reconnecting', 'offline']
      .includes(document.querySelector('#connection-status').dataset.status), null, { timeout: 10000 });
    assert.ok(await page.locator('#send-button').isDisabled(), 'Send is disabled while disconnected');

    // Same port, same database (so the same session and conversations).
    own = await startServer({ PORT: port }, { llm, dir });
    await page.waitForSelector('#connection-status[data-status="connected"]', { timeout: 20000 });
    // Caught up (the transcript rebuilt) and following again (Send enabled once
    // the server has answered the watch): a message sent earlier is not sent.
    await page.waitForFunction(() => !document.querySelector('#transcript [data-old]')
      && !document.querySelector('#send-button').disabled, null, { timeout: 20000 });
    const second = 'After the restart';
    await sendAndWait(page, second, replyFor(second));
    const roles = await page.locator('#transcript .message').evaluateAll((els) => els.map((e) => e.dataset.role));
    assert.deepEqual(roles, ['user', 'assistant', 'user', 'assistant']);
    assert.equal(await page.locator('#error-line').textContent(), '');
  } finally {
    server = saved;
    await context.close();
    await own.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
