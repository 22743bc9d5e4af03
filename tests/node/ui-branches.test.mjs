// Edits and branches on the page (real server, fake LLM, headless Chromium,
// the server's own CSP): Regenerate keeps the old reply as a sibling, the
// "2 / 2" arrows move between siblings, editing a message answers it on a
// new branch, and what goes upstream is the branch on screen.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startFakeLlm, startServer, splitPieces, launchChromium, openChatPage, waitReady, screenshot,
  typeAndSend, waitReplies,
} from './harness.mjs';

let count = 0;
let llm;
let server;
let browser;

before(async () => {
  llm = await startFakeLlm({ reply: (msg) => { count++; return splitPieces(`Reply ${count} to ${msg}.`); }, delayMs: 5 });
  server = await startServer({}, { llm });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await llm?.close();
});

const texts = (page) => page.locator('#transcript .message .message-content').allTextContents();
const navs = (page) => page.locator('#transcript .branch-nav .branch-position').allTextContents();
/** The user/assistant contents of the last chat request sent upstream. */
const lastPrompt = () => llm.streamRequests().at(-1).body.messages
  .filter((m) => m.role !== 'system').map((m) => m.content);

test('Regenerate keeps the old reply as a sibling, the arrows switch, an edit makes a branch', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  try {
    const { page, problems } = await openChatPage(context, server.url);
    await typeAndSend(page, 'first question');
    await waitReplies(page, 1);
    const first = (await texts(page))[1];

    await page.locator('#regenerate-button').click();
    await page.waitForFunction(() => document.querySelector('#transcript .branch-nav .branch-position')?.textContent === '2 / 2');
    const second = (await texts(page))[1];
    assert.notEqual(second, first);
    assert.deepEqual(await navs(page), ['2 / 2']);

    // Back to the first reply: the page shows it, and the conversation goes on from it.
    await page.locator('#transcript .branch-nav .branch-prev').click();
    await page.waitForFunction(() => document.querySelector('#transcript .branch-nav .branch-position')?.textContent === '1 / 2');
    assert.deepEqual(await texts(page), ['first question', first]);
    assert.ok(await page.locator('#transcript .branch-nav .branch-prev').isDisabled());
    await typeAndSend(page, 'follow up');
    await waitReplies(page, 2);
    assert.deepEqual(lastPrompt(), ['first question', first, 'follow up']);

    // Edit the first question: a new branch from there.
    await page.locator('#transcript .message-user').first().hover();
    await page.locator('#transcript .message-user .edit-message').first().click();
    const box = page.locator('#transcript .edit-box textarea');
    await box.fill('edited question');
    await page.locator('#transcript .edit-box .edit-save').click();
    await page.waitForFunction(() => document.querySelector('#transcript .message-user .branch-nav .branch-position')?.textContent === '2 / 2'
      && !document.querySelector('#transcript .is-streaming'));
    const shown = await texts(page);
    assert.equal(shown.length, 2);
    assert.equal(shown[0], 'edited question');
    assert.match(shown[1], /^Reply \d+ to edited question\.$/);
    assert.deepEqual(lastPrompt(), ['edited question']);
    await screenshot(page, 'branches-edited.png');

    // A reload shows the same branch with its arrows.
    await page.reload();
    await waitReady(page);
    await page.waitForFunction(() => document.querySelectorAll('#transcript .message').length === 2);
    assert.deepEqual(await texts(page), shown);
    assert.deepEqual(await navs(page), ['2 / 2']);
    // The older branch is still there, as it was left.
    await page.locator('#transcript .message-user .branch-prev').click();
    await page.waitForFunction(() => document.querySelectorAll('#transcript .message').length === 4);
    assert.deepEqual((await texts(page)).slice(0, 2), ['first question', first]);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});
