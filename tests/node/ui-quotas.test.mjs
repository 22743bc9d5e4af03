// Daily token quotas in the page (issue 13), end to end with the real server
// (AUTH_MODE=local, QUOTA_TOKENS_PER_DAY=1), a fake LLM and headless Chromium:
// the account menu shows today's usage against the quota; once it is used up
// a message is refused with a clear sentence naming the reset time, nothing
// is stored and the text goes back to the message box. Screenshots go to
// SCREENSHOT_DIR (default target/screenshots/).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  startFakeLlm, startServer, splitPieces, launchChromium, waitReady, typeAndSend, waitReplies, request,
  SCREENSHOTS_DIR,
} from './harness.mjs';

const SHOTS = process.env.SCREENSHOT_DIR || SCREENSHOTS_DIR;

let llm;
let server;
let browser;

before(async () => {
  llm = await startFakeLlm({ reply: (msg) => splitPieces(`Echo: ${msg}`), delayMs: 5 });
  server = await startServer({ AUTH_MODE: 'local', QUOTA_TOKENS_PER_DAY: '1' }, { llm });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await llm?.close();
});

test('the account menu shows usage against the quota, and a message over it is refused clearly', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(15000);
    const problems = [];
    page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
    page.on('console', (msg) => {
      // /auth/me answers 401 before signing up.
      if (msg.type() === 'error' && !/status of 401/.test(msg.text())) problems.push(`console: ${msg.text()}`);
    });
    await page.goto(server.url);
    await page.waitForSelector('#auth-dialog[open]');
    await page.locator('#auth-switch').click();
    await page.locator('#auth-email').fill('ada@example.com');
    await page.locator('#auth-password').fill('analytical-engine-1843');
    await Promise.all([page.waitForEvent('load'), page.locator('#auth-submit').click()]);
    await waitReady(page);

    // Nothing used yet.
    await page.locator('#account-menu-button').click();
    await page.waitForSelector('#account-usage:not([hidden])');
    assert.equal(await page.locator('#account-usage-text').textContent(), '0 / 1 tokens today');
    await page.keyboard.press('Escape');

    // The first message fits (nothing used yet) and uses the quota up.
    await typeAndSend(page, 'hello within my quota');
    await waitReplies(page, 1);
    const calls = llm.requests.length;

    // Over the quota: refused before the model, with the reset time.
    await typeAndSend(page, 'one message too many');
    await page.waitForFunction(() => document.querySelector('#error-line').textContent !== '');
    const error = await page.locator('#error-line').textContent();
    assert.match(error, /^You have used your 1 tokens for today\. It resets on .+ \(your time\)\.$/);
    assert.equal(await page.locator('#message-input').inputValue(), 'one message too many',
      'the refused text is back in the message box');
    assert.equal(await page.locator('#transcript .message-user').count(), 1, 'the refused message is not shown as sent');
    assert.equal(llm.requests.length, calls, 'the refused message reached the model');

    // The menu says so; the number is what GET /usage says, digits grouped.
    await page.locator('#account-menu-button').click();
    await page.waitForFunction(() => /quota used up/.test(document.querySelector('#account-usage-text').textContent));
    const cookie = (await context.cookies()).map((c) => `${c.name}=${c.value}`).join('; ');
    const usage = (await request(`${server.url}/usage`, { cookie })).body;
    const used = usage.prompt_tokens + usage.completion_tokens;
    assert.ok(used > 1, JSON.stringify(usage));
    const grouped = String(used).replace(/\B(?=(\d{3})+(?!\d))/g, '\u00a0');
    assert.equal(await page.locator('#account-usage-text').textContent(), `${grouped} / 1 tokens today (quota used up)`);
    await mkdir(SHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SHOTS, 'ui-quotas-used-up.png') });
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});
