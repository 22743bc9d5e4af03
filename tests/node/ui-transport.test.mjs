// The page's connection (static/socket.js on the official socket.io-client)
// against the real server in headless Chromium: WebSocket when it works, and
// HTTP long-polling when the WebSocket upgrade fails (as behind a proxy or
// network that blocks it), where the page still chats and says so: the
// upgrade aborted in the browser, and refused by nginx (deploy/nginx.conf
// made to answer upgrades 403; needs Debian's nginx).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startFakeLlm, startServer, splitPieces, launchChromium, openChatPage, typeAndSend, waitReplies,
} from './harness.mjs';
import { startNginx } from './services.mjs';

let llm;
let server;
let browser;

before(async () => {
  llm = await startFakeLlm({ reply: (msg) => splitPieces(`Echo: ${msg}`), delayMs: 5 });
  server = await startServer({}, { llm });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await llm?.close();
});

const assistantTexts = (page) => page.locator('#transcript .message-assistant .message-content').allTextContents();

/** Every WebSocket the page opens fails its upgrade: an error, then a close, never open. */
function refuseWebSockets() {
  window.__wsTries = 0;
  class RefusedWebSocket extends EventTarget {
    constructor(url) {
      super();
      this.url = String(url);
      this.readyState = 0;
      this.binaryType = 'blob';
      window.__wsTries++;
      setTimeout(() => {
        this.readyState = 3;
        const error = new Event('error');
        this.onerror?.(error);
        this.dispatchEvent(error);
        const close = new CloseEvent('close', { code: 1006, reason: '', wasClean: false });
        this.onclose?.(close);
        this.dispatchEvent(close);
      }, 20);
    }
    send() { throw new DOMException('WebSocket is not open', 'InvalidStateError'); }
    close() { this.readyState = 3; }
  }
  Object.assign(RefusedWebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  window.WebSocket = RefusedWebSocket;
}

test('with WebSocket working, the page connects over WebSocket', async () => {
  const context = await browser.newContext();
  try {
    const { page, problems } = await openChatPage(context, server.url);
    const status = page.locator('#connection-status');
    assert.equal(await status.getAttribute('data-transport'), 'websocket');
    assert.equal(await status.textContent(), 'Connected');
    assert.equal(await status.getAttribute('title'), 'Connected over WebSocket');
    await typeAndSend(page, 'over websocket');
    await waitReplies(page, 1);
    assert.deepEqual(await assistantTexts(page), ['Echo: over websocket']);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('with the WebSocket upgrade refused, the page chats over long-polling and says so', async () => {
  const context = await browser.newContext();
  await context.addInitScript(refuseWebSockets);
  const polls = [];
  context.on('request', (req) => {
    if (req.url().includes('/socket.io/') && req.url().includes('transport=polling')) polls.push(req.method());
  });
  try {
    const { page, problems } = await openChatPage(context, server.url);
    const status = page.locator('#connection-status');
    assert.equal(await status.getAttribute('data-status'), 'connected');
    assert.equal(await status.getAttribute('data-transport'), 'polling');
    assert.equal(await status.textContent(), 'Connected (polling)');
    assert.match(await status.getAttribute('title'), /long-polling \(WebSocket is unavailable\)/);
    assert.ok(await page.evaluate(() => window.__wsTries) >= 1, 'WebSocket was tried first');

    // A whole turn, streamed, and a second one: all over HTTP.
    await typeAndSend(page, 'over polling');
    await waitReplies(page, 1);
    await typeAndSend(page, 'and again');
    await waitReplies(page, 2);
    assert.deepEqual(await assistantTexts(page), ['Echo: over polling', 'Echo: and again']);
    assert.ok(polls.includes('POST') && polls.includes('GET'), `long-polling requests: ${polls.join(' ')}`);
    assert.equal(await status.getAttribute('data-transport'), 'polling', 'no upgrade happened');

    // The stored history has both turns (a reload shows them).
    await page.reload();
    await page.waitForSelector('#connection-status[data-status="connected"]');
    await page.waitForFunction(() => document.querySelectorAll('#transcript .message-assistant').length === 2);
    assert.deepEqual(await assistantTexts(page), ['Echo: over polling', 'Echo: and again']);
    assert.equal(await page.locator('#error-line').textContent(), '');
    assert.deepEqual(problems.filter((p) => !/WebSocket/.test(p)), []);
  } finally {
    await context.close();
  }
});

test('behind nginx that refuses WebSocket upgrades, the page chats over long-polling', async () => {
  const nginx = await startNginx([new URL(server.url).host], undefined, { refuseWebSocket: true });
  const context = await browser.newContext();
  try {
    const { page, problems } = await openChatPage(context, nginx.url);
    const status = page.locator('#connection-status');
    assert.equal(await status.getAttribute('data-transport'), 'polling');
    assert.equal(await status.textContent(), 'Connected (polling)');
    await typeAndSend(page, 'through the proxy');
    await waitReplies(page, 1);
    assert.deepEqual(await assistantTexts(page), ['Echo: through the proxy']);
    const log = await nginx.accessLog();
    assert.match(log, /GET \/socket\.io\/\?EIO=4&transport=websocket\S* HTTP\/1\.1" 403/, 'the page tried WebSocket first, and nginx refused the upgrade');
    assert.match(log, /POST \/socket\.io\/\?EIO=4&transport=polling\S* HTTP\/1\.1" 200/, 'the turn went over long-polling');
    // The browser reports each refused upgrade as a console error; nothing else went wrong.
    assert.deepEqual(problems.filter((p) => !/WebSocket/.test(p)), []);
  } finally {
    await context.close();
    await nginx.stop();
  }
});
