// The sidebar and the conversation actions in headless Chromium, against the
// real server: newest first with incremental loading, search with highlighted
// matches, reopening; export as Markdown and JSON (downloads), save on the
// server, few-shot examples, delete; keyboard access and labelled controls.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import {
  startFakeLlm, startServer, splitPieces, launchChromium, openChatPage, waitReady, screenshot,
  typeAndSend, waitReplies, menuAction, request,
} from './harness.mjs';

let llm;
let server;
let browser;

before(async () => {
  llm = await startFakeLlm({ reply: (msg) => splitPieces(`Reply to: ${msg}`), delayMs: 5 });
  server = await startServer({}, { llm });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await llm?.close();
});

/**
 * Creates conversations for the page's user through the HTTP API, oldest
 * first, with no page of that user open: the server keeps the current
 * conversation in the session, and a concurrent request of an open page
 * could write an older copy of the session back (see the report).
 */
async function seed(page, titles) {
  const url = page.url();
  await page.goto('about:blank');
  const cookie = (await page.context().cookies(server.url)).map((c) => `${c.name}=${c.value}`).join('; ');
  for (const [user, assistant] of titles) {
    const r = await request(`${server.url}/start_conversation`, { method: 'POST', cookie });
    assert.equal(r.status, 200);
    const f = await request(`${server.url}/add_few_shot_example`, {
      method: 'POST', cookie, json: { user_prompt: user, assistant_response: assistant },
    });
    assert.equal(f.status, 200, JSON.stringify(f.body));
  }
  await page.goto(url);
  await waitReady(page);
}

const itemTitles = (page) => page.locator('#conversation-list .conversation-item-title').allTextContents();

test('the sidebar lists newest first, loads older pages, searches with highlights and reopens', async () => {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  try {
    const { page, problems } = await openChatPage(context, server.url);
    const seeds = Array.from({ length: 52 }, (_, i) => [`Topic ${String(i).padStart(2, '0')} about ${i === 7 ? 'zebras and stripes' : 'things'}`,
      i === 20 ? 'An answer that mentions a quokka.' : `Answer ${i}`]);
    await seed(page, seeds);

    // Newest first; the first page only (40), then older ones as the list scrolls.
    await page.waitForFunction(() => document.querySelectorAll('#conversation-list .conversation-item').length >= 40);
    let titles = await itemTitles(page);
    assert.equal(titles[0], 'New conversation', 'the empty conversation the page opened is the newest');
    assert.equal(titles[1], 'Topic 51 about things');
    assert.equal(titles[2], 'Topic 50 about things');
    assert.equal(titles.length, 41, `the first page (40) and the conversation the page started: ${titles.length}`);
    assert.ok(await page.locator('#load-more-button').isVisible());
    await page.locator('#conversation-list').evaluate((el) => { el.scrollTop = el.scrollHeight; });
    // 52 seeded, the empty one the page opened first (the oldest) and the one it started.
    await page.waitForFunction(() => document.querySelectorAll('#conversation-list .conversation-item').length === 54);
    titles = await itemTitles(page);
    assert.deepEqual(titles.slice(-2), ['Topic 00 about things', 'New conversation']);
    const ids = await page.locator('#conversation-list .conversation-item').evaluateAll((els) => els.map((e) => e.dataset.id));
    assert.equal(new Set(ids).size, 54, 'no conversation twice');
    assert.equal(await page.locator('#load-more-button').count(), 0, 'nothing more to load');

    // Search: the server's results, with the query terms highlighted in the titles.
    await page.keyboard.press('Control+K');
    assert.ok(await page.locator('#search-input').evaluate((el) => el === document.activeElement), 'Ctrl+K focuses the search box');
    await page.keyboard.type('Zebras');
    await page.waitForFunction(() => document.querySelectorAll('#conversation-list .conversation-item').length === 1);
    assert.equal(await itemTitles(page).then((t) => t[0]), 'Topic 07 about zebras and stripes');
    assert.deepEqual(await page.locator('#conversation-list mark').allTextContents(), ['zebras']);
    assert.match(await page.locator('#search-status').textContent(), /1 conversation matches/);
    await screenshot(page, 'ui-search.png');

    // A match only in the messages says so.
    await page.locator('#search-input').fill('quokka');
    await page.waitForFunction(() => /Topic 20/.test(document.querySelector('#conversation-list .conversation-item-title')?.textContent || ''));
    assert.match(await page.locator('#conversation-list .conversation-item-meta').first().textContent(), /match in messages/);
    assert.equal(await page.locator('#conversation-list mark').count(), 0);
    await page.locator('#search-input').fill('nothingmatchesthis');
    await page.waitForFunction(() => /No conversation matches/.test(document.querySelector('#search-status').textContent));

    // Reopen a conversation from the results.
    await page.locator('#search-input').fill('zebras');
    await page.waitForFunction(() => document.querySelectorAll('#conversation-list .conversation-item').length === 1
      && document.querySelector('#conversation-list mark'));
    await page.locator('#conversation-list .conversation-item').first().click();
    await page.waitForFunction(() => document.querySelectorAll('#transcript .message').length === 2);
    assert.equal(await page.locator('#conversation-title').textContent(), 'Topic 07 about zebras and stripes');
    assert.equal(await page.locator('#transcript .message-assistant .message-content').textContent(), 'Answer 7');
    assert.equal(await page.locator('#conversation-list .conversation-item').first().getAttribute('aria-current'), 'true');
    assert.ok(await page.locator('#message-input').evaluate((el) => el === document.activeElement), 'focus goes to the input');

    // Escape clears the search: the full list is back.
    await page.locator('#search-input').focus();
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => document.querySelectorAll('#conversation-list .conversation-item').length === 54);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('export (Markdown and JSON), save on the server, few-shot examples and delete', async () => {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  try {
    const { page, problems } = await openChatPage(context, server.url);
    await typeAndSend(page, 'Export me, with **bold** text');
    await waitReplies(page, 1);

    // Few-shot example through the form.
    await menuAction(page, 'few-shot-button');
    await page.locator('#few-shot-dialog').waitFor({ state: 'visible' });
    assert.ok(await page.locator('#few-shot-user').evaluate((el) => el === document.activeElement));
    await page.locator('#few-shot-submit').click();
    assert.match(await page.locator('#few-shot-error').textContent(), /Both/);
    await page.locator('#few-shot-user').fill('What is 2+2?');
    await page.locator('#few-shot-assistant').fill('4, of course.');
    await screenshot(page, 'ui-few-shot-dialog.png');
    await page.locator('#few-shot-submit').click();
    await page.locator('#few-shot-dialog').waitFor({ state: 'hidden' });
    await page.waitForFunction(() => document.querySelectorAll('#transcript .message').length === 4);
    assert.match(await page.locator('#notice').textContent(), /Few-shot example added/);

    // Export as Markdown: a download holding the conversation.
    const [md] = await Promise.all([page.waitForEvent('download'), menuAction(page, 'export-md-button')]);
    assert.match(md.suggestedFilename(), /^chat-export-me-with-bold-text-\d{4}-\d{2}-\d{2}\.md$/);
    const mdText = await readFile(await md.path(), 'utf8');
    assert.match(mdText, /^# Export me, with \*\*bold\*\* text\n/);
    assert.match(mdText, /## You\n\nExport me, with \*\*bold\*\* text\n/);
    assert.match(mdText, /## Assistant\n\nReply to: Export me, with \*\*bold\*\* text\n/);
    assert.match(mdText, /## You\n\nWhat is 2\+2\?\n\n## Assistant\n\n4, of course\.\n/);

    // Export as JSON.
    const [json] = await Promise.all([page.waitForEvent('download'), menuAction(page, 'export-json-button')]);
    assert.match(json.suggestedFilename(), /\.json$/);
    const data = JSON.parse(await readFile(await json.path(), 'utf8'));
    assert.equal(data.title, 'Export me, with **bold** text');
    assert.deepEqual(data.messages.map((m) => m.role), ['user', 'assistant', 'user', 'assistant']);
    assert.equal(data.messages[3].content, '4, of course.');
    assert.match(data.conversation_id, /^[0-9a-f-]{36}$/);

    // Save on the server: the notice names the file, which exists.
    await menuAction(page, 'save-button');
    await page.waitForFunction(() => /Saved on the server as/.test(document.querySelector('#notice').textContent));
    const fileName = /as (\S+_conversation_history\.json)\./.exec(await page.locator('#notice').textContent())?.[1];
    assert.ok(fileName, await page.locator('#notice').textContent());
    assert.ok(existsSync(path.join(server.dir, 'saved', fileName)), `${fileName} in the saved folder`);

    // Delete (confirmed): gone from the list and the server; another conversation opens.
    const id = data.conversation_id;
    await menuAction(page, 'delete-button');
    await page.locator('#confirm-dialog').waitFor({ state: 'visible' });
    assert.match(await page.locator('#confirm-text').textContent(), /Export me/);
    assert.ok(await page.locator('#confirm-cancel').evaluate((el) => el === document.activeElement), 'Cancel has the focus');
    await screenshot(page, 'ui-confirm-delete.png');
    await page.locator('#confirm-ok').click();
    await page.waitForFunction((gone) => !document.querySelector(`#conversation-list [data-id="${gone}"]`), id);
    await page.waitForFunction(() => /Conversation deleted/.test(document.querySelector('#notice').textContent));
    assert.equal(await page.locator('#transcript .message').count(), 0);
    const cookie = (await context.cookies()).map((c) => `${c.name}=${c.value}`).join('; ');
    const r = await request(`${server.url}/load_conversation/${id}`, { cookie });
    assert.equal(r.status, 404);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('every control is labelled and reachable from the keyboard', async () => {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  try {
    const { page } = await openChatPage(context, server.url);
    await typeAndSend(page, 'Keyboard check');
    await waitReplies(page, 1);
    const unlabelled = await page.evaluate(() => {
      const name = (el) => (el.getAttribute('aria-label') || el.textContent || el.title
        || (el.id && document.querySelector(`label[for="${el.id}"]`)?.textContent) || '').trim();
      return Array.from(document.querySelectorAll('button, input, textarea, summary, select, a[href]'))
        .filter((el) => el.offsetParent !== null || el.getClientRects().length)
        .filter((el) => el.type !== 'file' && !name(el))
        .map((el) => el.outerHTML.slice(0, 120));
    });
    assert.deepEqual(unlabelled, []);

    // The menu opens from the keyboard, and Escape closes it.
    await page.locator('#conversation-menu-button').focus();
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelector('#conversation-menu').open);
    await page.waitForFunction(() => document.activeElement?.id === 'save-button');
    await page.keyboard.press('ArrowDown');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'export-md-button');
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => !document.querySelector('#conversation-menu').open);

    // Tab goes from the message box to Send.
    await page.locator('#message-input').focus();
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'send-button');
    // The transcript is a live region for the streamed replies.
    assert.equal(await page.locator('#transcript').getAttribute('aria-live'), 'polite');
  } finally {
    await context.close();
  }
});
