// From the registry to an answer: a real `corral agent` and a real `corral dns`, changes made with
// the `corral` CLI, and a UDP client polling every 2 ms to see when the answer changes.
import { createSocket, type Socket } from 'node:dgram';
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from '../test/support/corral.js';
import { freePort } from '../test/support/dns.js';
import { buildQuery, skipName, TYPE } from './wire.js';

let agent: Daemon;
let dns: Daemon;

/** Asks for `name` A every 2 ms until `want(addresses)` holds; resolves with the time it first did. */
function pollUntil(name: string, want: (addresses: string[]) => boolean, timeoutMs = 10_000): Promise<number> {
  const sock: Socket = createSocket('udp4');
  let id = 0;
  return new Promise<number>((resolve, reject) => {
    const done = (err: Error | null, at = 0) => {
      clearInterval(tick);
      clearTimeout(timer);
      sock.close();
      if (err) reject(err);
      else resolve(at);
    };
    sock.on('message', (msg) => {
      if ((msg.readUInt16BE(2) & 0xf) !== 0 && (msg.readUInt16BE(2) & 0xf) !== 3) return;
      const an = msg.readUInt16BE(6);
      let off = skipName(msg, 12) + 4;
      const addrs: string[] = [];
      for (let i = 0; i < an; i++) {
        off = skipName(msg, off);
        const type = msg.readUInt16BE(off);
        const rdlen = msg.readUInt16BE(off + 8);
        if (type === TYPE.A) addrs.push([...msg.subarray(off + 10, off + 14)].join('.'));
        off += 10 + rdlen;
      }
      if (want(addrs)) done(null, performance.now());
    });
    const tick = setInterval(() => sock.send(buildQuery(++id & 0xffff, name, TYPE.A), dns.dnsPort, '127.0.0.1'), 2);
    const timer = setTimeout(() => done(new Error(`${name} did not reach the wanted answer within ${timeoutMs} ms`)), timeoutMs);
  });
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
  it('answers a registered endpoint, and stops answering a deregistered one, within 100 ms', async () => {
    const appeared = pollUntil('api.default.corral.internal', (a) => a.includes('10.42.77.5'));
    const reg = await agent.cli(['register', 'api', '10.42.77.5:9000']);
    const registeredAt = performance.now();
    expect(reg.code, reg.stderr).toBe(0);
    const seen = await appeared;
    // Measured from the moment the command returned (the change is committed by then); an
    // answer that changed even earlier counts as 0.
    expect(Math.max(0, seen - registeredAt)).toBeLessThan(100);
    process.stderr.write(`register -> answer: ${(seen - registeredAt).toFixed(1)} ms after the command returned\n`);

    const gone = pollUntil('api.default.corral.internal', (a) => !a.includes('10.42.77.5'));
    const dereg = await agent.cli(['deregister', 'api', '10.42.77.5:9000']);
    const deregisteredAt = performance.now();
    expect(dereg.code, dereg.stderr).toBe(0);
    const goneAt = await gone;
    expect(Math.max(0, goneAt - deregisteredAt)).toBeLessThan(100);
    process.stderr.write(`deregister -> answer: ${(goneAt - deregisteredAt).toFixed(1)} ms after the command returned\n`);
    // Both threads answered, and /metrics adds their counts up.
    const m = await (await fetch(`http://127.0.0.1:${dns.adminPort}/metrics`)).text();
    const noerror = Number(/corral_dns_queries_total\{qtype="A",rcode="NOERROR"\} (\d+)/.exec(m)?.[1]);
    expect(noerror).toBeGreaterThan(20);
    const status = await (await fetch(`http://127.0.0.1:${dns.adminPort}/`)).json() as { threads: number };
    expect(status.threads).toBe(2);
  });

  it('removes an endpoint from answers when its health check fails, and brings it back', async () => {
    const port = await freePort();
    let backend: Server = createServer((c) => c.end());
    await new Promise<void>((r) => backend.listen(port, '127.0.0.1', () => r()));
    const reg = await agent.cli(['register', 'db', `127.0.0.1:${port}`, '--health-tcp', '--health-interval', '200ms']);
    expect(reg.code, reg.stderr).toBe(0);
    await pollUntil('db.default.corral.internal', (a) => a.includes('127.0.0.1'));
    await new Promise<void>((r) => backend.close(() => r()));
    await pollUntil('db.default.corral.internal', (a) => a.length === 0);
    backend = createServer((c) => c.end());
    await new Promise<void>((r) => backend.listen(port, '127.0.0.1', () => r()));
    await pollUntil('db.default.corral.internal', (a) => a.includes('127.0.0.1'));
    await new Promise<void>((r) => backend.close(() => r()));
  });
});
