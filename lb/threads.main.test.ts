// `corral lb --lb-threads N` through the real bundled executable: several threads accept on the
// same port (SO_REUSEPORT), each with its own routes fed by the one agent watch; /metrics and the
// status page add the threads up; shutdown lets in-flight requests on every thread finish and the
// process exits. That a revision is acked to the agent only once every thread has applied it is
// shown on an LB run in this process (runLb, threads from the source) whose worker thread gets
// every message 300 ms late.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { promisify } from 'node:util';
import { Client, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { agentClient, unary } from '../api/grpc.js';
import { makeLogger } from '../api/log.js';
import { defaultOptions, LB_DEFAULTS } from '../api/options.js';
import type { StatusReply } from '../api/types.js';
import { freePort, startDaemon, type Daemon } from '../test/support/corral.js';
import { Backend, cliOk, startBackends } from '../test/support/lb.js';
import { untilOk } from '../test/support/until.js';
import { sourceThreads } from '../test/support/workers.js';
import { runLb, type RunningLb } from './main.js';

const CONNECTIONS = 16;
const run = promisify(execFile);

let agent: Daemon;
let backends: Backend[] = [];
let clients: Client[] = [];

beforeAll(async () => {
  agent = await startDaemon('agent');
});

afterAll(async () => {
  await agent?.stop();
});

afterEach(async () => {
  await Promise.all(clients.map((c) => c.destroy()));
  clients = [];
  await Promise.all(backends.map((b) => b.stop()));
  backends = [];
});

interface Status {
  revision: number;
  ready: boolean;
  threads: number;
  requests: number;
  perThread: Array<{ thread: number; requests: number; connections: number; revision: number; ready: boolean }>;
  workerHeaps: Array<{ thread: number; usedBytes: number; totalBytes: number }>;
}

/** Where an LB serves: a daemon, or one run in this process. */
type Lb = Pick<Daemon, 'adminPort' | 'httpPort'>;

async function status(lb: Lb): Promise<Status> {
  const res = await request(`http://127.0.0.1:${lb.adminPort}/`);
  return (await res.body.json()) as Status;
}

async function metricsTotal(lb: Lb, svc: string): Promise<number> {
  const text = await (await request(`http://127.0.0.1:${lb.adminPort}/metrics`)).body.text();
  let n = 0;
  for (const m of text.matchAll(new RegExp(`^corral_lb_requests_total\\{namespace="default",service="${svc}",[^}]*\\} (\\d+)$`, 'gm'))) n += Number(m[1]);
  return n;
}

const cli = (args: string[]): Promise<string> => cliOk(agent, args);

const until = <T>(what: string, fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 10_000): Promise<T> =>
  untilOk(what, fn, ok, { ms: timeoutMs, everyMs: 20 });

/** `CONNECTIONS` keep-alive connections to the LB, one request at a time on each. */
function connectAll(lb: Lb): Client[] {
  clients = Array.from({ length: CONNECTIONS }, () => new Client(`http://127.0.0.1:${lb.httpPort}`, { pipelining: 1, keepAliveTimeout: 30_000 }));
  return clients;
}

/** Requests sent through the LB, by Host. */
const sentTo = new Map<string, number>();

async function get(c: Client, host: string, path = '/'): Promise<{ status: number; body: string }> {
  sentTo.set(host, (sentTo.get(host) ?? 0) + 1);
  const res = await c.request({ method: 'GET', path, headers: { host } });
  return { status: res.statusCode, body: (await res.body.text()).trim() };
}

describe('corral lb --lb-threads 2', () => {
  let lb: Daemon;
  let sent = 0;

  beforeAll(async () => {
    lb = await startDaemon('lb', { args: ['--agent-socket', agent.socket, '--lb-threads', '2'] });
  });

  afterAll(async () => {
    expect(await lb?.stop()).toBe(0);
  });

  it('serves one port from both threads, and /metrics and the status page add them up', async () => {
    backends = await startBackends(['b1', 'blue']);
    const rev = JSON.parse(await cli(['register', 'web', `127.0.0.1:${backends[0]!.port}`, '--http-host', 'web.test', '--color', 'blue', '--json'])) as { revision: number };
    await until('every thread at the registration', () => status(lb), (s) => s.revision >= rev.revision);
    const s0 = await status(lb);
    expect(s0.threads).toBe(2);
    expect(s0.perThread.map((t) => t.thread)).toEqual([0, 1]);
    expect(s0.workerHeaps.map((h) => h.thread)).toEqual([1]);
    expect(s0.workerHeaps[0]!.usedBytes).toBeGreaterThan(0);
    expect(s0.perThread.every((t) => t.ready && t.revision >= rev.revision)).toBe(true);
    const conns = connectAll(lb);
    // The kernel hashes each connection to one thread's socket: 16 connections all landing on one
    // thread has a chance of 2^-15.
    for (let round = 0; round < 20; round++) {
      const answers = await Promise.all(conns.map((c) => get(c, 'web.test')));
      sent += answers.length;
      expect(answers.every((a) => a.status === 200 && a.body === 'b1 blue')).toBe(true);
    }
    const s = await status(lb);
    expect(s.perThread.every((t) => t.requests > 0), JSON.stringify(s.perThread)).toBe(true);
    expect(s.requests).toBe(sent);
    expect(await metricsTotal(lb, 'web')).toBe(sent);
    const text = await (await request(`http://127.0.0.1:${lb.adminPort}/metrics`)).body.text();
    // Merged: one series per label set, the applied revision is the lowest thread's, and Node's
    // process metrics appear once.
    expect(text).toMatch(new RegExp(`^corral_lb_applied_revision ${s.revision}$`, 'm'));
    expect(text.match(/^corral_lb_requests_total\{namespace="default",service="web",color="blue",code="200"\} /gm)).toHaveLength(1);
    expect(text).toMatch(/^process_start_time_seconds \d+/m);
    expect(text).toMatch(new RegExp(`^corral_lb_upstream_seconds_count\\{namespace="default",service="web"\\} ${sent}$`, 'm'));
  });
});

describe('corral lb --lb-threads 2 in this process, its worker thread applying every event 300 ms late', () => {
  let running: RunningLb | undefined;
  let lb: Lb;

  beforeAll(async () => {
    // An ack that did not wait for the worker would let requests after the ack reach the old
    // color through that thread.
    const adminPort = await freePort();
    const opts = {
      ...defaultOptions(),
      agentSocket: agent.socket,
      httpListen: `127.0.0.1:${await freePort()}`,
      adminListen: `127.0.0.1:${adminPort}`,
      lb: { ...LB_DEFAULTS, threads: 2 },
    };
    running = await runLb(opts, makeLogger('lb', 'warn'), { spawnWorker: sourceThreads({ lagMs: 300 }).spawn });
    lb = { adminPort, httpPort: running.port };
  });

  afterAll(async () => {
    await running?.close();
  });

  it('acks `corral switch` to the agent only after both threads applied it: every request after the ack goes to the new color', async () => {
    backends = await startBackends(['b1', 'blue'], ['g1', 'green']);
    const [blue, green] = backends as [Backend, Backend];
    await cli(['register', 'sw', `127.0.0.1:${blue.port}`, '--http-host', 'sw.test', '--color', 'blue']);
    await cli(['register', 'sw', `127.0.0.1:${green.port}`, '--http-host', 'sw.test', '--color', 'green']);
    const first = JSON.parse(await cli(['switch', 'sw', 'blue', '--json'])) as { revision: number };
    await until('every thread has the service', () => status(lb), (st) => st.revision >= first.revision);
    const conns = connectAll(lb);
    await until('blue on every connection', () => Promise.all(conns.map((c) => get(c, 'sw.test'))), (a) => a.every((r) => r.body === 'b1 blue'));
    let acked = false;
    let stop = false;
    const afterAck: string[] = [];
    let total = 0;
    // Every connection keeps asking while the switch happens and the ack arrives.
    const load = Promise.all(conns.map(async (c) => {
      while (!stop) {
        const startedAfterAck = acked;
        const r = await get(c, 'sw.test');
        total++;
        expect(r.status).toBe(200);
        if (startedAfterAck) afterAck.push(r.body);
      }
    }));
    await new Promise((r) => setTimeout(r, 200));
    const sw = JSON.parse(await cli(['switch', 'sw', 'green', '--json'])) as { revision: number };
    // Asked over gRPC every 5 ms (a `corral status` process takes longer to start than the lag).
    const agentApi = agentClient(agent.socket);
    await untilOk('the agent has the LB ack', async () => {
      const st = await unary<object, StatusReply>(agentApi, 'Status', {});
      return st.components.find((c) => c.component === 'lb')?.appliedRevision ?? 0;
    }, (r) => r >= sw.revision, { ms: 10_000, everyMs: 5 });
    agentApi.close();
    acked = true;
    await new Promise((r) => setTimeout(r, 500));
    stop = true;
    await load;
    expect(afterAck.length).toBeGreaterThan(CONNECTIONS);
    expect(new Set(afterAck)).toEqual(new Set(['g1 green']));
    expect(total).toBeGreaterThan(afterAck.length);
    const st = await status(lb);
    expect(st.perThread.every((t) => t.revision >= sw.revision)).toBe(true);
    expect(await metricsTotal(lb, 'sw')).toBe(sentTo.get('sw.test'));
  });
});

describe('corral lb shutdown with threads', () => {
  it('stops accepting on every thread, finishes in-flight requests on each, then the process exits', async () => {
    const lb = await startDaemon('lb', { args: ['--agent-socket', agent.socket, '--lb-threads', '2'] });
    try {
      backends = await startBackends(['s1']);
      const rev = JSON.parse(await cli(['register', 'slow', `127.0.0.1:${backends[0]!.port}`, '--http-host', 'slow.test', '--json'])) as { revision: number };
      await until('every thread at the registration', () => status(lb), (s) => s.revision >= rev.revision);
      const conns = connectAll(lb);
      const slow = conns.map((c) => get(c, 'slow.test', '/slow?ms=1500'));
      await until('all in flight', async () => backends[0]!.inFlight, (n) => n === CONNECTIONS);
      const s = await status(lb);
      expect(s.perThread.every((t) => t.connections > 0), JSON.stringify(s.perThread)).toBe(true);
      const t0 = Date.now();
      const code = lb.stop();
      const answers = await Promise.all(slow);
      expect(answers.map((a) => a.status)).toEqual(Array(CONNECTIONS).fill(200));
      expect(await code).toBe(0);
      expect(Date.now() - t0).toBeLessThan(8_000);
    } finally {
      await lb.stop('SIGKILL');
    }
  });
});

/** A self-signed pair for `name` written into dir as <name>.crt + <name>.key. */
function certPair(dir: string, name: string) {
  return run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', `/CN=${name}`,
    '-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.crt`)]);
}

/**
 * CONNECTIONS new HTTPS connections to `port` trusting only `name`'s current certificate in dir,
 * one request each: true when all answer 200 (16 connections over two threads reach both but
 * with a chance of 2^-15).
 */
async function everyConnectionServes(port: number, dir: string, name: string): Promise<boolean> {
  const ca = readFileSync(join(dir, `${name}.crt`));
  const fresh = Array.from({ length: CONNECTIONS }, () => new Client(`https://127.0.0.1:${port}`, { pipelining: 1, connect: { ca, servername: name } }));
  try {
    const codes = await Promise.all(fresh.map((c) => c.request({ method: 'GET', path: '/', headers: { host: name } }).then(async (r) => (await r.body.text(), r.statusCode), () => 0)));
    return codes.every((c) => c === 200);
  } finally {
    await Promise.all(fresh.map((c) => c.destroy()));
  }
}

describe('corral lb --lb-threads 2 with HTTPS', () => {
  it('terminates TLS on every thread, with the certificate for the Host (SNI), and picks up changed certificates without a restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-lb-certs-'));
    const httpsPort = await freePort();
    const lb = { d: undefined as Daemon | undefined };
    const pair = (name: string) => certPair(dir, name);
    const everyThreadServes = (name: string) => everyConnectionServes(httpsPort, dir, name);
    /** The certificate's CN a client without SNI gets (Node sends none when connecting to an IP). */
    const noSniCn = () => new Promise<string>((resolve, reject) => {
      const t = tlsConnect({ port: httpsPort, host: '127.0.0.1', rejectUnauthorized: false }, () => {
        resolve(String(t.getPeerCertificate().subject.CN));
        t.destroy();
      });
      t.on('error', reject);
    });
    try {
      await pair('tls.test');
      lb.d = await startDaemon('lb', { args: ['--agent-socket', agent.socket, '--lb-threads', '2', '--tls-cert-dir', dir, '--https-listen', `127.0.0.1:${httpsPort}`] });
      backends = await startBackends(['t1']);
      const rev = JSON.parse(await cli(['register', 'tls', `127.0.0.1:${backends[0]!.port}`, '--http-host', 'tls.test', '--json'])) as { revision: number };
      await until('every thread at the registration', () => status(lb.d!), (s) => s.revision >= rev.revision);
      const ca = readFileSync(join(dir, 'tls.test.crt'));
      clients = Array.from({ length: CONNECTIONS }, () => new Client(`https://127.0.0.1:${httpsPort}`, { pipelining: 1, connect: { ca, servername: 'tls.test' } }));
      let sent = 0;
      for (let round = 0; round < 5; round++) {
        const answers = await Promise.all(clients.map((c) => c.request({ method: 'GET', path: '/headers', headers: { host: 'tls.test' } }).then(async (r) => ({ status: r.statusCode, body: await r.body.text() }))));
        sent += answers.length;
        for (const a of answers) {
          expect(a.status).toBe(200);
          expect((JSON.parse(a.body) as { headers: Record<string, string> }).headers['x-forwarded-proto']).toBe('https');
        }
      }
      expect(await noSniCn()).toBe('tls.test');
      // A browser-like client offered h2 gets it (ALPN), through the same routes.
      const h2 = await run('curl', ['-sS', '--http2', '--noproxy', '*', '--cacert', join(dir, 'tls.test.crt'), '--resolve', `tls.test:${httpsPort}:127.0.0.1`,
        '-o', '/dev/null', '-w', '%{http_version} %{http_code}', `https://tls.test:${httpsPort}/headers`]);
      expect(h2.stdout).toBe('2 200');
      sent++;
      // 16 TLS connections hashed to two threads' sockets: all on one thread has a chance of 2^-15.
      const s = await status(lb.d);
      expect(s.perThread.every((t) => t.requests > 0), JSON.stringify(s.perThread)).toBe(true);
      expect(s.requests).toBe(sent);

      // A new pair: served on every thread once the directory settles, without a restart.
      await cli(['register', 'tls2', `127.0.0.1:${backends[0]!.port}`, '--http-host', 'other.test']);
      await pair('other.test');
      await until('other.test on every thread', () => everyThreadServes('other.test'), (ok) => ok);
      // the fallback (first by name) follows the directory too
      await until('the new fallback', () => noSniCn(), (cn) => cn === 'other.test');
      // A replaced pair (new key): new connections get the new certificate.
      await pair('tls.test');
      await until('the new tls.test on every thread', () => everyThreadServes('tls.test'), (ok) => ok);
      expect(((await (await request(`http://127.0.0.1:${lb.d.adminPort}/`)).body.json()) as { certificates: string[] }).certificates).toEqual(['other.test', 'tls.test']);
      // A bad pair: refused as a whole with one error naming it; the previous set stays in use.
      writeFileSync(join(dir, 'bad.test.crt'), 'not a certificate\n');
      writeFileSync(join(dir, 'bad.test.key'), 'not a key\n');
      await until('the refusal logged', async () => lb.d!.logs(), (l) => l.split('\n').some((line) => line.includes('TLS certificates not reloaded') && line.includes('bad.test.crt')));
      expect(await everyThreadServes('tls.test')).toBe(true);
      expect(await everyThreadServes('other.test')).toBe(true);
      expect(lb.d.logs()).toMatch(/TLS certificates reloaded/);
      expect(await lb.d.stop()).toBe(0);
    } finally {
      await lb.d?.stop('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('corral lb with an empty --tls-cert-dir', () => {
  it('listens for HTTPS anyway and serves it once the first pair is written (certificates issued after the start)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-lb-certs-'));
    const httpsPort = await freePort();
    const lb = await startDaemon('lb', { args: ['--agent-socket', agent.socket, '--lb-threads', '2', '--tls-cert-dir', dir, '--https-listen', `127.0.0.1:${httpsPort}`] });
    try {
      backends = await startBackends(['late']);
      const rev = JSON.parse(await cli(['register', 'late', `127.0.0.1:${backends[0]!.port}`, '--http-host', 'late.test', '--json'])) as { revision: number };
      await until('every thread at the registration', () => status(lb), (s) => s.revision >= rev.revision);
      expect(lb.logs()).toMatch(/no <host>\.crt \+ <host>\.key pair in --tls-cert-dir yet/);
      const curl = () => run('curl', ['-sS', '--noproxy', '*', '--cacert', join(dir, 'late.test.crt'), '--resolve', `late.test:${httpsPort}:127.0.0.1`, '-o', '/dev/null', '-w', '%{http_code}', `https://late.test:${httpsPort}/`])
        .then((r) => r.stdout, (e: { stderr?: string }) => `failed: ${e.stderr ?? ''}`);
      // Listening, but no certificate to offer yet: the handshake fails (curl has no CA file either).
      expect(await curl()).toMatch(/^failed/);
      await certPair(dir, 'late.test');
      await until('HTTPS answers with the new pair', curl, (out) => out === '200');
      // every thread: 16 fresh connections, each must answer
      await until('late.test on every thread', () => everyConnectionServes(httpsPort, dir, 'late.test'), (ok) => ok);
      expect(await lb.stop()).toBe(0);
    } finally {
      await lb.stop('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('corral lb --lb-threads 1', () => {
  it('serves on the main thread alone, as before threads', async () => {
    const lb = await startDaemon('lb', { args: ['--agent-socket', agent.socket, '--lb-threads', '1'] });
    try {
      backends = await startBackends(['one']);
      const rev = JSON.parse(await cli(['register', 'single', `127.0.0.1:${backends[0]!.port}`, '--http-host', 'single.test', '--json'])) as { revision: number };
      await until('at the registration', () => status(lb), (s) => s.revision >= rev.revision);
      const conns = connectAll(lb);
      const answers = await Promise.all(conns.map((c) => get(c, 'single.test')));
      expect(answers.every((a) => a.status === 200 && a.body === 'one default')).toBe(true);
      const s = await status(lb);
      expect(s.threads).toBe(1);
      expect(s.perThread).toHaveLength(1);
      expect(s.requests).toBe(CONNECTIONS);
      expect(await metricsTotal(lb, 'single')).toBe(CONNECTIONS);
      expect(lb.logs()).toMatch(/"threads":1/);
      expect(await lb.stop()).toBe(0);
    } finally {
      await lb.stop('SIGKILL');
    }
  });
});
