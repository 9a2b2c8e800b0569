// Per-client answers: a client with an Allocation record sees relative names in its own
// namespace, every allocated address has a PTR, and the EDNS0 clamp follows --dns-udp-size.
// The real server on 127.0.0.1, asked by dig from different loopback source addresses
// (-b 127.0.0.x), each standing for one container.
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeLogger } from '../api/log.js';
import { defaultOptions } from '../api/options.js';
import type { Allocation } from '../api/types.js';
import { dig, freePort, kdig, startStandaloneDns } from '../test/support/dns.js';
import { endpoint, watchEvent } from '../test/support/records.js';
import { runDns, type RunningDns } from './main.js';
import { buildQuery } from './wire.js';

let dns: RunningDns;
let port: number;

function allocation(over: Partial<Allocation> & { address: string }): Allocation {
  return { namespace: 'default', containerId: 'c0ffee00112233445566778899', ifname: 'eth0', node: 'test-node', sinceMs: 0, name: '', ...over };
}

const PROD_CLIENT = '127.0.0.2';
const DEV_CLIENT = '127.0.0.3';

beforeAll(async () => {
  ({ dns, port } = await startStandaloneDns(200));
  dns.apply(watchEvent({
    revision: 5,
    snapshot: true,
    endpoints: [
      endpoint({ service: 'web', namespace: 'default', address: '10.42.0.10' }),
      endpoint({ service: 'web', namespace: 'prod', address: '10.42.1.10', color: 'blue' }),
      endpoint({ service: 'web', namespace: 'prod', address: '10.42.1.11', color: 'green', healthy: false }),
      endpoint({ service: 'api', namespace: 'dev', address: '10.42.2.10' }),
    ],
    allocations: [
      allocation({ address: PROD_CLIENT, namespace: 'prod', name: 'shop-1' }),
      allocation({ address: DEV_CLIENT, namespace: 'dev', name: 'Dev_Box.2' }),
      allocation({ address: '10.42.1.10', namespace: 'prod', name: 'web-blue-1' }),
      allocation({ address: '10.42.1.77', namespace: 'prod', containerId: '0123456789abcdef0123', name: '' }),
    ],
  }));
});

afterAll(async () => {
  await dns?.close();
});

const addrs = (r: { answer: Array<{ data: string }> }) => r.answer.map((a) => a.data).sort();

describe('per-client view', () => {
  it('answers a name relative to the domain in the asking client\'s namespace', async () => {
    const prod = await dig(port, 'web.corral.internal', 'A', '-b', PROD_CLIENT);
    expect(prod.status).toBe('NOERROR');
    expect(prod.flags).toContain('aa');
    expect(prod.answer.map((a) => `${a.name} ${a.data}`)).toEqual(['web.corral.internal. 10.42.1.10']);
    // A client without an Allocation record (the host) is in the default namespace.
    expect(addrs(await dig(port, 'web.corral.internal', 'A'))).toEqual(['10.42.0.10']);
    // Color names and SRV work relative too.
    expect(addrs(await dig(port, 'blue.web.corral.internal', 'A', '-b', PROD_CLIENT))).toEqual(['10.42.1.10']);
    const srv = await kdig(port, '_http._tcp.web.corral.internal', 'SRV', '+tcp', '-b', PROD_CLIENT);
    expect(srv.answer.map((a) => a.data)).toEqual(['0 10000 8080 10-42-1-10.web.prod.corral.internal.']);
  });

  it('needs the full name for a service in another namespace', async () => {
    // api exists only in dev: relative from prod is NXDOMAIN, the full name works from anywhere.
    const rel = await dig(port, 'api.corral.internal', 'A', '-b', PROD_CLIENT);
    expect(rel.status).toBe('NXDOMAIN');
    expect(rel.authority.map((a) => a.type)).toEqual(['SOA']);
    expect(addrs(await dig(port, 'api.corral.internal', 'A', '-b', DEV_CLIENT))).toEqual(['10.42.2.10']);
    expect(addrs(await dig(port, 'api.dev.corral.internal', 'A', '-b', PROD_CLIENT))).toEqual(['10.42.2.10']);
    expect(addrs(await dig(port, 'web.default.corral.internal', 'A', '-b', PROD_CLIENT))).toEqual(['10.42.0.10']);
    // What the search path `prod.corral.internal corral.internal` sends for "web".
    expect(addrs(await dig(port, 'web.prod.corral.internal', 'A', '-b', PROD_CLIENT))).toEqual(['10.42.1.10']);
  });

  it('follows allocation changes: a client that moved namespace, a name that appeared', async () => {
    dns.apply(watchEvent({ revision: 6, allocations: [allocation({ address: PROD_CLIENT, namespace: 'dev', name: 'shop-1' })] }));
    expect(addrs(await dig(port, 'api.corral.internal', 'A', '-b', PROD_CLIENT))).toEqual(['10.42.2.10']);
    dns.apply(watchEvent({ revision: 7, endpoints: [endpoint({ service: 'api', namespace: 'prod', address: '10.42.1.30' })], allocations: [allocation({ address: PROD_CLIENT, namespace: 'prod', name: 'shop-1' })] }));
    expect(addrs(await dig(port, 'api.corral.internal', 'A', '-b', PROD_CLIENT))).toEqual(['10.42.1.30']);
  });
});

describe('PTR for allocated addresses', () => {
  it('names the container (or its short id) in its namespace, beside the endpoint name', async () => {
    expect((await dig(port, '-x', PROD_CLIENT)).answer.map((a) => a.data)).toEqual(['shop-1.prod.corral.internal.']);
    expect((await dig(port, '-x', DEV_CLIENT)).answer.map((a) => a.data)).toEqual(['dev-box-2.dev.corral.internal.']);
    expect((await dig(port, '-x', '10.42.1.77')).answer.map((a) => a.data)).toEqual(['0123456789ab.prod.corral.internal.']);
    const both = await dig(port, '-x', '10.42.1.10');
    expect(addrs(both)).toEqual(['10-42-1-10.web.prod.corral.internal.', 'web-blue-1.prod.corral.internal.']);
  });

  it('drops the PTR when the allocation is released', async () => {
    dns.apply(watchEvent({ revision: 8, deletedAllocations: ['10.42.1.77'] }));
    const gone = await dig(port, '-x', '10.42.1.77');
    expect(gone.answer).toEqual([]);
    expect(gone.status).toBe('SERVFAIL'); // not ours any more: forwarded, and this test has no upstream
    // A snapshot without allocations removes them all.
    dns.apply(watchEvent({ revision: 9, snapshot: true, endpoints: [endpoint({ service: 'web', address: '10.42.0.10' })] }));
    expect((await dig(port, '-x', PROD_CLIENT)).answer).toEqual([]);
    expect(addrs(await dig(port, 'web.corral.internal', 'A', '-b', PROD_CLIENT))).toEqual(['10.42.0.10']);
  });
});

describe('EDNS0 payload clamp (--dns-udp-size)', () => {
  it('sends UDP replies up to the configured size and truncates above it', async () => {
    const p = await freePort();
    const big = await runDns(
      { ...defaultOptions(), dnsListen: [`127.0.0.1:${p}`], adminListen: '127.0.0.1:0', dnsThreads: 1, agentSocket: '/nonexistent/x.sock', dnsUpstream: ['127.0.0.1:9'], dnsUdpSize: 4096 },
      makeLogger('dns', 'silent'),
    );
    try {
      big.apply(watchEvent({
        revision: 1, snapshot: true,
        endpoints: Array.from({ length: 100 }, (_, i) => endpoint({ service: 'big', address: `10.42.2.${i + 1}` })),
      }));
      // 100 A records are ~1.7 KB: over 1232, under 4096.
      const fits = await dig(p, 'big.default.corral.internal', 'A', '+bufsize=4096', '+ignore');
      expect(fits.flags).not.toContain('tc');
      expect(fits.answer).toHaveLength(100);
      // The client's own smaller size still wins.
      const small = await dig(p, 'big.default.corral.internal', 'A', '+bufsize=1232', '+ignore');
      expect(small.flags).toContain('tc');
      expect(small.answer).toEqual([]);
      expect(/udp: (\d+)/.exec(small.raw)?.[1]).toBe('4096'); // our OPT advertises our size
    } finally {
      await big.close();
    }
  });
});

describe('TCP idle timeout (RFC 7766)', () => {
  it('closes a connection that stays idle, and keeps one that keeps asking', async () => {
    const p = await freePort();
    const srv = await runDns(
      { ...defaultOptions(), dnsListen: [`127.0.0.1:${p}`], adminListen: '127.0.0.1:0', dnsThreads: 1, agentSocket: '/nonexistent/x.sock', dnsUpstream: ['127.0.0.1:9'] },
      makeLogger('dns', 'silent'),
      { tcpIdleMs: 300 },
    );
    try {
      const q = buildQuery(7, 'corral.internal', 6);
      const frame = Buffer.concat([Buffer.from([0, q.length]), q]);
      const lifetime = (askEveryMs: number, askFor: number) => new Promise<{ ms: number; replies: number }>((resolve) => {
        const t0 = performance.now();
        let replies = 0;
        const sock = connect(p, '127.0.0.1');
        let timer: NodeJS.Timeout | undefined;
        sock.on('connect', () => {
          if (askEveryMs > 0) timer = setInterval(() => (performance.now() - t0 < askFor ? sock.write(frame) : clearInterval(timer)), askEveryMs);
        });
        sock.on('data', () => replies++);
        sock.on('close', () => {
          clearInterval(timer);
          resolve({ ms: performance.now() - t0, replies });
        });
        sock.on('error', () => {});
      });
      const idle = await lifetime(0, 0);
      expect(idle.ms).toBeGreaterThan(250);
      expect(idle.ms).toBeLessThan(2000);
      // Asking every 100 ms for 1 s keeps it open; it closes 300 ms after the last query.
      const busy = await lifetime(100, 1000);
      expect(busy.ms).toBeGreaterThan(1200);
      expect(busy.replies).toBeGreaterThanOrEqual(8);
    } finally {
      await srv.close();
    }
  });
});
