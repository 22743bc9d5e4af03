// The shared conversation page (GET /share/<token>), end to end with the real
// server, a fake LLM and headless Chromium: a link made from Node by the
// owner's session opens in a browser that never signed in; the page renders
// the snapshot (the assistant's markdown as HTML, the user's text as text),
// opens no Socket.IO connection, gets no cookie and shows nothing of the
// owner's other conversations; once revoked, the link shows a not-found page.
// And the chat page's "Share…" dialog makes a link (shown once, with Copy),
// lists the user's links and revokes them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startFakeLlm, startServer, launchChromium, newSession, request, screenshot,
  openChatPage, typeAndSend, waitReplies, menuAction,
} from './harness.mjs';

let llm;
let server;
let browser;

before(async () => {
  llm = await startFakeLlm({ reply: (msg) => `Echo: **${msg}**` });
  server = await startServer({}, { llm });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await llm?.close();
});

const QUESTION = 'How do I print <b>bold</b> in **Rust**?';
const ANSWER = 'Use **println!**:\n\n```rust\nfn main() { println!("hi"); }\n```\n\n- one\n- two';
const SECRET = 'my other conversation about a surprise party';

/** The owner: a session with the shared conversation and another, private one. */
async function ownerWithConversations() {
  const { cookie, conversationId } = await newSession(server.url);
  const added = await request(`${server.url}/add_few_shot_example`, {
    method: 'POST', cookie, json: { user_prompt: QUESTION, assistant_response: ANSWER },
  });
  assert.equal(added.status, 200, JSON.stringify(added.body));
  const other = await request(`${server.url}/start_conversation`, { method: 'POST', cookie });
  assert.equal(other.status, 200);
  const secret = await request(`${server.url}/add_few_shot_example`, {
    method: 'POST', cookie, json: { user_prompt: SECRET, assistant_response: 'noted' },
  });
  assert.equal(secret.status, 200);
  return { cookie, conversationId };
}

test('a shared link renders the snapshot read-only, with no socket and no cookie, and 404 once revoked', async () => {
  const { cookie, conversationId } = await ownerWithConversations();
  const made = await request(`${server.url}/api/shares`, {
    method: 'POST', cookie, json: { conversation_id: conversationId },
  });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const link = `${server.url}${made.body.url}`;

  const context = await browser.newContext({ viewport: { width: 1000, height: 800 }, colorScheme: 'light' });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(15000);
    const problems = [];
    const requested = [];
    const sockets = [];
    page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() === 'error' && !/favicon/.test(msg.location()?.url || '')) problems.push(`console: ${msg.text()}`);
    });
    page.on('request', (r) => requested.push(new URL(r.url()).pathname));
    page.on('websocket', (ws) => sockets.push(ws.url()));

    const response = await page.goto(link);
    assert.equal(response.status(), 200);
    await page.waitForSelector('#share[data-state="ready"]');

    // The title and both messages: the user's as text, the reply as markdown.
    assert.equal(await page.locator('#share-title').textContent(), QUESTION);
    assert.equal(await page.title(), `${QUESTION} · LLM Chat`);
    const messages = page.locator('#share-transcript .message');
    assert.equal(await messages.count(), 2);
    const user = page.locator('#share-transcript .message-user .message-content');
    assert.equal(await user.textContent(), QUESTION);
    assert.equal(await user.locator('b').count(), 0, 'user text must never become HTML');
    const reply = page.locator('#share-transcript .message-assistant .message-content');
    assert.equal(await reply.locator('strong').first().textContent(), 'println!');
    assert.match(await reply.locator('pre code').textContent(), /fn main\(\) \{ println!\("hi"\); \}/);
    assert.deepEqual(await reply.locator('li').allTextContents(), ['one', 'two']);
    assert.equal(await page.locator('#share-transcript script').count(), 0);
    assert.match(await page.locator('#share-note').textContent(), /as it was on /);
    // The code block's Copy button copies the code as written.
    await reply.locator('.code-copy').click();
    await page.waitForSelector('.code-copy.is-copied');
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), 'fn main() { println!("hi"); }');

    // Nothing of the owner's other conversations, no socket, no cookie.
    const text = await page.locator('body').textContent();
    assert.ok(!text.includes(SECRET), 'the owner\'s other conversation leaked');
    assert.equal(await page.locator('#conversation-list, #message-input, #transcript').count(), 0);
    await page.waitForLoadState('networkidle');
    assert.deepEqual(sockets, [], 'the shared page opened a WebSocket');
    assert.ok(!requested.some((p) => p.startsWith('/socket.io')), `requests: ${requested.join(', ')}`);
    assert.ok(!requested.some((p) => /list_conversations|load_conversation|get_config/.test(p)), `requests: ${requested.join(', ')}`);
    assert.deepEqual(await context.cookies(), [], 'the shared page set a cookie');
    assert.deepEqual(problems, []);
    await screenshot(page, 'share-page.png', { fullPage: true });

    // The owner revokes the link: the same address is now a not-found page.
    const listed = await request(`${server.url}/api/shares`, { cookie });
    assert.equal(listed.body.shares.length, 1);
    const revoked = await request(`${server.url}/api/shares/${made.body.id}`, { method: 'DELETE', cookie });
    assert.equal(revoked.status, 200, JSON.stringify(revoked.body));
    const again = await page.goto(link);
    assert.equal(again.status(), 404);
    await page.waitForSelector('#share-missing');
    assert.match(await page.locator('#share-missing h2').textContent(), /This link does not exist/);
    assert.equal(await page.locator('#share-transcript').count(), 0);
    assert.ok(!(await page.locator('body').textContent()).includes(QUESTION));
    assert.deepEqual(await context.cookies(), []);
    await screenshot(page, 'share-page-revoked.png');
  } finally {
    await context.close();
  }
});

test('Share… in the conversation menu makes a link, lists it and revokes it', async () => {
  const owner = await browser.newContext({ viewport: { width: 1100, height: 820 }, colorScheme: 'light' });
  await owner.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
  const visitor = await browser.newContext({ viewport: { width: 1000, height: 800 } });
  try {
    const { page, problems } = await openChatPage(owner, server.url);
    await typeAndSend(page, 'share me');
    await waitReplies(page, 1);

    await menuAction(page, 'share-button');
    await page.waitForSelector('#shares-dialog[open]');
    await page.waitForSelector('#shares-empty:not([hidden])');
    assert.ok(await page.locator('#share-created').isHidden());
    await page.locator('#share-create').click();
    await page.waitForSelector('#share-created:not([hidden])');
    const link = await page.locator('#share-url').inputValue();
    assert.match(link, new RegExp(`^${server.url}/share/[0-9a-f]{48}$`));
    await page.waitForFunction(() => document.querySelectorAll('#shares-list li').length === 1);
    assert.equal(await page.locator('#shares-list .token-item-name').textContent(), 'share me');
    assert.match(await page.locator('#shares-list .token-item-date').textContent(), /2 messages$/);
    await page.locator('#share-copy').click();
    // The clipboard is written asynchronously; it held other text before.
    await page.waitForFunction(async (l) => (await navigator.clipboard.readText()) === l, link);
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), link);
    await screenshot(page, 'share-dialog.png');

    // A message sent after the link was made does not show through it.
    await page.locator('#shares-close').click();
    assert.ok(await page.locator('#share-created').isHidden(), 'the link is forgotten when the dialog closes');
    await typeAndSend(page, 'a later message');
    await waitReplies(page, 2);
    const shared = await visitor.newPage();
    await shared.goto(link);
    await shared.waitForSelector('#share[data-state="ready"]');
    assert.deepEqual(await shared.locator('#share-transcript .message-content').allTextContents(), ['share me', 'Echo: share me']);
    assert.equal(await shared.locator('#share-transcript .message-assistant strong').textContent(), 'share me');

    // Revoked from the dialog: the list empties and the link is gone.
    await menuAction(page, 'share-button');
    await page.waitForFunction(() => document.querySelectorAll('#shares-list li').length === 1);
    await page.locator('#shares-list .token-revoke').click();
    await page.locator('#confirm-ok').click();
    await page.waitForSelector('#shares-empty:not([hidden])');
    assert.equal(await page.locator('#shares-list li').count(), 0);
    const gone = await shared.goto(link);
    assert.equal(gone.status(), 404);
    await shared.waitForSelector('#share-missing');
    assert.deepEqual(problems, []);
  } finally {
    await visitor.close();
    await owner.close();
  }
});
