// Shared helpers for the Node checks: a fake OpenAI-compatible LLM, a way to
// run the real server binary against it, and small HTTP/Socket.IO helpers.
import http from 'node:http';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Rejects after `ms` with a message naming what was awaited. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------ fake LLM

/** Splits a reply into word-sized pieces (each piece keeps its trailing space). */
export function splitPieces(text) {
  const pieces = text.match(/\S+\s*|\s+/g) || [];
  return pieces.length ? pieces : [text];
}

function lastUserMessage(body) {
  const messages = Array.isArray(body?.messages) ? body.messages : [];
  for (let i = messages.length - 1; i >= 0; i--) {
    if (messages[i]?.role === 'user') {
      const c = messages[i].content;
      return typeof c === 'string' ? c : JSON.stringify(c);
    }
  }
  return '';
}

/**
 * A fake OpenAI-compatible LLM on 127.0.0.1 (port 0).
 *
 * options.reply(lastUserMessage, body) returns the reply as a string (streamed
 * word by word) or as an array of pieces (streamed as given).
 * options.delayMs: pause before each streamed piece.
 *
 * Returns {baseUrl, requests, setReply(fn), setDelay(ms), close()}; `requests`
 * records {method, url, headers, body} of every request.
 */
export async function startFakeLlm(options = {}) {
  let reply = options.reply || ((msg) => `You said: ${msg}`);
  let delayMs = options.delayMs ?? 0;
  const requests = [];
  const openResponses = new Set();

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      let body = null;
      try { body = raw ? JSON.parse(raw) : null; } catch { body = null; }
      requests.push({ method: req.method, url: req.url, headers: req.headers, body });

      if (req.method !== 'POST' || !req.url.endsWith('/chat/completions')) {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: 'not found' } }));
        return;
      }
      if (!body || !Array.isArray(body.messages)) {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: 'bad request' } }));
        return;
      }

      let out;
      try {
        out = await reply(lastUserMessage(body), body);
      } catch (err) {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: String(err) } }));
        return;
      }
      const pieces = Array.isArray(out) ? out.map(String) : splitPieces(String(out));

      if (body.stream === true) {
        openResponses.add(res);
        res.on('close', () => openResponses.delete(res));
        res.writeHead(200, {
          'content-type': 'text/event-stream',
          'cache-control': 'no-cache',
          connection: 'keep-alive',
        });
        res.flushHeaders();
        for (const piece of pieces) {
          if (delayMs > 0) await sleep(delayMs);
          if (res.destroyed || res.writableEnded) return; // client went away (stop)
          const event = {
            id: 'chatcmpl-fake',
            object: 'chat.completion.chunk',
            model: body.model ?? 'fake-model',
            choices: [{ index: 0, delta: { content: piece }, finish_reason: null }],
          };
          res.write(`data: ${JSON.stringify(event)}\n\n`);
        }
        if (!res.destroyed) res.end('data: [DONE]\n\n');
      } else {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({
          id: 'chatcmpl-fake',
          object: 'chat.completion',
          model: body.model ?? 'fake-model',
          choices: [{ index: 0, message: { role: 'assistant', content: pieces.join('') }, finish_reason: 'stop' }],
          usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
        }));
      }
    });
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();

  return {
    port,
    baseUrl: `http://127.0.0.1:${port}/v1`,
    requests,
    /** Requests that asked for a streamed chat completion. */
    streamRequests: () => requests.filter((r) => r.body?.stream === true),
    setReply(fn) { reply = fn; },
    setDelay(ms) { delayMs = ms; },
    async close() {
      for (const res of openResponses) res.destroy();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

// -------------------------------------------------------------- the server

const LISTENING = /llm-chat-server listening on (http:\/\/\S+)/;
const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

/** The server binary named by CHAT_SERVER_BIN, or a clear error. */
export function serverBinary() {
  const bin = process.env.CHAT_SERVER_BIN;
  if (!bin) {
    throw new Error(
      'CHAT_SERVER_BIN is not set: build the server (cargo build) and run ' +
      'CHAT_SERVER_BIN=<target>/debug/llm-chat-server node --test tests/node/',
    );
  }
  return bin;
}

/**
 * Starts the server binary with a fresh database in a temp folder (or in
 * `dir`, which is then kept), pointed at `llm` (a fake LLM from startFakeLlm)
 * unless env overrides say otherwise.
 * Returns {url, dir, stop(), output()}.
 */
export async function startServer(env = {}, { llm, dir: reuseDir, timeoutMs = 30000 } = {}) {
  const bin = serverBinary();
  // A given folder (a restart over the same database) is kept; a fresh one is removed on stop.
  const ownDir = !reuseDir;
  const dir = reuseDir || await mkdtemp(path.join(tmpdir(), 'llm-chat-node-'));
  const childEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    HOST: '127.0.0.1',
    PORT: '0',
    DATABASE_PATH: path.join(dir, 'chat.db'),
    SAVED_CONVERSATIONS_DIR: path.join(dir, 'saved'),
    LLM_PROVIDER: 'openai',
    OPENAI_BASE_URL: llm ? llm.baseUrl : 'http://127.0.0.1:9/v1',
    OPENAI_API_KEY: 'test-key',
    LLM_MODEL: 'fake-model',
    RUST_LOG: 'warn',
    ...env,
  };
  for (const [k, v] of Object.entries(childEnv)) if (v === undefined) delete childEnv[k];

  // The temp folder is the working directory, so no `.env` of the developer's
  // is read (the page and its static files are compiled into the binary).
  const child = spawn(bin, [], { cwd: dir, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d) => { stderr = (stderr + d).slice(-20000); });

  const exited = new Promise((resolve) => child.once('exit', (code, signal) => {
    running.delete(child);
    resolve({ code, signal });
  }));

  const output = () => `--- stdout ---\n${stdout.slice(-4000)}\n--- stderr ---\n${stderr.slice(-4000)}`;

  let url;
  try {
    url = await withTimeout(new Promise((resolve, reject) => {
      child.once('error', (err) => reject(new Error(`could not start ${bin}: ${err.message}`)));
      child.stdout.on('data', (d) => {
        stdout = (stdout + d).slice(-20000);
        const m = LISTENING.exec(stdout);
        if (m) resolve(m[1].replace(/\/+$/, ''));
      });
      exited.then(({ code, signal }) => reject(new Error(
        `server exited (code ${code}, signal ${signal}) before listening\n${output()}`)));
    }), timeoutMs, `"llm-chat-server listening on ..." from ${bin}`);
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    if (ownDir) await rm(dir, { recursive: true, force: true });
    if (/timed out/.test(err.message)) err.message += `\n${output()}`;
    throw err;
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  child.stdout.on('data', () => {});

  let stopped = false;
  return {
    url,
    dir,
    output,
    async stop() {
      if (stopped) return;
      stopped = true;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        // The 5 s grace timer is cleared once the server is gone, so it does
        // not keep the test process alive afterwards.
        let grace;
        const done = await Promise.race([
          exited.then(() => true),
          new Promise((resolve) => { grace = setTimeout(() => resolve(false), 5000); }),
        ]);
        clearTimeout(grace);
        if (!done) { child.kill('SIGKILL'); await exited; }
      }
      if (ownDir) await rm(dir, { recursive: true, force: true });
    },
  };
}

// ------------------------------------------------------------ HTTP helpers

/** `name=value` pairs of a response's Set-Cookie headers, joined for a Cookie header. */
export function cookieFrom(res) {
  const list = typeof res.headers.getSetCookie === 'function'
    ? res.headers.getSetCookie()
    : [res.headers.get('set-cookie')].filter(Boolean);
  return list.map((c) => c.split(';')[0].trim()).filter(Boolean).join('; ');
}

/** fetch + JSON with a bounded time. Returns {status, body, headers, res}. */
export async function request(url, { method = 'GET', cookie, json, headers = {}, timeoutMs = 10000 } = {}) {
  const h = { accept: 'application/json', ...headers };
  if (cookie) h.cookie = cookie;
  let body;
  if (json !== undefined) {
    h['content-type'] = 'application/json';
    body = JSON.stringify(json);
  }
  const res = await fetch(url, { method, headers: h, body, signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  let parsed = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, body: parsed, headers: res.headers, res };
}

/** A fresh session: POST /start_conversation, returns {cookie, conversationId}. */
export async function newSession(baseUrl) {
  const r = await request(`${baseUrl}/start_conversation`, { method: 'POST' });
  if (r.status !== 200) throw new Error(`POST /start_conversation: ${r.status} ${JSON.stringify(r.body)}`);
  const cookie = cookieFrom(r.res);
  if (!cookie) throw new Error('POST /start_conversation set no cookie');
  return { cookie, conversationId: r.body.conversation_id };
}

// ------------------------------------------------------- Socket.IO helpers

/** Resolves once `socket` connects; rejects on connect_error or timeout. */
export function connected(socket, timeoutMs = 10000) {
  return withTimeout(new Promise((resolve, reject) => {
    if (socket.connected) { resolve(socket); return; }
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => reject(new Error(`connect_error: ${err.message}`)));
  }), timeoutMs, 'the Socket.IO connection');
}

/**
 * Emits send_message and collects one turn: {usage, chunks, end} on success,
 * or {error} when the server answers with an `error` event.
 */
export function runTurn(socket, payload, { timeoutMs = 20000 } = {}) {
  const turn = { usage: null, chunks: [], end: null, error: null, order: [] };
  let cleanup;
  const done = new Promise((resolve) => {
    const onUsage = (d) => { turn.order.push('token_usage'); turn.usage = d; };
    const onChunk = (d) => { turn.order.push('response_chunk'); turn.chunks.push(d); };
    const onEnd = (d) => { turn.order.push('response_end'); turn.end = d; resolve(turn); };
    const onError = (d) => { turn.order.push('error'); turn.error = d; resolve(turn); };
    socket.on('token_usage', onUsage);
    socket.on('response_chunk', onChunk);
    socket.on('response_end', onEnd);
    socket.on('error', onError);
    cleanup = () => {
      socket.off('token_usage', onUsage);
      socket.off('response_chunk', onChunk);
      socket.off('response_end', onEnd);
      socket.off('error', onError);
    };
  });
  socket.emit('send_message', payload);
  return withTimeout(done, timeoutMs, `the reply to ${JSON.stringify(payload)}`).finally(cleanup);
}

// ------------------------------------------------------------ browser helpers
// For the page tests (browser.test.mjs, ui-*.test.mjs): Debian's Chromium
// driven by playwright-core (imported lazily, so the other files need no browser).

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const SCREENSHOTS_DIR = path.join(REPO_ROOT, 'target', 'screenshots');

/** Launches headless Chromium, or throws a clear error when it is missing. */
export async function launchChromium() {
  const { existsSync } = await import('node:fs');
  if (!existsSync(CHROMIUM_PATH)) {
    throw new Error(`Chromium not found at ${CHROMIUM_PATH}: install it with 'apt-get install -y chromium' (or set CHROMIUM_PATH)`);
  }
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    timeout: 30000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-features=LocalNetworkAccessChecks'],
  });
}

/**
 * Opens the chat page of `baseUrl` in `context` and waits until it is
 * connected and ready to send. Page errors and console errors are collected
 * in `problems`.
 */
export async function openChatPage(context, baseUrl, { path: pagePath = '/' } = {}) {
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const problems = [];
  page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/favicon/.test(msg.location()?.url || '')) problems.push(`console: ${msg.text()}`);
  });
  await page.goto(`${baseUrl}${pagePath}`);
  await waitReady(page);
  return { page, problems };
}

/** Waits until the page is connected and its Send button usable. */
export async function waitReady(page, timeout = 15000) {
  await page.waitForSelector('#connection-status[data-status="connected"]', { timeout });
  await page.waitForFunction(() => !document.querySelector('#send-button').disabled, null, { timeout });
}

/** Saves a screenshot under target/screenshots/ and returns its path. */
export async function screenshot(page, name, options = {}) {
  const { mkdir } = await import('node:fs/promises');
  await mkdir(SCREENSHOTS_DIR, { recursive: true });
  const file = path.join(SCREENSHOTS_DIR, name);
  await page.screenshot({ path: file, ...options });
  return file;
}

/** Types `text` into the message box and presses Enter. */
export async function typeAndSend(page, text) {
  await page.locator('#message-input').fill(text);
  await page.locator('#message-input').press('Enter');
}

/** Resolves once no reply is streaming and there are `count` assistant messages. */
export async function waitReplies(page, count, timeout = 20000) {
  await page.waitForFunction((n) => document.querySelectorAll('#transcript .message-assistant').length === n
    && !document.querySelector('#transcript .is-streaming'), count, { timeout });
}

/** Opens the conversation menu and clicks one of its items (by id). */
export async function menuAction(page, itemId) {
  if (!(await page.locator('#conversation-menu').evaluate((d) => d.open))) {
    await page.locator('#conversation-menu-button').click();
  }
  await page.locator(`#${itemId}`).click();
}
