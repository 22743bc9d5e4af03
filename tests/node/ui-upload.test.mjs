// Files in the chat page (headless Chromium, real server, fake LLM): picking
// or dropping a file, the checks the page makes before uploading (with the
// limits from /get_config), the progress bar fed by upload_progress, and the
// analysis shown in the conversation.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startFakeLlm, startServer, splitPieces, sleep, launchChromium, openChatPage, screenshot,
} from './harness.mjs';

let llm;
let server;
let browser;

// Each chunk's analysis takes a moment, so the progress can be seen.
async function reply(msg, body) {
  if (body.stream !== true && msg.startsWith('Please analyze the following text:')) {
    await sleep(350);
    const words = msg.split(/\s+/).length - 5;
    return `This part has about **${words} words** about \`${/fruit|colour/.exec(msg)?.[0] ?? 'something'}\`.`;
  }
  return splitPieces(`Echo: ${msg}`);
}

before(async () => {
  llm = await startFakeLlm({ reply });
  server = await startServer({ CHUNK_SIZE_TOKENS: '40', UPLOAD_CONCURRENCY: '1', MAX_FILE_SIZE_MB: '1' }, { llm });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await llm?.close();
});

const TEXT = Array.from({ length: 12 }, (_, i) => `Line ${i}: the fruit basket holds apples and pears.`).join('\n');

function uploadsOf(page) {
  const seen = [];
  page.on('request', (r) => { if (r.url().endsWith('/upload_file')) seen.push(r.method()); });
  return seen;
}

test('a picked file uploads with progress, and its analysis shows in the conversation', async () => {
  const context = await browser.newContext({ viewport: { width: 1200, height: 820 } });
  try {
    const { page, problems } = await openChatPage(context, server.url);
    const uploads = uploadsOf(page);
    assert.equal(await page.locator('#file-input').getAttribute('accept'), '.txt,.md,.json');
    assert.match(await page.locator('#attach-button').getAttribute('title'), /\.txt, \.md, \.json, up to 1 MB/);

    await page.locator('#file-input').setInputFiles({ name: 'fruit notes.txt', mimeType: 'text/plain', buffer: Buffer.from(TEXT) });
    // upload_progress {done, total} drives the bar.
    await page.waitForFunction(() => /Analysing fruit notes\.txt: [1-9]\d* of \d+ parts/.test(document.querySelector('#upload-label').textContent));
    const progress = await page.evaluate(() => {
      const p = document.querySelector('#upload-progress');
      return { value: p.value, max: p.max, visible: !document.querySelector('#upload-status').hidden };
    });
    assert.ok(progress.visible && progress.max >= 3 && progress.value >= 1 && progress.value <= progress.max, JSON.stringify(progress));
    assert.ok(await page.locator('#attach-button').isDisabled(), 'one upload at a time');
    await screenshot(page, 'ui-upload-progress.png');

    const block = page.locator('#transcript .message-analysis');
    await block.waitFor();
    assert.ok(await page.locator('#upload-status').isHidden(), 'the bar goes away');
    assert.match(await block.locator('.analysis-head').textContent(), /File analysis: fruit notes\.txt/);
    const parts = await block.locator('h4').allTextContents();
    assert.equal(parts.length, progress.max, `one heading per part: ${parts}`);
    assert.equal(parts[0], 'Part 1');
    assert.ok(await block.locator('strong', { hasText: 'words' }).count() >= 1, 'the analysis is rendered as markdown');
    assert.match(await page.locator('#notice').textContent(), /was analysed/);
    assert.deepEqual(uploads, ['POST']);
    await screenshot(page, 'ui-upload-analysis.png');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('the page refuses wrong types and files over the limit before uploading', async () => {
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  try {
    const { page } = await openChatPage(context, server.url);
    const uploads = uploadsOf(page);
    await page.locator('#file-input').setInputFiles({ name: 'tool.exe', mimeType: 'application/octet-stream', buffer: Buffer.from('MZ') });
    await page.waitForFunction(() => /not a supported file type/.test(document.querySelector('#error-line').textContent));
    assert.match(await page.locator('#error-line').textContent(), /“tool\.exe” is not a supported file type\. Allowed: \.txt, \.md, \.json\./);

    await page.locator('#file-input').setInputFiles({ name: 'big.txt', mimeType: 'text/plain', buffer: Buffer.alloc(1024 * 1024 + 10, 'a') });
    await page.waitForFunction(() => /too large/.test(document.querySelector('#error-line').textContent));
    assert.match(await page.locator('#error-line').textContent(), /“big\.txt” is too large \(1\.0 MB\)\. The limit is 1 MB\./);
    await sleep(200);
    assert.deepEqual(uploads, [], 'nothing was sent');
    assert.equal(await page.locator('#transcript .message-analysis').count(), 0);
  } finally {
    await context.close();
  }
});

test('a file dropped on the chat is uploaded and analysed', async () => {
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  try {
    const { page, problems } = await openChatPage(context, server.url);
    const dataTransfer = await page.evaluateHandle(() => {
      const dt = new DataTransfer();
      dt.items.add(new File(['# Colours\n\nThe colour of the sky is blue.\n'], 'colours.md', { type: 'text/markdown' }));
      return dt;
    });
    await page.dispatchEvent('#transcript', 'dragenter', { dataTransfer });
    await page.dispatchEvent('#transcript', 'dragover', { dataTransfer });
    assert.ok(await page.locator('#drop-overlay').isVisible(), 'the drop target shows');
    await screenshot(page, 'ui-drop-overlay.png');
    await page.dispatchEvent('#transcript', 'drop', { dataTransfer });
    assert.ok(await page.locator('#drop-overlay').isHidden());
    const block = page.locator('#transcript .message-analysis');
    await block.waitFor();
    assert.match(await block.textContent(), /File analysis: colours\.md/);
    assert.match(await block.textContent(), /colour/);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});
