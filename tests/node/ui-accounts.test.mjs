// Local accounts in the page (AUTH_MODE=local, issue 13), end to end with the
// real server, a fake LLM and headless Chromium: the sign-in dialog before
// anything else, creating the first account, chatting, signing out, a wrong
// password, signing in again to the earlier conversation, changing the
// password; the dialog and the account menu dark at 375 px; signing out
// everywhere, which brings the sign-in dialog to another device; with
// ALLOW_ANONYMOUS a page that works signed out and a Sign in button; and no
// account UI at all with the default AUTH_MODE. Screenshots go to
// SCREENSHOT_DIR (default target/screenshots/).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  startFakeLlm, startServer, splitPieces, launchChromium, openChatPage, waitReady, typeAndSend, waitReplies,
  SCREENSHOTS_DIR,
} from './harness.mjs';

const SHOTS = process.env.SCREENSHOT_DIR || SCREENSHOTS_DIR;
const EMAIL = 'ada@example.com';
const PASSWORD = 'analytical-engine-1843';
const NEW_PASSWORD = 'difference-engine-1822';

let llm;
let server;      // AUTH_MODE=local (SIGNUP=first-only, no anonymous use: the defaults)
let open;        // AUTH_MODE=local, ALLOW_ANONYMOUS=true, SIGNUP=open
let plain;       // the default AUTH_MODE (none)
let browser;

before(async () => {
  llm = await startFakeLlm({ reply: (msg) => splitPieces(`Echo: ${msg}`), delayMs: 5 });
  server = await startServer({ AUTH_MODE: 'local' }, { llm });
  open = await startServer({ AUTH_MODE: 'local', ALLOW_ANONYMOUS: 'true', SIGNUP: 'open' }, { llm });
  plain = await startServer({}, { llm });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await open?.stop();
  await plain?.stop();
  await llm?.close();
});

async function shot(page, name) {
  await mkdir(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, name) });
}

/** A page with its problems (page errors, console errors) and the WebSockets it opened. */
async function openPage(context, url) {
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const problems = [];
  const sockets = [];
  page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    // The 401s of /auth/me (signed out) and of a wrong password, and the 400 of a short password, are expected.
    if (msg.type() === 'error' && !/favicon/.test(msg.location()?.url || '')
      && !/Failed to load resource: the server responded with a status of 40[01] /.test(msg.text())) {
      problems.push(`console: ${msg.text()}`);
    }
  });
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await page.goto(url);
  return { page, problems, sockets };
}

/** Nothing in the header leaves the screen or overlaps. */
function assertHeaderFits(h) {
  const json = JSON.stringify(h);
  assert.ok(h.scroll <= h.width, `no horizontal scrolling: ${json}`);
  assert.ok(h.title.right <= h.status.left, `the title and the status do not overlap: ${json}`);
  assert.ok(h.account.left >= h.status.right && h.account.right <= h.width,
    `the account button sits after the status, inside the screen: ${json}`);
}

const dialogOpen = (page) => page.locator('#auth-dialog').evaluate((d) => d.open);

async function waitSignInDialog(page) {
  await page.waitForSelector('#auth-dialog[open]');
  await page.waitForFunction(() => document.activeElement && document.activeElement.id === 'auth-email');
}

/** Fills the dialog and submits it; resolves once the page has reloaded and is ready. */
async function submitAndReload(page) {
  await Promise.all([
    page.waitForEvent('load', { timeout: 15000 }),
    page.locator('#auth-submit').click(),
  ]);
  await waitReady(page);
}

async function signIn(page, email, password) {
  await page.locator('#auth-email').fill(email);
  await page.locator('#auth-password').fill(password);
  await submitAndReload(page);
}

async function openAccountMenu(page) {
  if (!(await page.locator('#account-menu').evaluate((d) => d.open))) await page.locator('#account-menu-button').click();
}

test('AUTH_MODE=local: sign up through the dialog, chat, sign out, a wrong password, sign in to the earlier conversation', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, colorScheme: 'light' });
  try {
    const { page, problems, sockets } = await openPage(context, server.url);

    // Signed out: the dialog, and nothing behind it starts.
    await waitSignInDialog(page);
    assert.equal(await page.locator('#auth-title').textContent(), 'Sign in');
    assert.equal(await page.locator('#connection-status').getAttribute('data-status'), 'signed-out');
    assert.equal(await page.locator('#connection-status').textContent(), 'Signed out');
    assert.ok(await page.locator('#auth-switch').isVisible(), 'sign-up is offered (signup_open)');
    assert.ok(!(await page.locator('#auth-name').isVisible()), 'no name field when signing in');
    assert.ok(!(await page.locator('#auth-cancel').isVisible()), 'no Cancel: nothing works signed out');
    assert.equal(await page.locator('#auth-error').getAttribute('aria-live'), 'assertive');
    assert.equal(await page.locator('#auth-email').getAttribute('type'), 'email');
    assert.equal(await page.locator('#auth-password').getAttribute('autocomplete'), 'current-password');
    assert.equal(await page.locator('#conversation-list .conversation-item').count(), 0);
    assert.deepEqual(sockets, [], 'no socket before signing in');
    await shot(page, 'ui-accounts-sign-in.png');

    // Escape does not get past it (twice: Chromium closes on a repeated Escape).
    // A browser without closedby closes it and the page shows it again in the
    // close event, a task later: wait for that, briefly.
    await page.keyboard.press('Escape');
    await page.keyboard.press('Escape');
    const up = await page.waitForFunction(() => document.querySelector('#auth-dialog').open, null, { timeout: 2000 })
      .then(() => true, () => false);
    assert.ok(up, 'the dialog stays up');
    assert.equal(await page.evaluate(() => document.activeElement && document.activeElement.id), 'auth-email', 'focus is in the dialog');

    // Create an account (the first one).
    await page.locator('#auth-switch').click();
    assert.equal(await page.locator('#auth-title').textContent(), 'Create an account');
    assert.equal(await page.locator('#auth-submit').textContent(), 'Create account');
    assert.ok(await page.locator('#auth-name').isVisible(), 'the optional name field shows for sign-up');
    assert.equal(await page.locator('#auth-password').getAttribute('autocomplete'), 'new-password');
    await page.locator('#auth-submit').click();
    assert.equal(await page.locator('#auth-error').textContent(), 'Enter an email address and a password.');
    assert.equal(await page.locator('#auth-email').getAttribute('aria-invalid'), 'true');
    await page.locator('#auth-name').fill('Ada <b>Lovelace</b>');
    await page.locator('#auth-email').fill(EMAIL);
    await page.locator('#auth-password').fill('short');
    await page.locator('#auth-submit').click();
    await page.waitForFunction(() => document.querySelector('#auth-error').textContent !== '');
    assert.match(await page.locator('#auth-error').textContent(), /8 characters/, 'the server says why');
    assert.ok(await dialogOpen(page));
    await page.locator('#auth-password').fill(PASSWORD);
    await submitAndReload(page);

    // In the chat, signed in.
    assert.ok(!(await dialogOpen(page)));
    assert.ok(await page.locator('#account-menu-button').isVisible());
    assert.equal(await page.locator('#account-email').textContent(), EMAIL);
    assert.equal(await page.locator('#account-menu-button').getAttribute('aria-label'), `Account: ${EMAIL}`);
    assert.ok(!(await page.locator('#sign-in-button').isVisible()));
    await openAccountMenu(page);
    assert.match(await page.locator('#account-who').textContent(), /^Ada <b>Lovelace<\/b> <ada@example\.com>/, 'the name is text, not markup');
    assert.equal(await page.locator('#account-who b').count(), 0);
    await page.keyboard.press('Escape');
    assert.ok(!(await page.locator('#account-menu').evaluate((d) => d.open)));

    await typeAndSend(page, 'hello from an account');
    await waitReplies(page, 1);
    assert.deepEqual(await page.locator('#transcript .message-assistant .message-content').allTextContents(), ['Echo: hello from an account']);
    await page.waitForSelector('#conversation-list .conversation-item');
    await shot(page, 'ui-accounts-signed-in.png');

    // Sign out: the dialog again.
    await openAccountMenu(page);
    await Promise.all([page.waitForEvent('load'), page.locator('#sign-out-button').click()]);
    await waitSignInDialog(page);
    assert.equal(await page.locator('#transcript .message').count(), 0, 'nothing of the account shows');
    assert.equal(await page.locator('#conversation-list .conversation-item').count(), 0);
    assert.ok(!(await page.locator('#account-menu').isVisible()));
    assert.ok(!(await page.locator('#auth-switch').isVisible()), 'SIGNUP=first-only: no more sign-ups');

    // A wrong password: the server's message in the dialog.
    await page.locator('#auth-email').fill(EMAIL);
    await page.locator('#auth-password').fill('not-the-password');
    await page.locator('#auth-submit').click();
    await page.waitForFunction(() => document.querySelector('#auth-error').textContent !== '');
    assert.equal(await page.locator('#auth-error').textContent(), 'Wrong email or password.');
    assert.equal(await page.locator('#auth-password').getAttribute('aria-invalid'), 'true');
    assert.ok(await dialogOpen(page));
    assert.ok(!(await page.locator('#auth-submit').isDisabled()), 'the form can be sent again');

    // The right one: back to the earlier conversation.
    await page.locator('#auth-password').fill(PASSWORD);
    await submitAndReload(page);
    await page.waitForSelector('#conversation-list .conversation-item');
    assert.equal(await page.locator('#conversation-list .conversation-item').count(), 1, 'the earlier conversation, and no other');
    assert.equal(await page.locator('#conversation-list .conversation-item[aria-current="true"]').count(), 1, 'and it is open');
    await page.waitForFunction(() => document.querySelectorAll('#transcript .message').length === 2);
    assert.deepEqual(await page.locator('#transcript .message-user .message-content').allTextContents(), ['hello from an account']);

    // Change the password: a wrong current one first.
    await openAccountMenu(page);
    await page.locator('#change-password-button').click();
    await page.waitForSelector('#password-dialog[open]');
    await page.waitForFunction(() => document.activeElement && document.activeElement.id === 'password-current');
    await page.locator('#password-current').fill('wrong-current-password');
    await page.locator('#password-new').fill(NEW_PASSWORD);
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelector('#password-error').textContent !== '');
    assert.equal(await page.locator('#password-error').textContent(), 'The current password is wrong.');
    assert.equal(await page.locator('#password-current').getAttribute('aria-invalid'), 'true');
    await shot(page, 'ui-accounts-password.png');
    await page.locator('#password-current').fill(PASSWORD);
    await page.locator('#password-submit').click();
    await page.waitForFunction(() => !document.querySelector('#password-dialog').open);
    await page.waitForFunction(() => document.querySelector('#notice').textContent === 'Password changed.');

    // Signed out, the new password works.
    await openAccountMenu(page);
    await Promise.all([page.waitForEvent('load'), page.locator('#sign-out-button').click()]);
    await waitSignInDialog(page);
    await signIn(page, EMAIL, NEW_PASSWORD);
    assert.equal(await page.locator('#account-email').textContent(), EMAIL);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('the sign-in dialog and the account menu at 375 px in dark mode', async () => {
  const context = await browser.newContext({ viewport: { width: 375, height: 740 }, colorScheme: 'dark', isMobile: true, hasTouch: true });
  try {
    const { page, problems } = await openPage(context, server.url);
    await waitSignInDialog(page);
    const fits = () => page.evaluate(() => {
      const d = document.querySelector('#auth-dialog').getBoundingClientRect();
      return { left: d.left, right: d.right, width: window.innerWidth, scroll: document.documentElement.scrollWidth };
    });
    const box = await fits();
    assert.ok(box.left >= 0 && box.right <= box.width, `the dialog fits: ${JSON.stringify(box)}`);
    assert.ok(box.scroll <= box.width, 'no horizontal scrolling');
    await shot(page, 'ui-accounts-sign-in-375-dark.png');

    // Signed in (the account of the first test), the header still fits.
    await signIn(page, EMAIL, NEW_PASSWORD);
    const header = await page.evaluate(() => {
      const rect = (sel) => document.querySelector(sel).getBoundingClientRect().toJSON();
      return {
        width: window.innerWidth, scroll: document.documentElement.scrollWidth,
        status: rect('#connection-status'), account: rect('#account'), title: rect('.app-title'),
      };
    });
    assertHeaderFits(header);
    await openAccountMenu(page);
    const menu = await page.locator('#account-menu-items').evaluate((m) => m.getBoundingClientRect().toJSON());
    assert.ok(menu.left >= 0 && menu.right <= 375, `the menu fits: ${JSON.stringify(menu)}`);
    await shot(page, 'ui-accounts-menu-375-dark.png');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('signed out in another tab: the next request brings the sign-in dialog back', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  try {
    const { page: first, problems } = await openPage(context, server.url);
    await waitSignInDialog(first);
    await signIn(first, EMAIL, NEW_PASSWORD);
    await first.waitForSelector('#conversation-list .conversation-item');
    const { page: second, problems: problems2 } = await openPage(context, server.url);
    await waitReady(second);
    assert.ok(!(await dialogOpen(second)));

    await openAccountMenu(first);
    await Promise.all([first.waitForEvent('load'), first.locator('#sign-out-button').click()]);
    await waitSignInDialog(first);

    // The other tab finds out with its next request.
    await second.locator('#conversation-list .conversation-item').last().click();
    await waitSignInDialog(second);
    assert.equal(await second.locator('#auth-error').textContent(), 'Your session has ended. Sign in to continue.');
    assert.equal(await second.locator('#connection-status').getAttribute('data-status'), 'signed-out');
    assert.ok(!(await second.locator('#auth-cancel').isVisible()));
    await signIn(second, EMAIL, NEW_PASSWORD);
    assert.equal(await second.locator('#account-email').textContent(), EMAIL);
    assert.deepEqual([...problems, ...problems2], []);
  } finally {
    await context.close();
  }
});

test('Sign out everywhere: the other device is disconnected by the server and asks to sign in, without reconnecting', async () => {
  const laptop = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const phone = await browser.newContext({ viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true });
  try {
    const { page: first, problems } = await openPage(laptop, server.url);
    await waitSignInDialog(first);
    await signIn(first, EMAIL, NEW_PASSWORD);
    const { page: second, problems: problems2, sockets } = await openPage(phone, server.url);
    await waitSignInDialog(second);
    await signIn(second, EMAIL, NEW_PASSWORD);
    await second.waitForFunction(() => document.getElementById('connection-status').dataset.status === 'connected');
    const socketsBefore = sockets.length;

    await openAccountMenu(first);
    const item = first.locator('#sign-out-everywhere-button');
    assert.equal(await item.textContent(), 'Sign out everywhere');
    // Next to "Sign out".
    assert.equal(await item.evaluate((b) => b.previousElementSibling.id), 'sign-out-button');
    await shot(first, 'accounts-menu-sign-out-everywhere.png');
    await Promise.all([first.waitForEvent('load'), item.click()]);
    await waitSignInDialog(first);

    // The phone did nothing: the server closed its socket, and it asks to sign in.
    await waitSignInDialog(second);
    assert.equal(await second.locator('#auth-error').textContent(), 'Your session has ended. Sign in to continue.');
    assert.equal(await second.locator('#connection-status').getAttribute('data-status'), 'signed-out');
    await shot(second, 'accounts-signed-out-everywhere-phone.png');
    // And it does not keep reconnecting behind the dialog.
    await second.waitForTimeout(2500);
    assert.ok(sockets.length <= socketsBefore + 1, `sockets opened after the sign-out: ${sockets.length - socketsBefore}`);
    assert.equal(await second.locator('#connection-status').getAttribute('data-status'), 'signed-out');
    // (Signing in again is the dialog's usual path; sign-ins of this account are near
    // the per-account limit of 10 in 15 minutes by now.)
    assert.deepEqual([...problems, ...problems2], []);
  } finally {
    await laptop.close();
    await phone.close();
  }
});

test('ALLOW_ANONYMOUS: the page works signed out; Sign in opens the dialog; a new account keeps the conversation (375 px, dark)', async () => {
  const context = await browser.newContext({ viewport: { width: 375, height: 740 }, colorScheme: 'dark', isMobile: true, hasTouch: true });
  try {
    const { page, problems } = await openPage(context, open.url);
    await waitReady(page);
    assert.ok(!(await dialogOpen(page)), 'no dialog: anonymous use is allowed');
    assert.ok(await page.locator('#sign-in-button').isVisible());
    assert.ok(!(await page.locator('#account-menu').isVisible()));
    await typeAndSend(page, 'before signing up');
    await waitReplies(page, 1);
    assertHeaderFits(await page.evaluate(() => {
      const rect = (sel) => document.querySelector(sel).getBoundingClientRect().toJSON();
      return {
        width: window.innerWidth, scroll: document.documentElement.scrollWidth,
        status: rect('#connection-status'), account: rect('#account'), title: rect('.app-title'),
      };
    }));
    await shot(page, 'ui-accounts-anonymous-375-dark.png');

    // The dialog can be dismissed here: Cancel, and Escape (focus back on Sign in).
    await page.locator('#sign-in-button').click();
    await waitSignInDialog(page);
    assert.ok(await page.locator('#auth-cancel').isVisible());
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => !document.querySelector('#auth-dialog').open);
    assert.equal(await page.evaluate(() => document.activeElement.id), 'sign-in-button');
    await page.keyboard.press('Enter');
    await waitSignInDialog(page);
    await page.locator('#auth-cancel').click();
    await page.waitForFunction(() => !document.querySelector('#auth-dialog').open);

    // Create an account: the conversation goes with it.
    await page.locator('#sign-in-button').click();
    await waitSignInDialog(page);
    await page.locator('#auth-switch').click();
    assert.equal(await page.evaluate(() => document.activeElement.id), 'auth-name');
    const box = await page.locator('#auth-dialog').evaluate((d) => d.getBoundingClientRect().toJSON());
    assert.ok(box.left >= 0 && box.right <= 375 && box.bottom <= 740, `the sign-up dialog fits: ${JSON.stringify(box)}`);
    await shot(page, 'ui-accounts-sign-up-375-dark.png');
    await page.locator('#auth-email').fill('grace@example.com');
    await page.locator('#auth-password').fill('compiler-a0-1952');
    await submitAndReload(page);
    assert.equal(await page.locator('#account-email').textContent(), 'grace@example.com');
    assert.ok(!(await page.locator('#sign-in-button').isVisible()));
    await page.waitForFunction(() => document.querySelectorAll('#transcript .message').length === 2);
    assert.deepEqual(await page.locator('#transcript .message-user .message-content').allTextContents(), ['before signing up']);

    // Signed out, the page works again without the account's conversations.
    await openAccountMenu(page);
    await Promise.all([page.waitForEvent('load'), page.locator('#sign-out-button').click()]);
    await waitReady(page);
    assert.ok(!(await dialogOpen(page)));
    assert.ok(await page.locator('#sign-in-button').isVisible());
    assert.equal(await page.locator('#transcript .message').count(), 0);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('with the default AUTH_MODE (none) there is no account UI at all', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  try {
    const authRequests = [];
    context.on('request', (r) => { if (new URL(r.url()).pathname.startsWith('/auth/')) authRequests.push(r.url()); });
    const { page, problems } = await openChatPage(context, plain.url);
    assert.ok(await page.locator('#account').isHidden());
    assert.ok(await page.locator('#sign-in-button').isHidden());
    assert.ok(await page.locator('#account-menu').isHidden());
    assert.ok(!(await dialogOpen(page)));
    assert.notEqual(await page.locator('#connection-status').getAttribute('data-status'), 'signed-out');
    await typeAndSend(page, 'no accounts here');
    await waitReplies(page, 1);
    assert.deepEqual(authRequests, [], 'the page asks nothing of /auth/');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});
