// Limits as the chat page shows them (headless Chromium, real server, fake
// LLM): the token meter warns near the context window and says when older
// turns were summarised; a rate-limited message comes back with a countdown.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startFakeLlm, startServer, splitPieces, launchChromium, openChatPage, screenshot, typeAndSend, waitReplies,
} from './harness.mjs';

let llm;
let browser;

before(async () => {
  llm = await startFakeLlm({
    reply: (msg, body) => {
      if (body.stream !== true) return 'A short summary of the earlier turns.';
      if (msg.startsWith('alpha')) return splitPieces('beta '.repeat(60).trim());
      return splitPieces(`Echo: ${msg}`);
    },
  });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await llm?.close();
});

test('the token meter warns near the limit and says when older turns are summarised', async () => {
  const server = await startServer({ MAX_TOKENS: '500', REPLY_TOKENS: '100', SUMMARY_TOKENS: '60' }, { llm });
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  try {
    const { page, problems } = await openChatPage(context, server.url);
    assert.match(await page.locator('#token-usage').textContent(), /^– \/ 500 tokens$/);

    // About 330 tokens of a 400-token prompt budget (500 - 100 for the reply): a warning.
    await typeAndSend(page, 'alpha '.repeat(330).trim());
    await waitReplies(page, 1);
    assert.match(await page.locator('#token-usage').textContent(), /^3\d\d \/ 500 tokens$/);
    assert.equal(await page.locator('#token-note').textContent(), 'Near the limit');
    assert.match(await page.locator('#token-note').getAttribute('title'), /older turns will be summarised/);
    assert.ok(await page.locator('#token-meter-wrap').evaluate((el) => el.classList.contains('is-warning')));
    await screenshot(page, 'ui-token-warning.png');

    // The next turn no longer fits: the server summarises the older turns, and the page says so.
    await typeAndSend(page, 'gamma');
    await waitReplies(page, 2);
    assert.equal(await page.locator('#token-note').textContent(), 'Older turns summarised');
    assert.match(await page.locator('#token-meter-wrap').getAttribute('title'), /summary/);
    assert.equal(await page.locator('#transcript .message').count(), 4, 'the history itself is all there');
    await screenshot(page, 'ui-token-summarised.png');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('a rate-limited message comes back to the input, with a countdown next to it', async () => {
  const server = await startServer({ RATE_LIMIT_MESSAGES_PER_MINUTE: '2' }, { llm });
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  try {
    const { page, problems } = await openChatPage(context, server.url);
    // The limit counts per clock minute: start early in one, so the three messages share
    // it and the countdown has seconds left to run down (near a minute's end it would
    // reach zero and clear instead).
    while (Math.floor(Date.now() / 1000) % 60 >= 45) await new Promise((r) => setTimeout(r, 250));
    await typeAndSend(page, 'one');
    await waitReplies(page, 1);
    await typeAndSend(page, 'two');
    await waitReplies(page, 2);
    await typeAndSend(page, 'three is too many');
    await page.waitForFunction(() => /You can send again in \d+ seconds?\./.test(document.querySelector('#error-line').textContent));
    const line = await page.locator('#error-line').textContent();
    assert.match(line, /^Too many requests\. You can send again in (\d+) seconds?\.$/);
    assert.equal(await page.locator('#message-input').inputValue(), 'three is too many', 'the text is back in the input');
    assert.equal(await page.locator('#transcript .message-user').count(), 2, 'the refused message is not shown as sent');
    assert.ok(await page.locator('#send-button').isDisabled(), 'Send waits for the limit');
    assert.ok(await page.locator('#regenerate-button').isDisabled(), 'so does Regenerate');
    const first = Number(/in (\d+) second/.exec(line)[1]);
    await page.waitForFunction((n) => {
      const m = /in (\d+) second/.exec(document.querySelector('#error-line').textContent);
      return m && Number(m[1]) < n;
    }, first, { timeout: 3000 });
    await screenshot(page, 'ui-rate-limited.png');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await server.stop();
  }
});
