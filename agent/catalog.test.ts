import { describe, expect, it } from 'vitest';
import { Catalog, mergeEvents, type Problem } from './catalog.js';
import type { KvBatch } from './registry/registry.js';

const KEY = 'FAKEkeyFAKEkeyFAKEkeyFAKEkeyFAKEkeyFAKEkeyA=';

function endpoint(id: string, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id, service: 'web', namespace: 'default', address: '10.42.0.5', port: 80, portName: 'http', color: 'blue', weight: 1,
    healthy: true, healthReason: 'no health check', origin: 'manual', node: 'h1', httpHosts: ['web.test'], httpPath: '/',
    healthCheck: null, deploy: 'manual', drainMs: 10000, containerId: '', containerName: '', draining: false, lbBalance: '', ...over,
  };
}

function host(name: string, block: string, over: Record<string, unknown> = {}): Record<string, unknown> {
  return { name, block, underlay: '10.99.0.1', publicKey: KEY, nextPublicKey: '', version: '0.1.0', wgPort: 51820, mtu: 1420, overlay: 'wireguard-go', ...over };
}

function lease(block: string, node: string): string {
  return JSON.stringify({ block, node, sinceMs: 1 });
}

let rev = 0;
function batch(...events: Array<[string, unknown] | [string]>): KvBatch {
  rev += 1;
  return {
    revision: rev,
    events: events.map((e) => (e.length === 1
      ? { type: 'delete' as const, key: e[0] }
      : { type: 'put' as const, key: e[0], value: typeof e[1] === 'string' ? e[1] : JSON.stringify(e[1]) })),
  };
}

function catalog(): { c: Catalog; problems: Problem[] } {
  const problems: Problem[] = [];
  return { c: new Catalog('10.42.0.0/16', (p) => problems.push(p)), problems };
}

describe('registry records from other hosts are validated on read', () => {
  it('does not serve a null endpoint, names the key, and keeps serving the others', () => {
    const { c, problems } = catalog();
    const ev = c.apply(batch(['/corral/endpoints/h1/x', 'null'], ['/corral/endpoints/h1/good', endpoint('good')]));
    expect(ev.endpoints.map((e) => e.id)).toEqual(['good']);
    expect([...c.endpoints.keys()]).toEqual(['good']);
    expect(problems).toEqual([{ key: '/corral/endpoints/h1/x', field: 'record', problem: 'not a JSON object', writer: 'h1' }]);
  });

  it.each([
    ['a missing field', endpoint('e', { address: undefined }), 'address', 'missing'],
    ['a wrong type', endpoint('e', { port: '80' }), 'port', 'not a whole number'],
    ['a port out of range', endpoint('e', { port: 70000 }), 'port', '70000 is outside 1..65535'],
    ['a name that is no DNS label', endpoint('e', { service: 'Web_1' }), 'service', '"Web_1" is not a DNS label (a-z, 0-9, "-")'],
    ['an address that is none', endpoint('e', { address: '10.42.0.300' }), 'address', '"10.42.0.300" is not an IPv4 or IPv6 address'],
    ['the unspecified address', endpoint('e', { address: '::' }), 'address', '"::" is the unspecified address'],
    ['an address with a zone', endpoint('e', { address: 'fe80::1%eth0' }), 'address', '"fe80::1%eth0" has a zone (%…), which means nothing on another host'],
    ['a weight out of range', endpoint('e', { weight: -1 }), 'weight', '-1 is outside 1..1000'],
    ['an id that is not its key', endpoint('other'), 'id', '"other" does not match its key ("e")'],
    ['too many host names', endpoint('e', { httpHosts: Array.from({ length: 40 }, (_, i) => `h${i}.test`) }), 'httpHosts', 'not a list of at most 32 host names'],
    ['a TCP port out of range', endpoint('e', { tcpPort: 65536 }), 'tcpPort', '65536 is outside 0..65535'],
    ['an SNI name that is none', endpoint('e', { tlsSni: ['db..test'] }), 'tlsSni', '"db..test" is not a server name'],
    ['an SNI list that is not one', endpoint('e', { tlsSni: 'db.test' }), 'tlsSni', 'not a list of at most 32 server names'],
    ['an unknown PROXY protocol', endpoint('e', { tcpPort: 5432, proxyProtocol: 'v1' }), 'proxyProtocol', '"v1" is not v2 or empty'],
    ['a PROXY header without a TCP route', endpoint('e', { proxyProtocol: 'v2' }), 'proxyProtocol', 'set without tcpPort or tlsSni (it applies to TCP and TLS routes only)'],
    ['a bad health check', endpoint('e', { healthCheck: { path: 'x', tcp: false, intervalMs: 1000, timeoutMs: 500, rise: 1, fall: 1 } }), 'healthCheck.path', '"x" does not start with "/"'],
  ])('refuses an endpoint with %s', (_what, rec, field, problem) => {
    const { c, problems } = catalog();
    c.apply(batch(['/corral/endpoints/h1/e', rec]));
    expect(c.endpoints.size).toBe(0);
    expect(problems).toEqual([{ key: '/corral/endpoints/h1/e', field, problem, writer: 'h1' }]);
  });

  it('refuses an oversized record before parsing it', () => {
    const { c, problems } = catalog();
    c.apply(batch(['/corral/endpoints/h1/e', JSON.stringify(endpoint('e', { healthReason: 'x'.repeat(3_000_000) }))]));
    expect(c.endpoints.size).toBe(0);
    expect(problems[0]).toMatchObject({ key: '/corral/endpoints/h1/e', field: 'record' });
    expect(problems[0]!.problem).toMatch(/bytes, at most 16384 for a endpoint record/);
  });

  it('withdraws a served record that is overwritten by a bad one, and serves it again once fixed', () => {
    const { c } = catalog();
    c.apply(batch(['/corral/endpoints/h1/e', endpoint('e')]));
    const bad = c.apply(batch(['/corral/endpoints/h1/e', '{"id":']));
    expect(bad.deletedEndpoints).toEqual(['e']);
    expect(c.problems.get('/corral/endpoints/h1/e')?.problem).toBe('not JSON');
    const fixed = c.apply(batch(['/corral/endpoints/h1/e', endpoint('e')]));
    expect(fixed.endpoints.map((e) => e.id)).toEqual(['e']);
    expect(c.problems.size).toBe(0);
  });

  it('warns once per key, not once per event', () => {
    const { c, problems } = catalog();
    for (let i = 0; i < 5; i++) c.apply(batch(['/corral/endpoints/h1/e', endpoint('e', { port: 0 })]));
    expect(problems).toHaveLength(1);
    c.apply(batch(['/corral/endpoints/h1/e', endpoint('e', { port: 'x' })]));
    expect(problems).toHaveLength(2); // a different problem is a new warning
    c.apply(batch(['/corral/endpoints/h1/e']));
    expect(c.problems.size).toBe(0);
  });

  it('fills fields older writers left out with their defaults', () => {
    const { c } = catalog();
    const rec = endpoint('e');
    delete rec.lbBalance;
    delete rec.portName;
    c.apply(batch(['/corral/endpoints/h1/e', rec]));
    expect(c.endpoints.get('e')).toMatchObject({ lbBalance: '', portName: 'http' });
  });

  it('refuses services with colors or weights out of shape, and allocations outside the cluster CIDR', () => {
    const { c, problems } = catalog();
    c.apply(batch(
      ['/corral/services/default/web', { namespace: 'default', name: 'web', active: { blue: 1000 }, previous: {} }],
      ['/corral/services/default/api', { namespace: 'default', name: 'api', active: { 'Bad Color': 100 }, previous: {} }],
      ['/corral/services/default/ok', { namespace: 'default', name: 'ok', active: { blue: 100 }, previous: {} }],
      ['/corral/allocations/h1/8.8.8.8', { address: '8.8.8.8', namespace: 'default', containerId: 'c', ifname: 'eth0', node: 'h1', sinceMs: 1, name: '' }],
      ['/corral/allocations/h1/10.42.0.9', { address: '10.42.0.9', namespace: 'default', containerId: 'c', ifname: 'eth0', node: 'h1', sinceMs: 1, name: '' }],
    ));
    expect([...c.services.keys()]).toEqual(['default/ok']);
    expect([...c.allocations.keys()]).toEqual(['10.42.0.9']);
    expect(problems.map((p) => `${p.key} ${p.field}`)).toEqual([
      '/corral/services/default/web active.blue',
      '/corral/services/default/api active',
      '/corral/allocations/h1/8.8.8.8 address',
    ]);
  });

  it('takes allocations at both ends of the cluster CIDR and none just outside it', () => {
    const { c, problems } = catalog();
    const alloc = (address: string): [string, unknown] => [`/corral/allocations/h1/${address}`, { address, namespace: 'default', node: 'h1' }];
    c.apply(batch(alloc('10.42.0.0'), alloc('10.42.255.255'), alloc('10.41.255.255'), alloc('10.43.0.0'), alloc('255.255.255.255'), alloc('0.0.0.1')));
    expect([...c.allocations.keys()].sort()).toEqual(['10.42.0.0', '10.42.255.255']);
    expect(problems.map((p) => p.key.slice('/corral/allocations/h1/'.length)).sort()).toEqual(['0.0.0.1', '10.41.255.255', '10.43.0.0', '255.255.255.255']);
  });

  it('refuses a host whose key is no WireGuard key or whose block is outside the cluster', () => {
    const { c, problems } = catalog();
    c.apply(batch(
      ['/corral/blocks/h1/10.42.1.0_24', lease('10.42.1.0/24', 'h1')],
      ['/corral/hosts/h1', host('h1', '10.42.1.0/24', { publicKey: 'not-a-key' })],
      ['/corral/hosts/h2', host('h2', '0.0.0.0/0')],
    ));
    expect(c.hosts.size).toBe(0);
    expect(problems.map((p) => `${p.key} ${p.field}`)).toEqual(['/corral/hosts/h1 publicKey', '/corral/hosts/h2 block']);
  });

  it('serves a host only with the block leased to it; of two overlapping leases the older wins and the other is reported', () => {
    const { c, problems } = catalog();
    c.apply(batch(['/corral/blocks/h1/10.42.1.0_24', lease('10.42.1.0/24', 'h1')], ['/corral/hosts/h1', host('h1', '10.42.1.0/24')]));
    expect([...c.hosts.keys()]).toEqual(['h1']);
    // h2 claims h1's block in its own record, and leases a /23 that covers it.
    const ev = c.apply(batch(['/corral/blocks/h2/10.42.0.0_23', lease('10.42.0.0/23', 'h2')], ['/corral/hosts/h2', host('h2', '10.42.1.0/24')]));
    expect(ev.hosts).toEqual([]);
    expect([...c.hosts.keys()]).toEqual(['h1']);
    expect(c.blockOwner('10.42.1.0/24')).toBe('h1');
    expect(problems.map((p) => `${p.key}: ${p.problem}`)).toEqual([
      '/corral/blocks/h2/10.42.0.0_23: 10.42.0.0/23 overlaps 10.42.1.0/24, leased earlier to h1',
      '/corral/hosts/h2: 10.42.1.0/24 is leased to h1',
    ]);
    // h1 goes: its lease stays, so h2 still does not get the block by claiming it.
    const gone = c.apply(batch(['/corral/hosts/h1']));
    expect(gone.deletedHosts).toEqual(['h1']);
    expect(c.hosts.size).toBe(0);
  });

  it('grants the oldest of overlapping leases wherever they sit, and neighbours that only touch', () => {
    const { c, problems } = catalog();
    c.apply(batch(['/corral/blocks/old/10.42.4.0_22', lease('10.42.4.0/22', 'old')]));
    c.apply(batch(
      ['/corral/blocks/below/10.42.3.0_24', lease('10.42.3.0/24', 'below')],   // ends where old starts
      ['/corral/blocks/above/10.42.8.0_24', lease('10.42.8.0/24', 'above')],   // starts after old ends
      ['/corral/blocks/inside/10.42.7.255_32', lease('10.42.7.255/32', 'inside')], // old's last address
    ));
    c.apply(batch(['/corral/blocks/wide/10.42.0.0_20', lease('10.42.0.0/20', 'wide')])); // covers all three: named by one of them
    expect(['10.42.4.0/22', '10.42.3.0/24', '10.42.8.0/24', '10.42.7.255/32', '10.42.0.0/20'].map((b) => c.blockOwner(b))).toEqual(['old', 'below', 'above', '', '']);
    expect(problems.map((p) => `${p.key}: ${p.problem}`)).toEqual([
      '/corral/blocks/inside/10.42.7.255_32: 10.42.7.255/32 overlaps 10.42.4.0/22, leased earlier to old',
      '/corral/blocks/wide/10.42.0.0_20: 10.42.0.0/20 overlaps 10.42.8.0/24, leased earlier to above',
    ]);
    // The old lease goes: the one inside its range is the oldest left there and wins now.
    c.apply(batch(['/corral/blocks/old/10.42.4.0_22']));
    expect(c.blockOwner('10.42.7.255/32')).toBe('inside');
  });

  it('applies a block change among a thousand leases without stalling the event loop', () => {
    // Checking each lease against every granted one (through ip-num, ~100 µs a check) took 7 s
    // per block change at 400 leases; a cluster of that many hosts, or one writer, stalled every
    // agent. The bound is loose on purpose: the old way needed about 45 s here.
    const { c } = catalog();
    const put = (i: number): [string, unknown] => [`/corral/blocks/h${i}/10.42.${i >> 6}.${(i & 63) * 4}_30`, lease(`10.42.${i >> 6}.${(i & 63) * 4}/30`, `h${i}`)];
    c.apply(batch(...Array.from({ length: 1000 }, (_, i) => put(i))));
    const t0 = performance.now();
    for (let i = 1000; i < 1010; i++) c.apply(batch(put(i)));
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(c.blockOwner('10.42.15.196/30')).toBe('h1009');
  });

  it('serves a host whose lease arrives in the same snapshot, whatever the key order', () => {
    const { c } = catalog();
    const ev = c.load({ revision: 7, kvs: [
      { key: '/corral/hosts/h1', value: JSON.stringify(host('h1', '10.42.3.0/24')), modRevision: 6 },
      { key: '/corral/blocks/h1/10.42.3.0_24', value: lease('10.42.3.0/24', 'h1'), modRevision: 5 },
    ] });
    expect(ev.hosts.map((h) => h.name)).toEqual(['h1']);
  });

  it('keeps endpoints indexed by service as they come, move between services and go', () => {
    const { c } = catalog();
    c.apply(batch(['/corral/endpoints/h1/a', endpoint('a')], ['/corral/endpoints/h1/b', endpoint('b')], ['/corral/endpoints/h1/c', endpoint('c', { service: 'api' })]));
    expect(c.endpointsOf('default', 'web').map((e) => e.id).sort()).toEqual(['a', 'b']);
    c.apply(batch(['/corral/endpoints/h1/b', endpoint('b', { service: 'api' })]));
    expect(c.endpointsOf('default', 'web').map((e) => e.id)).toEqual(['a']);
    expect(c.endpointsOf('default', 'api').map((e) => e.id).sort()).toEqual(['b', 'c']);
    c.apply(batch(['/corral/endpoints/h1/a'], ['/corral/endpoints/h1/c', 'null']));
    expect(c.endpointsOf('default', 'web')).toEqual([]);
    expect(c.endpointsOf('default', 'api').map((e) => e.id)).toEqual(['b']);
  });

  it('merges the revisions of one watch response into one event: each record as the last revision left it', () => {
    const { c } = catalog();
    const snap = c.load({ revision: 0, kvs: [{ key: '/corral/endpoints/h1/keep', value: JSON.stringify(endpoint('keep')), modRevision: 0 }] });
    const evs = [
      c.apply(batch(['/corral/endpoints/h1/a', endpoint('a')], ['/corral/services/default/web', { namespace: 'default', name: 'web', active: { blue: 100 }, previous: {} }])),
      c.apply(batch(['/corral/endpoints/h1/a'], ['/corral/endpoints/h1/keep'])), // a put, then deleted
      c.apply(batch(['/corral/endpoints/h1/keep', endpoint('keep', { healthy: false })], ['/corral/services/default/web'])), // deleted, then put again
      c.apply(batch(['/corral/endpoints/h1/b', endpoint('b')], ['/corral/allocations/h1/10.42.0.9', { address: '10.42.0.9', namespace: 'default', node: 'h1' }])),
      c.apply(batch(['/corral/endpoints/h1/b', endpoint('b', { weight: 7 })])),
    ];
    const m = mergeEvents(evs);
    expect(m.revision).toBe(evs[evs.length - 1]!.revision);
    expect(m.snapshot).toBe(false);
    expect(m.endpoints.map((e) => [e.id, e.healthy, e.weight]).sort()).toEqual([['b', true, 7], ['keep', false, 1]]);
    expect(m.deletedEndpoints).toEqual(['a']);
    expect(m.services).toEqual([]);
    expect(m.deletedServices).toEqual(['default/web']);
    expect(m.allocations.map((a) => a.address)).toEqual(['10.42.0.9']);
    // Applied as consumers apply an event (deletions, then upserts) on the state before, it gives the catalog's state.
    const state = new Map(snap.endpoints.map((e) => [e.id, e]));
    for (const id of m.deletedEndpoints) state.delete(id);
    for (const e of m.endpoints) state.set(e.id, e);
    expect([...state.values()].sort((x, y) => x.id.localeCompare(y.id))).toEqual([...c.endpoints.values()].sort((x, y) => x.id.localeCompare(y.id)));
    expect(mergeEvents([evs[0]!])).toBe(evs[0]);
  });

  it('reads a status report through the same checks: size, JSON, schema, and the key naming it', () => {
    const { c } = catalog();
    const st = { name: 'h1', appliedRevision: 7, reportedMs: 1, version: '0.1.0', peers: 2, handshaken: 2, stale: 0, worstPeer: 'h2', worstHandshakeMs: 1 };
    expect(c.status('/corral-status/h1', JSON.stringify(st))).toMatchObject({ name: 'h1', appliedRevision: 7 });
    expect(() => c.status('/corral-status/h2', JSON.stringify(st))).toThrow(/name: "\/corral-status\/h1" does not match its key/);
    expect(() => c.status('/corral-status/h1', '{')).toThrow(/record: not JSON/);
    expect(() => c.status('/corral-status/h1', JSON.stringify({ ...st, worstPeer: 'x'.repeat(3000) }))).toThrow(/at most 2048 for a status record/);
  });

  it('lets the agent check what it writes with the same schema', () => {
    const { c } = catalog();
    expect(() => c.check('/corral/endpoints/h1/e', JSON.stringify(endpoint('e', { port: 0 })))).toThrow(/port: 0 is outside 1..65535/);
    expect(() => c.check('/corral/endpoints/h1/e', JSON.stringify(endpoint('e')))).not.toThrow();
    expect(c.endpoints.size).toBe(0);
  });
});

describe('each host writes under its own prefix: a record claims only the host its key names', () => {
  it('refuses an endpoint, allocation or block lease whose node is not the host of its key, naming that host as the writer', () => {
    const { c, problems } = catalog();
    c.apply(batch(
      ['/corral/endpoints/h2/e', endpoint('e', { node: 'h1' })],
      ['/corral/allocations/h2/10.42.0.9', { address: '10.42.0.9', namespace: 'default', containerId: 'c', ifname: 'eth0', node: 'h1', sinceMs: 1, name: '' }],
      ['/corral/blocks/h2/10.42.1.0_24', lease('10.42.1.0/24', 'h1')],
      ['/corral/hosts/h2', host('h1', '')],
    ));
    expect(c.endpoints.size).toBe(0);
    expect(c.allocations.size).toBe(0);
    expect(c.blockOwner('10.42.1.0/24')).toBe('');
    expect(problems.map((p) => `${p.key} ${p.field} ${p.writer}: ${p.problem}`)).toEqual([
      '/corral/endpoints/h2/e node h2: "h1" does not match its key ("h2")',
      '/corral/allocations/h2/10.42.0.9 node h2: "h1" does not match its key ("h2")',
      '/corral/blocks/h2/10.42.1.0_24 node h2: "h1" does not match its key ("h2")',
      '/corral/hosts/h2 name h2: "h1" does not match its key ("h2")',
    ]);
  });

  it('keeps serving the first host\'s endpoint and allocation when another host writes the same id or address under its prefix', () => {
    const { c, problems } = catalog();
    const alloc = (node: string) => ({ address: '10.42.0.9', namespace: 'default', containerId: 'c', ifname: 'eth0', node, sinceMs: 1, name: '' });
    c.apply(batch(['/corral/endpoints/h1/e', endpoint('e')], ['/corral/allocations/h1/10.42.0.9', alloc('h1')]));
    const ev = c.apply(batch(['/corral/endpoints/h2/e', endpoint('e', { node: 'h2', address: '10.42.9.9' })], ['/corral/allocations/h2/10.42.0.9', alloc('h2')]));
    expect(ev.endpoints).toEqual([]);
    expect(ev.deletedEndpoints).toEqual([]);
    expect(c.endpoints.get('e')).toMatchObject({ node: 'h1', address: '10.42.0.5' });
    expect(c.allocations.get('10.42.0.9')).toMatchObject({ node: 'h1' });
    expect(problems.map((p) => `${p.key} ${p.field}`)).toEqual(['/corral/endpoints/h2/e id', '/corral/allocations/h2/10.42.0.9 address']);
    // The intruder deletes its own copies: the first host's records stay served.
    const del = c.apply(batch(['/corral/endpoints/h2/e'], ['/corral/allocations/h2/10.42.0.9']));
    expect(del.deletedEndpoints).toEqual([]);
    expect(del.deletedAllocations).toEqual([]);
    expect(c.endpoints.get('e')?.node).toBe('h1');
    expect(c.allocations.get('10.42.0.9')?.node).toBe('h1');
  });
});

describe('a consumer that outlived an agent restart resumes from its revision', () => {
  /** A registry's keys as a plain map, with the catalog following it batch by batch. */
  function registry() {
    const kv = new Map<string, { value: string; mod: number }>();
    let head = 0;
    return {
      kv,
      write(b: KvBatch) {
        head = b.revision;
        for (const e of b.events) {
          if (e.type === 'put') kv.set(e.key, { value: e.value, mod: b.revision });
          else kv.delete(e.key);
        }
      },
      range() {
        return { revision: head, kvs: [...kv].map(([key, v]) => ({ key, value: v.value, modRevision: v.mod })) };
      },
    };
  }
  type State = { endpoints: Map<string, unknown>; services: Map<string, unknown>; hosts: Map<string, unknown> };
  function consume(s: State, ev: ReturnType<Catalog['snapshot']>): void {
    if (ev.snapshot) for (const m of Object.values(s)) m.clear();
    for (const e of ev.endpoints) s.endpoints.set(e.id, e);
    for (const id of ev.deletedEndpoints) s.endpoints.delete(id);
    for (const x of ev.services) s.services.set(`${x.namespace}/${x.name}`, x);
    for (const k of ev.deletedServices) s.services.delete(k);
    for (const h of ev.hosts) s.hosts.set(h.name, h);
    for (const n of ev.deletedHosts) s.hosts.delete(n);
  }
  const plain = (m: Map<string, unknown>) => JSON.parse(JSON.stringify([...m].sort(([a], [b]) => (a < b ? -1 : 1))));

  it('gets one delta that ends where a freshly loaded catalog is: changed, deleted, re-created and conflicting records', () => {
    const reg = registry();
    const { c: before } = catalog();
    const consumer: State = { endpoints: new Map(), services: new Map(), hosts: new Map() };
    const step = (b: KvBatch) => {
      reg.write(b);
      consume(consumer, before.apply(b));
    };
    step(batch(['/corral/blocks/h1/10.42.0.0_24', lease('10.42.0.0/24', 'h1')], ['/corral/hosts/h1', host('h1', '10.42.0.0/24')]));
    for (let i = 0; i < 6; i++) step(batch([`/corral/endpoints/h1/e${i}`, endpoint(`e${i}`, { address: `10.42.0.${10 + i}` })]));
    step(batch(['/corral/services/default/web', { name: 'web', namespace: 'default', activeColor: 'blue', colors: {} }]));
    const then = reg.range().revision;
    const keysThen = new Set(reg.kv.keys());

    // While the agent is down: a change, a delete, a delete and re-create, a new record, another
    // host's record claiming a served id (not served), and a record made and deleted meanwhile.
    reg.write(batch(['/corral/endpoints/h1/e0', endpoint('e0', { address: '10.42.0.10', healthy: false, healthReason: 'GET / answered 500' })]));
    reg.write(batch(['/corral/endpoints/h1/e1']));
    reg.write(batch(['/corral/endpoints/h1/e2']));
    reg.write(batch(['/corral/endpoints/h1/e2', endpoint('e2', { address: '10.42.0.12', port: 81 })]));
    reg.write(batch(['/corral/endpoints/h1/e9', endpoint('e9', { address: '10.42.0.19' })]));
    reg.write(batch(['/corral/endpoints/h2/e3', endpoint('e3', { node: 'h2', address: '10.42.0.13' })]));
    reg.write(batch(['/corral/endpoints/h1/gone', endpoint('gone', { address: '10.42.0.30' })]));
    reg.write(batch(['/corral/endpoints/h1/gone']));
    reg.write(batch(['/corral/services/default/web']));

    const { c: after } = catalog();
    after.load(reg.range());
    const delta = after.since(then, keysThen);
    expect(delta).not.toBeNull();
    expect(delta!.snapshot).toBe(false);
    expect(delta!.revision).toBe(reg.range().revision);
    // Only what changed travels: e4 and e5 did not change, e3 is still served from h1.
    expect(delta!.endpoints.map((e) => e.id).sort()).toEqual(['e0', 'e2', 'e3', 'e9']);
    expect(delta!.deletedEndpoints.sort()).toEqual(['e1']);
    expect(delta!.deletedServices).toEqual(['default/web']);
    consume(consumer, delta!);
    const fresh: State = { endpoints: new Map(), services: new Map(), hosts: new Map() };
    consume(fresh, after.snapshot());
    expect(plain(consumer.endpoints)).toEqual(plain(fresh.endpoints));
    expect(plain(consumer.services)).toEqual(plain(fresh.services));
    expect(plain(consumer.hosts)).toEqual(plain(fresh.hosts));
  });

  it('answers null (a snapshot) when a block lease changed meanwhile: which hosts are served depends on it', () => {
    const reg = registry();
    reg.write(batch(['/corral/blocks/h1/10.42.0.0_24', lease('10.42.0.0/24', 'h1')], ['/corral/hosts/h1', host('h1', '10.42.0.0/24')]));
    const then = reg.range().revision;
    const keysThen = new Set(reg.kv.keys());
    reg.write(batch(['/corral/blocks/h1/10.42.0.0_24']));
    const { c } = catalog();
    c.load(reg.range());
    expect(c.since(then, keysThen)).toBeNull();
  });
});
