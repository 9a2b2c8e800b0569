// The admin endpoint over real HTTP: what each path answers, the methods and bodies it refuses,
// and who may read the status page (loopback clients, not another host, not through a proxy),
// directly and through a bundled `corral lb` at its default --admin-listen.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { request, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { CORRAL, childEnv } from '../test/support/corral.js';
import { Netns } from '../test/support/netns.js';
import { until } from '../test/support/until.js';
import { isLoopback, startAdmin, type AdminHandlers } from './admin.js';
import { libc } from './libc.js';
import { ADMIN_DEFAULTS } from './options.js';

/** An address on the test namespace's lo that is not loopback: a client from "another host". */
const OUTSIDE = '10.199.77.1';

interface Reply { status: number; headers: IncomingHttpHeaders; body: string }

/** One request with node's http client, on a connection of its own. */
function call(port: number, o: { method?: string; path?: string; headers?: Record<string, string>; body?: string; host?: string; localAddress?: string } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: o.host ?? '127.0.0.1', port, method: o.method ?? 'GET', path: o.path ?? '/', headers: o.headers, localAddress: o.localAddress, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

function handlers(): AdminHandlers & { isReady: boolean } {
  const metrics = new Registry();
  const h = {
    isReady: false,
    metrics,
    ready: () => h.isReady,
    status: () => ({ component: 'test', endpoints: ['10.42.0.7:8080'] }),
  };
  return h;
}

const CLONE_NEWNET = 0x40000000;

/** Runs `fn` (synchronous) with this thread in the network namespace at `path`: sockets made meanwhile stay there. */
function inNetns<T>(path: string, fn: () => T): T {
  const setns = libc().func<(fd: number, nstype: number) => number>('int setns(int fd, int nstype)');
  const home = openSync('/proc/self/ns/net', 'r');
  const there = openSync(path, 'r');
  try {
    if (setns(there, CLONE_NEWNET) !== 0) throw new Error(`setns into ${path} failed`);
    try {
      return fn();
    } finally {
      if (setns(home, CLONE_NEWNET) !== 0) {
        process.stderr.write('admin.test: cannot return to the test\'s network namespace\n');
        process.exit(70);
      }
    }
  } finally {
    closeSync(there);
    closeSync(home);
  }
}

/** A namespace whose lo also holds OUTSIDE, so a client there can come from a non-loopback address. */
async function outsideNetns(): Promise<Netns> {
  const ns = await Netns.create('corral-t-admin');
  await ns.exec('ip', ['addr', 'add', `${OUTSIDE}/32`, 'dev', 'lo']);
  return ns;
}

/** curl inside `ns`: status code and body. */
async function curlIn(ns: Netns, url: string, args: string[] = []): Promise<{ status: number; body: string }> {
  const r = await ns.exec('curl', ['-sS', '--max-time', '5', '-w', '\n%{http_code}', ...args, url]);
  const cut = r.stdout.lastIndexOf('\n');
  return { status: Number(r.stdout.slice(cut + 1)), body: r.stdout.slice(0, cut) };
}

let servers: Server[] = [];
let namespaces: Netns[] = [];
let children: ChildProcess[] = [];
let dirs: string[] = [];
afterEach(async () => {
  for (const s of servers) await new Promise<void>((r) => s.close(() => r()));
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGKILL');
      await exited;
    }
  }
  for (const ns of namespaces) await ns.delete();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  servers = [];
  namespaces = [];
  children = [];
  dirs = [];
});

describe('admin endpoint', () => {
  it('treats 127.0.0.0/8 and ::1 as loopback, also IPv4-mapped, and nothing else', () => {
    for (const a of ['127.0.0.1', '127.0.0.2', '127.255.0.9', '::1', '::ffff:127.0.0.1']) expect(isLoopback(a), a).toBe(true);
    for (const a of ['10.199.77.1', '::ffff:10.0.0.1', '128.0.0.1', '::', '0.0.0.0', 'fe80::1', '::127.0.0.1', undefined]) expect(isLoopback(a), String(a)).toBe(false);
  });

  it('answers /healthz, /readyz, /metrics and the status page (also at /status) to GET and HEAD, and 404 elsewhere', async () => {
    const h = handlers();
    const server = await startAdmin('127.0.0.1:0', h);
    servers.push(server);
    const port = (server.address() as AddressInfo).port;
    expect(await call(port, { path: '/healthz' })).toMatchObject({ status: 200, body: 'ok\n' });
    expect(await call(port, { path: '/readyz' })).toMatchObject({ status: 503, body: 'not ready\n' });
    h.isReady = true;
    expect(await call(port, { path: '/readyz?verbose' })).toMatchObject({ status: 200, body: 'ready\n' });
    const metrics = await call(port, { path: '/metrics' });
    expect(metrics.status).toBe(200);
    expect(metrics.headers['content-type']).toBe(h.metrics.contentType);
    for (const path of ['/', '/status']) {
      const status = await call(port, { path });
      expect(status.status).toBe(200);
      expect(JSON.parse(status.body)).toEqual({ component: 'test', endpoints: ['10.42.0.7:8080'] });
    }
    const head = await call(port, { method: 'HEAD', path: '/' });
    expect(head).toMatchObject({ status: 200, body: '' });
    // An empty body declared as such is no body.
    expect(await call(port, { path: '/healthz', headers: { 'content-length': '0' } })).toMatchObject({ status: 200 });
    const missing = await call(port, { path: '/nope' });
    expect(missing.status).toBe(404);
    expect(missing.body).toBe('not found: try /healthz, /readyz, /metrics or /\n');
  });

  it('refuses other methods with 405 and Allow, and a request body with 413, closing the connection it did not read', async () => {
    const server = await startAdmin('127.0.0.1:0', handlers());
    servers.push(server);
    const port = (server.address() as AddressInfo).port;
    for (const [method, path] of [['POST', '/metrics'], ['PUT', '/'], ['DELETE', '/healthz'], ['OPTIONS', '/readyz'], ['PATCH', '/status']] as const) {
      const r = await call(port, { method, path });
      expect(r.status, `${method} ${path}`).toBe(405);
      expect(r.headers.allow).toBe('GET, HEAD');
      expect(r.body).toBe(`method not allowed: ${path} answers GET and HEAD only\n`);
    }
    const posted = await call(port, { method: 'POST', path: '/metrics', body: 'x=1' });
    expect(posted.status).toBe(405);
    expect(posted.headers.connection).toBe('close');
    for (const headers of [{ 'content-length': '3' }, { 'transfer-encoding': 'chunked' }] as Array<Record<string, string>>) {
      const r = await call(port, { path: '/healthz', headers, body: 'abc' });
      expect(r.status).toBe(413);
      expect(r.body).toBe('content too large: /healthz takes no request body\n');
      expect(r.headers.connection).toBe('close');
    }
  });

  it('serves the status page to any loopback address, not to a request a proxy forwarded', async () => {
    const server = await startAdmin('127.0.0.1:0', handlers());
    servers.push(server);
    const port = (server.address() as AddressInfo).port;
    expect((await call(port, { localAddress: '127.0.0.2' })).status).toBe(200);
    for (const headers of [{ 'x-forwarded-for': '198.51.100.7' }, { forwarded: 'for=198.51.100.7' }] as Array<Record<string, string>>) {
      const r = await call(port, { headers });
      expect(r.status).toBe(403);
      expect(r.body.trim().split('\n')).toHaveLength(1);
      expect((await call(port, { path: '/metrics', headers })).status).toBe(200);
    }
    const v6 = await startAdmin('[::1]:0', handlers()).catch(() => undefined); // a host without IPv6 on lo has no ::1
    if (v6 !== undefined) {
      servers.push(v6);
      expect((await call((v6.address() as AddressInfo).port, { host: '::1' })).status).toBe(200);
    }
  });

  it('refuses the status page to a client on another address with a one-line 403, and serves it /metrics, /healthz and /readyz', async () => {
    const ns = await outsideNetns();
    namespaces.push(ns);
    const h = handlers();
    h.isReady = true;
    // Listening on all addresses (":0", like dns and lb by default) inside the namespace.
    const server = await inNetns(ns.path, () => startAdmin(':0', h));
    servers.push(server);
    const port = (server.address() as AddressInfo).port;
    const from = ['--interface', OUTSIDE];
    const refused = await curlIn(ns, `http://${OUTSIDE}:${port}/`, from);
    expect(refused.status).toBe(403);
    expect(refused.body).toMatch(/^forbidden: the status page lists this host's topology and answers loopback clients only[^\n]*\n$/);
    expect((await curlIn(ns, `http://${OUTSIDE}:${port}/status`, from)).status).toBe(403);
    expect((await curlIn(ns, `http://${OUTSIDE}:${port}/metrics`, from)).status).toBe(200);
    expect(await curlIn(ns, `http://${OUTSIDE}:${port}/healthz`, from)).toEqual({ status: 200, body: 'ok\n' });
    expect(await curlIn(ns, `http://${OUTSIDE}:${port}/readyz`, from)).toEqual({ status: 200, body: 'ready\n' });
    // The same server to a loopback client (IPv4-mapped on the dual-stack socket).
    const local = await curlIn(ns, `http://127.0.0.1:${port}/`);
    expect(local.status).toBe(200);
    expect(JSON.parse(local.body)).toMatchObject({ component: 'test' });
  });

  it('corral lb at its default --admin-listen (all addresses, :9192): /metrics for another host, the status page for loopback only', async () => {
    expect(ADMIN_DEFAULTS.lb).toBe(':9192');
    const ns = await outsideNetns();
    namespaces.push(ns);
    const dir = mkdtempSync(join(tmpdir(), 'corral-admin-'));
    dirs.push(dir);
    const child = spawn('nsenter', [`--net=${ns.path}`, process.execPath, CORRAL, 'lb',
      '--http-listen', '127.0.0.1:0', '--lb-threads', '1', '--agent-socket', join(dir, 'no-agent.sock'),
      '--run-dir', dir, '--state-dir', dir, '--docker-socket', '', '--log-level', 'warn'], { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let log = '';
    child.stdout!.on('data', (d: Buffer) => (log += d));
    child.stderr!.on('data', (d: Buffer) => (log += d));
    await until('corral lb\'s admin on :9192', async () => (await curlIn(ns, 'http://127.0.0.1:9192/healthz')).status === 200, { ms: 20_000, detail: () => `its output:\n${log}` });
    const from = ['--interface', OUTSIDE];
    const refused = await curlIn(ns, `http://${OUTSIDE}:9192/`, from);
    expect(refused.status).toBe(403);
    expect(refused.body.split('\n')).toEqual([expect.stringMatching(/^forbidden: /), '']);
    const metrics = await curlIn(ns, `http://${OUTSIDE}:9192/metrics`, from);
    expect(metrics.status).toBe(200);
    expect(metrics.body).toContain('corral_lb_applied_revision');
    // No agent: not ready, and saying so to anyone.
    expect((await curlIn(ns, `http://${OUTSIDE}:9192/readyz`, from)).status).toBe(503);
    expect((await curlIn(ns, `http://${OUTSIDE}:9192/metrics`, [...from, '-X', 'POST'])).status).toBe(405);
    const local = await curlIn(ns, 'http://127.0.0.1:9192/');
    expect(local.status).toBe(200);
    expect(JSON.parse(local.body)).toMatchObject({ component: 'lb', connected: false });
  });
});
