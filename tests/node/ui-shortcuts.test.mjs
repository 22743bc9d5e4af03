// Keyboard shortcuts of the chat page (real server, fake LLM, headless
// Chromium): new chat, search, stop, regenerate, and the help dialog that
// lists them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startFakeLlm, startServer, splitPieces, launchChromium, openChatPage, typeAndSend, waitReplies, screenshot,
} from './harness.mjs';

let llm;
let server;
let browser;
let answers = 0;

before(async () => {
  llm = await startFakeLlm({
    reply: (msg) => {
      if (msg.includes('slow')) return splitPieces(Array.from({ length: 60 }, (_, i) => `word${i}`).join(' '));
      answers++;
      return splitPieces(`Answer ${answers} to ${msg}`);
    },
    delayMs: 5,
  });
  server = await startServer({}, { llm });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await llm?.close();
});

const assistantTexts = (page) => page.locator('#transcript .message-assistant .message-content').allTextContents();

test('Ctrl+/ lists the shortcuts; Ctrl+K searches; Ctrl+Shift+Enter regenerates; Esc stops; Ctrl+Shift+O starts a new chat', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  try {
    const { page, problems } = await openChatPage(context, server.url);

    // The help dialog, from the keyboard and from its button.
    await page.locator('#transcript').focus();
    await page.keyboard.press('Control+/');
    await page.waitForSelector('#shortcuts-dialog[open]');
    const listed = await page.locator('#shortcut-list dd').allTextContents();
    for (const what of ['New chat', 'Search conversations', 'Stop the reply', 'Regenerate the last reply']) {
      assert.ok(listed.includes(what), `${what} in ${listed}`);
    }
    await screenshot(page, 'ui-shortcuts.png');
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => !document.getElementById('shortcuts-dialog').open);
    await page.locator('#shortcuts-button').click();
    await page.waitForSelector('#shortcuts-dialog[open]');
    await page.locator('#shortcuts-close').click();
    await page.waitForFunction(() => !document.getElementById('shortcuts-dialog').open);

    // Regenerate.
    await typeAndSend(page, 'hello');
    await waitReplies(page, 1);
    assert.deepEqual(await assistantTexts(page), ['Answer 1 to hello']);
    await page.locator('#transcript').focus();
    await page.keyboard.press('Control+Shift+Enter');
    await page.waitForFunction(() => /Answer 2 to hello/.test(document.querySelector('#transcript .message-assistant')?.textContent || '')
      && !document.querySelector('#transcript .is-streaming'));
    assert.deepEqual(await assistantTexts(page), ['Answer 2 to hello']);

    // Stop, with the focus outside the message box.
    llm.setDelay(80);
    await typeAndSend(page, 'a slow one');
    await page.waitForFunction(() => /word2\b/.test(document.querySelector('#transcript .message-assistant.is-streaming')?.textContent || ''));
    await page.locator('#transcript').focus();
    await page.keyboard.press('Escape');
    await waitReplies(page, 2);
    llm.setDelay(5);
    const stopped = (await assistantTexts(page))[1];
    assert.ok(!stopped.includes('word59'), `the reply was stopped: ${stopped}`);

    // Search.
    await page.keyboard.press('Control+k');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'search-input');
    await page.keyboard.press('Escape');

    // New chat.
    const before = await page.evaluate(() => localStorage.length);
    await page.locator('#transcript').focus();
    await page.keyboard.press('Control+Shift+O');
    await page.waitForFunction(() => !document.querySelector('#transcript .message'));
    assert.equal(await page.locator('#conversation-list li').count(), 2, 'a second conversation in the list');
    assert.ok(before >= 0);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});
