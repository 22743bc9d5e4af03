// The model picker (headless Chromium, real server, two fake upstreams): with a
// catalogue of two models (MODELS_FILE) the page shows a picker; picking a model then
// sending makes the request go to that model's upstream, and the conversation keeps it
// across a reload.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  startFakeLlm, startServer, splitPieces, launchChromium, openChatPage, screenshot, typeAndSend, waitReplies, waitReady,
} from './harness.mjs';

let fast;
let wise;
let browser;
let dir;
let catalogue;

before(async () => {
  fast = await startFakeLlm({ reply: (msg) => splitPieces(`fast says: ${msg}`) });
  wise = await startFakeLlm({ reply: (msg) => splitPieces(`wise says: ${msg}`) });
  dir = await mkdtemp(path.join(tmpdir(), 'llm-chat-models-'));
  catalogue = path.join(dir, 'models.toml');
  await writeFile(catalogue, `
[[models]]
id = "fast"
name = "Fast model"
provider = "openai"
base_url = "${fast.baseUrl}"
model = "fast-upstream"
max_tokens = 4000
reply_tokens = 200

[[models]]
id = "wise"
name = "Wise model"
provider = "openai"
base_url = "${wise.baseUrl}"
model = "wise-upstream"
max_tokens = 9000
reply_tokens = 300
`);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await fast?.close();
  await wise?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('picking a model then sending sends to that model, and the conversation keeps it', async () => {
  const server = await startServer({ MODELS_FILE: catalogue }, { llm: fast });
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  try {
    const { page, problems } = await openChatPage(context, server.url);
    const picker = page.locator('#model-picker');
    assert.equal(await picker.isVisible(), true);
    assert.deepEqual(
      await picker.locator('option').evaluateAll((options) => options.map((o) => [o.value, o.textContent])),
      [['fast', 'Fast model'], ['wise', 'Wise model']],
    );
    assert.equal(await picker.inputValue(), 'fast', 'a new conversation shows the default model');

    await picker.selectOption('wise');
    await typeAndSend(page, 'hello there');
    await waitReplies(page, 1);

    assert.match(await page.locator('#transcript .message-assistant').last().textContent(), /wise says: hello there/);
    assert.equal(fast.streamRequests().length, 0, 'nothing went to the default model');
    const sent = wise.streamRequests();
    assert.equal(sent.length, 1);
    assert.equal(sent[0].body.model, 'wise-upstream');
    assert.equal(sent[0].body.max_tokens, 300);
    assert.match(await page.locator('#token-usage').textContent(), /\/ 9,?000 tokens$/);
    await screenshot(page, 'ui-model-picker.png');

    // After a reload the conversation still uses (and shows) its model.
    await page.reload();
    // Ready: connected, and the server has answered the page's watch of the
    // open conversation (until then Send is disabled and a message is not sent).
    await waitReady(page);
    await page.waitForFunction(() => document.querySelector('#model-picker').value === 'wise');
    await typeAndSend(page, 'and again');
    await waitReplies(page, 2);
    assert.equal(wise.streamRequests().length, 2);
    assert.equal(fast.streamRequests().length, 0);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('with one model the picker stays hidden and messages carry no model', async () => {
  const server = await startServer({}, { llm: fast });
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  try {
    const before = fast.streamRequests().length;
    const { page, problems } = await openChatPage(context, server.url);
    assert.equal(await page.locator('#model-picker').isVisible(), false);
    await typeAndSend(page, 'just one');
    await waitReplies(page, 1);
    const sent = fast.streamRequests();
    assert.equal(sent.length, before + 1);
    assert.equal(sent.at(-1).body.model, 'fake-model');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await server.stop();
  }
});
