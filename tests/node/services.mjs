// Services the multi-instance browser tests start for themselves, on loopback: a free port,
// their own redis-server, and Debian's nginx with the project's deploy/nginx.conf (upstream
// servers and listen address made loopback), used by cluster.test.mjs and oidc.test.mjs. The
// nginx port can be chosen up front: a test whose instances must know their public address
// (PUBLIC_URL) before nginx starts picks it first.
//
// Needs /usr/bin/redis-server and /usr/sbin/nginx (Debian packages redis-server, nginx).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { REPO_ROOT, sleep } from './harness.mjs';

const REDIS_SERVER = '/usr/bin/redis-server';
const NGINX = '/usr/sbin/nginx';

/** A free TCP port on 127.0.0.1. */
export async function freePort() {
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
export async function startRedis() {
  if (!existsSync(REDIS_SERVER)) {
    throw new Error(`${REDIS_SERVER} is missing: install Debian's redis-server package`);
  }
  const port = await freePort();
  const dir = await mkdtemp(path.join(tmpdir(), 'services-redis-'));
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

/**
 * Debian's nginx with deploy/nginx.conf in front of `upstreams`, on `port` (or a free
 * loopback port). With `refuseWebSocket`, it answers every WebSocket upgrade 403, as a
 * proxy or network that blocks WebSocket does (long-polling still passes).
 */
export async function startNginx(upstreams, port, { refuseWebSocket = false } = {}) {
  if (!existsSync(NGINX)) throw new Error(`${NGINX} is missing: install Debian's nginx package`);
  let deploy = await readFile(path.join(REPO_ROOT, 'deploy', 'nginx.conf'), 'utf8');
  if (refuseWebSocket) {
    const pass = 'proxy_set_header Upgrade $http_upgrade;';
    assert.ok(deploy.includes(pass), `deploy/nginx.conf no longer has "${pass}"`);
    deploy = deploy.replace(pass, 'if ($http_upgrade) { return 403; }');
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'services-nginx-'));
  await chmod(dir, 0o755); // nginx's workers (nobody, when started as root) write temp files here
  port ??= await freePort();
  const config = `# generated by tests/node/services.mjs for one test
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
