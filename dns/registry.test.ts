// From the registry to an answer: a real `corral agent` and a real `corral dns`, changes made with
// the `corral` CLI, and a UDP client asking every 2 ms until the answer changes. How fast it
// changes is a benchmark's to measure, not this test's.
import { createSocket } from 'node:dgram';
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from '../test/support/corral.js';
import { freePort } from '../test/support/dns.js';
import { until } from '../test/support/until.js';
import { buildQuery, skipName, TYPE } from './wire.js';

let agent: Daemon;
let dns: Daemon;
let id = 0;

/** The A records `corral dns` answers for `name` now (one UDP query; NOERROR or NXDOMAIN). */
function addresses(name: string): Promise<string[]> {
  const sock = createSocket('udp4');
  return new Promise<string[]>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer for ${name} within 1 s`)), 1000);
    sock.once('message', (msg) => {
      clearTimeout(timer);
      const rcode = msg.readUInt16BE(2) & 0xf;
      if (rcode !== 0 && rcode !== 3) return reject(new Error(`${name}: rcode ${rcode}`));
      let off = skipName(msg, 12) + 4;
      const addrs: string[] = [];
      for (let i = 0; i < msg.readUInt16BE(6); i++) {
        off = skipName(msg, off);
        const type = msg.readUInt16BE(off);
        const rdlen = msg.readUInt16BE(off + 8);
        if (type === TYPE.A) addrs.push([...msg.subarray(off + 10, off + 14)].join('.'));
        off += 10 + rdlen;
      }
      resolve(addrs);
    });
    sock.send(buildQuery(++id & 0xffff, name, TYPE.A), dns.dnsPort, '127.0.0.1');
  }).finally(() => sock.close());
}

/** Asks for `name` every 2 ms until `want(addresses)` holds (10 s at most). */
function answers(name: string, want: (addresses: string[]) => boolean): Promise<true> {
  return until(`${name} answered as wanted`, async () => want(await addresses(name)), { ms: 10_000, everyMs: 2 });
}

beforeAll(async () => {
  agent = await startDaemon('agent');
  // Two threads even on one CPU: the worker thread's copy of the zone must follow as fast.
  dns = await startDaemon('dns', { args: ['--agent-socket', agent.socket, '--dns-threads', '2'] });
}, 60_000);

afterAll(async () => {
  await dns?.stop();
  await agent?.stop();
});

describe('registry changes reach DNS answers', () => {
  it('answers a registered endpoint, and stops answering a deregistered one', async () => {
    const appeared = answers('api.default.corral.internal', (a) => a.includes('10.42.77.5'));
    const reg = await agent.cli(['register', 'api', '10.42.77.5:9000']);
    expect(reg.code, reg.stderr).toBe(0);
    await appeared;

    const gone = answers('api.default.corral.internal', (a) => !a.includes('10.42.77.5'));
    const dereg = await agent.cli(['deregister', 'api', '10.42.77.5:9000']);
    expect(dereg.code, dereg.stderr).toBe(0);
    await gone;
    // Both threads answered, and /metrics adds their counts up.
    const m = await (await fetch(`http://127.0.0.1:${dns.adminPort}/metrics`)).text();
    const noerror = Number(/corral_dns_queries_total\{qtype="A",rcode="NOERROR"\} (\d+)/.exec(m)?.[1]);
    expect(noerror).toBeGreaterThan(20);
    const status = await (await fetch(`http://127.0.0.1:${dns.adminPort}/`)).json() as { threads: number; workerHeaps: Array<{ thread: number; usedBytes: number; totalBytes: number }> };
    expect(status.threads).toBe(2);
    // The worker's own V8 heap, as it reports it.
    expect(status.workerHeaps.map((h) => h.thread)).toEqual([1]);
    expect(status.workerHeaps[0]!.usedBytes).toBeGreaterThan(0);
    expect(status.workerHeaps[0]!.totalBytes).toBeGreaterThanOrEqual(status.workerHeaps[0]!.usedBytes);
  });

  it('removes an endpoint from answers when its health check fails, and brings it back', async () => {
    const port = await freePort();
    let backend: Server = createServer((c) => c.end());
    await new Promise<void>((r) => backend.listen(port, '127.0.0.1', () => r()));
    const reg = await agent.cli(['register', 'db', `127.0.0.1:${port}`, '--health-tcp', '--health-interval', '200ms']);
    expect(reg.code, reg.stderr).toBe(0);
    await answers('db.default.corral.internal', (a) => a.includes('127.0.0.1'));
    await new Promise<void>((r) => backend.close(() => r()));
    await answers('db.default.corral.internal', (a) => a.length === 0);
    backend = createServer((c) => c.end());
    await new Promise<void>((r) => backend.listen(port, '127.0.0.1', () => r()));
    await answers('db.default.corral.internal', (a) => a.includes('127.0.0.1'));
    await new Promise<void>((r) => backend.close(() => r()));
  });
});
