// Several instances behind nginx (issue 3), with the official socket.io-client: this file
// starts its own redis-server on a free loopback port, two instances of the server binary
// sharing it (own key prefix) and one SQLite file, and Debian's nginx with the project's
// deploy/nginx.conf in front of them (upstream servers and listen address made loopback).
// Through nginx: a full turn over WebSocket only and over long-polling only (which needs
// ip_hash stickiness); and tabs connected directly to each instance see the live reply
// after `watch_conversation`.
//
// Needs /usr/bin/redis-server and /usr/sbin/nginx (Debian packages redis-server, nginx)
// and CHAT_SERVER_BIN (see harness.mjs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { io } from 'socket.io-client';
import {
  REPO_ROOT, startFakeLlm, startServer, newSession, request, connected, runTurn, withTimeout, sleep,
} from './harness.mjs';

const REDIS_SERVER = '/usr/bin/redis-server';
const NGINX = '/usr/sbin/nginx';

const REPLY_PIECES = (msg) => ['Cluster ', 'reply ', 'to: ', msg, ' (', 'end', ')'];
const replyText = (msg) => REPLY_PIECES(msg).join('');

// ------------------------------------------------------------ local helpers

/** A free TCP port on 127.0.0.1. */
async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port. */
function canConnect(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

/** Sends PING to a Redis on port; true on +PONG. */
function redisPing(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const timer = setTimeout(() => { socket.destroy(); resolve(false); }, 500);
    let data = '';
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (d) => {
      data += d;
      if (data.includes('\r\n')) {
        clearTimeout(timer);
        socket.destroy();
        resolve(data.startsWith('+PONG'));
      }
    });
    socket.once('error', () => { clearTimeout(timer); resolve(false); });
  });
}

const children = new Set();
process.on('exit', () => {
  for (const child of children) {
    try { child.kill('SIGKILL'); } catch { /* gone */ }
  }
});

/** Waits (bounded) for a child to exit; kills it hard if it does not. */
async function stopChild(child, signal = 'SIGTERM') {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(signal);
  const done = await Promise.race([exited.then(() => true), sleep(3000).then(() => false)]);
  if (!done) { child.kill('SIGKILL'); await exited; }
}

/** This test's own redis-server on a free loopback port, without persistence. */
async function startRedis() {
  if (!existsSync(REDIS_SERVER)) {
    throw new Error(`${REDIS_SERVER} is missing: install Debian's redis-server package`);
  }
  const port = await freePort();
  const dir = await mkdtemp(path.join(tmpdir(), 'cluster-redis-'));
  const child = spawn(REDIS_SERVER, [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--daemonize', 'no', '--dir', dir,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  let log = '';
  child.stdout.on('data', (d) => { log = (log + d).slice(-4000); });
  child.stderr.on('data', (d) => { log = (log + d).slice(-4000); });
  const deadline = Date.now() + 10000;
  while (!(await redisPing(port))) {
    if (child.exitCode !== null) throw new Error(`redis-server exited at start:\n${log}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`redis-server did not answer PING within 10 s:\n${log}`);
    }
    await sleep(20);
  }
  return {
    url: `redis://127.0.0.1:${port}/0`,
    async stop() {
      await stopChild(child, 'SIGKILL');
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * deploy/nginx.conf with its upstream servers replaced by `upstreams` (host:port) and its
 * listen directive by `listen`; the same adaptation as tests/cluster/harness.rs.
 */
function adaptDeployConfig(deploy, upstreams, listen) {
  const out = [];
  let inUpstream = false;
  let upstreamBlocks = 0;
  let sawIpHash = false;
  let listens = 0;
  for (const line of deploy.split('\n')) {
    const code = line.split('#')[0].trim();
    if (code.startsWith('upstream ') && code.endsWith('{')) {
      inUpstream = true;
      upstreamBlocks += 1;
      out.push(line);
      continue;
    }
    if (inUpstream) {
      if (code === '}') {
        for (const upstream of upstreams) out.push(`    server ${upstream};`);
        inUpstream = false;
      } else if (code.startsWith('server ')) {
        continue;
      } else if (code === 'ip_hash;') {
        sawIpHash = true;
      }
      out.push(line);
      continue;
    }
    if (code.startsWith('listen ')) {
      listens += 1;
      if (listens === 1) out.push(`    listen ${listen};`);
      continue;
    }
    out.push(line);
  }
  assert.equal(upstreamBlocks, 1, 'deploy/nginx.conf should define exactly one upstream block');
  assert.ok(sawIpHash, "deploy/nginx.conf's upstream should use ip_hash");
  assert.ok(listens >= 1, 'deploy/nginx.conf has no listen directive');
  return out.join('\n');
}

/** Debian's nginx with deploy/nginx.conf in front of `upstreams`, on a free loopback port. */
async function startNginx(upstreams) {
  if (!existsSync(NGINX)) throw new Error(`${NGINX} is missing: install Debian's nginx package`);
  const deploy = await readFile(path.join(REPO_ROOT, 'deploy', 'nginx.conf'), 'utf8');
  const dir = await mkdtemp(path.join(tmpdir(), 'cluster-nginx-'));
  await chmod(dir, 0o755); // nginx's workers (nobody, when started as root) write temp files here
  const port = await freePort();
  const config = `# generated by tests/node/cluster.test.mjs
daemon off;
master_process on;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
access_log ${dir}/access.log;
client_body_temp_path ${dir}/client_body;
proxy_temp_path ${dir}/proxy;
fastcgi_temp_path ${dir}/fastcgi;
uwsgi_temp_path ${dir}/uwsgi;
scgi_temp_path ${dir}/scgi;
${adaptDeployConfig(deploy, upstreams, `127.0.0.1:${port}`)}
}
`;
  const configPath = path.join(dir, 'nginx.conf');
  await writeFile(configPath, config);
  const child = spawn(NGINX, ['-p', dir, '-e', `${dir}/error.log`, '-c', configPath],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const errorLog = async () => `${stderr}\n${await readFile(`${dir}/error.log`, 'utf8').catch(() => '')}`;
  const deadline = Date.now() + 10000;
  while (!(await canConnect(port))) {
    if (child.exitCode !== null) throw new Error(`nginx exited at start:\n${await errorLog()}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`nginx did not listen within 10 s:\n${await errorLog()}`);
    }
    await sleep(20);
  }
  return {
    url: `http://127.0.0.1:${port}`,
    accessLog: () => readFile(`${dir}/access.log`, 'utf8').catch(() => ''),
    async stop() {
      // SIGTERM: the master stops its workers, then exits; if it hangs, its workers are
      // killed with it.
      const workers = await readFile(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8')
        .then((text) => text.split(/\s+/).filter(Boolean).map(Number))
        .catch(() => []);
      await stopChild(child, 'SIGTERM');
      for (const pid of workers) {
        try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

// ------------------------------------------------------------------ cluster

let llm;
let redis;
let clusterDir;
let a;
let b;
let nginx;
const sockets = [];

function connect(url, cookie, transports) {
  const socket = io(url, {
    extraHeaders: { Cookie: cookie },
    transports,
    reconnection: false,
    timeout: 10000,
    forceNew: true,
  });
  sockets.push(socket);
  return socket;
}

/** Collects what a watching tab sees of one reply, up to response_end or error. */
function watchReply(socket, { timeoutMs = 20000 } = {}) {
  const seen = { started: null, chunks: [], end: null, error: null, order: [], firstChunkAt: null };
  let cleanup;
  const done = new Promise((resolve) => {
    const onStarted = (d) => { seen.order.push('reply_started'); seen.started = d; };
    const onChunk = (d) => {
      seen.order.push('response_chunk');
      seen.firstChunkAt ??= performance.now();
      seen.chunks.push(d);
    };
    const onEnd = (d) => { seen.order.push('response_end'); seen.end = d; resolve(seen); };
    const onError = (d) => { seen.order.push('error'); seen.error = d; resolve(seen); };
    socket.on('reply_started', onStarted);
    socket.on('response_chunk', onChunk);
    socket.on('response_end', onEnd);
    socket.on('error', onError);
    cleanup = () => {
      socket.off('reply_started', onStarted);
      socket.off('response_chunk', onChunk);
      socket.off('response_end', onEnd);
      socket.off('error', onError);
    };
  });
  return withTimeout(done, timeoutMs, 'the watched reply').finally(cleanup);
}

before(async () => {
  llm = await startFakeLlm({ reply: REPLY_PIECES, delayMs: 25 });
  redis = await startRedis();
  clusterDir = await mkdtemp(path.join(tmpdir(), 'cluster-node-'));
  const env = {
    REDIS_URL: redis.url,
    REDIS_PREFIX: `t${randomUUID().replaceAll('-', '')}`,
    SECRET_KEY: randomBytes(32).toString('hex'),
  };
  // One folder: both instances use the same SQLite file.
  a = await startServer(env, { llm, dir: clusterDir });
  b = await startServer(env, { llm, dir: clusterDir });
  nginx = await startNginx([a.url, b.url].map((u) => new URL(u).host));
});

after(async () => {
  for (const s of sockets) s.disconnect();
  await nginx?.stop();
  await a?.stop();
  await b?.stop();
  await redis?.stop();
  await llm?.close();
  if (clusterDir) await rm(clusterDir, { recursive: true, force: true });
});

async function turnThroughNginx(transports) {
  const { cookie, conversationId } = await newSession(nginx.url);
  const socket = connect(nginx.url, cookie, transports);
  await connected(socket);
  assert.equal(socket.io.engine.transport.name, transports[0]);

  const message = `through nginx over ${transports[0]} ${Date.now()}`;
  const turn = await runTurn(socket, { message, conversation_id: conversationId });
  assert.equal(turn.error, null, `unexpected error event: ${JSON.stringify(turn.error)}`);
  assert.equal(turn.order[0], 'token_usage', `event order: ${turn.order.join(', ')}`);
  assert.equal(turn.order.at(-1), 'response_end');
  assert.equal(turn.usage.conversation_id, conversationId);
  assert.equal(turn.chunks.map((c) => c.chunk).join(''), replyText(message));
  assert.deepEqual(turn.chunks.map((c) => c.index), REPLY_PIECES(message).map((_, i) => i));
  assert.deepEqual(turn.end, { conversation_id: conversationId, stopped: false, chunks: REPLY_PIECES(message).length });
  // Still on the transport it was limited to.
  assert.equal(socket.io.engine.transport.name, transports[0]);

  const history = await request(`${nginx.url}/load_conversation/${conversationId}`, { cookie });
  assert.equal(history.status, 200, JSON.stringify(history.body));
  assert.deepEqual(history.body.conversation, [
    { role: 'user', content: message },
    { role: 'assistant', content: replyText(message) },
  ]);
  socket.disconnect();
}

test('through nginx: a full turn over WebSocket only', async () => {
  await turnThroughNginx(['websocket']);
});

test('through nginx: a full turn over long-polling only (ip_hash keeps the session on one instance)', async () => {
  await turnThroughNginx(['polling']);
});

test('tabs connected directly to A and to B see the live reply of a turn sent through nginx', async () => {
  const { cookie, conversationId } = await newSession(nginx.url);
  const sender = connect(nginx.url, cookie, ['websocket']);
  const onA = connect(a.url, cookie, ['websocket']);
  const onB = connect(b.url, cookie, ['websocket']);
  await Promise.all([connected(sender), connected(onA), connected(onB)]);
  // One of A and B is not the instance nginx sent the sender to: a cross-instance watcher.
  for (const tab of [onA, onB]) {
    const ack = await tab.timeout(10000).emitWithAck('watch_conversation', { conversation_id: conversationId });
    assert.deepEqual(ack, { ok: true, streaming: false });
  }

  const message = `watched ${Date.now()}`;
  const watching = [watchReply(onA), watchReply(onB)];
  const sent = await runTurn(sender, { message, conversation_id: conversationId });
  const senderEndAt = performance.now();
  assert.equal(sent.error, null, `unexpected error event: ${JSON.stringify(sent.error)}`);
  const expected = REPLY_PIECES(message);

  for (const [name, seen] of [['A', await watching[0]], ['B', await watching[1]]]) {
    assert.equal(seen.error, null, `tab on ${name}: ${JSON.stringify(seen.error)}`);
    assert.deepEqual(seen.started, { conversation_id: conversationId, message }, `tab on ${name}`);
    assert.equal(seen.order[0], 'reply_started', `tab on ${name}: ${seen.order.join(', ')}`);
    assert.deepEqual(seen.chunks.map((c) => c.index), expected.map((_, i) => i), `tab on ${name}`);
    assert.equal(seen.chunks.map((c) => c.chunk).join(''), expected.join(''), `tab on ${name}`);
    assert.deepEqual(seen.end, { conversation_id: conversationId, stopped: false, chunks: expected.length });
    // Live: the first chunk was there while the reply was still streaming (pieces come
    // 25 ms apart upstream), not replayed after the end.
    assert.ok(seen.firstChunkAt < senderEndAt, `tab on ${name} got its first chunk only after the reply ended`);
  }
});
