// `corral lb` as it runs in production: the real bundled executable, watching a real `corral
// agent` over its socket, driven by the `corral` CLI (register, switch, weight, rollback,
// deregister, status), with real HTTP backends and `wrk` as the client.
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { freePort, startDaemon, type Daemon } from '../test/support/corral.js';
import { Backend, cliOk, startBackends } from '../test/support/lb.js';
import { untilOk } from '../test/support/until.js';

const run = promisify(execFile);

let agent: Daemon;
let lb: Daemon;
const client = new Agent({ keepAliveTimeout: 1_000 });
let backends: Backend[] = [];
/** Each test has its own service (and Host), so one test's colors and drains do not meet another's. */
let svc = 'web0';
let testNo = 0;

beforeAll(async () => {
  agent = await startDaemon('agent');
  lb = await startDaemon('lb', { args: ['--agent-socket', agent.socket] });
});

afterAll(async () => {
  await lb?.stop();
  await agent?.stop();
  await client.close();
});

beforeEach(() => {
  svc = `web${++testNo}`;
});

afterEach(async () => {
  await Promise.all(backends.map((b) => b.stop()));
  backends = [];
});

async function get(path = '/', host = `${svc}.test`): Promise<{ status: number; body: string }> {
  const res = await request(`http://127.0.0.1:${lb.httpPort}${path}`, { headers: { host }, dispatcher: client });
  return { status: res.statusCode, body: (await res.body.text()).trim() };
}

const until = <T>(what: string, fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 10_000): Promise<T> =>
  untilOk(what, fn, ok, { ms: timeoutMs, everyMs: 20, detail: () => `--- agent ---\n${agent.logs().slice(-2000)}\n--- lb ---\n${lb.logs().slice(-2000)}` });

const cli = (args: string[]): Promise<string> => cliOk(agent, args);

async function register(b: Backend, extra: string[] = []): Promise<number> {
  const out = JSON.parse(await cli(['register', svc, `127.0.0.1:${b.port}`, '--http-host', `${svc}.test`, '--color', b.color, '--json', ...extra])) as { revision: number };
  return out.revision;
}

async function lbRevision(): Promise<number> {
  const res = await request(`http://127.0.0.1:${lb.adminPort}/`, { dispatcher: client });
  return (JSON.parse(await res.body.text()) as { revision: number }).revision;
}

async function tally(n: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const r = await get();
    const k = `${r.status} ${r.body}`;
    counts[k] = (counts[k] ?? 0) + 1;
  }
  return counts;
}

describe('corral lb with the real agent', () => {
  it('routes registered endpoints, follows `corral switch` at its revision, and `corral status` shows the LB applied it', async () => {
    backends = await startBackends(['b1', 'blue'], ['g1', 'green']);
    const [blue, green] = backends as [Backend, Backend];
    await register(blue);
    const rev = await register(green);
    await until('lb at the registration revision', lbRevision, (r) => r >= rev);
    await cli(['switch', svc, 'blue']);
    await until('blue serves', () => get(), (r) => r.body === 'b1 blue');
    const sw = JSON.parse(await cli(['switch', svc, 'green', '--json'])) as { revision: number };
    await until('lb applied the switch', lbRevision, (r) => r >= sw.revision);
    expect(await tally(4)).toEqual({ '200 g1 green': 4 });
    // The LB's acks reach the agent at most every 500 ms under a burst of changes (api/watch.ts).
    type Status = { revision: number; components: Array<{ component: string; appliedRevision: number; connected: boolean }> };
    const status = await until('the agent has the LB\'s ack of the switch', async () => JSON.parse(await cli(['status', '--json'])) as Status,
      (st) => (st.components.find((c) => c.component === 'lb')?.appliedRevision ?? 0) >= sw.revision);
    const lbStatus = status.components.find((c) => c.component === 'lb');
    expect(lbStatus?.connected).toBe(true);
    expect(lbStatus!.appliedRevision).toBeGreaterThanOrEqual(sw.revision);
    const text = await cli(['status']);
    expect(text).toMatch(/lb: applied \d+ \(in sync\)/);
    const metrics = await (await request(`http://127.0.0.1:${lb.adminPort}/metrics`, { dispatcher: client })).body.text();
    expect(metrics).toMatch(new RegExp(`corral_lb_requests_total\\{namespace="default",service="${svc}",color="green",code="200"\\} [1-9]`));
    expect(metrics).toMatch(new RegExp(`^corral_lb_applied_revision (\\d+)$`, 'm'));
  });

  it('takes an endpoint out when it fails its health check and back when it passes again', async () => {
    backends = await startBackends(['a'], ['b']);
    const [a, b] = backends as [Backend, Backend];
    const interval = 300;
    for (const x of [a, b]) await register(x, ['--health-path', '/health', '--health-interval', `${interval}ms`]);
    // Round robin is per LB thread, and this client alternates two keep-alive connections that
    // may sit on two threads in step: count over enough requests that both endpoints must show.
    await until('both serve', () => tally(4), (t) => (t['200 a default'] ?? 0) >= 1 && (t['200 b default'] ?? 0) >= 1);
    // Out after fall = 2 failing checks and the registry round trip (agent -> registry -> watch ->
    // lb); back after rise passes. How soon is the health checker's own test (agent/health.test.ts).
    a.healthy = false;
    await until('a out', () => tally(6), (t) => t['200 b default'] === 6, 20_000);
    expect(await tally(6)).toEqual({ '200 b default': 6 });
    a.healthy = true;
    await until('a back', () => tally(4), (t) => (t['200 a default'] ?? 0) >= 1, 20_000);
  });

  it('drains a deregistered endpoint: no new requests at once, its in-flight request finishes', async () => {
    backends = await startBackends(['a'], ['b']);
    const [a, b] = backends as [Backend, Backend];
    await register(a);
    await register(b);
    await until('both serve', () => tally(4), (t) => Object.keys(t).length === 2);
    // Land a slow request on a: keep asking until a has one in flight.
    const slow: Array<Promise<{ status: number; body: string }>> = [];
    while (a.inFlight === 0) {
      slow.push(get('/slow?ms=1500'));
      await until('arrival', async () => a.inFlight + b.inFlight, (n) => n >= slow.length);
    }
    const dr = JSON.parse(await cli(['deregister', svc, `127.0.0.1:${a.port}`, '--json'])) as { revision: number; endpoint: { draining: boolean } };
    expect(dr.endpoint.draining).toBe(true);
    await until('lb applied the deregistration', lbRevision, (r) => r >= dr.revision);
    expect(await tally(6)).toEqual({ '200 b default': 6 });
    const results = await Promise.all(slow);
    expect(results.every((r) => r.status === 200)).toBe(true);
    expect(results.map((r) => r.body)).toContain('a default');
  });

  it('wrk through `corral switch`, a canary `weight` and `rollback`: zero non-2xx responses and zero socket errors', async () => {
    backends = await startBackends(['b1', 'blue'], ['b2', 'blue'], ['g1', 'green'], ['g2', 'green']);
    for (const x of backends) await register(x);
    await cli(['switch', svc, 'blue']);
    await until('blue serves', () => tally(4), (t) => Object.keys(t).every((k) => k.includes('blue')));
    const wrk = run('wrk', ['-t2', '-c16', '-d7s', '--latency', '-H', `Host: ${svc}.test`, `http://127.0.0.1:${lb.httpPort}/`], { timeout: 30_000 });
    const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
    await pause(1_500);
    await cli(['switch', svc, 'green']);
    const greenBefore = backends[2]!.requests + backends[3]!.requests;
    await pause(1_500);
    await cli(['weight', svc, 'blue=90', 'green=10']);
    const blueBefore = backends[0]!.requests + backends[1]!.requests;
    await pause(1_500);
    await cli(['rollback', svc]);
    const { stdout } = await wrk;
    const requests = Number(/(\d+) requests in/.exec(stdout)?.[1] ?? 0);
    expect(requests).toBeGreaterThan(1_000);
    expect(stdout).not.toMatch(/Non-2xx or 3xx responses/);
    expect(stdout).not.toMatch(/Socket errors/);
    // Every step took effect while wrk ran.
    expect(backends[2]!.requests + backends[3]!.requests).toBeGreaterThan(greenBefore);
    expect(backends[0]!.requests + backends[1]!.requests).toBeGreaterThan(blueBefore);
    const services = JSON.parse(await cli(['services', '--json'])) as { services: Array<{ name: string; active: Record<string, number> }> };
    expect(services.services.find((s) => s.name === svc)?.active).toEqual({ green: 100 });
  });

  it('takes its knobs from flags and CORRAL_* variables: balance, header limit, HTTPS from a certificate directory', async () => {
    backends = await startBackends(['h']);
    const [h] = backends as [Backend];
    await register(h);
    const dir = mkdtempSync(join(tmpdir(), 'corral-lb-certs-'));
    const httpsPort = await freePort();
    let tuned: Daemon | undefined;
    try {
      await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', `/CN=${svc}.test`,
        '-keyout', join(dir, `${svc}.test.key`), '-out', join(dir, `${svc}.test.crt`)]);
      tuned = await startDaemon('lb', {
        args: ['--agent-socket', agent.socket, '--lb-balance', 'least-request', '--tls-cert-dir', dir, '--https-listen', `127.0.0.1:${httpsPort}`],
        env: { CORRAL_LB_MAX_HEADER_SIZE: '2k' },
      });
      const status = JSON.parse(await (await request(`http://127.0.0.1:${tuned.adminPort}/`, { dispatcher: client })).body.text()) as Record<string, unknown>;
      expect(status).toMatchObject({ balance: 'least-request', httpsPort, certificates: [`${svc}.test`] });
      const answer = await new Promise<string>((resolve) => {
        const s = connect(tuned!.httpPort, '127.0.0.1');
        let text = '';
        s.on('data', (d: Buffer) => (text += d));
        s.on('close', () => resolve(text));
        s.write(`GET / HTTP/1.1\r\nHost: ${svc}.test\r\nX-Big: ${'a'.repeat(3000)}\r\n\r\n`);
      });
      expect(answer).toMatch(/^HTTP\/1\.1 431 /);
      const { stdout } = await run('curl', ['-sS', '--noproxy', '*', '--cacert', join(dir, `${svc}.test.crt`), '--resolve', `${svc}.test:${httpsPort}:127.0.0.1`, `https://${svc}.test:${httpsPort}/headers`]);
      expect((JSON.parse(stdout) as { headers: Record<string, string> }).headers['x-forwarded-proto']).toBe('https');
    } finally {
      await tuned?.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('`corral register --label` puts edge labels on the route (response header, rate limit); a bad label is refused, naming it', async () => {
    backends = await startBackends(['e1', 'blue']);
    await register(backends[0]!, ['--label', 'corral.http.response.set-header.X-Edge=on', '--label', 'corral.http.rate-limit=3/m']);
    const res = await until('the route answers with its header', async () => {
      const r = await request(`http://127.0.0.1:${lb.httpPort}/`, { headers: { host: `${svc}.test` }, dispatcher: client });
      await r.body.text();
      return r;
    }, (r) => r.statusCode === 200 && r.headers['x-edge'] === 'on');
    expect(res.headers['x-edge']).toBe('on');
    // 3 a minute per client for the whole LB (2 threads here): each request on a new connection,
    // which the kernel spreads over the threads; 3 pass in all (the ones above included), the rest
    // get 429 with Retry-After.
    const statuses: number[] = [];
    let retryAfter = '';
    for (let i = 0; i < 8; i++) {
      const r = await request(`http://127.0.0.1:${lb.httpPort}/`, { headers: { host: `${svc}.test` }, reset: true });
      await r.body.text();
      statuses.push(r.statusCode);
      if (r.statusCode === 429) retryAfter = String(r.headers['retry-after']);
    }
    expect(statuses.filter((s) => s === 200).length + 1).toBe(3);
    expect(statuses.filter((s) => s === 429).length).toBe(6);
    expect(Number(retryAfter)).toBeGreaterThan(0);
    const bad = await agent.cli(['register', svc, `127.0.0.1:${backends[0]!.port}`, '--http-host', `${svc}.test`, '--label', 'corral.http.rate-limit=fast']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/corral\.http\.rate-limit/);
    expect(bad.stderr).toMatch(/fast/);
    const noValue = await agent.cli(['register', svc, `127.0.0.1:${backends[0]!.port}`, '--label', 'corral.http.redirect']);
    expect(noValue.code).toBe(2);
    expect(noValue.stderr).toMatch(/not name=value/);
    // the refused registrations changed nothing: the route still answers with its header
    expect((await get()).status).toBe(429);
  });

  it('wrk while a backend process is killed: zero non-2xx responses and zero socket errors (retries, then ejection)', async () => {
    const procs = await Promise.all(['k1', 'k2', 'k3'].map(async (name) => {
      const src = `require('http').createServer((q, s) => s.end('${name}\\n')).listen(0, '127.0.0.1', function () { console.log(this.address().port); });`;
      const child = spawn(process.execPath, ['-e', src], { stdio: ['ignore', 'pipe', 'inherit'] });
      const port = await new Promise<number>((resolve) => child.stdout!.once('data', (d: Buffer) => resolve(Number(String(d).trim()))));
      return { child, port };
    }));
    try {
      for (const p of procs) await cli(['register', svc, `127.0.0.1:${p.port}`, '--http-host', `${svc}.test`]);
      await until('all three serve', () => tally(6), (t) => Object.keys(t).length === 3);
      const wrk = run('wrk', ['-t2', '-c16', '-d5s', '-H', `Host: ${svc}.test`, `http://127.0.0.1:${lb.httpPort}/`], { timeout: 30_000 });
      await new Promise((r) => setTimeout(r, 1_500));
      procs[0]!.child.kill('SIGKILL');
      const { stdout } = await wrk;
      expect(Number(/(\d+) requests in/.exec(stdout)?.[1] ?? 0)).toBeGreaterThan(1_000);
      expect(stdout).not.toMatch(/Non-2xx or 3xx responses/);
      expect(stdout).not.toMatch(/Socket errors/);
      const metrics = await (await request(`http://127.0.0.1:${lb.adminPort}/metrics`, { dispatcher: client })).body.text();
      expect(metrics).toMatch(new RegExp(`corral_lb_ejections_total\\{namespace="default",service="${svc}",endpoint="127\\.0\\.0\\.1:${procs[0]!.port}",reason="connect"\\} [1-9]`)); // once per LB thread that saw it fail (each has its own passive health)
    } finally {
      for (const p of procs) p.child.kill('SIGKILL');
    }
  });
});
