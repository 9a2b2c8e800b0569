import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import { promisify } from 'node:util';
import { Agent, request } from 'undici';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { WatchEvent } from '../api/types.js';
import { LbMetrics } from './metrics.js';
import { Proxy } from './proxy.js';
import { RouteTable } from './routes.js';
import { Backend, backendEndpoint, deadPort, delta, endpoint, service, snapshot, startBackends } from './testbed.js';
import { UPSTREAM_DEFAULTS, UpstreamPools } from './upstreams.js';

const run = promisify(execFile);

/** The real proxy on 127.0.0.1:0, fed watch events directly. */
class Lb {
  readonly pools: UpstreamPools;
  readonly routes: RouteTable;
  readonly metrics = new LbMetrics();
  readonly proxy: Proxy;
  port = 0;
  constructor(timeouts: Partial<typeof UPSTREAM_DEFAULTS> = {}) {
    const pools = new UpstreamPools({ ...UPSTREAM_DEFAULTS, connectTimeoutMs: 2_000, headersTimeoutMs: 5_000, ...timeouts });
    this.pools = pools;
    this.routes = new RouteTable(undefined, (origin) => pools.retire(origin));
    this.proxy = new Proxy(this.routes, pools, this.metrics);
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
}

// One client for all tests; its own keep-alive pool to the proxy.
const client = new Agent({ keepAliveTimeout: 1_000 });

async function get(lb: Lb, host: string, path = '/'): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  const res = await request(lb.url(path), { headers: { host }, dispatcher: client });
  return { status: res.statusCode, body: await res.body.text(), headers: res.headers };
}

async function tally(lb: Lb, host: string, n: number, path = '/'): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const r = await get(lb, host, path);
    expect(r.status).toBe(200);
    const who = r.body.trim();
    counts[who] = (counts[who] ?? 0) + 1;
  }
  return counts;
}

let lb: Lb;
let backends: Backend[] = [];

afterEach(async () => {
  await lb?.proxy.close(1_000);
  await Promise.all(backends.map((b) => b.stop()));
  backends = [];
});
afterAll(async () => {
  await client.close();
});

describe('routing', () => {
  it('routes by exact host, wildcard host and longest path prefix; Host port is ignored; unknown host is 404', async () => {
    backends = await startBackends(['site'], ['api'], ['wild']);
    const [site, api, wild] = backends as [Backend, Backend, Backend];
    lb = await new Lb().start();
    lb.apply(snapshot(1, [
      backendEndpoint(site, 'site', { httpHosts: ['app.example.com'] }),
      backendEndpoint(api, 'api', { httpHosts: ['app.example.com'], httpPath: '/api' }),
      backendEndpoint(wild, 'wild', { httpHosts: ['*.example.com'] }),
    ]));
    expect((await get(lb, 'app.example.com', '/')).body).toBe('site default\n');
    expect((await get(lb, 'app.example.com', '/api/users?id=3')).body).toBe('api default\n');
    expect((await get(lb, 'app.example.com', '/apiary')).body).toBe('site default\n');
    expect((await get(lb, 'App.Example.com:8080', '/api')).body).toBe('api default\n');
    expect((await get(lb, 'shop.example.com', '/api')).body).toBe('wild default\n');
    const miss = await get(lb, 'nobody.test', '/x');
    expect(miss.status).toBe(404);
    expect(miss.body).toContain('nobody.test');
    expect(api.last?.url).toBe('/api');
  });

  it('answers 503 naming the service when it has no serving endpoint', async () => {
    backends = await startBackends(['sick'], ['leaving']);
    const [sick, leaving] = backends as [Backend, Backend];
    lb = await new Lb().start();
    lb.apply(snapshot(1, [
      backendEndpoint(sick, 'web', { httpHosts: ['web.test'], healthy: false }),
      backendEndpoint(leaving, 'web', { httpHosts: ['web.test'], draining: true }),
    ]));
    const r = await get(lb, 'web.test');
    expect(r.status).toBe(503);
    expect(r.body).toContain('default/web');
    expect(r.body).toContain('web.test');
    expect(sick.requests + leaving.requests).toBe(0);
  });

  it('answers 502 naming the endpoint and service when the backend is down', async () => {
    lb = await new Lb().start();
    const port = await deadPort();
    lb.apply(snapshot(1, [endpoint({ service: 'gone', port, httpHosts: ['gone.test'] })]));
    const r = await get(lb, 'gone.test');
    expect(r.status).toBe(502);
    expect(r.body).toContain(`127.0.0.1:${port}`);
    expect(r.body).toContain('default/gone');
    const metrics = await lb.metrics.registry.metrics();
    expect(metrics).toMatch(/corral_lb_requests_total\{namespace="default",service="gone",color="default",code="502"\} 1/);
    // With a request body too, and the client connection stays usable.
    const post = await request(lb.url('/upload'), { method: 'POST', headers: { host: 'gone.test' }, body: Buffer.alloc(256 * 1024, 7), dispatcher: client });
    expect(post.statusCode).toBe(502);
    await post.body.text();
    expect((await get(lb, 'gone.test')).status).toBe(502);
  });

  it('answers 502 when the backend drops the connection during a streamed upload', async () => {
    backends = await startBackends(['rude']);
    const [rude] = backends as [Backend];
    lb = await new Lb().start();
    lb.apply(snapshot(1, [backendEndpoint(rude, 'rude', { httpHosts: ['rude.test'] })]));
    const chunk = Buffer.alloc(1 << 20, 1);
    let left = 16;
    const body = new Readable({
      read() {
        this.push(left-- > 0 ? chunk : null);
      },
    });
    const uploader = new Agent();
    const res = await request(lb.url('/reset'), { method: 'POST', headers: { host: 'rude.test' }, body, dispatcher: uploader }).catch((err: Error) => err);
    // Either a 502 or, if the proxy had to give up on the half-sent upload, a cut connection.
    if (!(res instanceof Error)) {
      expect(res.statusCode).toBe(502);
      await res.body.text();
    }
    expect((await get(lb, 'rude.test', '/')).status).toBe(200); // the proxy is still fine
    // The uploader's connection, whose body the proxy abandoned, is closed by the proxy rather than
    // left hanging until shutdown (only the test client's connection stays open).
    const open = () => new Promise<number>((resolve) => lb.proxy.server.getConnections((_e, n) => resolve(n)));
    const t0 = Date.now();
    while ((await open()) > 1 && Date.now() - t0 < 500) await new Promise((r) => setTimeout(r, 20));
    expect(await open()).toBe(1);
    await uploader.destroy();
  });

  it('answers 504 when the backend does not send headers in time', async () => {
    backends = await startBackends(['slowpoke']);
    const [slowpoke] = backends as [Backend];
    lb = await new Lb({ headersTimeoutMs: 300 }).start();
    lb.apply(snapshot(1, [backendEndpoint(slowpoke, 'slow', { httpHosts: ['slow.test'] })]));
    const r = await get(lb, 'slow.test', '/slow?ms=2000');
    expect(r.status).toBe(504);
    expect(r.body).toContain('default/slow');
  });

  it('answers 503 before the first snapshot', async () => {
    lb = await new Lb().start();
    const r = await get(lb, 'any.test');
    expect(r.status).toBe(503);
    expect(r.body).toContain('no routes');
  });
});

describe('balancing', () => {
  it('reaches every backend in turn, and respects endpoint weights', async () => {
    backends = await startBackends(['a'], ['b'], ['c']);
    const [a, b, c] = backends as [Backend, Backend, Backend];
    lb = await new Lb().start();
    lb.apply(snapshot(1, [a, b, c].map((x) => backendEndpoint(x, 'web', { httpHosts: ['web.test'] }))));
    expect(await tally(lb, 'web.test', 30)).toEqual({ 'a default': 10, 'b default': 10, 'c default': 10 });
    lb.apply(delta(2, { endpoints: [backendEndpoint(c, 'web', { httpHosts: ['web.test'], weight: 2 })] }));
    expect(await tally(lb, 'web.test', 40)).toEqual({ 'a default': 10, 'b default': 10, 'c default': 20 });
  });

  it('splits traffic between colors by the service weights (canary)', async () => {
    backends = await startBackends(['b1', 'blue'], ['g1', 'green']);
    const [b1, g1] = backends as [Backend, Backend];
    lb = await new Lb().start();
    const eps = [backendEndpoint(b1, 'web', { httpHosts: ['web.test'] }), backendEndpoint(g1, 'web', { httpHosts: ['web.test'] })];
    lb.apply(snapshot(1, eps, [service('web', { blue: 90, green: 10 })]));
    expect(await tally(lb, 'web.test', 50)).toEqual({ 'b1 blue': 45, 'g1 green': 5 });
  });
});

describe('forwarding', () => {
  it('sets X-Forwarded-* and strips hop-by-hop headers both ways (curl)', async () => {
    backends = await startBackends(['h']);
    const [h] = backends as [Backend];
    lb = await new Lb().start();
    lb.apply(snapshot(1, [backendEndpoint(h, 'web', { httpHosts: ['web.test'] })]));
    const { stdout } = await run('curl', [
      '-sS', '--noproxy', '*', '-D', '-', lb.url('/headers?x=1'),
      '-H', 'Host: Web.test:8080',
      '-H', 'Connection: keep-alive, X-Strip-Me',
      '-H', 'X-Strip-Me: secret',
      '-H', 'Keep-Alive: timeout=5',
      '-H', 'Proxy-Authorization: Basic Zm9vOmJhcg==',
      '-H', 'TE: trailers',
      '-H', 'Upgrade: websocket',
      '-H', 'X-Forwarded-For: 10.1.2.3',
      '-H', 'X-Forwarded-Proto: https',
      '-H', 'X-Keep: yes',
    ]);
    const [head, body] = stdout.split('\r\n\r\n') as [string, string];
    const seen = JSON.parse(body) as { url: string; headers: Record<string, string> };
    expect(seen.url).toBe('/headers?x=1');
    expect(seen.headers['host']).toBe('Web.test:8080');
    expect(seen.headers['x-forwarded-for']).toBe('10.1.2.3, 127.0.0.1');
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers['x-forwarded-host']).toBe('Web.test:8080');
    expect(seen.headers['x-keep']).toBe('yes');
    for (const gone of ['x-strip-me', 'keep-alive', 'proxy-authorization', 'te', 'upgrade']) expect(seen.headers).not.toHaveProperty(gone);
    // The upstream connection is the proxy's own keep-alive one, not the client's.
    expect(seen.headers['connection']).not.toContain('X-Strip-Me');
    const responseHeaders = head.toLowerCase();
    expect(responseHeaders).toMatch(/^http\/1\.1 200/);
    expect(responseHeaders).toContain('x-backend: h');
    expect(responseHeaders).not.toContain('x-hop-response');
    expect(responseHeaders).not.toContain('proxy-agent');
  });

  it('streams a large POST to the backend and the echo back, byte for byte', async () => {
    backends = await startBackends(['echo']);
    const [echo] = backends as [Backend];
    lb = await new Lb().start();
    lb.apply(snapshot(1, [backendEndpoint(echo, 'echo', { httpHosts: ['echo.test'] })]));
    const chunk = randomBytes(1 << 20);
    const sent = createHash('sha256');
    let left = 48;
    const body = new Readable({
      read() {
        if (left-- === 0) return void this.push(null);
        sent.update(chunk);
        this.push(chunk);
      },
    });
    const res = await request(lb.url('/echo'), { method: 'POST', headers: { host: 'echo.test' }, body, dispatcher: client });
    expect(res.statusCode).toBe(200);
    const got = createHash('sha256');
    let bytes = 0;
    for await (const part of res.body) {
      got.update(part as Buffer);
      bytes += (part as Buffer).length;
    }
    expect(bytes).toBe(48 << 20);
    expect(got.digest('hex')).toBe(sent.digest('hex'));
  });

  it('streams both ways at once: the echo of the first chunk arrives before the request ends', async () => {
    backends = await startBackends(['echo']);
    const [echo] = backends as [Backend];
    lb = await new Lb().start();
    lb.apply(snapshot(1, [backendEndpoint(echo, 'echo', { httpHosts: ['echo.test'] })]));
    const body = new PassThrough();
    body.write('first chunk;');
    const res = await request(lb.url('/echo'), { method: 'POST', headers: { host: 'echo.test' }, body, dispatcher: client });
    const it = res.body[Symbol.asyncIterator]();
    const first = await it.next();
    expect(String(first.value)).toBe('first chunk;');
    body.end('second chunk');
    let rest = '';
    for (let n = await it.next(); !n.done; n = await it.next()) rest += String(n.value);
    expect(rest).toBe('second chunk');
  });

  it('stops the upstream request when the client goes away', async () => {
    backends = await startBackends(['s']);
    const [s] = backends as [Backend];
    lb = await new Lb().start();
    lb.apply(snapshot(1, [backendEndpoint(s, 'web', { httpHosts: ['web.test'] })]));
    const arrived = s.nextArrival();
    const ac = new AbortController();
    const pending = request(lb.url('/slow?ms=5000'), { headers: { host: 'web.test' }, signal: ac.signal, dispatcher: client });
    await arrived;
    expect(s.inFlight).toBe(1);
    ac.abort();
    await expect(pending).rejects.toThrow();
    const t0 = Date.now();
    while (s.inFlight > 0 && Date.now() - t0 < 2_000) await new Promise((r) => setTimeout(r, 20));
    expect(s.inFlight).toBe(0); // the backend saw its connection go long before its 5 s answer
  });

  it('reuses keep-alive connections to the backend', async () => {
    backends = await startBackends(['k']);
    const [k] = backends as [Backend];
    lb = await new Lb().start();
    lb.apply(snapshot(1, [backendEndpoint(k, 'web', { httpHosts: ['web.test'] })]));
    for (let i = 0; i < 25; i++) expect((await get(lb, 'web.test')).status).toBe(200);
    expect(k.requests).toBe(25);
    expect(k.connections).toBe(1);
    // Concurrent requests open at most one connection each, and those are reused afterwards.
    await Promise.all(Array.from({ length: 4 }, () => get(lb, 'web.test', '/slow?ms=100')));
    const afterBurst = k.connections;
    expect(afterBurst).toBeLessThanOrEqual(4);
    for (let i = 0; i < 10; i++) await get(lb, 'web.test');
    expect(k.connections).toBe(afterBurst);
  });
});

describe('changes while requests are in flight', () => {
  it('moves new requests on a blue/green switch while a slow request to blue completes', async () => {
    backends = await startBackends(['b1', 'blue'], ['g1', 'green']);
    const [b1, g1] = backends as [Backend, Backend];
    lb = await new Lb().start();
    const eps = [backendEndpoint(b1, 'web', { httpHosts: ['web.test'] }), backendEndpoint(g1, 'web', { httpHosts: ['web.test'] })];
    lb.apply(snapshot(1, eps, [service('web', { blue: 100 })]));
    expect(await tally(lb, 'web.test', 4)).toEqual({ 'b1 blue': 4 });

    const arrived = b1.nextArrival();
    const slow = get(lb, 'web.test', '/slow?ms=800');
    await arrived;
    lb.apply(delta(2, { services: [{ ...service('web', { green: 100 }), previous: { blue: 100 } }] }));
    expect(await tally(lb, 'web.test', 6)).toEqual({ 'g1 green': 6 });
    expect(b1.inFlight).toBe(1);
    const done = await slow;
    expect(done.status).toBe(200);
    expect(done.body).toBe('b1 blue\n');
  });

  it('lets an in-flight request finish when its endpoint leaves the registry, and closes the pool', async () => {
    backends = await startBackends(['old'], ['new']);
    const [oldB, newB] = backends as [Backend, Backend];
    lb = await new Lb().start();
    const oldEp = backendEndpoint(oldB, 'web', { httpHosts: ['web.test'] });
    lb.apply(snapshot(1, [oldEp]));
    const arrived = oldB.nextArrival();
    const slow = get(lb, 'web.test', '/slow?ms=600');
    await arrived;
    expect(lb.pools.size).toBe(1);
    lb.apply(delta(2, { deletedEndpoints: [oldEp.id], endpoints: [backendEndpoint(newB, 'web', { httpHosts: ['web.test'] })] }));
    expect(lb.pools.size).toBe(0); // retired, still finishing its request
    expect((await get(lb, 'web.test')).body).toBe('new default\n');
    const done = await slow;
    expect(done.status).toBe(200);
    expect(done.body).toBe('old default\n');
    expect(oldB.requests).toBe(1);
  });

  it('answers from the new revision as soon as the delta is applied (weight change)', async () => {
    backends = await startBackends(['a'], ['b']);
    const [a, b] = backends as [Backend, Backend];
    lb = await new Lb().start();
    lb.apply(snapshot(1, [backendEndpoint(a, 'web', { httpHosts: ['web.test'] }), backendEndpoint(b, 'web', { httpHosts: ['web.test'] })]));
    lb.apply(delta(2, { endpoints: [backendEndpoint(b, 'web', { httpHosts: ['web.test'], healthy: false })] }));
    expect(await tally(lb, 'web.test', 5)).toEqual({ 'a default': 5 });
  });
});
