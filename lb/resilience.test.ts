// The load balancer when things go wrong: backends that fail, die or are slow, clients that send
// malformed, smuggling-shaped, oversized or slow requests; and the protocols beyond plain HTTP
// (WebSocket, TLS). Real backends (node:http servers, one in its own process to kill), real
// sockets, curl and openssl.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import { promisify } from 'node:util';
import { Agent, request } from 'undici';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { LbOptions } from '../api/options.js';
import type { WatchEvent } from '../api/types.js';
import { balancerFor } from './balancer.js';
import { LbMetrics } from './metrics.js';
import { PassiveHealth } from './outliers.js';
import { HttpProxy, type ProxyOptions } from './proxy.js';
import { RouteTable } from './routes.js';
import { Backend, backendEndpoint, startBackends } from '../test/support/lb.js';
import { delta, endpoint, snapshot } from '../test/support/records.js';
import { until } from '../test/support/until.js';
import { CertificateStore } from './tls.js';
import { UPSTREAM_DEFAULTS, UpstreamPools } from './upstreams.js';

const run = promisify(execFile);

/** The real proxy with passive health on 127.0.0.1:0, fed watch events directly. */
class Lb {
  readonly metrics = new LbMetrics();
  readonly pools = new UpstreamPools({ ...UPSTREAM_DEFAULTS, connectTimeoutMs: 1_000, headersTimeoutMs: 5_000 });
  readonly outliers = new PassiveHealth({ connectFailures: 3, serverErrors: 5, probeIntervalMs: 200, probeTimeoutMs: 500 }, this.metrics);
  readonly routes: RouteTable;
  readonly proxy: HttpProxy;
  port = 0;
  constructor(opts: Partial<ProxyOptions> = {}, balance: LbOptions['balance'] = 'round-robin') {
    this.routes = new RouteTable(undefined, (origin, last) => {
      this.outliers.drop(origin);
      this.pools.retire(origin, last.drainMs);
    }, balancerFor(balance, this.outliers.stateOf));
    this.proxy = new HttpProxy(this.routes, this.pools, this.metrics, undefined, opts, this.outliers);
  }
  async start(): Promise<this> {
    this.port = await this.proxy.listen('127.0.0.1:0');
    return this;
  }
  apply(ev: WatchEvent): void {
    this.routes.apply(ev);
  }
  url(path = '/'): string {
    return `http://127.0.0.1:${this.port}${path}`;
  }
  async close(): Promise<void> {
    this.outliers.close();
    await this.proxy.close(500);
  }
}

const client = new Agent({ keepAliveTimeout: 1_000 });
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
afterAll(async () => {
  await client.close();
});

async function lbWith(backends: Backend[], opts: Partial<ProxyOptions> = {}, balance: LbOptions['balance'] = 'round-robin'): Promise<Lb> {
  const lb = await new Lb(opts, balance).start();
  cleanups.push(() => Promise.all(backends.map((b) => b.stop())));
  cleanups.push(() => lb.close());
  lb.apply(snapshot(1, backends.map((b) => backendEndpoint(b, 'web', { httpHosts: ['web.test'] }))));
  return lb;
}

async function get(lb: Lb, path = '/', host = 'web.test'): Promise<{ status: number; body: string }> {
  const res = await request(lb.url(path), { headers: { host }, dispatcher: client });
  return { status: res.statusCode, body: await res.body.text() };
}

async function tally(lb: Lb, n: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const r = await get(lb);
    const key = `${r.status} ${r.body.trim()}`;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}

/** How these tests poll the proxy's own state. */
const SOON = { ms: 5_000, everyMs: 25 };

/** Sends raw bytes on a fresh connection; resolves with everything read until the LB closes it. */
function raw(port: number, bytes: string | Buffer, opts: { keepOpenMs?: number } = {}): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = netConnect(port, '127.0.0.1');
    let text = '';
    let closed = false;
    const timer = setTimeout(() => {
      s.destroy();
    }, opts.keepOpenMs ?? 3_000);
    s.on('data', (d: Buffer) => (text += d.toString('latin1')));
    s.on('end', () => (closed = true));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ text, closed });
    });
    s.write(bytes);
  });
}

function statusLines(text: string): string[] {
  return text.split('\r\n').filter((l) => /^HTTP\/1\.1 \d{3}/.test(l));
}

/** A backend in its own process, to kill with SIGKILL. */
async function backendProcess(name: string): Promise<{ child: ChildProcess; port: number }> {
  const src = `require('http').createServer((q, s) => { s.setHeader('x-backend', '${name}'); s.end('${name}\\n'); }).listen(0, '127.0.0.1', function () { console.log(this.address().port); });`;
  const child = spawn(process.execPath, ['-e', src], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.once('data', (d: Buffer) => resolve(Number(String(d).trim())));
    child.once('exit', (code) => reject(new Error(`backend ${name} exited with ${code}`)));
  });
  cleanups.push(() => child.kill('SIGKILL'));
  return { child, port };
}

describe('passive health (this LB ejects on its own)', () => {
  it('ejects an endpoint after 5 answers of 5xx in a row and takes it back after a passing probe', async () => {
    const [a, b] = (await startBackends(['a'], ['b'])) as [Backend, Backend];
    const lb = await lbWith([a, b]);
    a.failWith = 500;
    // Round robin: a's five 500s in a row come within the first ten requests; then only b answers.
    const first = await tally(lb, 10);
    expect(first).toEqual({ '500 a failing with 500': 5, '200 b default': 5 });
    expect(await tally(lb, 6)).toEqual({ '200 b default': 6 });
    const metrics = await lb.metrics.registry.metrics();
    expect(metrics).toMatch(/corral_lb_ejections_total\{namespace="default",service="web",endpoint="127\.0\.0\.1:\d+",reason="5xx"\} 1/);
    expect(metrics).toMatch(/corral_lb_ejected\{namespace="default",service="web",endpoint="127\.0\.0\.1:\d+"\} 1/);
    a.failWith = 0;
    await until('a probed back in', () => lb.outliers.ejectedCount === 0, SOON);
    expect(await tally(lb, 4)).toEqual({ '200 a default': 2, '200 b default': 2 });
  });

  it('retries connection failures on the other endpoint (no 502), ejects the dead one and takes it back when it listens again', async () => {
    const [a, b] = (await startBackends(['a'], ['b'])) as [Backend, Backend];
    const lb = await lbWith([a, b]);
    const portA = a.port;
    await a.stop();
    expect(await tally(lb, 8)).toEqual({ '200 b default': 8 });
    expect(lb.outliers.ejectedCount).toBe(1);
    expect(await lb.metrics.registry.metrics()).toMatch(/corral_lb_ejections_total\{[^}]*reason="connect"\} 1/);
    const again = new Backend('a');
    await again.start(portA);
    cleanups.push(() => again.stop());
    await until('a back', () => lb.outliers.ejectedCount === 0, SOON);
    expect(await tally(lb, 4)).toEqual({ '200 a default': 2, '200 b default': 2 });
  });

  it('serves from ejected endpoints when every one is ejected rather than answering 503', async () => {
    const [a] = (await startBackends(['a'])) as [Backend];
    const lb = await lbWith([a]);
    a.failWith = 503;
    for (let i = 0; i < 6; i++) expect((await get(lb)).status).toBe(503);
    expect(lb.outliers.ejectedCount).toBe(1);
    a.failWith = 0;
    expect(await get(lb)).toEqual({ status: 200, body: 'a default\n' });
  });
});

describe('retries', () => {
  it('loses no idempotent request when a backend process is killed under load', async () => {
    const one = await backendProcess('one');
    const two = await backendProcess('two');
    const lb = await new Lb().start();
    cleanups.push(() => lb.close());
    lb.apply(snapshot(1, [
      endpoint({ service: 'web', port: one.port, id: 'one', httpHosts: ['web.test'] }),
      endpoint({ service: 'web', port: two.port, id: 'two', httpHosts: ['web.test'] }),
    ]));
    const load = new Agent({ connections: 16 });
    cleanups.push(() => load.close());
    const statuses = new Map<number, number>();
    const errors: string[] = [];
    let stop = false;
    let served = 0;
    const worker = async () => {
      while (!stop) {
        try {
          const res = await request(lb.url('/'), { headers: { host: 'web.test' }, dispatcher: load });
          await res.body.text();
          statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
          served++;
        } catch (err) {
          errors.push((err as Error).message);
        }
      }
    };
    const workers = Array.from({ length: 16 }, worker);
    await until('warm load', () => served > 500, { ms: 10_000, everyMs: 25 });
    one.child.kill('SIGKILL');
    const killedAt = served;
    await until('load after the kill', () => served > killedAt + 1_000, { ms: 15_000, everyMs: 25 });
    stop = true;
    await Promise.all(workers);
    expect(errors).toEqual([]);
    expect([...statuses.keys()]).toEqual([200]);
    expect(lb.outliers.ejectedCount).toBe(1);
  });

  it('does not replay a request with a body: 502', async () => {
    const lb = await new Lb().start();
    cleanups.push(() => lb.close());
    const dead = (await startBackends(['dead']))[0]!;
    const port = dead.port;
    await dead.stop();
    const [live] = (await startBackends(['live'])) as [Backend];
    cleanups.push(() => live.stop());
    lb.apply(snapshot(1, [
      endpoint({ service: 'web', port, id: 'a-dead', httpHosts: ['web.test'] }),
      backendEndpoint(live, 'web', { id: 'b-live', httpHosts: ['web.test'] }),
    ]));
    const res = await request(lb.url('/'), { method: 'POST', headers: { host: 'web.test' }, body: 'x=1', dispatcher: client });
    await res.body.text();
    expect(res.statusCode).toBe(502);
    expect(live.requests).toBe(0);
  });
});

describe('bad input', () => {
  let lb: Lb;
  let backend: Backend;
  const setup = async (opts: Partial<ProxyOptions> = {}) => {
    [backend] = (await startBackends(['ok'])) as [Backend];
    lb = await lbWith([backend], opts);
  };

  it('refuses Content-Length with Transfer-Encoding (smuggling shape) with 400 and closes; the smuggled request never runs', async () => {
    await setup();
    const smuggle = 'POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n';
    const r = await raw(lb.port, smuggle);
    expect(statusLines(r.text)).toEqual(['HTTP/1.1 400 Bad Request']);
    expect(r.closed).toBe(true);
    expect(backend.requests).toBe(0);
  });

  it('refuses two different Content-Length headers, an obfuscated Transfer-Encoding and a bad chunk size with 400 and closes', async () => {
    await setup();
    const cases = [
      'POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde',
      'POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
      'POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n',
      'POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: web.test\r\nBad Header: x\r\n\r\n',
    ];
    for (const c of cases) {
      const r = await raw(lb.port, c);
      expect(statusLines(r.text), c).toEqual(['HTTP/1.1 400 Bad Request']);
      expect(r.closed).toBe(true);
    }
    expect(backend.requests).toBe(0);
    expect(await get(lb)).toEqual({ status: 200, body: 'ok default\n' });
  });

  it('answers 431 to oversized headers and 413 to oversized bodies, closing the connection', async () => {
    await setup({ maxHeaderBytes: 4096, maxBodyBytes: 1000 });
    const big = await raw(lb.port, `GET / HTTP/1.1\r\nHost: web.test\r\nX-Big: ${'a'.repeat(8000)}\r\n\r\n`);
    expect(statusLines(big.text)).toEqual(['HTTP/1.1 431 Request Header Fields Too Large']);
    expect(big.closed).toBe(true);
    const declared = await raw(lb.port, `POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5000\r\n\r\n${'b'.repeat(5000)}`);
    expect(statusLines(declared.text)).toEqual(['HTTP/1.1 413 Payload Too Large']);
    expect(declared.closed).toBe(true);
    const chunk = 'c'.repeat(600);
    const chunked = await raw(lb.port, `POST /echo HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n${chunk}\r\n258\r\n${chunk}\r\n0\r\n\r\n`);
    // The upstream may have started echoing: then the only signal left is the cut connection.
    expect(chunked.closed).toBe(true);
    expect(chunked.text).not.toContain(chunk + chunk);
    expect(await get(lb)).toEqual({ status: 200, body: 'ok default\n' });
  });

  it('answers 408 to a client that never finishes its headers, while other clients are served', async () => {
    await setup({ clientHeadersTimeoutMs: 600, requestTimeoutMs: 2_000 });
    const t0 = Date.now();
    const slow = raw(lb.port, 'GET / HTTP/1.1\r\nHost: web.test\r\nX-Slow: ', { keepOpenMs: 5_000 });
    expect(await get(lb)).toEqual({ status: 200, body: 'ok default\n' });
    const r = await slow;
    expect(statusLines(r.text)).toEqual(['HTTP/1.1 408 Request Timeout']);
    expect(r.closed).toBe(true);
    expect(Date.now() - t0).toBeLessThan(3_000);
  });
});

describe('protocols', () => {
  it('passes a WebSocket upgrade through with X-Forwarded-For and Forwarded, and carries bytes both ways', async () => {
    const [ws] = (await startBackends(['ws'])) as [Backend];
    const lb = await lbWith([ws]);
    const s = netConnect(lb.port, '127.0.0.1');
    cleanups.push(() => s.destroy());
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    s.write('GET /chat HTTP/1.1\r\nHost: web.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
    await until('101', () => got.includes('\r\n\r\n'), SOON);
    expect(got).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(got.toLowerCase()).toContain('x-backend: ws');
    got = '';
    s.write('ping-1');
    await until('echo', () => got === 'ping-1', SOON);
    s.write('ping-2');
    await until('echo 2', () => got === 'ping-1ping-2', SOON);
    const seen = ws.upgrades[0]!;
    expect(seen.url).toBe('/chat');
    expect(seen.headers['upgrade']).toBe('websocket');
    expect(seen.headers['sec-websocket-key']).toBe('dGhlIHNhbXBsZSBub25jZQ==');
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen.headers['forwarded']).toBe('for=127.0.0.1;host="web.test";proto=http');
  });

  it('terminates TLS with the certificate of the requested Host (exact and wildcard) and forwards as HTTP', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-certs-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    for (const [file, cn] of [['web.test', 'web.test'], ['_.wild.test', '*.wild.test']] as const) {
      await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', `/CN=${cn}`,
        '-keyout', join(dir, `${file}.key`), '-out', join(dir, `${file}.crt`)]);
    }
    const [h] = (await startBackends(['h'])) as [Backend];
    const lb = await lbWith([h]);
    lb.apply(delta(2, { endpoints: [backendEndpoint(h, 'web', { httpHosts: ['web.test', '*.wild.test'] })] }));
    const certs = CertificateStore.load(dir);
    expect(certs.names.sort()).toEqual(['*.wild.test', 'web.test']);
    const https = lb.proxy.serve(createTlsServer({ SNICallback: certs.sniCallback }));
    const port = await lb.proxy.listen('127.0.0.1:0', https);
    const cnFor = (servername: string) => new Promise<string>((resolve, reject) => {
      const t = tlsConnect({ port, host: '127.0.0.1', servername, rejectUnauthorized: false }, () => {
        resolve(String(t.getPeerCertificate().subject.CN));
        t.destroy();
      });
      t.on('error', reject);
    });
    expect(await cnFor('web.test')).toBe('web.test');
    expect(await cnFor('a.wild.test')).toBe('*.wild.test');
    const { stdout } = await run('curl', ['-sS', '--noproxy', '*', '--cacert', join(dir, 'web.test.crt'), '--resolve', `web.test:${port}:127.0.0.1`, `https://web.test:${port}/headers`]);
    const seen = JSON.parse(stdout) as { headers: Record<string, string> };
    expect(seen.headers['x-forwarded-proto']).toBe('https');
    expect(seen.headers['forwarded']).toBe(`for=127.0.0.1;host="web.test:${port}";proto=https`);
  });
});

describe('least-request balancing', () => {
  it('sends most requests to the endpoint with fewer in flight', async () => {
    const [fast, slow] = (await startBackends(['fast'], ['slow'])) as [Backend, Backend];
    slow.delayMs = 300;
    const lb = await lbWith([fast, slow], {}, 'least-request');
    const load = new Agent({ connections: 64 });
    cleanups.push(() => load.close());
    // 6 clients, each sending its next request when the last one is answered: slow's requests stay
    // in flight, so it loses most draws; round robin would give it half.
    const counts: Record<string, number> = {};
    let sent = 0;
    await Promise.all(Array.from({ length: 6 }, async () => {
      while (sent < 60) {
        sent++;
        const res = await request(lb.url('/'), { headers: { host: 'web.test' }, dispatcher: load });
        const b = (await res.body.text()).trim();
        counts[b] = (counts[b] ?? 0) + 1;
      }
    }));
    expect(counts['fast default']! + (counts['slow default'] ?? 0)).toBe(60);
    expect(counts['fast default']!).toBeGreaterThan(45);
  });
});

describe('draining', () => {
  it('cuts requests still running on a removed endpoint once its drain time is over', async () => {
    const [s] = (await startBackends(['s'])) as [Backend];
    const lb = await new Lb().start();
    cleanups.push(() => lb.close());
    cleanups.push(() => s.stop());
    const ep = backendEndpoint(s, 'web', { httpHosts: ['web.test'], drainMs: 300 });
    lb.apply(snapshot(1, [ep]));
    const arrived = s.nextArrival();
    const t0 = Date.now();
    const pending = request(lb.url('/slow?ms=5000'), { headers: { host: 'web.test' }, dispatcher: client }).then(
      async (r) => ({ status: r.statusCode, body: await r.body.text().catch(() => 'cut') }),
      (err: Error) => ({ status: 0, body: err.message }),
    );
    await arrived;
    lb.apply(delta(2, { deletedEndpoints: [ep.id] }));
    const r = await pending;
    expect(r.status).not.toBe(200);
    expect(Date.now() - t0).toBeLessThan(2_500);
  });
});


