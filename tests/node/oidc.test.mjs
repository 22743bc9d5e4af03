// Single sign-on end to end (issue 13): headless Chromium signs in through a real OpenID
// provider (panva's oidc-provider, tests/node/oidc-provider.mjs) to two instances of the
// server behind nginx (deploy/nginx.conf), sharing this file's own redis-server (sessions,
// so the login state) and one SQLite file.
//
// How the test proves the login state is shared: nginx pins a client address to one
// instance (ip_hash), so everything the browser sends through nginx reaches the same
// instance, X. The first sign-in goes the normal way (page, button, provider, callback, all
// through nginx) and tells us X (its log says it finished the sign-in). The second sign-in
// is started directly on the OTHER instance's port (the state, nonce and PKCE verifier are
// written there), while the provider sends the browser back to PUBLIC_URL, i.e. through
// nginx to X: the callback can only succeed if X reads what the other instance wrote. The
// logs of both instances are checked to say exactly that.
//
// Also: the provider button on the page, a conversation had signed out moving to the
// account, /auth/me (auth "oidc"), admin from the `groups` claim (OIDC_ADMIN_GROUPS),
// sign-out reaching the provider's end_session endpoint and ending its session (the next
// sign-in asks for the password again), a replayed callback refused with a clear page, and
// a key rotation at the provider.
//
// Needs /usr/bin/redis-server, /usr/sbin/nginx, Chromium and CHAT_SERVER_BIN (harness.mjs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  startFakeLlm, startServer, launchChromium, waitReady, waitReplies, typeAndSend, screenshot, sleep,
} from './harness.mjs';
import { freePort, startNginx, startRedis } from './services.mjs';
import { startOidcProvider, CLIENT_ID, CLIENT_SECRET } from './oidc-provider.mjs';

const FINISHED = 'signed in with single sign-on';
const BEGUN = 'single sign-on begun';

let llm;
let redis;
let op;
let dir;
let a;
let b;
let nginx;
let browser;
let publicUrl;

before(async () => {
  llm = await startFakeLlm({ reply: () => ['A ', 'reply'] });
  redis = await startRedis();
  // The instances must know their public address (nginx's) before nginx starts.
  const nginxPort = await freePort();
  publicUrl = `http://127.0.0.1:${nginxPort}`;
  op = await startOidcProvider({
    redirectUris: [`${publicUrl}/auth/oidc/test/callback`],
    postLogoutRedirectUris: [`${publicUrl}/`],
  });
  dir = await mkdtemp(path.join(tmpdir(), 'oidc-node-'));
  const env = {
    REDIS_URL: redis.url,
    REDIS_PREFIX: `t${randomUUID().replaceAll('-', '')}`,
    SECRET_KEY: randomBytes(32).toString('hex'),
    AUTH_MODE: 'oidc',
    PUBLIC_URL: publicUrl,
    OIDC_PROVIDERS: 'test',
    OIDC_TEST_ISSUER: op.issuer,
    OIDC_TEST_CLIENT_ID: CLIENT_ID,
    OIDC_TEST_CLIENT_SECRET: CLIENT_SECRET,
    OIDC_TEST_NAME: 'Test Provider',
    OIDC_TEST_SCOPES: 'openid email profile groups',
    OIDC_ADMIN_GROUPS: 'chat-admins',
    // The page works signed out, so a conversation can be had before signing in.
    ALLOW_ANONYMOUS: 'true',
    // The sign-in lines of the log tell which instance did what.
    RUST_LOG: 'warn,llm_chat_server::http::oidc=info,llm_chat_server::oidc=info',
  };
  // One folder: both instances use the same SQLite file.
  [a, b] = await Promise.all([startServer(env, { llm, dir }), startServer(env, { llm, dir })]);
  nginx = await startNginx([a.url, b.url].map((u) => new URL(u).host), nginxPort);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await nginx?.stop();
  await a?.stop();
  await b?.stop();
  await op?.close();
  await redis?.stop();
  await llm?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** How many times `needle` is in the instance's output. */
function count(instance, needle) {
  return instance.output().split(needle).length - 1;
}

/**
 * On the provider's login page: types `login` and a password, accepts the consent page if
 * the provider shows one, and waits until the browser is back on the chat page.
 */
async function signInAtProvider(page, login) {
  await page.waitForSelector('input[name="login"]', { timeout: 10000 });
  assert.ok(page.url().startsWith(op.issuer), `not at the provider: ${page.url()}`);
  await page.fill('input[name="login"]', login);
  await page.fill('input[name="password"]', 'any password will do');
  await page.click('button[type="submit"]');
  const deadline = Date.now() + 10000;
  for (;;) {
    await page.waitForLoadState('load');
    if (page.url().startsWith(`${publicUrl}/`)) break;
    if (await page.locator('input[name="prompt"][value="consent"]').count()) {
      await page.click('button[type="submit"]');
      continue;
    }
    assert.ok(Date.now() < deadline, `stuck at ${page.url()}: ${await page.content()}`);
    await sleep(50);
  }
  const failure = page.locator('#auth-error-message');
  if (await failure.count()) assert.fail(`sign-in failed: ${await failure.textContent()}`);
}

/** GET /auth/me from the page: {status, body}. */
function me(page) {
  return page.evaluate(() => fetch('/auth/me').then(async (r) => ({ status: r.status, body: await r.json() })));
}

test('sign in through the provider on two instances, admin from groups, logout at the provider', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const callbacks = [];
  page.on('request', (request) => {
    if (request.url().startsWith(`${publicUrl}/auth/oidc/test/callback`)) callbacks.push(request.url());
  });

  // 1. Through nginx: a conversation signed out, then Sign in shows a button for the
  //    provider only.
  await page.goto(`${publicUrl}/`);
  await waitReady(page);
  await typeAndSend(page, 'before signing in');
  await waitReplies(page, 1);
  await page.locator('#sign-in-button').click();
  const button = page.locator('#auth-providers a[data-provider="test"]');
  await button.waitFor({ state: 'visible' });
  assert.equal(await button.textContent(), 'Sign in with Test Provider');
  assert.equal(await page.locator('#auth-local-fields').isHidden(), true);
  await screenshot(page, 'oidc-sign-in-dialog.png');
  await button.click();
  await signInAtProvider(page, 'bob');
  await waitReady(page);

  const bob = await me(page);
  assert.equal(bob.status, 200, JSON.stringify(bob.body));
  assert.equal(bob.body.email, 'bob@example.org');
  assert.equal(bob.body.name, 'Bob Builder');
  assert.equal(bob.body.auth, 'oidc');
  // The first account, yet not an admin: the groups claim decides (bob is not in chat-admins).
  assert.equal(bob.body.is_admin, false);
  assert.equal(await page.locator('#change-password-button').isHidden(), true);
  // The conversation had signed out moved to the account, as with a password sign-in.
  const listed = await page.evaluate(() => fetch('/list_conversations').then((r) => r.json()));
  assert.equal(listed.conversations.length, 1, JSON.stringify(listed));
  const x = count(a, FINISHED) === 1 ? a : b; // the instance nginx sends this browser to
  const other = x === a ? b : a;
  assert.equal(count(x, FINISHED) + count(other, FINISHED), 1);

  // 2. Sign out: the page goes on to the provider's end_session endpoint, which ends the
  //    provider's session too, and comes back.
  const hitsBefore = op.hits.length;
  await page.locator('#account-menu-button').click();
  await page.locator('#sign-out-button').click();
  await page.waitForURL((url) => url.href.startsWith(`${op.issuer}/session/end`));
  const endSession = new URL(page.url());
  assert.ok(endSession.searchParams.get('id_token_hint'), page.url());
  assert.equal(endSession.searchParams.get('post_logout_redirect_uri'), `${publicUrl}/`);
  await page.locator('button[name="logout"][value="yes"]').click();
  await page.waitForURL(`${publicUrl}/`);
  const hits = op.hits.slice(hitsBefore);
  assert.ok(hits.includes('GET /session/end'), hits.join('\n'));
  assert.ok(hits.includes('POST /session/end/confirm'), hits.join('\n'));
  assert.equal((await me(page)).status, 401);
  await page.locator('#sign-in-button').waitFor({ state: 'visible' });

  // 3. A sign-in begun on the other instance and finished (through nginx) on X. The
  //    provider asks for the password again: its session really ended.
  await page.goto(`${other.url}/auth/oidc/test/login`);
  await signInAtProvider(page, 'ada');
  await waitReady(page);

  assert.equal(count(other, BEGUN), 1, `the other instance did not begin the sign-in:\n${other.output()}`);
  assert.equal(count(other, FINISHED), 0, other.output());
  assert.equal(count(x, FINISHED), 2, `X did not finish the sign-in:\n${x.output()}`);
  const ada = await me(page);
  assert.equal(ada.status, 200, JSON.stringify(ada.body));
  assert.equal(ada.body.email, 'ada@example.org');
  assert.equal(ada.body.auth, 'oidc');
  assert.equal(ada.body.is_admin, true, 'ada is in chat-admins');
  assert.notEqual(ada.body.user_id, bob.body.user_id);
  // Both instances know the session (the cookie is per host, not per port).
  for (const instance of [a, b]) {
    const direct = await page.goto(`${instance.url}/auth/me`);
    assert.equal(direct.status(), 200, `${instance.url}: ${await direct.text()}`);
    assert.equal((await direct.json()).email, 'ada@example.org');
  }

  // 4. The same callback again (a replay): refused with a clear page, still signed in.
  assert.equal(callbacks.length, 2, callbacks.join('\n'));
  const replay = await page.goto(callbacks[1]);
  assert.equal(replay.status(), 400);
  await screenshot(page, 'oidc-replayed-callback.png');
  assert.equal(await page.locator('#auth-error-message').getAttribute('data-error'), 'unknown_login');
  assert.match(await page.locator('#auth-error-message').textContent(), /Start the sign-in again/);
  await page.locator('a[href="/"]').click();
  await waitReady(page);
  assert.equal((await me(page)).body.email, 'ada@example.org');

  // 5. The provider restarts with a new signing key (a key rotation): the next sign-in
  //    still works, the instance reading the provider's keys again.
  const { port } = op;
  await op.close();
  op = await startOidcProvider({
    redirectUris: [`${publicUrl}/auth/oidc/test/callback`],
    postLogoutRedirectUris: [`${publicUrl}/`],
    port,
  });
  await page.goto(`${publicUrl}/auth/oidc/test/login`);
  await signInAtProvider(page, 'bob');
  await waitReady(page);
  assert.equal((await me(page)).body.email, 'bob@example.org');
  assert.equal(count(x, 'OIDC signing keys read again'), 1, x.output());

  await context.close();
});
