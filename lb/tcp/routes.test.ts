// The TCP/TLS route table fed watch events directly, and the PROXY v2 header's bytes.
import { describe, expect, it } from 'vitest';
import { balancerFor } from '../balancer.js';
import { delta, endpoint, service, snapshot } from '../../test/support/records.js';
import { proxyV2Header } from './proxy-header.js';
import { HTTPS_PORT, TcpRouteTable } from './routes.js';

const table = (sniPort = HTTPS_PORT) => new TcpRouteTable(balancerFor('round-robin'), undefined, sniPort);
const pick = (t: TcpRouteTable, port: number, name?: string) => {
  const r = t.port(port);
  const svc = name === undefined ? r?.fallback : r?.sni(name);
  return svc ? `${svc.key} ${svc.balancer.pick()?.endpoint.port ?? 'none'}` : undefined;
};

describe('TCP route table', () => {
  it('routes a port to its service, by name exactly then by the longest wildcard, with the plain service as fallback', () => {
    const t = table();
    t.apply(snapshot(1, [
      endpoint({ service: 'pg', port: 5432, tcpPort: 15432 }),
      endpoint({ service: 'a', port: 1, tcpPort: 8443, tlsSni: ['a.test'] }),
      endpoint({ service: 'wild', port: 2, tcpPort: 8443, tlsSni: ['*.test'] }),
      endpoint({ service: 'deep', port: 3, tcpPort: 8443, tlsSni: ['*.x.test'] }),
      endpoint({ service: 'web', port: 80, httpHosts: ['web.test'] }),
    ]));
    expect(pick(t, 15432)).toBe('default/pg 5432');
    expect(t.port(15432)!.bySni).toBe(false);
    expect(pick(t, 8443, 'a.test')).toBe('default/a 1');
    expect(pick(t, 8443, 'b.test')).toBe('default/wild 2');
    expect(pick(t, 8443, 'y.x.test')).toBe('default/deep 3');
    expect(pick(t, 8443, 'other.org')).toBeUndefined();
    expect(pick(t, 8443)).toBeUndefined();
    expect(t.ports.sort((a, b) => a - b)).toEqual([8443, 15432]);
    expect(t.stats).toEqual({ tcpServices: 4, tcpPorts: 2 });
  });

  it('puts SNI names without a port on the HTTPS port: shared key when the LB terminates there, else its number', () => {
    const eps = [endpoint({ service: 'c', port: 4, tlsSni: ['c.test'] }), endpoint({ service: 'raw', port: 5, tcpPort: 443 })];
    const shared = table();
    shared.apply(snapshot(1, eps));
    expect(pick(shared, HTTPS_PORT, 'c.test')).toBe('default/c 4');
    const own = table(443);
    own.apply(snapshot(1, eps));
    expect(pick(own, 443, 'c.test')).toBe('default/c 4');
    expect(pick(own, 443)).toBe('default/raw 5');
  });

  it('follows a color switch for new picks, and drops routes whose endpoints leave', () => {
    const t = table();
    const blue = endpoint({ service: 'db', port: 1, color: 'blue', tcpPort: 5432 });
    const green = endpoint({ service: 'db', port: 2, color: 'green', tcpPort: 5432 });
    t.apply(snapshot(1, [blue, green], [service('db', { blue: 100 })]));
    expect(pick(t, 5432)).toBe('default/db 1');
    t.apply(delta(2, { services: [service('db', { green: 100 })] }));
    expect(pick(t, 5432)).toBe('default/db 2');
    t.apply(delta(3, { endpoints: [{ ...green, draining: true }] }));
    expect(pick(t, 5432)).toBe('default/db none');
    t.apply(delta(4, { deletedEndpoints: [blue.id, green.id] }));
    expect(t.port(5432)).toBeUndefined();
    t.apply(snapshot(5, []));
    expect(t.ports).toEqual([]);
  });

  it('gives a contested port or name to the service first by namespace/name', () => {
    const t = table();
    t.apply(snapshot(1, [endpoint({ service: 'zeta', port: 1, tcpPort: 9000 }), endpoint({ service: 'alpha', port: 2, tcpPort: 9000 })]));
    expect(pick(t, 9000)).toBe('default/alpha 2');
    t.apply(delta(2, { deletedEndpoints: [endpoint({ service: 'alpha', port: 2 }).id] }));
    expect(pick(t, 9000)).toBe('default/zeta 1');
  });
});

describe('PROXY v2 header', () => {
  const sig = '0d0a0d0a000d0a515549540a';
  it('carries IPv4 addresses and ports (IPv4-mapped ones as IPv4)', () => {
    expect(proxyV2Header('::ffff:10.0.0.1', 40000, '127.0.0.1', 5432).toString('hex')).toBe(`${sig}2111000c0a0000017f0000019c401538`);
  });
  it('carries IPv6 addresses, with an IPv4 one beside them mapped', () => {
    const h = proxyV2Header('fd00::1', 1, '10.0.0.2', 2);
    expect(h.length).toBe(52);
    expect(h.subarray(12, 16).toString('hex')).toBe('21210024');
    expect(h.subarray(16, 32).toString('hex')).toBe('fd000000000000000000000000000001');
    expect(h.subarray(32, 48).toString('hex')).toBe('00000000000000000000ffff0a000002');
    expect(h.readUInt16BE(48)).toBe(1);
    expect(h.readUInt16BE(50)).toBe(2);
  });
  it('says LOCAL when the addresses are unknown', () => {
    expect(proxyV2Header(undefined, undefined, '127.0.0.1', 1).toString('hex')).toBe(`${sig}20000000`);
  });
});
