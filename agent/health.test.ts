import { createServer, type Server, type ServerResponse } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Server as TcpServer, type Socket } from 'node:net';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { Endpoint, HealthCheck } from '../api/types.js';
import { newEndpoint } from './endpoints.js';
import { HealthChecker } from './health.js';
import type { EndpointSink } from './sink.js';
import { until } from '../test/support/until.js';

interface HealthCall { id: string; healthy: boolean; reason: string; at: number; seen: number }

class RecordingSink implements EndpointSink {
  readonly health: HealthCall[] = [];
  /** What the test's server has seen so far, recorded with each verdict. */
  seen: () => number = () => 0;
  async sync(): Promise<void> {}
  async upsert(): Promise<void> {}
  async remove(): Promise<void> {}
  async setHealth(id: string, healthy: boolean, reason: string): Promise<void> {
    this.health.push({ id, healthy, reason, at: Date.now(), seen: this.seen() });
  }
}

const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function checker(): { sink: RecordingSink; hc: HealthChecker } {
  const sink = new RecordingSink();
  const hc = new HealthChecker(sink, log);
  cleanups.push(() => hc.stop());
  return { sink, hc };
}

async function listen<T extends Server | TcpServer>(server: T): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return (server.address() as AddressInfo).port;
}

function endpoint(port: number, check: Partial<HealthCheck>, id = `manual:default:web:127.0.0.1:${port}`): Endpoint {
  return newEndpoint({
    id, service: 'web', address: '127.0.0.1', port, origin: 'manual', node: 'n1',
    healthCheck: { path: '/healthz', tcp: false, intervalMs: 100, timeoutMs: 500, rise: 2, fall: 2, ...check },
  });
}

/** Verdicts are polled closely: some checks measure the time between them. */
const SOON = { ms: 5_000, everyMs: 10 };

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('HealthChecker', () => {
  it('marks an HTTP endpoint healthy after `rise` passes, unhealthy after `fall` failures, and healthy again', async () => {
    let status = 200;
    let requests = 0;
    const server = createServer((req, res) => {
      requests++;
      res.statusCode = req.url === '/healthz' ? status : 404;
      res.end('x');
    });
    const port = await listen(server);
    const { sink, hc } = checker();
    sink.seen = () => requests;
    const t0 = Date.now();
    hc.track(endpoint(port, { rise: 3, fall: 2, intervalMs: 100 }));

    const up = await until('healthy', () => sink.health[0], SOON);
    expect(up.healthy).toBe(true);
    expect(up.reason).toContain('200');
    expect(up.seen).toBe(3);
    // Three passes: at 0, 100 and 200 ms (no sooner; later only on a busy machine).
    expect(up.at - t0).toBeGreaterThanOrEqual(180);

    status = 500;
    const t1 = Date.now();
    const down = await until('unhealthy', () => sink.health[1], SOON);
    expect(down).toMatchObject({ healthy: false });
    expect(down.seen - up.seen).toBeGreaterThanOrEqual(2);
    expect(down.reason).toContain('500');
    expect(down.at - t1).toBeGreaterThanOrEqual(90);

    status = 302;
    const back = await until('healthy again', () => sink.health[2], SOON);
    expect(back.healthy).toBe(true);
    expect(back.reason).toContain('302');

    // Only transitions are reported, however many probes ran.
    await sleep(400);
    expect(sink.health).toHaveLength(3);
    expect(requests).toBeGreaterThan(8);
  });

  it('fails a check that answers 404 and reports the first verdict even when the endpoint starts unhealthy', async () => {
    const port = await listen(createServer((_req, res) => { res.statusCode = 404; res.end(); }));
    const { sink, hc } = checker();
    const ep = endpoint(port, { fall: 1 });
    expect(ep.healthy).toBe(false);
    hc.track(ep);
    const r = await until('verdict', () => sink.health[0], SOON);
    expect(r).toMatchObject({ healthy: false });
    expect(r.reason).toMatch(/HTTP GET \/healthz: 404/);
  });

  it('checks TCP endpoints by connecting, and notices when the port closes', async () => {
    const sockets = new Set<Socket>();
    const server = createTcpServer((s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
    const port = await listen(server);
    const { sink, hc } = checker();
    hc.track(endpoint(port, { tcp: true, path: '', rise: 1, fall: 2 }));
    const up = await until('healthy', () => sink.health[0], SOON);
    expect(up).toMatchObject({ healthy: true, reason: expect.stringContaining('TCP connect: ok') });

    await new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of sockets) s.destroy();
    const down = await until('unhealthy', () => sink.health[1], SOON);
    expect(down.healthy).toBe(false);
    expect(down.reason).toContain('ECONNREFUSED');
  });

  it('counts a backend that does not answer within the timeout as failing, and never overlaps probes', async () => {
    const starts: number[] = [];
    const pending: ServerResponse[] = [];
    const server = createServer((_req, res) => {
      starts.push(Date.now());
      pending.push(res); // never answered
    });
    const port = await listen(server);
    cleanups.push(() => { for (const r of pending) r.destroy(); });
    const { sink, hc } = checker();
    const t0 = Date.now();
    // Interval shorter than the timeout: a second probe must wait for the first to give up.
    hc.track(endpoint(port, { intervalMs: 50, timeoutMs: 300, fall: 2 }));
    const down = await until('unhealthy', () => sink.health[0], SOON);
    expect(down.healthy).toBe(false);
    expect(down.reason).toContain('no answer within 300ms');
    expect(down.at - t0).toBeGreaterThanOrEqual(580);
    hc.stop();
    expect(starts.length).toBeGreaterThanOrEqual(2);
    for (let i = 1; i < starts.length; i++) expect(starts[i]! - starts[i - 1]!).toBeGreaterThanOrEqual(280);
  });

  it('stops probing an untracked endpoint, and keeps its verdict when tracked again with the same check', async () => {
    let requests = 0;
    const port = await listen(createServer((_req, res) => { requests++; res.end('ok'); }));
    const { sink, hc } = checker();
    const ep = endpoint(port, { rise: 1, intervalMs: 50 });
    hc.track(ep);
    await until('healthy', () => sink.health[0], SOON);

    // The owner re-upserted the record with its initial (unhealthy) state: the verdict is restated.
    hc.track(ep);
    expect(sink.health[1]).toMatchObject({ healthy: true });
    hc.track({ ...ep, healthy: true });
    expect(sink.health).toHaveLength(2);

    hc.untrack(ep.id);
    expect(hc.tracked()).toEqual([]);
    const seen = requests;
    await sleep(250);
    expect(requests).toBe(seen);
    expect(sink.health).toHaveLength(2);
  });

  it('does not check endpoints without a health check', async () => {
    const { sink, hc } = checker();
    hc.track(newEndpoint({ id: 'x', service: 'web', address: '127.0.0.1', port: 1, origin: 'manual', node: 'n1' }));
    expect(hc.tracked()).toEqual([]);
    await sleep(50);
    expect(sink.health).toEqual([]);
  });
});
