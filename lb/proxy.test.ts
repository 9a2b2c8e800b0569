import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { promisify } from 'node:util';
import { Agent, request } from 'undici';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { WatchEvent } from '../api/types.js';
import { LbMetrics } from './metrics.js';
import { HttpProxy } from './proxy.js';
import { RouteTable } from './routes.js';
import { Backend, backendEndpoint, deadPort, startBackends } from '../test/support/lb.js';
import { delta, endpoint, service, snapshot } from '../test/support/records.js';
import { until } from '../test/support/until.js';
import { UPSTREAM_DEFAULTS, UpstreamPools } from './upstreams.js';

const run = promisify(execFile);

/** The real proxy on 127.0.0.1:0, fed watch events directly. */
class Lb {
  readonly pools: UpstreamPools;
  readonly routes: RouteTable;
  readonly metrics = new LbMetrics();
  readonly proxy: HttpProxy;
  port = 0;
  constructor(timeouts: Partial<typeof UPSTREAM_DEFAULTS> = {}) {
    const pools = new UpstreamPools({ ...UPSTREAM_DEFAULTS, connectTimeoutMs: 2_000, headersTimeoutMs: 5_000, ...timeouts });
    this.pools = pools;
    this.routes = new RouteTable(undefined, (origin) => pools.retire(origin));
    this.proxy = new HttpProxy(this.routes, pools, this.metrics);
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
    await until('the uploader\'s connection closed', async () => (await open()) <= 1, { ms: 500, everyMs: 20 });
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

  it('cuts a response whose endpoint goes silent mid-body for the body timeout, and not one that keeps sending', async () => {
    // A raw endpoint: /stall sends 10 of 100 body bytes and then nothing; /trickle sends all 100,
    // 10 every 100 ms (1 s in all, three times the timeout, never silent for as long as it).
    const raw = createNetServer((s) => {
      s.on('error', () => undefined);
      s.once('data', (d: Buffer) => {
        const head = 'HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\n';
        if (d.toString('latin1').startsWith('GET /stall ')) {
          s.write(`${head}0123456789`);
          return;
        }
        s.write(head);
        let n = 0;
        const t = setInterval(() => {
          s.write('0123456789');
          if (++n === 10) clearInterval(t);
        }, 100);
        s.on('close', () => clearInterval(t));
      });
    });
    await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
    try {
      lb = await new Lb({ bodyTimeoutMs: 300 }).start();
      lb.apply(snapshot(1, [endpoint({ service: 'stall', address: '127.0.0.1', port: (raw.address() as AddressInfo).port, httpHosts: ['stall.test'] })]));
      const t0 = Date.now();
      const cut = await new Promise<string>((resolve) => {
        const c = netConnect(lb.port, '127.0.0.1');
        let text = '';
        c.on('data', (d: Buffer) => (text += d.toString('latin1')));
        c.on('error', () => undefined);
        c.on('close', () => resolve(text));
        c.write('GET /stall HTTP/1.1\r\nHost: stall.test\r\n\r\n');
      });
      const ms = Date.now() - t0;
      expect(cut).toMatch(/^HTTP\/1\.1 200 /);
      expect(cut.endsWith('\r\n\r\n0123456789')).toBe(true); // the head and the 10 bytes, then the cut
      expect(ms).toBeGreaterThanOrEqual(300);
      expect(ms).toBeLessThan(3_000);
      const whole = await get(lb, 'stall.test', '/trickle');
      expect(whole.status).toBe(200);
      expect(whole.body).toBe('0123456789'.repeat(10));
      // The proxy goes on serving.
      expect((await get(lb, 'stall.test', '/trickle')).body).toHaveLength(100);
    } finally {
      await new Promise<void>((resolve) => raw.close(() => resolve()));
    }
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

  it('routes an absolute-form request by its authority and forwards that authority as Host, in origin form, whatever Host the client sent', async () => {
    backends = await startBackends(['a'], ['b']);
    const [a, b] = backends as [Backend, Backend];
    lb = await new Lb().start();
    lb.apply(snapshot(1, [backendEndpoint(a, 'a', { httpHosts: ['a.test'] }), backendEndpoint(b, 'b', { httpHosts: ['b.test'] })]));
    const seenBy = async (bytes: string) => {
      const r = await exchange(lb.port, bytes);
      expect(r.text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      return JSON.parse(r.text.slice(r.text.indexOf('\r\n\r\n') + 4)) as { name: string; url: string; headers: Record<string, string> };
    };
    // RFC 9112 3.2.2: the target's authority replaces Host; b.test was not routed, so a.test's endpoint never sees it.
    const seen = await seenBy('GET http://a.test/headers?x=1 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n');
    expect(seen.name).toBe('a');
    expect(seen.url).toBe('/headers?x=1');
    expect(seen.headers.host).toBe('a.test');
    expect(seen.headers['x-forwarded-host']).toBe('a.test');
    expect(seen.headers.forwarded).toBe('for=127.0.0.1;host="a.test";proto=http');
    expect(JSON.stringify(seen.headers)).not.toContain('b.test');
    // Without a Host field, and with a port in the authority.
    const bare = await seenBy('GET http://A.test:8080/headers HTTP/1.1\r\nConnection: close\r\n\r\n');
    expect(bare.headers.host).toBe('a.test:8080');
    // A WebSocket handshake in absolute form gets the same Host.
    const ws = await exchange(lb.port, 'GET http://a.test/ws HTTP/1.1\r\nHost: b.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n', (t) => t.includes('\r\n\r\n'));
    ws.socket.destroy();
    expect(ws.text).toMatch(/^HTTP\/1\.1 101 /);
    expect(a.upgrades.map((u) => u.headers.host)).toEqual(['a.test']);
    expect(b.requests + b.upgrades.length).toBe(0);
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

  it('does not time out an endpoint that waits for the rest of a request body, even past the body timeout', async () => {
    backends = await startBackends(['echo']);
    const [echo] = backends as [Backend];
    lb = await new Lb({ bodyTimeoutMs: 300 }).start();
    lb.apply(snapshot(1, [backendEndpoint(echo, 'echo', { httpHosts: ['echo.test'] })]));
    const body = new PassThrough();
    body.write('first chunk;');
    const res = await request(lb.url('/echo'), { method: 'POST', headers: { host: 'echo.test' }, body, dispatcher: client });
    const it = res.body[Symbol.asyncIterator]();
    expect(String((await it.next()).value)).toBe('first chunk;');
    // The endpoint has answered its head and is silent: it waits for the client, not the reverse.
    await new Promise((r) => setTimeout(r, 900));
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
    // The backend sees its connection go long before its 5 s answer.
    await until('the backend\'s request cut', () => s.inFlight === 0, { ms: 2_000, everyMs: 20 });
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

/** A backend speaking raw HTTP/1.1: `answer` gets each request head (and the connection's count so far) and writes what it likes. */
async function rawBackend(answer: (socket: Socket, head: string, nth: number) => void): Promise<{ port: number; connections: number; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const state = { port: 0, connections: 0, close: async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  } };
  const server = createNetServer((socket) => {
    state.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let text = '';
    let nth = 0;
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      let end: number;
      while ((end = text.indexOf('\r\n\r\n')) >= 0) {
        const head = text.slice(0, end);
        text = text.slice(end + 4);
        answer(socket, head, ++nth);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.port = (server.address() as AddressInfo).port;
  return state;
}

/** Writes `bytes` on a fresh connection to the LB and collects what comes back until `done(text)` or the LB closes. */
function exchange(port: number, bytes: string, done: (text: string) => boolean = () => false, ms = 3_000): Promise<{ text: string; closed: boolean; socket: Socket }> {
  return new Promise((resolve) => {
    const s = netConnect(port, '127.0.0.1');
    let text = '';
    let closed = false;
    const finish = () => {
      clearTimeout(timer);
      resolve({ text, closed, socket: s });
    };
    const timer = setTimeout(finish, ms);
    s.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      if (done(text)) finish();
    });
    s.on('end', () => {
      closed = true;
      finish();
    });
    s.on('error', () => undefined);
    s.write(bytes);
  });
}

describe('HTTP/1.1 on the wire', () => {
  const raws: Array<{ close: () => Promise<void> }> = [];
  afterEach(async () => {
    for (const r of raws.splice(0)) await r.close();
  });
  const pathOf = (head: string) => head.split(' ')[1]!;
  const ok = (body: string, extra = '') => `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n${extra}\r\n${body}`;

  async function lbTo(answer: Parameters<typeof rawBackend>[0]): Promise<{ port: number; connections: number }> {
    const b = await rawBackend(answer);
    raws.push(b);
    lb = await new Lb().start();
    lb.apply(snapshot(1, [endpoint({ service: 'raw', port: b.port, httpHosts: ['raw.test'] })]));
    return b;
  }

  it('answers pipelined requests in order, on one connection', async () => {
    await lbTo((s, head) => {
      const p = pathOf(head);
      // The first answer comes last: the LB must still answer in request order.
      setTimeout(() => s.write(ok(p)), p === '/1' ? 100 : 0);
    });
    const three = ['/1', '/2', '/3'].map((p) => `GET ${p} HTTP/1.1\r\nHost: raw.test\r\n\r\n`).join('');
    const r = await exchange(lb.port, three, (t) => t.endsWith('/3'));
    expect(r.text.match(/\r\n\r\n\/\d/g)).toEqual(['\r\n\r\n/1', '\r\n\r\n/2', '\r\n\r\n/3']);
    expect(r.closed).toBe(false);
    r.socket.destroy();
  });

  it('passes a chunked response through to an HTTP/1.1 client (re-chunked, trailers dropped) and de-chunks it for HTTP/1.0', async () => {
    await lbTo((s) => s.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-b: 1\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n'));
    const res = await get(lb, 'raw.test');
    expect(res.status).toBe(200);
    expect(res.body).toBe('hello world');
    const one = await exchange(lb.port, 'GET / HTTP/1.1\r\nHost: raw.test\r\n\r\n', (t) => t.endsWith('0\r\n\r\n'));
    expect(one.text.toLowerCase()).toContain('transfer-encoding: chunked\r\n');
    expect(one.text).not.toContain('x-trailer');
    one.socket.destroy();
    const old = await exchange(lb.port, 'GET / HTTP/1.0\r\nHost: raw.test\r\n\r\n');
    expect(old.closed).toBe(true);
    const [head, body] = old.text.split('\r\n\r\n') as [string, string];
    expect(head.toLowerCase()).not.toContain('transfer-encoding');
    expect(head.toLowerCase()).toContain('connection: close');
    expect(body).toBe('hello world');
  });

  it('passes a response without Content-Length, ended by the endpoint closing, and keeps the client connection', async () => {
    const b = await lbTo((s, head) => {
      s.end(`HTTP/1.1 200 OK\r\nx-path: ${pathOf(head)}\r\n\r\nuntil close ${pathOf(head)}`);
    });
    const r = await exchange(lb.port, 'GET /a HTTP/1.1\r\nHost: raw.test\r\n\r\n', (t) => t.endsWith('0\r\n\r\n'));
    expect(r.text).toContain('until close /a');
    expect(r.closed).toBe(false);
    r.socket.write('GET /b HTTP/1.1\r\nHost: raw.test\r\n\r\n');
    let more = '';
    await new Promise<void>((resolve) => r.socket.on('data', (d: Buffer) => {
      more += d.toString('latin1');
      if (more.endsWith('0\r\n\r\n')) resolve();
    }));
    expect(more).toContain('until close /b');
    r.socket.destroy();
    expect(b.connections).toBe(2);
  });

  it('retries, without an error, a request on a reused keep-alive connection the endpoint closed as it was reused', async () => {
    // Every connection answers one request, then closes on the next without answering.
    const b = await lbTo((s, _head, nth) => {
      if (nth === 1) s.write(ok('fresh'));
      else s.destroy();
    });
    for (let i = 0; i < 5; i++) expect(await get(lb, 'raw.test')).toMatchObject({ status: 200, body: 'fresh' });
    expect(b.connections).toBe(5);
    // Not the endpoint's fault: no ejection counted for it (3 connection failures would eject).
    expect(await lb.metrics.registry.metrics()).not.toMatch(/corral_lb_ejections_total\{/);
  });

  it('serves HTTP/1.0 clients: closes after the answer unless asked to keep alive', async () => {
    await lbTo((s, head) => s.write(ok(pathOf(head))));
    const close = await exchange(lb.port, 'GET /x HTTP/1.0\r\nHost: raw.test\r\n\r\n');
    expect(close.text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(close.text.toLowerCase()).toContain('connection: close');
    expect(close.text.endsWith('/x')).toBe(true);
    expect(close.closed).toBe(true);
    const kept = await exchange(lb.port, 'GET /y HTTP/1.0\r\nHost: raw.test\r\nConnection: keep-alive\r\n\r\n', (t) => t.endsWith('/y'));
    expect(kept.text.toLowerCase()).toContain('connection: keep-alive');
    expect(kept.closed).toBe(false);
    kept.socket.destroy();
  });

  it('drops 1xx answers of the endpoint and answers Expect: 100-continue itself', async () => {
    await lbTo((s, head) => {
      const m = /content-length: (\d+)/i.exec(head);
      if (m) {
        // Reads the body, then answers with it, after an Early Hints.
        s.once('data', (d: Buffer) => s.write(`HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n${ok(d.toString('latin1'))}`));
      } else {
        s.write(`HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n${ok('hinted')}`);
      }
    });
    const hinted = await get(lb, 'raw.test');
    expect(hinted).toMatchObject({ status: 200, body: 'hinted' });
    const r = await exchange(lb.port, 'POST / HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n', (t) => t.includes('100 Continue\r\n\r\n'));
    expect(r.text).toBe('HTTP/1.1 100 Continue\r\n\r\n');
    let rest = '';
    const answered = new Promise<void>((resolve) => r.socket.on('data', (d: Buffer) => {
      rest += d.toString('latin1');
      if (rest.endsWith('abcde')) resolve();
    }));
    r.socket.write('abcde');
    await answered;
    expect(rest).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(rest).not.toContain('103');
    r.socket.destroy();
  });

  it('answers HEAD without a body and reuses the connection afterwards', async () => {
    const b = await lbTo((s, head) => s.write(head.startsWith('HEAD') ? 'HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n' : ok('after head!')));
    const r = await request(lb.url('/'), { method: 'HEAD', headers: { host: 'raw.test' }, dispatcher: client });
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-length']).toBe('11');
    expect(await r.body.text()).toBe('');
    expect(await get(lb, 'raw.test')).toMatchObject({ status: 200, body: 'after head!' });
    expect(b.connections).toBe(1);
  });

  it('forwards a chunked request body re-chunked, and a request head that arrives in pieces', async () => {
    let seen = '';
    // The raw backend splits at CRLFCRLF: the head first, then the chunked body up to its last chunk.
    await lbTo((s, head, nth) => {
      if (nth === 1) seen = head;
      else s.write(ok(`${head}\r\n\r\n`));
    });
    const s = netConnect(lb.port, '127.0.0.1');
    let text = '';
    const got = new Promise<void>((resolve) => s.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      if (text.endsWith('0\r\n\r\n')) resolve();
    }));
    const pieces = ['POST /c HTTP/1.1\r\nHo', 'st: raw.test\r\nTransfer-Encoding: chunked\r\n', '\r\n3;x=y\r\nabc\r', '\n0\r\nT: 1\r\n\r\n'];
    for (const p of pieces) {
      s.write(p);
      await new Promise((r) => setTimeout(r, 20));
    }
    await got;
    s.destroy();
    expect(seen.toLowerCase()).toContain('transfer-encoding: chunked');
    expect(text.endsWith('3\r\nabc\r\n0\r\n\r\n')).toBe(true);
  });

  it('refuses with 400 and closes a line after the last chunk that is not a trailer field (a request line), and a chunk size with trailing whitespace; the endpoint sees at most the one request', async () => {
    backends = await startBackends(['a']);
    const [a] = backends as [Backend];
    lb = await new Lb().start();
    lb.apply(snapshot(1, [backendEndpoint(a, 'web', { httpHosts: ['web.test'] })]));
    const post = (body: string) => `POST /first HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n${body}`;
    const trailer = await exchange(lb.port, post('5\r\nhello\r\n0\r\nGET /other HTTP/1.1\r\nHost: web.test\r\n\r\n'));
    expect(trailer.text).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(trailer.text).toContain('invalid trailer');
    expect(trailer.closed).toBe(true);
    const space = await exchange(lb.port, post('5 \r\nhello\r\n0\r\n\r\n'));
    expect(space.text).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(space.text).toContain('whitespace after a chunk size');
    expect(space.closed).toBe(true);
    // The head went up before the body was read; nothing after it did, and nothing was answered twice.
    expect(a.requests).toBeLessThanOrEqual(2);
    expect(a.last === undefined || a.last.url === '/first').toBe(true);
    expect(trailer.text.match(/HTTP\/1\.1 /g)).toHaveLength(1);
  });

  it('refuses a request head with bare LF line ends with 400 and closes', async () => {
    await lbTo((s, head) => s.write(ok(pathOf(head))));
    const r = await exchange(lb.port, 'GET / HTTP/1.1\nHost: raw.test\n\n');
    expect(r.text).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(r.closed).toBe(true);
  });
});
