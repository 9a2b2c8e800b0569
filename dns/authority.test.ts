// The authoritative side of `corral dns`, as a client sees it: the real server on 127.0.0.1,
// fed watch events through its zone, asked with the real dig and kdig over UDP and TCP.
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeLogger } from '../api/log.js';
import { defaultOptions } from '../api/options.js';
import { dig, freePort, kdig } from '../test/support/dns.js';
import { endpoint, watchEvent } from '../test/support/records.js';
import { runDns, type RunningDns } from './main.js';
import { buildQuery } from './wire.js';

let dns: RunningDns;
let port: number;
let deadUpstream: number;

const web = [
  endpoint({ address: '10.42.0.5', color: 'blue' }),
  endpoint({ address: '10.42.0.6', color: 'blue', weight: 3 }),
  endpoint({ address: 'fd00:42::5', color: 'blue' }),
  endpoint({ address: '10.42.0.7', color: 'green' }),
  endpoint({ address: '10.42.0.8', color: 'blue', healthy: false, healthReason: 'HTTP 500' }),
  endpoint({ address: '10.42.0.9', color: 'blue', draining: true }),
];
const api = endpoint({ service: 'api', namespace: 'prod', address: '10.42.1.5', port: 9000, portName: 'grpc' });

async function httpGet(path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${dns.adminPort}${path}`);
  return { status: res.status, body: await res.text() };
}

beforeAll(async () => {
  port = await freePort();
  deadUpstream = await freePort();
  const opts = {
    ...defaultOptions(),
    dnsListen: [`127.0.0.1:${port}`],
    adminListen: '127.0.0.1:0', dnsThreads: 1,
    agentSocket: '/nonexistent/corral-test-agent.sock', // zone fed directly below
    dnsUpstream: [`127.0.0.1:${deadUpstream}`],
  };
  dns = await runDns(opts, makeLogger('dns', 'silent'), { forwarder: { timeoutMs: 300, rounds: 1 } });
  expect((await httpGet('/readyz')).status).toBe(503);
  dns.zone.apply(watchEvent({
    revision: 10,
    snapshot: true,
    endpoints: [...web, api],
    services: [{ namespace: 'default', name: 'web', active: { blue: 100 }, previous: {} }],
  }));
});

afterAll(async () => {
  await dns?.close();
});

describe('service names', () => {
  it('answers A with the healthy, non-draining endpoints of the active color only', async () => {
    const r = await dig(port, 'web.default.corral.internal', 'A');
    expect(r.status).toBe('NOERROR');
    expect(r.flags).toContain('aa');
    expect(r.answer.map((a) => a.data).sort()).toEqual(['10.42.0.5', '10.42.0.6']);
    expect(r.answer.every((a) => a.ttl === 5 && a.type === 'A')).toBe(true);
  });

  it('answers AAAA with IPv6 endpoints', async () => {
    const r = await dig(port, 'web.default.corral.internal', 'AAAA');
    expect(r.answer.map((a) => a.data)).toEqual(['fd00:42::5']);
  });

  it('answers a color name with that color even when it is not active', async () => {
    const green = await dig(port, 'green.web.default.corral.internal', 'A');
    expect(green.answer.map((a) => a.data)).toEqual(['10.42.0.7']);
    const blue = await dig(port, 'blue.web.default.corral.internal', 'A');
    expect(blue.answer.map((a) => a.data).sort()).toEqual(['10.42.0.5', '10.42.0.6']);
  });

  it('answers SRV with weights, ports and per-endpoint targets, addresses in additional', async () => {
    const r = await dig(port, '_http._tcp.web.default.corral.internal', 'SRV');
    expect(r.status).toBe('NOERROR');
    const srv = r.answer.map((a) => a.data.split(' ')).sort((a, b) => a[3]!.localeCompare(b[3]!));
    // blue has 100; endpoint weights 1, 3 and 1 split it 20 / 60 / 20.
    expect(srv).toEqual([
      ['0', '2000', '8080', '10-42-0-5.web.default.corral.internal.'],
      ['0', '6000', '8080', '10-42-0-6.web.default.corral.internal.'],
      ['0', '2000', '8080', 'fd00-42-0-0-0-0-0-5.web.default.corral.internal.'],
    ]);
    const extra = r.additional.filter((a) => a.type !== 'OPT').map((a) => `${a.name} ${a.type} ${a.data}`).sort();
    expect(extra).toEqual([
      '10-42-0-5.web.default.corral.internal. A 10.42.0.5',
      '10-42-0-6.web.default.corral.internal. A 10.42.0.6',
      'fd00-42-0-0-0-0-0-5.web.default.corral.internal. AAAA fd00:42::5',
    ]);
    const target = await dig(port, '10-42-0-6.web.default.corral.internal', 'A');
    expect(target.answer.map((a) => a.data)).toEqual(['10.42.0.6']);
  });

  it('uses the endpoint port name for SRV, in its own namespace', async () => {
    const r = await dig(port, '_grpc._tcp.api.prod.corral.internal', 'SRV');
    expect(r.answer.map((a) => a.data)).toEqual(['0 10000 9000 10-42-1-5.api.prod.corral.internal.']);
    const none = await dig(port, '_http._tcp.api.prod.corral.internal', 'SRV');
    expect(none.status).toBe('NXDOMAIN');
  });

  it('answers PTR for endpoint addresses, IPv4 and IPv6', async () => {
    const v4 = await dig(port, '-x', '10.42.0.5');
    expect(v4.answer.map((a) => a.data)).toEqual(['10-42-0-5.web.default.corral.internal.']);
    const v6 = await dig(port, '-x', 'fd00:42::5');
    expect(v6.answer.map((a) => a.data)).toEqual(['fd00-42-0-0-0-0-0-5.web.default.corral.internal.']);
    // Registered but unhealthy: still in the registry, so still has a PTR.
    const sick = await dig(port, '-x', '10.42.0.8');
    expect(sick.answer.map((a) => a.data)).toEqual(['10-42-0-8.web.default.corral.internal.']);
  });

  it('preserves the case of the question in the reply', async () => {
    const r = await dig(port, 'WeB.DeFault.Corral.Internal', 'A');
    expect(r.raw).toContain(';WeB.DeFault.Corral.Internal.');
    expect(r.answer.length).toBe(2);
    expect(r.answer.every((a) => a.name === 'WeB.DeFault.Corral.Internal.')).toBe(true);
  });

  it('shuffles the order of A records between answers', async () => {
    dns.zone.apply(watchEvent({
      revision: 11,
      endpoints: Array.from({ length: 8 }, (_, i) => endpoint({ service: 'many', address: `10.42.3.${i + 1}` })),
    }));
    const orders = new Set<string>();
    for (let i = 0; i < 10; i++) orders.add((await dig(port, 'many.default.corral.internal', 'A')).answer.map((a) => a.data).join(','));
    expect(orders.size).toBeGreaterThan(1);
  });
});

describe('the zone apex and negative answers', () => {
  it('answers SOA and NS at the apex, with the name server address', async () => {
    const soa = await dig(port, 'corral.internal', 'SOA');
    expect(soa.answer).toHaveLength(1);
    const [mname, rname, serial, , , , minimum] = soa.answer[0]!.data.split(' ');
    expect([mname, rname, minimum]).toEqual(['ns.corral.internal.', 'hostmaster.corral.internal.', '5']);
    expect(Number(serial)).toBeGreaterThanOrEqual(10);
    const ns = await dig(port, 'corral.internal', 'NS');
    expect(ns.answer.map((a) => a.data)).toEqual(['ns.corral.internal.']);
    expect(ns.additional.filter((a) => a.type === 'A').map((a) => a.data)).toEqual(['127.0.0.1']);
    const nsA = await dig(port, 'ns.corral.internal', 'A');
    expect(nsA.answer.map((a) => a.data)).toEqual(['127.0.0.1']);
  });

  it('answers NXDOMAIN with SOA for an unknown service', async () => {
    const r = await dig(port, 'nothere.default.corral.internal', 'A');
    expect(r.status).toBe('NXDOMAIN');
    expect(r.flags).toContain('aa');
    expect(r.answer).toEqual([]);
    expect(r.authority.map((a) => a.type)).toEqual(['SOA']);
    expect(r.authority[0]!.name).toBe('corral.internal.');
  });

  it('answers NODATA with SOA for a name without that type, and for empty non-terminals', async () => {
    for (const [name, type] of [
      ['api.prod.corral.internal', 'AAAA'],
      ['default.corral.internal', 'A'],
      ['_tcp.web.default.corral.internal', 'SRV'],
      ['web.default.corral.internal', 'TXT'],
    ] as const) {
      const r = await dig(port, name, type);
      expect(r.status, `${name} ${type}`).toBe('NOERROR');
      expect(r.answer, `${name} ${type}`).toEqual([]);
      expect(r.authority.map((a) => a.type), `${name} ${type}`).toEqual(['SOA']);
    }
  });
});

describe('deltas', () => {
  it('changes answers when a delta switches colors, fails health and removes endpoints', async () => {
    const before = await dig(port, 'web.default.corral.internal', 'A');
    expect(before.answer.map((a) => a.data).sort()).toEqual(['10.42.0.5', '10.42.0.6']);

    dns.zone.apply(watchEvent({ revision: 20, services: [{ namespace: 'default', name: 'web', active: { green: 100 }, previous: { blue: 100 } }] }));
    expect((await dig(port, 'web.default.corral.internal', 'A')).answer.map((a) => a.data)).toEqual(['10.42.0.7']);
    expect((await dig(port, '_http._tcp.web.default.corral.internal', 'SRV')).answer.map((a) => a.data))
      .toEqual(['0 10000 8080 10-42-0-7.web.default.corral.internal.']);

    dns.zone.apply(watchEvent({ revision: 21, endpoints: [{ ...web[3]!, healthy: false }] }));
    const sick = await dig(port, 'web.default.corral.internal', 'A');
    expect(sick.status).toBe('NOERROR');
    expect(sick.answer).toEqual([]);

    dns.zone.apply(watchEvent({ revision: 22, services: [{ namespace: 'default', name: 'web', active: { blue: 100 }, previous: { green: 100 } }], deletedEndpoints: [web[0]!.id] }));
    expect((await dig(port, 'web.default.corral.internal', 'A')).answer.map((a) => a.data)).toEqual(['10.42.0.6']);
    expect((await dig(port, '-x', '10.42.0.5')).status).not.toBe('NOERROR'); // forwarded: not ours any more

    const soa = await dig(port, 'corral.internal', 'SOA');
    expect(soa.answer[0]!.data.split(' ')[2]).toBe('22');
  });

  it('drops every name of a service when its last endpoint and record go', async () => {
    dns.zone.apply(watchEvent({ revision: 23, deletedEndpoints: [api.id] }));
    expect((await dig(port, 'api.prod.corral.internal', 'A')).status).toBe('NXDOMAIN');
    expect((await dig(port, 'prod.corral.internal', 'A')).status).toBe('NXDOMAIN');
  });
});

describe('transports', () => {
  it('answers over TCP (kdig) the same as over UDP', async () => {
    const r = await kdig(port, 'web.default.corral.internal', 'A', '+tcp');
    expect(r.status).toBe('NOERROR');
    expect(r.answer.map((a) => a.data)).toEqual(['10.42.0.6']);
    const nx = await kdig(port, 'nothere.default.corral.internal', 'A', '+tcp');
    expect(nx.status).toBe('NXDOMAIN');
    expect(nx.authority.map((a) => a.type)).toEqual(['SOA']);
  });

  it('truncates a big UDP answer with TC, and answers it in full over TCP', async () => {
    dns.zone.apply(watchEvent({
      revision: 30,
      endpoints: Array.from({ length: 100 }, (_, i) => endpoint({ service: 'big', address: `10.42.2.${i + 1}` })),
    }));
    const udp = await dig(port, 'big.default.corral.internal', 'A', '+ignore');
    expect(udp.flags).toContain('tc');
    expect(udp.answer).toEqual([]);
    const plain = await dig(port, 'big.default.corral.internal', 'A', '+ignore', '+noedns');
    expect(plain.flags).toContain('tc');
    // dig and kdig retry over TCP on TC by themselves.
    const fallback = await dig(port, 'big.default.corral.internal', 'A');
    expect(fallback.flags).not.toContain('tc');
    expect(fallback.answer).toHaveLength(100);
    const k = await kdig(port, 'big.default.corral.internal', 'A');
    expect(k.answer).toHaveLength(100);
    // Over UDP we never send more than our own 1232-byte payload size, whatever the client offers.
    const large = await dig(port, 'big.default.corral.internal', 'A', '+bufsize=4096', '+ignore');
    expect(large.flags).toContain('tc');
  });

  it('answers pipelined TCP queries on one connection', async () => {
    const q1 = buildQuery(0x1111, 'web.default.corral.internal', 1);
    const q2 = buildQuery(0x2222, 'nothere.default.corral.internal', 1);
    const frame = (q: Buffer) => Buffer.concat([Buffer.from([q.length >> 8, q.length & 0xff]), q]);
    const replies = await new Promise<Buffer[]>((resolve, reject) => {
      const sock = connect(port, '127.0.0.1');
      let buf = Buffer.alloc(0);
      const got: Buffer[] = [];
      sock.on('error', reject);
      sock.on('connect', () => {
        // Two queries, the second split across writes.
        const both = Buffer.concat([frame(q1), frame(q2)]);
        sock.write(both.subarray(0, both.length - 5));
        setTimeout(() => sock.write(both.subarray(both.length - 5)), 50);
      });
      sock.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          got.push(buf.subarray(2, 2 + buf.readUInt16BE(0)));
          buf = buf.subarray(2 + buf.readUInt16BE(0));
        }
        if (got.length === 2) {
          sock.destroy();
          resolve(got);
        }
      });
    });
    const byId = new Map(replies.map((r) => [r.readUInt16BE(0), r]));
    expect(byId.get(0x1111)!.readUInt16BE(2) & 0xf).toBe(0);
    expect(byId.get(0x1111)!.readUInt16BE(6)).toBe(1);
    expect(byId.get(0x2222)!.readUInt16BE(2) & 0xf).toBe(3);
  });
});

describe('malformed packets', () => {
  async function send(packet: Buffer): Promise<Buffer | null> {
    const sock = createSocket('udp4');
    try {
      return await new Promise<Buffer | null>((resolve) => {
        const timer = setTimeout(() => resolve(null), 400);
        sock.on('message', (m) => {
          clearTimeout(timer);
          resolve(m);
        });
        sock.send(packet, port, '127.0.0.1');
      });
    } finally {
      sock.close();
    }
  }
  const good = buildQuery(0xabcd, 'web.default.corral.internal', 1);

  it('drops packets too short for a header and replies FORMERR to bad questions, and keeps answering', async () => {
    expect(await send(Buffer.from([1, 2, 3]))).toBeNull();
    const twoQuestions = Buffer.from(good);
    twoQuestions.writeUInt16BE(2, 4);
    const compressed = Buffer.concat([good.subarray(0, 12), Buffer.from([0xc0, 0x0c, 0, 1, 0, 1])]);
    const longLabel = Buffer.concat([good.subarray(0, 12), Buffer.from([64]), Buffer.alloc(64, 0x61), Buffer.from([0, 0, 1, 0, 1])]);
    const longName = Buffer.concat([good.subarray(0, 12), ...Array.from({ length: 5 }, () => Buffer.concat([Buffer.from([60]), Buffer.alloc(60, 0x61)])), Buffer.from([0, 0, 1, 0, 1])]);
    const truncated = good.subarray(0, good.length - 3);
    const badOpt = Buffer.from(good);
    badOpt.writeUInt16BE(1, 10); // claims an additional record that is not there
    for (const [what, packet] of [['qdcount 2', twoQuestions], ['compression in question', compressed], ['label of 64', longLabel],
      ['name over 255', longName], ['truncated question', truncated], ['missing additional', badOpt]] as const) {
      const reply = await send(packet);
      expect(reply, what).not.toBeNull();
      expect(reply!.readUInt16BE(0), what).toBe(0xabcd);
      expect(reply!.readUInt16BE(2) & 0x800f, what).toBe(0x8001);
    }
    // A response (QR set) is never answered: no reflection loops.
    const response = Buffer.from(good);
    response[2]! |= 0x80;
    expect(await send(response)).toBeNull();
    // Random garbage: whatever happens, the server keeps serving.
    for (let i = 0; i < 200; i++) await send(Buffer.from(Array.from({ length: 12 + (i % 40) }, () => (Math.random() * 256) | 0)).fill(0, 2, 3));
    const ok = await send(good);
    expect(ok!.readUInt16BE(2) & 0xf).toBe(0);
    expect((await dig(port, 'web.default.corral.internal', 'A')).status).toBe('NOERROR');
  });

  it('answers NOTIMP for other opcodes and BADVERS for EDNS versions it does not speak', async () => {
    const notify = Buffer.from(good);
    notify.writeUInt16BE((4 << 11) | 0x0100, 2);
    expect((await send(notify))!.readUInt16BE(2) & 0xf).toBe(4);
    const r = await dig(port, 'web.default.corral.internal', 'A', '+edns=1', '+noednsneg');
    expect(r.status).toBe('BADVERS');
  });
});

describe('admin', () => {
  it('is ready after the first snapshot and exports query metrics', async () => {
    expect((await httpGet('/readyz')).status).toBe(200);
    const m = (await httpGet('/metrics')).body;
    expect(m).toMatch(/corral_dns_queries_total\{qtype="A",rcode="NOERROR"\} \d+/);
    expect(m).toMatch(/corral_dns_queries_total\{qtype="A",rcode="NXDOMAIN"\} \d+/);
    expect(m).toMatch(/corral_dns_cache_hits_total [1-9]\d*/);
    expect(m).toMatch(/corral_dns_applied_revision 30/);
    const status = JSON.parse((await httpGet('/')).body) as { ready: boolean; zone: { revision: number } };
    expect(status.ready).toBe(true);
    expect(status.zone.revision).toBe(30);
  });
});

describe('reconnects', () => {
  it('replaces everything on a new snapshot instead of merging', async () => {
    dns.zone.apply(watchEvent({ revision: 40, snapshot: true, endpoints: [endpoint({ service: 'solo', namespace: 'dev', address: '10.42.9.9' })] }));
    expect((await dig(port, 'web.default.corral.internal', 'A')).status).toBe('NXDOMAIN');
    expect((await dig(port, 'default.corral.internal', 'A')).status).toBe('NXDOMAIN');
    expect((await dig(port, 'solo.dev.corral.internal', 'A')).answer.map((a) => a.data)).toEqual(['10.42.9.9']);
    expect((await dig(port, 'corral.internal', 'SOA')).answer[0]!.data.split(' ')[2]).toBe('40');
  });
});
