// The administration page (/admin, issue 13) end to end with the real server, a fake LLM
// and headless Chromium: the first account (the admin) signs in, opens /admin and sees
// every account with today's tokens (a real turn of another person, counted from the
// model's usage) and quota; sets that person's own quota, disables and enables them, and
// the server's answers are what shows. A non-admin gets 403 at /admin, and a signed-out
// browser is sent to the chat page. Screenshot: ui-admin.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import {
  startFakeLlm, startServer, splitPieces, launchChromium, request, cookieFrom, connected, runTurn,
  screenshot,
} from './harness.mjs';

const ADMIN = { email: 'root@example.com', password: 'correct-horse-battery' };
const BOB = { email: 'bob@example.com', password: 'bobs-long-password' };

let llm;
let server;
let browser;

before(async () => {
  llm = await startFakeLlm({ reply: (msg) => splitPieces(`Echo: ${msg}`), delayMs: 2 });
  server = await startServer({ AUTH_MODE: 'local', SIGNUP: 'open', QUOTA_TOKENS_PER_DAY: '50000' }, { llm });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await llm?.close();
});

async function signUp(who) {
  const r = await request(`${server.url}/auth/signup`, { method: 'POST', json: who });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return { cookie: cookieFrom(r.res), me: r.body };
}

test('an administrator sees every account with its usage, sets a quota, disables and enables', async () => {
  const admin = await signUp(ADMIN);
  assert.equal(admin.me.is_admin, true);
  const bob = await signUp(BOB);
  assert.equal(bob.me.is_admin, false);

  // Bob chats once: his tokens today are what the page must show.
  const socket = io(server.url, { transports: ['websocket'], extraHeaders: { Cookie: bob.cookie }, reconnection: false });
  try {
    await connected(socket);
    const started = await request(`${server.url}/start_conversation`, { method: 'POST', cookie: bob.cookie });
    assert.equal(started.status, 200, JSON.stringify(started.body));
    const turn = await runTurn(socket, { message: 'hello admin page', conversation_id: started.body.conversation_id });
    assert.equal(turn.error, null, JSON.stringify(turn.error));
  } finally {
    socket.close();
  }
  const usage = await request(`${server.url}/usage`, { cookie: bob.cookie });
  const bobTokens = usage.body.prompt_tokens + usage.body.completion_tokens;
  assert.ok(bobTokens > 0, JSON.stringify(usage.body));

  // A non-admin gets 403; a browser that is not signed in goes to the chat page.
  const refused = await request(`${server.url}/admin`, { cookie: bob.cookie });
  assert.equal(refused.status, 403);
  assert.equal(refused.body.error, 'forbidden');
  const anonymous = await fetch(`${server.url}/admin`, { redirect: 'manual', signal: AbortSignal.timeout(10000) });
  assert.equal(anonymous.status, 303);
  assert.equal(anonymous.headers.get('location'), '/');

  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  try {
    const [name, value] = admin.cookie.split(';')[0].split('=');
    await context.addCookies([{ name, value, url: server.url }]);
    const page = await context.newPage();
    page.setDefaultTimeout(15000);
    const problems = [];
    page.on('pageerror', (err) => problems.push(err.message));
    // The chat page's account menu links to the administration page, for admins.
    await page.goto(server.url);
    await page.waitForSelector('#account-menu-button');
    await page.locator('#account-menu-button').click();
    assert.ok(await page.locator('#admin-link').isVisible(), 'the Administration link shows for an admin');
    await page.locator('#admin-link').click();
    await page.waitForURL(`${server.url}/admin`);
    await page.waitForSelector('#admin-rows tr');
    assert.match(await page.locator('#admin-summary').textContent(), /^2 accounts, 1 administrator\. Usage on \d{4}-\d{2}-\d{2} \(UTC\); default quota: 50,000 tokens a day\.$/);
    const bobRow = page.locator(`#admin-rows tr[data-user-id="${bob.me.user_id}"]`);
    const adminRow = page.locator(`#admin-rows tr[data-user-id="${admin.me.user_id}"]`);
    assert.equal(await bobRow.locator('.admin-email').textContent(), BOB.email);
    assert.equal(await bobRow.locator('.admin-used').textContent(), bobTokens.toLocaleString('en-US'));
    assert.equal(await bobRow.locator('.admin-quota-note').textContent(), 'default: 50,000');
    assert.equal(await bobRow.locator('.admin-status').textContent(), 'active');
    assert.equal(await adminRow.locator('.admin-status').textContent(), 'administrator, active');
    assert.ok(await adminRow.locator('button', { hasText: 'Disable' }).isDisabled(), 'no disabling oneself');

    // Bob's own quota.
    await bobRow.locator('.admin-quota-input').fill('1234');
    await bobRow.locator('button', { hasText: 'Set' }).click();
    await page.waitForFunction((id) => {
      const note = document.querySelector(`#admin-rows tr[data-user-id="${id}"] .admin-quota-note`);
      return note && note.textContent === 'own';
    }, bob.me.user_id);
    const bobUsage = await request(`${server.url}/usage`, { cookie: bob.cookie });
    assert.equal(bobUsage.body.quota_tokens_per_day, 1234);

    // A quota that is no number is refused in the page, and nothing is sent.
    await bobRow.locator('.admin-quota-input').fill('-5');
    await bobRow.locator('button', { hasText: 'Set' }).click();
    assert.match(await page.locator('#admin-error').textContent(), /whole number/);
    assert.equal((await request(`${server.url}/usage`, { cookie: bob.cookie })).body.quota_tokens_per_day, 1234);

    // Disable Bob (after confirming): his session ends.
    page.once('dialog', (dialog) => dialog.accept());
    await bobRow.locator('button', { hasText: 'Disable' }).click();
    await page.waitForFunction((id) => {
      const status = document.querySelector(`#admin-rows tr[data-user-id="${id}"] .admin-status`);
      return status && status.textContent === 'disabled';
    }, bob.me.user_id);
    assert.equal((await request(`${server.url}/auth/me`, { cookie: bob.cookie })).status, 401);
    const login = await request(`${server.url}/auth/login`, { method: 'POST', json: BOB });
    assert.equal(login.status, 403, JSON.stringify(login.body));
    await screenshot(page, 'ui-admin.png');

    // Enable again: Bob can sign in.
    await bobRow.locator('button', { hasText: 'Enable' }).click();
    await page.waitForFunction((id) => {
      const status = document.querySelector(`#admin-rows tr[data-user-id="${id}"] .admin-status`);
      return status && status.textContent === 'active';
    }, bob.me.user_id);
    assert.equal((await request(`${server.url}/auth/login`, { method: 'POST', json: BOB })).status, 200);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});
