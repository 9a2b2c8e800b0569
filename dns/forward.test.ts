// Forwarding: names outside the Corral domain go to a real unbound on 127.0.0.1 as upstream.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeLogger } from '../api/log.js';
import { defaultOptions, type DaemonOptions } from '../api/options.js';
import { dig, freePort, kdig, startUnbound, type Unbound } from './harness.js';
import { runDns, type RunningDns } from './main.js';

const SOA = 'example.test. 3600 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60';
const bigAnswer = Array.from({ length: 120 }, (_, i) => `big.example.test. 300 IN A 127.0.${Math.floor(i / 250)}.${(i % 250) + 1}`);

let unbound: Unbound | undefined;
const running: RunningDns[] = [];

async function start(upstreams: string[]): Promise<{ dns: RunningDns; port: number }> {
  const port = await freePort();
  const opts: DaemonOptions = {
    ...defaultOptions(),
    dnsListen: [`127.0.0.1:${port}`],
    adminListen: '127.0.0.1:0',
    agentSocket: '/nonexistent/corral-test-agent.sock',
    dnsUpstream: upstreams,
  };
  const dns = await runDns(opts, makeLogger('dns', 'silent'), { forwarder: { timeoutMs: 400, rounds: 1 } });
  running.push(dns);
  return { dns, port };
}

beforeAll(async () => {
  unbound = await startUnbound([
    SOA,
    'ns.example.test. 300 IN A 127.0.0.53',
    'www.example.test. 300 IN A 127.0.0.10',
    'www.example.test. 300 IN AAAA ::1',
    'gone.example.test. 300 IN TXT "only text here"',
    ...bigAnswer,
  ], { localZones: ['example.test.'] });
});

afterAll(async () => {
  for (const d of running) await d.close();
  await unbound?.stop();
});

describe('forwarding to upstream resolvers', () => {
  it('forwards names outside the domain and caches them until the TTL runs out, even with the upstream gone', async () => {
    const dead = await freePort();
    // The first upstream does not answer; the retry on the next one does.
    const { dns, port } = await start([`127.0.0.1:${dead}`, `127.0.0.1:${unbound!.port}`]);
    const first = await dig(port, 'WWW.example.test', 'A');
    expect(first.status).toBe('NOERROR');
    expect(first.flags).not.toContain('aa');
    expect(first.flags).toContain('ra');
    expect(first.answer.map((a) => `${a.name} ${a.data}`)).toEqual(['WWW.example.test. 127.0.0.10']);
    expect(first.answer[0]!.ttl).toBeLessThanOrEqual(300);

    const nx = await dig(port, 'missing.example.test', 'A');
    expect(nx.status).toBe('NXDOMAIN');
    expect(nx.authority.map((a) => a.type)).toEqual(['SOA']);
    const nodata = await dig(port, 'gone.example.test', 'A');
    expect(nodata.status).toBe('NOERROR');
    expect(nodata.answer).toEqual([]);

    const asked = dns.forwarder.upstreamQueries;
    await unbound!.stop();
    unbound = undefined;
    await new Promise((r) => setTimeout(r, 1100));
    const again = await dig(port, 'www.example.test', 'A');
    expect(again.status).toBe('NOERROR');
    expect(again.answer.map((a) => a.data)).toEqual(['127.0.0.10']);
    expect(again.answer[0]!.ttl).toBeLessThan(first.answer[0]!.ttl); // counted down in the cache
    // Negative answers are cached too (RFC 2308: SOA minimum 60 s).
    expect((await dig(port, 'missing.example.test', 'A')).status).toBe('NXDOMAIN');
    expect((await kdig(port, 'gone.example.test', 'A', '+tcp')).status).toBe('NOERROR');
    expect(dns.forwarder.upstreamQueries).toBe(asked);
    // Not cached and no upstream left: SERVFAIL.
    expect((await dig(port, 'www.example.test', 'AAAA')).status).toBe('SERVFAIL');
  });
});

describe('forwarding with a live upstream', () => {
  beforeAll(async () => {
    unbound ??= await startUnbound([SOA, 'www.example.test. 300 IN A 127.0.0.10', 'slow.example.test. 300 IN A 127.0.0.11', ...bigAnswer], { localZones: ['example.test.'] });
  });

  it('fetches a truncated upstream answer over TCP and hands it on with TC and over TCP', async () => {
    const { port } = await start([`127.0.0.1:${unbound!.port}`]);
    const udp = await dig(port, 'big.example.test', 'A', '+ignore');
    expect(udp.flags).toContain('tc');
    const full = await dig(port, 'big.example.test', 'A');
    expect(full.status).toBe('NOERROR');
    expect(full.answer).toHaveLength(120);
    const tcp = await kdig(port, 'big.example.test', 'A', '+tcp');
    expect(tcp.answer).toHaveLength(120);
  });

  it('sends identical concurrent queries upstream once', async () => {
    const { dns, port } = await start([`127.0.0.1:${unbound!.port}`]);
    const before = dns.forwarder.upstreamQueries;
    const results = await Promise.all(Array.from({ length: 8 }, () => dig(port, 'slow.example.test', 'A')));
    expect(results.every((r) => r.answer[0]?.data === '127.0.0.11')).toBe(true);
    expect(dns.forwarder.upstreamQueries - before).toBe(1);
  });

  it('answers SERVFAIL when no upstream answers', async () => {
    const dead = await freePort();
    const { port } = await start([`127.0.0.1:${dead}`]);
    const r = await dig(port, 'www.example.test', 'A');
    expect(r.status).toBe('SERVFAIL');
    // Our own names still answer.
    expect((await dig(port, 'corral.internal', 'SOA')).status).toBe('NOERROR');
  });

  it('never forwards to itself', async () => {
    const port = await freePort();
    const dns = await runDns(
      { ...defaultOptions(), dnsListen: [`127.0.0.1:${port}`], adminListen: '127.0.0.1:0', agentSocket: '/nonexistent/x.sock', dnsUpstream: [`127.0.0.1:${port}`] },
      makeLogger('dns', 'silent'),
      { forwarder: { timeoutMs: 300, rounds: 1 } },
    );
    running.push(dns);
    expect(dns.forwarder.upstreams).toEqual([]);
    expect((await dig(port, 'www.example.test', 'A')).status).toBe('SERVFAIL');
  });
});
