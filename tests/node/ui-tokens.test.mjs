// Personal access tokens in the page (issue 13), end to end with the real
// server (AUTH_MODE=local), a fake LLM and headless Chromium: the account
// menu's "Access tokens…" dialog lists, creates (shown once, with Copy) and
// revokes tokens; the token made in the page works from Node as
// `Authorization: Bearer`, and is refused (401) once revoked. Screenshots go
// to SCREENSHOT_DIR (default target/screenshots/).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  startFakeLlm, startServer, splitPieces, launchChromium, waitReady, SCREENSHOTS_DIR,
} from './harness.mjs';

const SHOTS = process.env.SCREENSHOT_DIR || SCREENSHOTS_DIR;
const EMAIL = 'grace@example.com';
const PASSWORD = 'compiler-a-0-1952';
const NAME = 'nightly <script>alert(1)</script>';

let llm;
let server;
let browser;

before(async () => {
  llm = await startFakeLlm({ reply: (msg) => splitPieces(`Echo: ${msg}`), delayMs: 5 });
  server = await startServer({ AUTH_MODE: 'local' }, { llm });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await llm?.close();
});

/** A request from Node (not the page) with the token as `Authorization: Bearer`. */
async function withToken(token, urlPath) {
  const res = await fetch(`${server.url}${urlPath}`, {
    headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
  });
  return { status: res.status, body: await res.json().catch(() => null) };
}

test('Access tokens…: create a token in the page, use it from a script, revoke it', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 820 }, colorScheme: 'light' });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(15000);
    const problems = [];
    page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() === 'error' && !/favicon/.test(msg.location()?.url || '')
        && !/Failed to load resource: the server responded with a status of 401 /.test(msg.text())) {
        problems.push(`console: ${msg.text()}`);
      }
    });
    await page.goto(server.url);

    // The first account, through the sign-in dialog.
    await page.waitForSelector('#auth-dialog[open]');
    await page.locator('#auth-switch').click();
    await page.locator('#auth-email').fill(EMAIL);
    await page.locator('#auth-password').fill(PASSWORD);
    await Promise.all([page.waitForEvent('load'), page.locator('#auth-submit').click()]);
    await waitReady(page);

    // The dialog, from the account menu: no tokens yet.
    await page.locator('#account-menu-button').click();
    assert.equal(await page.locator('#tokens-button').textContent(), 'Access tokens…');
    await page.locator('#tokens-button').click();
    await page.waitForSelector('#tokens-dialog[open]');
    await page.waitForSelector('#tokens-empty:not([hidden])');
    assert.equal(await page.locator('#tokens-list li').count(), 0);
    assert.ok(await page.locator('#token-created').isHidden(), 'no token is shown before one is made');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'token-name');

    // A name is needed.
    await page.locator('#token-create').click();
    assert.equal(await page.locator('#tokens-error').textContent(), 'Give the token a name.');
    assert.equal(await page.locator('#token-name').getAttribute('aria-invalid'), 'true');

    // Create one: shown once, with the warning and a Copy button; listed as text.
    await page.locator('#token-name').fill(NAME);
    await page.locator('#token-name').press('Enter');
    await page.waitForSelector('#token-created:not([hidden])');
    const token = await page.locator('#token-value').inputValue();
    assert.match(token, /^lcs_[0-9a-f]{48}$/);
    assert.equal(await page.locator('#token-value').getAttribute('readonly'), '');
    assert.match(await page.locator('#token-created').textContent(), /you will not see it again/);
    await page.waitForFunction(() => document.querySelectorAll('#tokens-list li').length === 1);
    assert.equal(await page.locator('#tokens-list .token-item-name').textContent(), NAME);
    assert.equal(await page.locator('#tokens-list script').count(), 0, 'the name is text, not markup');
    assert.ok(await page.locator('#tokens-empty').isHidden());
    assert.equal(await page.locator('#tokens-error').textContent(), '');
    await page.locator('#token-copy').click();
    await page.waitForFunction(() => document.querySelector('#token-copy').textContent === 'Copied');
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), token);
    await mkdir(SHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SHOTS, 'ui-tokens-created.png') });

    // From Node, the token is this account, and sees its conversations.
    const me = await withToken(token, '/auth/me');
    assert.equal(me.status, 200, JSON.stringify(me.body));
    assert.equal(me.body.email, EMAIL);
    const listed = await withToken(token, '/list_conversations');
    assert.equal(listed.status, 200);
    const pageIds = await page.evaluate(() => Array.from(document.querySelectorAll('#conversation-list [data-id]'))
      .map((el) => el.getAttribute('data-id')));
    assert.deepEqual(listed.body.conversations.map((c) => c.conversation_id).sort(), [...new Set(pageIds)].sort());

    // Closed and opened again: the token itself is gone from the page, the entry stays.
    await page.locator('#tokens-close').click();
    assert.ok(!(await page.locator('#tokens-dialog').evaluate((d) => d.open)));
    await page.locator('#account-menu-button').click();
    await page.locator('#tokens-button').click();
    await page.waitForFunction(() => document.querySelectorAll('#tokens-list li').length === 1);
    assert.ok(await page.locator('#token-created').isHidden());
    assert.equal(await page.locator('#token-value').inputValue(), '');

    // Revoke it (after a confirmation): gone from the list, refused from Node.
    await page.locator('#tokens-list .token-revoke').click();
    await page.waitForSelector('#confirm-dialog[open]');
    await page.locator('#confirm-ok').click();
    await page.waitForSelector('#tokens-empty:not([hidden])');
    assert.equal(await page.locator('#tokens-list li').count(), 0);
    const refused = await withToken(token, '/list_conversations');
    assert.equal(refused.status, 401);
    assert.equal(refused.body.error, 'unauthenticated');
    const stillMe = await withToken(token, '/auth/me');
    assert.equal(stillMe.status, 401);

    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});
