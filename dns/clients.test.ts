// Who gets what, with real addresses: `corral dns` runs in a test network namespace ("the host")
// fed by a real `corral agent`; clients in a second namespace reach it over a veth pair, from
// cluster addresses (10.42.x) and from outside ones (198.18.0.0/15, the benchmarking range).
// Covers the block gateway listener, the recursion ACL and the per-client rate limit.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from '../test/support/corral.js';
import { Netns, run } from '../test/support/netns.js';
import { parseDigOutput, type DigResult } from '../test/support/dns.js';
import { until } from '../test/support/until.js';
import { blockGateway } from './gateways.js';

let agent: Daemon;
let dns: Daemon;
let host: Netns;
let client: Netns;
let gateway: string;
let prefix: string; // "10.42.N" of the agent's block

async function digFrom(source: string, server: string, port: number, name: string, type: string, ...opts: string[]): Promise<DigResult> {
  const { stdout } = await client.exec('dig', [`@${server}`, '-p', String(port), '-b', source, name, type, '+tries=1', '+time=2', ...opts]).catch((err: Error) => ({ stdout: err.message }));
  return parseDigOutput(stdout);
}

async function metrics(): Promise<string> {
  return (await host.exec('curl', ['-sf', `http://127.0.0.1:${dns.adminPort}/metrics`])).stdout;
}

beforeAll(async () => {
  agent = await startDaemon('agent', { nodeName: 'test-node' });
  const status = JSON.parse((await agent.cli(['status', '--json'])).stdout) as { block: string };
  gateway = blockGateway(status.block)!;
  expect(gateway).toMatch(/^10\.42\.\d+\.1$/);
  prefix = gateway.split('.').slice(0, 3).join('.');

  host = await Netns.create('corral-dnsh');
  client = await Netns.create('corral-dnsc');
  await run('ip', ['link', 'add', 'vdh', 'netns', host.name, 'type', 'veth', 'peer', 'name', 'vdc', 'netns', client.name]);
  await host.exec('ip', ['addr', 'add', '198.18.0.1/24', 'dev', 'vdh']);
  await host.exec('ip', ['link', 'set', 'vdh', 'up']);
  for (const a of [`${prefix}.20/24`, `${prefix}.21/24`, '198.18.0.20/24', '198.18.0.21/24']) await client.exec('ip', ['addr', 'add', a, 'dev', 'vdc']);
  await client.exec('ip', ['link', 'set', 'vdc', 'up']);

  // The gateway address is not on any interface yet: DNS must pick it up when it appears.
  dns = await startDaemon('dns', {
    netns: host.name,
    nodeName: 'test-node',
    args: ['--agent-socket', agent.socket, '--dns-listen', 'gateway:53', '--dns-rate-limit', '20', '--dns-allow', '198.18.0.21/32', '--dns-threads', '2'],
  });
  await agent.cli(['register', 'web', `${prefix}.50:8080`]);
}, 120_000);

afterAll(async () => {
  await dns?.stop();
  await agent?.stop();
  await client?.delete();
  await host?.delete();
});

describe('block gateway listener', () => {
  it('starts answering on this node\'s block gateway once the address exists', async () => {
    const before = await digFrom(`${prefix}.20`, gateway, 53, 'web.default.corral.internal', 'A');
    expect(before.status).toBe('NONE'); // no route, nothing listening
    await host.exec('ip', ['addr', 'add', `${gateway}/24`, 'dev', 'vdh']);
    const r = await until('an answer on the new gateway address', async () => {
      const d = await digFrom(`${prefix}.20`, gateway, 53, 'web.default.corral.internal', 'A', '+time=1');
      return d.status === 'NOERROR' ? d : undefined;
    }, { ms: 10_000, everyMs: 100 });
    expect(r.answer.map((a) => a.data)).toEqual([`${prefix}.50`]);
    const tcp = await digFrom(`${prefix}.20`, gateway, 53, 'web.default.corral.internal', 'A', '+tcp');
    expect(tcp.answer.map((a) => a.data)).toEqual([`${prefix}.50`]);
  });
});

describe('recursion only for the cluster and the host', () => {
  it('refuses names outside the domain to an outside client, and still answers our own names', async () => {
    const out = await digFrom('198.18.0.20', gateway, 53, 'www.example.test', 'A');
    expect(out.status).toBe('REFUSED');
    const own = await digFrom('198.18.0.20', gateway, 53, 'web.default.corral.internal', 'A');
    expect(own.status).toBe('NOERROR');
    // A cluster address, and an address --dns-allow adds, are forwarded (the test upstream is
    // dead, so: SERVFAIL, not REFUSED).
    for (const source of [`${prefix}.20`, '198.18.0.21']) {
      const r = await digFrom(source, gateway, 53, 'www.example.test', 'A', '+time=8');
      expect(r.status, source).toBe('SERVFAIL');
    }
    expect(await metrics()).toMatch(/corral_dns_recursion_refused_total [1-9]/);
  }, 30_000);
});

describe('per-client rate limit', () => {
  it('drops a flooding client\'s excess queries while another client is answered', async () => {
    const file = `/tmp/corral-dns-flood-${process.pid}.txt`;
    await run('sh', ['-c', `printf 'web.default.corral.internal A\\n' > ${file}`]);
    try {
      // 2000 q/s for 2 s from one address, against a limit of 20 q/s (burst 20).
      const flood = client.exec('dnsperf', ['-s', gateway, '-p', '53', '-a', `${prefix}.20`, '-d', file, '-l', '2', '-Q', '2000', '-q', '5000', '-t', '1']);
      await new Promise((r) => setTimeout(r, 500));
      const other = await digFrom(`${prefix}.21`, gateway, 53, 'web.default.corral.internal', 'A');
      expect(other.status).toBe('NOERROR');
      const { stdout } = await flood;
      const completed = Number(/Queries completed:\s+(\d+)/.exec(stdout)?.[1]);
      const sent = Number(/Queries sent:\s+(\d+)/.exec(stdout)?.[1]);
      expect(sent).toBeGreaterThan(3000);
      // burst 20 + 20/s over ~3 s (dnsperf waits 1 s for stragglers), with slack for timing.
      expect(completed).toBeGreaterThan(20);
      expect(completed).toBeLessThan(150);
      expect(await metrics()).toMatch(/corral_dns_rate_limited_total [1-9]\d{2,}/);
    } finally {
      await run('rm', ['-f', file]);
    }
  }, 30_000);
});
