// The chat settings dialog (headless Chromium, real server, fake upstream): a system
// prompt and a temperature set in the dialog reach the upstream with the next message;
// the settings are saved as a preset, a new chat started from it shows them in the
// dialog (and sends them), and the preset is deleted. Names and server errors are shown
// as text.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startFakeLlm, startServer, splitPieces, launchChromium, openChatPage, screenshot, typeAndSend, waitReplies,
} from './harness.mjs';

let llm;
let browser;

before(async () => {
  llm = await startFakeLlm({ reply: (msg) => splitPieces(`you said: ${msg}`) });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await llm?.close();
});

async function openSettings(page) {
  await page.locator('#settings-button').click();
  await page.waitForFunction(() => document.querySelector('#settings-dialog').open);
}

test('settings set in the dialog reach the model; a preset starts a chat with them and is deleted', async () => {
  const server = await startServer({}, { llm });
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  try {
    const { page, problems } = await openChatPage(context, server.url);
    await typeAndSend(page, 'before');
    await waitReplies(page, 1);

    await openSettings(page);
    assert.equal(await page.locator('#settings-system-prompt').inputValue(), '', 'no system prompt yet');
    assert.equal(await page.locator('#settings-temperature').inputValue(), '');
    assert.equal(await page.locator('#settings-model-field').isVisible(), false, 'one model: no choice');
    await page.locator('#settings-system-prompt').fill('You are a pirate.');
    await page.locator('#settings-temperature').fill('1.3');
    await page.locator('#settings-save').click();
    await page.waitForFunction(() => !document.querySelector('#settings-dialog').open);

    await typeAndSend(page, 'ahoy');
    await waitReplies(page, 2);
    const sent = llm.streamRequests().at(-1).body;
    assert.deepEqual(sent.messages[0], { role: 'system', content: 'You are a pirate.' });
    assert.deepEqual(sent.messages.at(-1), { role: 'user', content: 'ahoy' });
    assert.equal(sent.temperature, 1.3);

    // The dialog shows the conversation's settings; save them as a preset (its name
    // is text, not markup).
    await openSettings(page);
    await page.waitForFunction(() => document.querySelector('#settings-system-prompt').value === 'You are a pirate.');
    assert.equal(await page.locator('#settings-temperature').inputValue(), '1.3');
    await page.locator('#preset-name').fill('<b>Pirate</b>');
    await page.locator('#preset-save').click();
    const row = page.locator('#presets-list .preset-item');
    await row.first().waitFor();
    assert.equal(await row.count(), 1);
    assert.equal(await row.locator('.token-item-name').textContent(), '<b>Pirate</b>');
    assert.equal(await page.locator('#presets-list b').count(), 0);
    await screenshot(page, 'ui-settings.png');

    // A server error is shown in words: the temperature the server refuses.
    await page.locator('#settings-temperature').fill('7');
    await page.locator('#settings-save').click();
    await page.waitForFunction(() => document.querySelector('#settings-error').textContent !== '');
    assert.equal(await page.locator('#settings-error').textContent(), 'temperature must be a number from 0 to 2.');
    assert.equal(await page.locator('#settings-dialog').evaluate((d) => d.open), true, 'the dialog stays open');
    await page.locator('#settings-temperature').fill('1.3');

    // A new chat from the preset: a new, empty conversation with its settings.
    await row.locator('.preset-start').click();
    await page.waitForFunction(() => !document.querySelector('#settings-dialog').open);
    await page.waitForFunction(() => !document.querySelector('#transcript .message'));
    await page.waitForFunction(() => document.querySelectorAll('#conversation-list .conversation-item').length === 2);
    await openSettings(page);
    await page.waitForFunction(() => document.querySelector('#settings-system-prompt').value === 'You are a pirate.');
    assert.equal(await page.locator('#settings-temperature').inputValue(), '1.3');
    await page.locator('#settings-close').click();
    await typeAndSend(page, 'new chat');
    await waitReplies(page, 1);
    const fromPreset = llm.streamRequests().at(-1).body;
    assert.deepEqual(fromPreset.messages, [
      { role: 'system', content: 'You are a pirate.' },
      { role: 'user', content: 'new chat' },
    ]);
    assert.equal(fromPreset.temperature, 1.3);

    // Delete the preset.
    await openSettings(page);
    await row.first().waitFor();
    await row.locator('.preset-delete').click();
    await page.locator('#presets-empty').waitFor();
    assert.equal(await row.count(), 0);
    const listed = await page.evaluate(() => fetch('/presets').then((r) => r.json()));
    assert.deepEqual(listed, { presets: [] });
    // The one refused save (400) is the only thing the console reports.
    assert.deepEqual(problems.filter((p) => !/status of 400/.test(p)), []);
    assert.equal(problems.length, 1, problems.join('\n'));
  } finally {
    await context.close();
    await server.stop();
  }
});

test('what is typed in the dialog is kept when the saved settings arrive after it', async () => {
  const server = await startServer({}, { llm });
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  try {
    const { page, problems } = await openChatPage(context, server.url);
    await typeAndSend(page, 'before');
    await waitReplies(page, 1);
    await openSettings(page);
    await page.locator('#settings-system-prompt').fill('You are a pirate.');
    await page.locator('#settings-save').click();
    await page.waitForFunction(() => !document.querySelector('#settings-dialog').open);

    // The dialog's read of the saved settings answers only after the user typed.
    let release;
    const held = new Promise((resolve) => { release = resolve; });
    let answered;
    const done = new Promise((resolve) => { answered = resolve; });
    await page.route(/\/load_conversation\/[^?]+\?limit=1$/, async (route) => {
      await held;
      await route.continue();
      answered();
    });
    await openSettings(page);
    await page.locator('#settings-system-prompt').fill('You are a parrot.');
    release();
    await done;
    // The answer's handler runs after the response: give it a moment, then the
    // field must still hold what was typed, and a save sends it.
    await page.waitForTimeout(300);
    assert.equal(await page.locator('#settings-system-prompt').inputValue(), 'You are a parrot.');
    await page.unroute(/\/load_conversation\/[^?]+\?limit=1$/);
    await page.locator('#settings-save').click();
    await page.waitForFunction(() => !document.querySelector('#settings-dialog').open);
    await typeAndSend(page, 'polly');
    await waitReplies(page, 2);
    assert.deepEqual(llm.streamRequests().at(-1).body.messages[0], { role: 'system', content: 'You are a parrot.' });
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await server.stop();
  }
});
