// "Import from ChatGPT…" on the page (real server, fake LLM, headless
// Chromium): a small ChatGPT export picked in the dialog is sent to
// POST /import/chatgpt; the dialog says what was imported, the sidebar lists
// the conversations, and the one whose question was edited opens with its
// "2 / 2" arrows. A malformed file shows the server's sentence (as text) and
// adds nothing; a file over IMPORT_MAX_BYTES shows the server's 413 sentence,
// and a server out of reach a sentence of the page's own.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startFakeLlm, startServer, launchChromium, openChatPage, screenshot } from './harness.mjs';

const MAX_BYTES = 200000;

let llm;
let server;
let browser;

before(async () => {
  llm = await startFakeLlm();
  server = await startServer({ IMPORT_MAX_BYTES: String(MAX_BYTES) }, { llm });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await llm?.close();
});

// A ChatGPT export, in the shape of tests/api/import.rs's fixtures.
const node = (id, parent, children, message) => [id, { id, message, parent, children }];
const text = (role, words) => ({
  author: { role },
  content: { content_type: 'text', parts: [words] },
  create_time: 1700000000.5,
  metadata: {},
});
const conversation = (id, title, current, nodes) => ({
  title,
  create_time: 1700000000.25,
  update_time: 1700000100.75,
  mapping: Object.fromEntries(nodes),
  current_node: current,
  conversation_id: id,
});

/** Two conversations: "Fruit chat", whose second question was edited (ChatGPT showed the edit), and "Greetings". */
const EXPORT = [
  conversation('chatgpt-fruit', 'Fruit chat', 'a2b', [
    node('root', null, ['u1'], null),
    node('u1', 'root', ['a1'], text('user', 'Name a fruit')),
    node('a1', 'u1', ['u2', 'u2b'], text('assistant', 'Apple')),
    node('u2', 'a1', ['a2'], text('user', 'Name a colour')),
    node('a2', 'u2', [], text('assistant', 'Red')),
    node('u2b', 'a1', ['a2b'], text('user', 'Name an animal')),
    node('a2b', 'u2b', [], text('assistant', 'Blue whale')),
  ]),
  conversation('chatgpt-hello', 'Greetings', 'x1', [
    node('q', null, ['x1'], text('user', 'Hi there')),
    node('x1', 'q', [], text('assistant', 'Hello!')),
  ]),
];

const titles = (page) => page.locator('#conversation-list .conversation-item-title').allTextContents();
const texts = (page) => page.locator('#transcript .message .message-content').allTextContents();
const navs = (page) => page.locator('#transcript .branch-nav .branch-position').allTextContents();

/** Opens the dialog from the sidebar's button and picks `body` as conversations.json. */
async function pick(page, body, name = 'conversations.json') {
  await page.locator('#import-button').click();
  await page.waitForSelector('#import-dialog[open]');
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'import-file');
  await page.locator('#import-file').setInputFiles({ name, mimeType: 'application/json', buffer: Buffer.from(body) });
  await page.locator('#import-submit').click();
}

/** The session's conversations as the server lists them (the page's own cookie). */
const listed = (page) => page.evaluate(() => fetch('/list_conversations').then((r) => r.json())
  .then((d) => d.conversations.map((c) => c.title)));

test('a ChatGPT export imports through the dialog: result in words, sidebar, branches with arrows', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 820 } });
  try {
    const { page, problems } = await openChatPage(context, server.url);
    // The request waits until the page has been seen busy.
    let release;
    const held = new Promise((resolve) => { release = resolve; });
    await page.route('**/import/chatgpt', async (route) => { await held; await route.continue(); });
    await pick(page, JSON.stringify(EXPORT));
    await page.waitForFunction(() => !document.querySelector('#import-progress-row').hidden);
    assert.match(await page.locator('#import-progress-label').textContent(), /^(Uploading conversations\.json…|Importing…)/);
    assert.ok(await page.locator('#import-submit').isDisabled());
    assert.ok(await page.locator('#import-file').isDisabled());
    assert.equal(await page.locator('#import-form').getAttribute('aria-busy'), 'true');
    release();
    await page.waitForFunction(() => document.querySelector('#import-result')?.textContent !== ''
      && document.querySelector('#import-submit') && !document.querySelector('#import-submit').disabled);
    assert.equal(await page.locator('#import-result').textContent(), 'Imported 2 conversations.');
    assert.equal(await page.locator('#import-error').textContent(), '');
    assert.deepEqual(await page.locator('#import-list .import-open').allTextContents(), ['Fruit chat', 'Greetings']);
    assert.deepEqual(await page.locator('#import-list .field-hint').allTextContents(), [' · 4 messages', ' · 2 messages']);
    assert.ok(await page.locator('#import-progress-row').isHidden());
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'import-close');
    await screenshot(page, 'import-done.png');

    // The sidebar lists both, next to the page's own new conversation.
    await page.waitForFunction(() => document.querySelectorAll('#conversation-list .conversation-item').length === 3);
    const shown = await titles(page);
    assert.ok(shown.includes('Fruit chat') && shown.includes('Greetings'), shown.join(', '));

    // The same file again adds nothing.
    await page.locator('#import-file').setInputFiles({ name: 'conversations.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(EXPORT)) });
    await page.locator('#import-submit').click();
    await page.waitForFunction(() => /^Nothing new/.test(document.querySelector('#import-result')?.textContent || ''));
    assert.equal(await page.locator('#import-result').textContent(), 'Nothing new: all 2 conversations are already there.');
    assert.ok(await page.locator('#import-list').isHidden());

    // Closing gives the focus back to the button.
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => !document.querySelector('#import-dialog').open);
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'import-button');
    assert.equal((await listed(page)).length, 3);

    // The edited conversation opens on ChatGPT's branch, with its arrows.
    await page.locator('#conversation-list .conversation-item', { hasText: 'Fruit chat' }).click();
    await page.waitForFunction(() => document.querySelector('#conversation-title')?.textContent === 'Fruit chat'
      && document.querySelectorAll('#transcript .message').length === 4);
    assert.deepEqual(await texts(page), ['Name a fruit', 'Apple', 'Name an animal', 'Blue whale']);
    assert.deepEqual(await navs(page), ['2 / 2']);
    await page.locator('#transcript .message-user .branch-prev').click();
    await page.waitForFunction(() => document.querySelector('#transcript .branch-nav .branch-position')?.textContent === '1 / 2');
    assert.deepEqual(await texts(page), ['Name a fruit', 'Apple', 'Name a colour', 'Red']);
    await screenshot(page, 'import-branches.png');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('a malformed or too large export shows the server\'s sentence, as text, and adds nothing', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 820 } });
  try {
    const { page } = await openChatPage(context, server.url);
    await page.waitForFunction(() => document.querySelectorAll('#conversation-list .conversation-item').length === 1);
    const before = await titles(page);
    const errorIs = (expected) => page.waitForFunction((t) => document.querySelector('#import-error')?.textContent === t
      && !document.querySelector('#import-submit').disabled, expected);

    await pick(page, '[{"title": ');
    await errorIs('The file is not valid JSON (line 1, column 11).');
    assert.equal(await page.locator('#import-result').textContent(), '');

    // A broken tree, in a conversation whose title looks like markup: the sentence is text.
    const broken = [EXPORT[1], conversation('chatgpt-broken', '<b>Bold</b> plan', 'a', [
      node('q', null, ['a'], text('user', 'Hi')),
      node('a', 'nowhere', [], text('assistant', 'Hello')),
    ])];
    await page.locator('#import-file').setInputFiles({ name: 'conversations.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(broken)) });
    await page.locator('#import-submit').click();
    await page.waitForFunction(() => /Bold/.test(document.querySelector('#import-error')?.textContent || '')
      && !document.querySelector('#import-submit').disabled);
    const sentence = await page.locator('#import-error').textContent();
    assert.match(sentence, /^conversation 2 \("<b>Bold<\/b> plan"\): /);
    assert.equal(await page.locator('#import-error b').count(), 0, 'the server\'s sentence must stay text');

    // Over IMPORT_MAX_BYTES: the server's 413 sentence.
    const big = JSON.stringify([{ title: 'x'.repeat(MAX_BYTES) }]);
    await page.locator('#import-file').setInputFiles({ name: 'conversations.json', mimeType: 'application/json', buffer: Buffer.from(big) });
    await page.locator('#import-submit').click();
    await errorIs(`The export is too large: at most ${MAX_BYTES} bytes can be imported at once.`);
    await screenshot(page, 'import-error.png');

    // The server out of reach: a sentence of the page's own; the file stays picked, to try again.
    await page.route('**/import/chatgpt', (route) => route.abort('connectionreset'));
    await page.locator('#import-file').setInputFiles({ name: 'conversations.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(EXPORT)) });
    await page.locator('#import-submit').click();
    await errorIs('Could not import “conversations.json”: the server could not be reached. Importing the same file again does not add anything twice.');
    assert.equal(await page.locator('#import-file').evaluate((input) => input.files.length), 1);

    // Nothing was added, on the page or on the server.
    await page.locator('#import-close').click();
    await page.waitForFunction(() => !document.querySelector('#import-dialog').open);
    assert.deepEqual(await titles(page), before);
    assert.equal((await listed(page)).length, 1);
  } finally {
    await context.close();
  }
});
