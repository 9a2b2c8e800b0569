import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { agentServiceDefinition, grpc } from '../api/grpc.js';
import type { Logger } from '../api/log.js';
import { defaultOptions } from '../api/options.js';
import type { WatchEvent } from '../api/types.js';
import { runLb } from './main.js';
import { Backend, backendEndpoint, deadPort, delta, service, snapshot, startBackends } from './testbed.js';

/** A stand-in for `corral agent`: serves Watch on a unix socket and records Acks. */
class StubAgent {
  readonly server = new grpc.Server();
  readonly acks: number[] = [];
  private streams: Array<grpc.ServerWritableStream<unknown, WatchEvent>> = [];

  constructor(private readonly first: WatchEvent) {
    this.server.addService(agentServiceDefinition(), {
      Watch: (call: grpc.ServerWritableStream<unknown, WatchEvent>) => {
        this.streams.push(call);
        call.on('cancelled', () => (this.streams = this.streams.filter((s) => s !== call)));
        call.write(this.first);
      },
      Ack: (call: grpc.ServerUnaryCall<{ revision: number }, object>, cb: grpc.sendUnaryData<object>) => {
        this.acks.push(Number(call.request.revision));
        cb(null, {});
      },
    });
  }

  async listen(socket: string): Promise<void> {
    await new Promise<void>((resolve, reject) =>
      this.server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
  }

  send(ev: WatchEvent): void {
    for (const s of this.streams) s.write(ev);
  }

  close(): void {
    for (const s of this.streams) s.end();
    this.server.forceShutdown();
  }
}

async function until(what: string, ok: () => Promise<boolean> | boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await ok()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function fetchText(url: string, host?: string): Promise<{ status: number; body: string }> {
  const res = await request(url, { headers: host ? { host } : {} });
  return { status: res.statusCode, body: await res.body.text() };
}

const quiet = pino({ level: 'silent' }) as unknown as Logger;
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('corral lb (runLb)', () => {
  it('is not ready until the agent sends a snapshot, then routes, follows deltas and reports metrics', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-lb-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const [blue, green] = (await startBackends(['b1', 'blue'], ['g1', 'green'])) as [Backend, Backend];
    cleanups.push(() => Promise.all([blue.stop(), green.stop()]).then(() => undefined));
    const adminPort = await deadPort();
    const socket = join(dir, 'agent.sock');
    const lb = await runLb(
      { ...defaultOptions(), agentSocket: socket, httpListen: '127.0.0.1:0', adminListen: `127.0.0.1:${adminPort}` },
      quiet,
    );
    cleanups.push(() => lb.close());
    const admin = `http://127.0.0.1:${adminPort}`;
    expect(lb.port).toBeGreaterThan(0);
    expect((await fetchText(`${admin}/readyz`)).status).toBe(503);
    expect((await fetchText(`http://127.0.0.1:${lb.port}/`, 'web.test')).status).toBe(503);

    // The agent comes up after the LB: the watch reconnects and the snapshot makes it ready.
    const eps = [backendEndpoint(blue, 'web', { httpHosts: ['web.test'] }), backendEndpoint(green, 'web', { httpHosts: ['web.test'] })];
    const agent = new StubAgent(snapshot(7, eps, [service('web', { blue: 100 })]));
    await agent.listen(socket);
    cleanups.push(() => agent.close());
    await until('readyz', async () => (await fetchText(`${admin}/readyz`)).status === 200);
    expect(await fetchText(`http://127.0.0.1:${lb.port}/`, 'web.test')).toEqual({ status: 200, body: 'b1 blue\n' });

    agent.send(delta(8, { services: [service('web', { green: 100 })] }));
    await until('revision 8 applied', () => agent.acks.includes(8));
    expect(await fetchText(`http://127.0.0.1:${lb.port}/`, 'web.test')).toEqual({ status: 200, body: 'g1 green\n' });

    const metrics = (await fetchText(`${admin}/metrics`)).body;
    expect(metrics).toMatch(/^corral_lb_applied_revision 8$/m);
    expect(metrics).toMatch(/corral_lb_requests_total\{namespace="default",service="web",color="blue",code="200"\} 1/);
    expect(metrics).toMatch(/corral_lb_requests_total\{namespace="default",service="web",color="green",code="200"\} 1/);
    expect(metrics).toMatch(/corral_lb_upstream_seconds_count\{namespace="default",service="web"\} 2/);
    const status = JSON.parse((await fetchText(`${admin}/`)).body) as Record<string, unknown>;
    expect(status).toMatchObject({ component: 'lb', revision: 8, ready: true, connected: true, services: 1, routes: 1 });

    await lb.close();
    await expect(fetchText(`http://127.0.0.1:${lb.port}/`, 'web.test')).rejects.toThrow();
  });
});
