// The OpenAI-compatible API with the official `openai` SDK pointed at the real server
// (`baseURL: <server>/v1`, a personal access token as the API key): models, a whole
// completion, a streamed one with its usage chunk, the daily quota (429 in OpenAI's shape,
// not retried) and a bad token (401). The server meters what the SDK's replies report.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startFakeLlm, startServer, request, cookieFrom } from './harness.mjs';

let llm;
let server;
let quotaServer;

before(async () => {
  llm = await startFakeLlm({ reply: (msg) => `You said: ${msg}` });
  server = await startServer({ AUTH_MODE: 'local' }, { llm });
  // The fake's whole replies report 1 + 1 tokens: one reply uses up a quota of 2.
  quotaServer = await startServer({ AUTH_MODE: 'local', QUOTA_TOKENS_PER_DAY: '2' }, { llm });
});

after(async () => {
  await server?.stop();
  await quotaServer?.stop();
  await llm?.close();
});

/** Signs up `email` on `target` and returns one of its access tokens. */
async function tokenOf(target, email) {
  const signup = await request(`${target.url}/auth/signup`, {
    method: 'POST', json: { email, password: 'correct-horse-battery' },
  });
  assert.equal(signup.status, 201, JSON.stringify(signup.body));
  const made = await request(`${target.url}/api/tokens`, {
    method: 'POST', cookie: cookieFrom(signup.res), json: { name: 'sdk' },
  });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  return made.body.token;
}

function client(target, apiKey, options = {}) {
  return new OpenAI({ apiKey, baseURL: `${target.url}/v1`, timeout: 20000, ...options });
}

async function usageOf(target, token) {
  const r = await request(`${target.url}/usage`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return { prompt: r.body.prompt_tokens, completion: r.body.completion_tokens };
}

test('the SDK lists the model and gets whole and streamed completions, metered', { timeout: 60000 }, async () => {
  const token = await tokenOf(server, 'sdk@example.com');
  const openai = client(server, token);

  const models = await openai.models.list();
  const ids = [];
  for await (const model of models) ids.push(model.id);
  assert.deepEqual(ids, ['fake-model']);

  const whole = await openai.chat.completions.create({
    model: 'fake-model',
    messages: [
      { role: 'system', content: 'Be kind.' },
      { role: 'user', content: 'hello sdk' },
    ],
  });
  assert.equal(whole.object, 'chat.completion');
  assert.equal(whole.choices[0].message.role, 'assistant');
  assert.equal(whole.choices[0].message.content, 'You said: hello sdk');
  assert.equal(whole.choices[0].finish_reason, 'stop');
  // The upstream's own usage is passed on and metered.
  assert.deepEqual(whole.usage, { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 });
  assert.deepEqual(await usageOf(server, token), { prompt: 1, completion: 1 });

  const stream = await openai.chat.completions.create({
    model: 'fake-model',
    messages: [{ role: 'user', content: 'stream me please' }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices[0];
    if (choice?.delta?.content) text += choice.delta.content;
    if (choice?.finish_reason) finish = choice.finish_reason;
  }
  assert.equal(text, 'You said: stream me please');
  assert.equal(finish, 'stop');
  // The fake streams no usage: the server's tokenizer counted the reply.
  assert.ok(usage.prompt_tokens > 0 && usage.completion_tokens > 0, JSON.stringify(usage));
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
  assert.deepEqual(await usageOf(server, token), {
    prompt: 1 + usage.prompt_tokens, completion: 1 + usage.completion_tokens,
  });
  const upstream = llm.streamRequests().at(-1);
  assert.equal(upstream.body.messages.at(-1).content, 'stream me please');
});

test('over the daily quota the SDK gets a 429 insufficient_quota error, not retried', { timeout: 30000 }, async () => {
  const token = await tokenOf(quotaServer, 'quota@example.com');
  // Counts the HTTP requests the SDK makes, retries included.
  let sent = 0;
  const counting = (url, init) => { sent += 1; return fetch(url, init); };
  const openai = client(quotaServer, token, { fetch: counting });
  const ask = (extra = {}) => openai.chat.completions.create({
    model: 'fake-model', messages: [{ role: 'user', content: 'one more' }], ...extra,
  });

  const crossing = await ask();
  assert.equal(crossing.choices[0].message.content, 'You said: one more');
  const calls = llm.requests.length;
  sent = 0;
  await assert.rejects(ask(), (err) => {
    assert.ok(err instanceof OpenAI.RateLimitError, String(err));
    assert.equal(err.status, 429);
    assert.equal(err.code, 'insufficient_quota');
    assert.equal(err.type, 'insufficient_quota');
    assert.match(err.message, /2 tokens for today/);
    return true;
  });
  // `x-should-retry: false`: the SDK's default retries did not run.
  assert.equal(sent, 1);
  await assert.rejects(
    ask({ stream: true }),
    (err) => err instanceof OpenAI.RateLimitError && err.code === 'insufficient_quota',
  );
  assert.equal(llm.requests.length, calls, 'the model was asked over quota');
});

test('a bad token gets a 401 authentication error in OpenAI shape', { timeout: 30000 }, async () => {
  const openai = client(server, 'lcs_wrong-token', { maxRetries: 0 });

  await assert.rejects(
    openai.chat.completions.create({ model: 'fake-model', messages: [{ role: 'user', content: 'hi' }] }),
    (err) => {
      assert.ok(err instanceof OpenAI.AuthenticationError, String(err));
      assert.equal(err.status, 401);
      assert.equal(err.code, 'invalid_api_key');
      assert.equal(err.type, 'invalid_request_error');
      return true;
    },
  );
  await assert.rejects(openai.models.list(), (err) => err instanceof OpenAI.AuthenticationError);
});
