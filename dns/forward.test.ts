// Forwarding: names outside the Corral domain go to a real unbound on 127.0.0.1 as upstream.
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeLogger } from '../api/log.js';
import { defaultOptions, type DaemonOptions } from '../api/options.js';
import { dig, freePort, kdig, startUnbound, type Unbound } from '../test/support/dns.js';
import { until } from '../test/support/until.js';
import { runDns, type RunningDns } from './main.js';
import { buildQuery, parseQuery, PARSE_OK, Query } from './wire.js';

const SOA = 'example.test. 3600 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60';
const bigAnswer = Array.from({ length: 120 }, (_, i) => `big.example.test. 300 IN A 127.0.${Math.floor(i / 250)}.${(i % 250) + 1}`);

let unbound: Unbound | undefined;
const running: RunningDns[] = [];

async function start(upstreams: string[]): Promise<{ dns: RunningDns; port: number }> {
  const port = await freePort();
  const opts: DaemonOptions = {
    ...defaultOptions(),
    dnsListen: [`127.0.0.1:${port}`],
    adminListen: '127.0.0.1:0', dnsThreads: 1,
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
      { ...defaultOptions(), dnsListen: [`127.0.0.1:${port}`], adminListen: '127.0.0.1:0', dnsThreads: 1, agentSocket: '/nonexistent/x.sock', dnsUpstream: [`127.0.0.1:${port}`] },
      makeLogger('dns', 'silent'),
      { forwarder: { timeoutMs: 300, rounds: 1 } },
    );
    running.push(dns);
    expect(dns.forwarder.upstreams).toEqual([]);
    expect((await dig(port, 'www.example.test', 'A')).status).toBe('SERVFAIL');
  });
});

/** A UDP upstream the test controls: silent, or answering every question with one A record (after a delay). */
async function controlledUpstream(): Promise<{ port: number; mode: 'silent' | 'answer'; delayMs: number; asked: string[]; close(): void }> {
  const sock = createSocket('udp4');
  let closed = false;
  const u = {
    port: 0, mode: 'silent' as 'silent' | 'answer', delayMs: 0, asked: [] as string[],
    close: () => {
      closed = true;
      sock.close();
    },
  };
  sock.on('message', (msg, rinfo) => {
    const q = new Query();
    if (parseQuery(msg, q) !== PARSE_OK) return;
    u.asked.push(q.name);
    if (u.mode === 'silent') return;
    const reply = Buffer.concat([msg.subarray(0, q.qEnd), Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 99])]);
    reply.writeUInt16BE(0x8180, 2);
    reply.writeUInt16BE(1, 6);
    reply.writeUInt16BE(0, 8);
    reply.writeUInt16BE(0, 10);
    setTimeout(() => !closed && sock.send(reply, rinfo.port, rinfo.address), u.delayMs);
  });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  u.port = sock.address().port;
  return u;
}

async function metricsOf(dns: RunningDns): Promise<string> {
  return (await fetch(`http://127.0.0.1:${dns.adminPort}/metrics`)).text();
}

describe('upstream health', () => {
  let local: Unbound;
  beforeAll(async () => {
    local = await startUnbound([SOA, 'www.example.test. 300 IN A 127.0.0.10', ...Array.from({ length: 10 }, (_, i) => `n${i}.example.test. 300 IN A 127.0.1.${i}`)], { localZones: ['example.test.'] });
  });
  afterAll(async () => {
    await local?.stop();
  });

  it('skips an upstream that keeps timing out, and takes it back once a probe hears from it', async () => {
    const flaky = await controlledUpstream();
    try {
      const { dns, port } = await start([`127.0.0.1:${flaky.port}`, `127.0.0.1:${local.port}`]);
      // Each of the first three names waits out the silent upstream (400 ms) before unbound answers.
      for (let i = 0; i < 3; i++) expect((await dig(port, `n${i}.example.test`, 'A')).answer.map((a) => a.data)).toEqual([`127.0.1.${i}`]);
      expect(flaky.asked.filter((n) => n.startsWith('n'))).toHaveLength(3);
      expect(await metricsOf(dns)).toContain(`corral_dns_upstream_up{upstream="127.0.0.1:${flaky.port}"} 0`);
      // Now skipped: unbound answers, and the silent one is not asked.
      expect((await dig(port, 'n3.example.test', 'A')).answer.map((a) => a.data)).toEqual(['127.0.1.3']);
      expect(flaky.asked.filter((n) => n.startsWith('n'))).toHaveLength(3);
      // It recovers: the next probe (1 s after it went down) gets a reply and it is used again.
      flaky.mode = 'answer';
      await until('the upstream up again', async () => (await metricsOf(dns)).includes(`corral_dns_upstream_up{upstream="127.0.0.1:${flaky.port}"} 1`), { ms: 5_000, everyMs: 100 });
      expect(flaky.asked).toContain(''); // the probe: ". NS"
      expect((await dig(port, 'n4.example.test', 'A')).answer.map((a) => a.data)).toEqual(['127.0.0.99']);
    } finally {
      flaky.close();
    }
  }, 20_000);

  it('exports upstream latency, cache hits and queries by type and rcode on /metrics', async () => {
    const { dns, port } = await start([`127.0.0.1:${local.port}`]);
    await dig(port, 'www.example.test', 'A');
    await dig(port, 'www.example.test', 'A');
    await dig(port, 'missing.example.test', 'A');
    await dig(port, 'corral.internal', 'SOA');
    const m = await metricsOf(dns);
    expect(m).toMatch(/corral_dns_upstream_seconds_count 2\b/); // www and missing; the repeat was cached
    expect(m).toMatch(/corral_dns_upstream_seconds_bucket\{le="0.1"\} 2\b/);
    expect(m).toMatch(/corral_dns_queries_total\{qtype="A",rcode="NOERROR"\} 2\b/);
    expect(m).toMatch(/corral_dns_queries_total\{qtype="A",rcode="NXDOMAIN"\} 1\b/);
    expect(m).toMatch(/corral_dns_queries_total\{qtype="SOA",rcode="NOERROR"\} 1\b/);
    expect(m).toMatch(/corral_dns_cache_hits_total 1\b/);
    expect(m).toContain(`corral_dns_upstream_up{upstream="127.0.0.1:${local.port}"} 1`);
  });
});

describe('TCP pipelining (RFC 7766)', () => {
  it('answers a later query first when an earlier one waits for the upstream', async () => {
    const slow = await controlledUpstream();
    slow.mode = 'answer';
    slow.delayMs = 400;
    try {
      const { port } = await start([`127.0.0.1:${slow.port}`]);
      const frame = (q: Buffer) => Buffer.concat([Buffer.from([q.length >> 8, q.length & 0xff]), q]);
      const ids = await new Promise<number[]>((resolve, reject) => {
        const sock = connect(port, '127.0.0.1');
        let buf = Buffer.alloc(0);
        const got: number[] = [];
        sock.on('error', reject);
        sock.on('connect', () => sock.write(Buffer.concat([frame(buildQuery(1, 'slow.example.test', 1)), frame(buildQuery(2, 'corral.internal', 6))])));
        sock.on('data', (c: Buffer) => {
          buf = Buffer.concat([buf, c]);
          while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
            got.push(buf.readUInt16BE(2));
            buf = buf.subarray(2 + buf.readUInt16BE(0));
          }
          if (got.length === 2) {
            sock.destroy();
            resolve(got);
          }
        });
      });
      expect(ids).toEqual([2, 1]);
    } finally {
      slow.close();
    }
  });
});
