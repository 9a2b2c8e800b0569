import { describe, expect, it } from 'vitest';
import { SmoothWeightedRoundRobin } from './balancer.js';
import { RouteTable, normalizeHost, normalizePath } from './routes.js';
import { capturingLogger } from '../test/support/lb.js';
import { delta, endpoint, service, snapshot } from '../test/support/records.js';

const owner = (t: RouteTable, host: string, path = '/') => t.lookup(normalizeHost(host), path)?.key;

describe('route table', () => {
  it('prefers an exact host over a wildcard, and the longest wildcard suffix', () => {
    const t = new RouteTable();
    t.apply(snapshot(1, [
      endpoint({ service: 'exact', port: 1, httpHosts: ['api.example.com'] }),
      endpoint({ service: 'wild', port: 2, httpHosts: ['*.example.com'] }),
      endpoint({ service: 'deeper', port: 3, httpHosts: ['*.eu.example.com'] }),
      endpoint({ service: 'any', port: 4, httpHosts: ['*'] }),
    ]));
    expect(owner(t, 'api.example.com')).toBe('default/exact');
    expect(owner(t, 'www.example.com')).toBe('default/wild');
    expect(owner(t, 'a.b.example.com')).toBe('default/wild');
    expect(owner(t, 'shop.eu.example.com')).toBe('default/deeper');
    expect(owner(t, 'example.com')).toBe('default/any'); // *.example.com does not cover the apex
    expect(owner(t, 'other.test')).toBe('default/any');
  });

  it('picks the longest path prefix on segment boundaries', () => {
    const t = new RouteTable();
    t.apply(snapshot(1, [
      endpoint({ service: 'site', port: 1, httpHosts: ['a.test'] }),
      endpoint({ service: 'api', port: 2, httpHosts: ['a.test'], httpPath: '/api' }),
      endpoint({ service: 'v2', port: 3, httpHosts: ['a.test'], httpPath: '/api/v2/' }),
    ]));
    expect(owner(t, 'a.test', '/')).toBe('default/site');
    expect(owner(t, 'a.test', '/api')).toBe('default/api');
    expect(owner(t, 'a.test', '/api/')).toBe('default/api');
    expect(owner(t, 'a.test', '/api/v1/users')).toBe('default/api');
    expect(owner(t, 'a.test', '/api/v2')).toBe('default/v2');
    expect(owner(t, 'a.test', '/api/v2/users/7')).toBe('default/v2');
    expect(owner(t, 'a.test', '/apix')).toBe('default/site');
    expect(owner(t, 'a.test', '/api/v20')).toBe('default/api');
  });

  it('falls through from an exact host without a matching path to the wildcards', () => {
    const t = new RouteTable();
    t.apply(snapshot(1, [
      endpoint({ service: 'v2', port: 1, httpHosts: ['api.example.com'], httpPath: '/v2' }),
      endpoint({ service: 'wild', port: 2, httpHosts: ['*.example.com'] }),
    ]));
    expect(owner(t, 'api.example.com', '/v2/x')).toBe('default/v2');
    expect(owner(t, 'api.example.com', '/v1/x')).toBe('default/wild');
  });

  it('normalizes the Host header: case, port, trailing dot, IPv6 literal', () => {
    expect(normalizeHost('App.Example.COM:8080')).toBe('app.example.com');
    expect(normalizeHost('app.example.com.')).toBe('app.example.com');
    expect(normalizeHost('[::1]:80')).toBe('[::1]');
    expect(normalizePath('api/')).toBe('/api');
    expect(normalizePath('')).toBe('/');
  });

  it('routes deterministically when two services claim the same host and path, and warns', () => {
    const { log, lines } = capturingLogger();
    const t = new RouteTable(log);
    t.apply(snapshot(1, [endpoint({ service: 'zeta', port: 1, httpHosts: ['same.test'] })]));
    t.apply(delta(2, { endpoints: [endpoint({ service: 'alpha', port: 2, httpHosts: ['same.test'] })] }));
    expect(owner(t, 'same.test')).toBe('default/alpha');
    const warning = lines.find((l) => String(l.msg).includes('several services claim'));
    expect(warning).toMatchObject({ host: 'same.test', path: '/', winner: 'default/alpha' });
    // The loser takes over when the winner goes away.
    t.apply(delta(3, { deletedEndpoints: ['manual:default:alpha:127.0.0.1:2'] }));
    expect(owner(t, 'same.test')).toBe('default/zeta');
  });

  it('patches deltas into the table and leaves untouched services as they were', () => {
    const t = new RouteTable();
    const a1 = endpoint({ service: 'a', port: 1, httpHosts: ['a.test'] });
    const a2 = endpoint({ service: 'a', port: 2, httpHosts: ['a.test'] });
    t.apply(snapshot(1, [a1, a2, endpoint({ service: 'b', port: 3, httpHosts: ['b.test'] })]));
    const a = t.lookup('a.test', '/')!;
    expect(a.balancer.pick()!.endpoint.port).toBe(1); // round robin is now half way through a's cycle
    t.apply(delta(2, { endpoints: [endpoint({ service: 'b', port: 3, httpHosts: ['b.test', 'b2.test'] })] }));
    expect(t.revision).toBe(2);
    expect(owner(t, 'b2.test')).toBe('default/b');
    expect(t.lookup('a.test', '/')).toBe(a); // same service object, same balancer state
    expect(a.balancer.pick()!.endpoint.port).toBe(2);
    // A path change moves the route; the old one is gone.
    t.apply(delta(3, { endpoints: [endpoint({ service: 'b', port: 3, httpHosts: ['b.test'], httpPath: '/shop' })] }));
    expect(owner(t, 'b.test', '/')).toBeUndefined();
    expect(owner(t, 'b.test', '/shop/cart')).toBe('default/b');
    expect(owner(t, 'b2.test')).toBeUndefined();
    expect(t.stats).toMatchObject({ services: 2, endpoints: 3, routes: 2 });
  });

  it('replaces everything on a snapshot and reports origins no endpoint uses any more', () => {
    const removed: string[] = [];
    const t = new RouteTable(undefined, (o) => removed.push(o));
    t.apply(snapshot(1, [
      endpoint({ service: 'a', port: 1, httpHosts: ['a.test'] }),
      endpoint({ service: 'b', port: 2, httpHosts: ['b.test'] }),
    ]));
    expect(t.ready).toBe(true);
    t.apply(delta(2, { deletedEndpoints: ['manual:default:a:127.0.0.1:1'] }));
    expect(removed).toEqual(['http://127.0.0.1:1']);
    expect(owner(t, 'a.test')).toBeUndefined();
    t.apply(snapshot(3, [endpoint({ service: 'c', port: 3, httpHosts: ['c.test'] })]));
    expect(removed).toEqual(['http://127.0.0.1:1', 'http://127.0.0.1:2']);
    expect(owner(t, 'b.test')).toBeUndefined();
    expect(owner(t, 'c.test')).toBe('default/c');
    expect(t.stats).toMatchObject({ services: 1, endpoints: 1, routes: 1, hosts: 1 });
  });

  it('moves an endpoint between services in one delta without losing either service', () => {
    const removed: string[] = [];
    const t = new RouteTable(undefined, (o) => removed.push(o));
    const x = endpoint({ service: 'a', port: 1, id: 'x', httpHosts: ['a.test'] });
    t.apply(snapshot(1, [x, endpoint({ service: 'a', port: 3, id: 'z', httpHosts: ['a.test'] })]));
    t.apply(delta(2, {
      deletedEndpoints: ['z'],
      endpoints: [
        { ...x, service: 'b', httpHosts: ['b.test'] },
        endpoint({ service: 'a', port: 2, id: 'y', httpHosts: ['a.test'] }),
      ],
    }));
    expect(t.lookup('a.test', '/')?.balancer.pick()?.endpoint.id).toBe('y');
    expect(t.lookup('b.test', '/')?.balancer.pick()?.endpoint.id).toBe('x');
    // Renaming an endpoint (delete + add at the same address) keeps its upstream pool.
    t.apply(delta(3, { deletedEndpoints: ['y'], endpoints: [endpoint({ service: 'a', port: 2, id: 'y2', httpHosts: ['a.test'] })] }));
    expect(removed).toEqual(['http://127.0.0.1:3']);
    expect(t.stats).toMatchObject({ services: 2, endpoints: 2, routes: 2 });
  });

  it('keeps a route for a service whose endpoints are all unhealthy (answers 503, not 404)', () => {
    const t = new RouteTable();
    t.apply(snapshot(1, [endpoint({ service: 'a', port: 1, httpHosts: ['a.test'], healthy: false })]));
    const target = t.lookup('a.test', '/')!;
    expect(target.key).toBe('default/a');
    expect(target.balancer.pick()).toBeUndefined();
  });

  it('finds the right route among 10,000', () => {
    const t = new RouteTable();
    const eps = [];
    for (let i = 0; i < 5000; i++) {
      eps.push(endpoint({ service: `s${i}`, port: 10_000 + i, httpHosts: [`h${i % 500}.example.com`, `*.w${i % 100}.test`], httpPath: `/p${i}/x` }));
    }
    t.apply(snapshot(1, eps));
    expect(t.stats.routes).toBe(10_000);
    expect(owner(t, 'h42.example.com', '/p542/x/deep/path')).toBe('default/s542');
    expect(owner(t, 'a.b.w7.test', '/p1607/x')).toBe('default/s1607');
    // The cost of a lookup among many routes is measured by test/bench/lb.ts (1,000 routes against one).
  });
});

describe('smooth weighted round robin', () => {
  it('interleaves by weight instead of bursting (nginx sequence for 5:1:1)', () => {
    const b = new SmoothWeightedRoundRobin();
    b.update(undefined, [
      endpoint({ service: 's', port: 1, id: 'a', weight: 5 }),
      endpoint({ service: 's', port: 2, id: 'b', weight: 1 }),
      endpoint({ service: 's', port: 3, id: 'c', weight: 1 }),
    ]);
    const seq = Array.from({ length: 7 }, () => b.pick()!.endpoint.id).join('');
    expect(seq).toBe('aabacaa');
  });

  it('follows the active colors and their weights from the service record', () => {
    const b = new SmoothWeightedRoundRobin();
    const eps = [
      endpoint({ service: 's', port: 1, id: 'b1', color: 'blue' }),
      endpoint({ service: 's', port: 2, id: 'b2', color: 'blue' }),
      endpoint({ service: 's', port: 3, id: 'g1', color: 'green' }),
    ];
    b.update(service('s', { blue: 100 }), eps);
    expect(new Set(Array.from({ length: 10 }, () => b.pick()!.endpoint.id))).toEqual(new Set(['b1', 'b2']));
    b.update(service('s', { blue: 80, green: 20 }), eps);
    const counts: Record<string, number> = {};
    for (let i = 0; i < 100; i++) {
      const id = b.pick()!.endpoint.id;
      counts[id] = (counts[id] ?? 0) + 1;
    }
    expect(counts).toEqual({ b1: 40, b2: 40, g1: 20 });
  });
});
