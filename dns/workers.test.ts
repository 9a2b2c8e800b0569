// `corral dns` with a worker thread, fed by a real `corral agent`. The server runs in this process
// (runDns, its worker from the source) so the test decides when the worker gets the main
// thread's messages: the agent hears a revision acked only once the worker answers from it.
import { createSocket } from 'node:dgram';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentClient, unary } from '../api/grpc.js';
import { makeLogger } from '../api/log.js';
import { defaultOptions } from '../api/options.js';
import type { StatusReply } from '../api/types.js';
import { freePort, startDaemon, type Daemon } from '../test/support/corral.js';
import { untilOk } from '../test/support/until.js';
import { sourceThreads } from '../test/support/workers.js';
import { runDns, type RunningDns } from './main.js';
import { buildQuery, skipName, TYPE } from './wire.js';

const NAME = 'api.default.corral.internal';

let agent: Daemon;
let dns: RunningDns;
let dnsPort: number;
const threads = sourceThreads();
let client: ReturnType<typeof agentClient>;

beforeAll(async () => {
  agent = await startDaemon('agent');
  client = agentClient(agent.socket);
  dnsPort = await freePort();
  const opts = {
    ...defaultOptions(),
    agentSocket: agent.socket,
    nodeName: 'test-node',
    dnsListen: [`127.0.0.1:${dnsPort}`],
    dnsUpstream: ['127.0.0.1:9'],
    adminListen: `127.0.0.1:${await freePort()}`,
    // The main thread and one worker, both reading the UDP socket.
    dnsThreads: 2,
  };
  dns = await runDns(opts, makeLogger('dns', 'warn'), { spawnWorker: threads.spawn });
  await untilOk('DNS ready', async () => (await fetch(`http://127.0.0.1:${dns.adminPort}/readyz`)).status, (s) => s === 200, { ms: 20_000, everyMs: 50 });
}, 60_000);

afterAll(async () => {
  threads.release();
  await dns?.close();
  client?.close();
  await agent?.stop();
});

/** The revision the agent has from DNS's acks. */
async function acked(): Promise<number> {
  const s = await unary<object, StatusReply>(client, 'Status', {});
  return s.components.find((c) => c.component === 'dns')?.appliedRevision ?? 0;
}

async function register(address: string): Promise<number> {
  const r = await agent.cli(['register', 'api', address, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { revision: number }).revision;
}

/** `count` A queries for NAME at once; the addresses of each answer, sorted. */
function ask(count: number): Promise<string[][]> {
  const sock = createSocket('udp4');
  const answers: string[][] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      sock.close();
      reject(new Error(`${count - answers.length} of ${count} queries not answered within 5 s`));
    }, 5_000);
    sock.on('message', (msg) => {
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
      answers.push(addrs.sort());
      if (answers.length === count) {
        clearTimeout(timer);
        sock.close();
        resolve(answers);
      }
    });
    for (let id = 1; id <= count; id++) sock.send(buildQuery(id, NAME, TYPE.A), dnsPort, '127.0.0.1');
  });
}

describe('corral dns with worker threads', () => {
  it('acks a revision to the agent only once the worker thread answers from it; every query after the ack gets the new answer', async () => {
    const first = await register('10.42.77.5:9000');
    await untilOk('the first registration acked', acked, (r) => r >= first, { ms: 10_000, everyMs: 20 });
    expect(new Set((await ask(100)).map((a) => a.join()))).toEqual(new Set(['10.42.77.5']));

    // The worker gets nothing from now on: the main thread applies the next revision alone.
    threads.hold();
    const second = await register('10.42.77.6:9000');
    await untilOk('the main thread at the second registration', async () => dns.zone.revision, (r) => r >= second, { ms: 10_000, everyMs: 5 });
    // An ack that did not wait for the worker would reach the agent within milliseconds.
    const heldSince = Date.now();
    while (Date.now() - heldSince < 1_000) {
      expect(await acked()).toBeLessThan(second);
      await new Promise((r) => setTimeout(r, 20));
    }
    // Meanwhile both threads answer: the main thread with both addresses, the worker with the old one.
    const during = new Set((await ask(200)).map((a) => a.join()));
    expect([...during].every((a) => a === '10.42.77.5' || a === '10.42.77.5,10.42.77.6'), [...during].join(' | ')).toBe(true);
    process.stderr.write(`answers while the worker was held: ${[...during].join(' | ')}\n`);

    threads.release();
    await untilOk('the second registration acked', acked, (r) => r >= second, { ms: 10_000, everyMs: 5 });
    for (let round = 0; round < 5; round++) {
      expect(new Set((await ask(100)).map((a) => a.join()))).toEqual(new Set(['10.42.77.5,10.42.77.6']));
    }
  });
});
