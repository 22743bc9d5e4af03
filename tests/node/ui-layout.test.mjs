// The page's layout in headless Chromium: light and dark themes (following
// prefers-color-scheme), desktop and 375 px wide, with the main regions never
// overlapping and nothing wider than the screen. Saves the screenshots that
// show the main states (target/screenshots/).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startFakeLlm, startServer, splitPieces, launchChromium, openChatPage, screenshot, typeAndSend, waitReplies,
  menuAction,
} from './harness.mjs';

const RICH = [
  'Here is a **quick comparison** of the two approaches:',
  '',
  'The closed form is $F_n = \\frac{\\varphi^n - \\psi^n}{\\sqrt{5}}$, and the sum of the first $n$ terms:',
  '',
  '$$',
  '\\sum_{k=1}^{n} F_k = F_{n+2} - 1',
  '$$',
  '',
  '| Approach | Speed | Memory |',
  '|----------|------:|-------:|',
  '| Streaming | fast | low |',
  '| Buffering | slower | high |',
  '',
  '```python',
  'def fib(n: int) -> int:',
  '    """Return the n-th Fibonacci number."""',
  '    a, b = 0, 1',
  '    for _ in range(n):  # iterate n times',
  '        a, b = b, a + b',
  '    return a',
  '',
  'print(fib(10), "is the tenth; a long line that needs horizontal scrolling inside the code block, not the page")',
  '```',
  '',
  '- Use `fib(n)` for small *n*.',
  '- See <https://en.wikipedia.org/wiki/Fibonacci_number>.',
].join('\n');

let llm;
let server;
let browser;

before(async () => {
  llm = await startFakeLlm({ reply: (msg) => splitPieces(msg.includes('compare') ? RICH : `Echo: ${msg}`), delayMs: 2 });
  server = await startServer({}, { llm });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await llm?.close();
});

/** Boxes of the main regions that are displayed. */
function regions(page) {
  return page.evaluate(() => {
    const out = {};
    for (const [name, sel] of Object.entries({
      header: '.app-header', sidebar: '#sidebar', banner: '#demo-banner', chatHeader: '.chat-header',
      transcript: '#transcript', composer: '#composer',
    })) {
      const el = document.querySelector(sel);
      if (el && el.getClientRects().length) out[name] = el.getBoundingClientRect().toJSON();
    }
    return { boxes: out, width: window.innerWidth, height: window.innerHeight, scrollWidth: document.documentElement.scrollWidth };
  });
}

function assertNoOverlap({ boxes, width, height, scrollWidth }, label) {
  const names = Object.keys(boxes);
  for (let i = 0; i < names.length; i++) {
    const a = boxes[names[i]];
    assert.ok(a.left >= -0.5 && a.right <= width + 0.5 && a.top >= -0.5 && a.bottom <= height + 0.5,
      `${label}: ${names[i]} is outside the ${width}x${height} viewport: ${JSON.stringify(a)}`);
    assert.ok(a.width > 0 && a.height > 0, `${label}: ${names[i]} has no size`);
    for (let j = i + 1; j < names.length; j++) {
      const b = boxes[names[j]];
      const overlapX = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const overlapY = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      assert.ok(overlapX <= 0.5 || overlapY <= 0.5, `${label}: ${names[i]} and ${names[j]} overlap: ${JSON.stringify({ [names[i]]: a, [names[j]]: b })}`);
    }
  }
  assert.ok(scrollWidth <= width, `${label}: the page is ${scrollWidth}px wide in a ${width}px viewport`);
}

test('desktop, light and dark: regions apart, themes applied, wide code scrolls inside its block', async () => {
  for (const scheme of ['light', 'dark']) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 820 }, colorScheme: scheme });
    try {
      const { page, problems } = await openChatPage(context, server.url);
      await typeAndSend(page, 'Please compare streaming and buffering');
      await waitReplies(page, 1);
      await typeAndSend(page, 'Thanks!');
      await waitReplies(page, 2);
      await page.locator('#transcript').evaluate((el) => { el.scrollTop = 0; });
      assertNoOverlap(await regions(page), `1280 ${scheme}`);
      const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
      assert.equal(bg, scheme === 'dark' ? 'rgb(18, 21, 27)' : 'rgb(246, 247, 249)', `${scheme} background`);
      // The long code line scrolls inside the code block.
      const code = await page.locator('#transcript pre').first().evaluate((el) => ({
        scroll: el.scrollWidth, client: el.clientWidth,
        bubbleRight: el.closest('.message').getBoundingClientRect().right,
        transcriptRight: document.querySelector('#transcript').getBoundingClientRect().right,
      }));
      assert.ok(code.scroll > code.client, 'the code block scrolls sideways');
      assert.ok(code.bubbleRight <= code.transcriptRight, 'the reply stays inside the transcript');
      // The math is typeset, in KaTeX's fonts, before the picture is taken.
      assert.equal(await page.locator('#transcript .katex-display').count(), 1);
      assert.equal(await page.locator('#transcript p .katex').count(), 2);
      await page.waitForFunction(() => document.fonts.check('16px KaTeX_Main') && document.fonts.status === 'loaded');
      await screenshot(page, `ui-desktop-${scheme}.png`);
      if (scheme === 'dark') {
        await page.locator('#conversation-menu-button').click();
        await screenshot(page, 'ui-desktop-dark-menu.png');
      }
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
    }
  }
});

test('375 px wide, light and dark: stacked regions, collapsible list, menu and dialogs on screen', async () => {
  for (const scheme of ['light', 'dark']) {
    const context = await browser.newContext({
      viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true, colorScheme: scheme,
    });
    try {
      const { page, problems } = await openChatPage(context, server.url);
      await typeAndSend(page, 'Please compare streaming and buffering');
      await waitReplies(page, 1);
      assertNoOverlap(await regions(page), `375 ${scheme}`);
      const { boxes } = await regions(page);
      assert.ok(boxes.header.bottom <= boxes.sidebar.top + 0.5 && boxes.sidebar.bottom <= boxes.chatHeader.top + 0.5
        && boxes.chatHeader.bottom <= boxes.transcript.top + 0.5 && boxes.transcript.bottom <= boxes.composer.top + 0.5,
      `stacked top to bottom: ${JSON.stringify(boxes)}`);
      assert.ok(await page.locator('#search-input').isHidden(), 'the list and search are folded away');
      await screenshot(page, `ui-375-${scheme}.png`);

      await page.locator('#sidebar-toggle').click();
      assert.ok(await page.locator('#search-input').isVisible());
      assert.equal(await page.locator('#sidebar-toggle').getAttribute('aria-expanded'), 'true');
      assertNoOverlap(await regions(page), `375 ${scheme}, list open`);
      await screenshot(page, `ui-375-${scheme}-list.png`);
      await page.locator('#sidebar-toggle').click();

      await page.locator('#conversation-menu-button').click();
      const menu = await page.locator('#conversation-menu-items').evaluate((el) => el.getBoundingClientRect().toJSON());
      assert.ok(menu.left >= 0 && menu.right <= 375, `the menu is on screen: ${JSON.stringify(menu)}`);
      await screenshot(page, `ui-375-${scheme}-menu.png`);
      await menuAction(page, 'few-shot-button');
      const dialog = await page.locator('#few-shot-dialog').evaluate((el) => el.getBoundingClientRect().toJSON());
      assert.ok(dialog.left >= 0 && dialog.right <= 375, `the dialog is on screen: ${JSON.stringify(dialog)}`);
      await page.keyboard.press('Escape');
      await page.locator('#few-shot-dialog').waitFor({ state: 'hidden' });
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
    }
  }
});
