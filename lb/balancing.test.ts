// Per-service balancing policy: what the endpoints ask for (label corral.lb.balance, `corral
// register --lb-balance`), else the LB's --lb-balance; endpoints that disagree; a live switch.
import { describe, expect, it } from 'vitest';
import type { Endpoint } from '../api/types.js';
import { balancerFor, LeastRequest, SmoothWeightedRoundRobin, type Peer, type PeerState, type PeerStateOf } from './balancer.js';
import { RouteTable } from './routes.js';
import { capturingLogger } from '../test/support/lb.js';
import { delta, endpoint, snapshot } from '../test/support/records.js';

/** Like the LB's passive-health registry: one state object per origin, shared by every Peer for it. */
function perOriginState(): PeerStateOf {
  const states = new Map<string, PeerState>();
  return (origin) => {
    let s = states.get(origin);
    if (!s) states.set(origin, (s = { active: 0, ejected: false }));
    return s;
  };
}

const ep = (service: string, port: number, lbBalance?: string, more: Partial<Endpoint> = {}): Endpoint => {
  const e = endpoint({ service, port, httpHosts: [`${service}.test`], ...more });
  if (lbBalance !== undefined) e.lbBalance = lbBalance;
  else delete e.lbBalance; // a record written before the field existed
  return e;
};

const policyOf = (t: RouteTable, service: string) => t.lookup(`${service}.test`, '/')!.balancer.policy;

function tally(pick: () => Peer | undefined, n: number): Record<number, number> {
  const out: Record<number, number> = {};
  for (let i = 0; i < n; i++) {
    const port = pick()!.endpoint.port;
    out[port] = (out[port] ?? 0) + 1;
  }
  return out;
}

describe('balancing policy per service', () => {
  it('uses what the endpoints ask for, else the --lb-balance default, per service', () => {
    for (const def of ['round-robin', 'least-request'] as const) {
      const t = new RouteTable(undefined, undefined, balancerFor(def));
      t.apply(snapshot(1, [
        ep('lr', 1, 'least-request'), ep('lr', 2, 'least-request'),
        ep('rr', 3, 'round-robin'),
        ep('old', 4), // no field at all (older agent)
        ep('empty', 5, ''), // the proto default: no opinion
      ]));
      expect(policyOf(t, 'lr')).toBe('least-request');
      expect(t.lookup('lr.test', '/')!.balancer).toBeInstanceOf(LeastRequest);
      expect(policyOf(t, 'rr')).toBe('round-robin');
      expect(t.lookup('rr.test', '/')!.balancer).toBeInstanceOf(SmoothWeightedRoundRobin);
      expect(policyOf(t, 'old')).toBe(def);
      expect(policyOf(t, 'empty')).toBe(def);
      expect(t.stats.balancers).toEqual(def === 'round-robin' ? { 'round-robin': 3, 'least-request': 1 } : { 'round-robin': 1, 'least-request': 3 });
    }
  });

  it('a factory that ignores the policy (older callers) keeps its balancer and is not swapped on every revision', () => {
    const rr = () => new SmoothWeightedRoundRobin();
    const t = new RouteTable(undefined, undefined, rr);
    t.apply(snapshot(1, [ep('a', 1, 'least-request'), ep('a', 2, 'least-request')]));
    const b = t.lookup('a.test', '/')!.balancer;
    t.apply(delta(2, { endpoints: [ep('a', 2, 'least-request', { weight: 3 })] }));
    expect(t.lookup('a.test', '/')!.balancer).toBe(b);
  });

  it('endpoints that disagree: the value most carry wins, ties by name, endpoints without one have no say; one warning', () => {
    const { log, lines } = capturingLogger();
    const warnings = () => lines.filter((l) => String(l.msg).includes('different or unknown balancing policies'));
    const t = new RouteTable(log, undefined, balancerFor('round-robin'));
    t.apply(snapshot(1, [ep('s', 1, 'least-request'), ep('s', 2, 'least-request'), ep('s', 3, 'round-robin'), ep('s', 4)]));
    expect(policyOf(t, 's')).toBe('least-request');
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]).toMatchObject({ service: 'default/s', asked: 'least-request=2 round-robin=1', policy: 'least-request', level: 40 });
    // Another revision with the same disagreement (a health change): no second warning.
    t.apply(delta(2, { endpoints: [ep('s', 1, 'least-request', { healthy: false })] }));
    expect(warnings()).toHaveLength(1);
    // Majority flips to round-robin.
    t.apply(delta(3, { endpoints: [ep('s', 4, 'round-robin'), ep('s', 2, 'round-robin')] }));
    expect(policyOf(t, 's')).toBe('round-robin');
    expect(warnings()).toHaveLength(2);
    // A tie goes to the name that sorts first: least-request.
    t.apply(delta(4, { deletedEndpoints: [ep('s', 4).id] }));
    t.apply(delta(5, { endpoints: [ep('s', 2, 'least-request')] }));
    expect(policyOf(t, 's')).toBe('least-request');
    // They agree again: no warning, and the next disagreement is warned about again.
    t.apply(delta(6, { endpoints: [ep('s', 3, 'least-request')] }));
    const n = warnings().length;
    t.apply(delta(7, { endpoints: [ep('s', 3, 'round-robin')] }));
    expect(warnings()).toHaveLength(n + 1);
  });

  it('a value this LB does not know (a newer agent) has no say and is warned about once', () => {
    const { log, lines } = capturingLogger();
    const t = new RouteTable(log, undefined, balancerFor('least-request'));
    t.apply(snapshot(1, [ep('s', 1, 'random'), ep('s', 2)]));
    expect(policyOf(t, 's')).toBe('least-request');
    t.apply(delta(2, { endpoints: [ep('s', 2, undefined, { weight: 2 })] }));
    expect(lines.filter((l) => l.asked === 'random=1')).toHaveLength(1);
  });

  it('switches a live service in place: same target, same peers, in-flight counts kept, retry still avoids its peer', () => {
    const { log, lines } = capturingLogger();
    const t = new RouteTable(log, undefined, balancerFor('round-robin', perOriginState()));
    t.apply(snapshot(1, [ep('s', 1), ep('s', 2), ep('other', 3), ep('other', 4)]));
    const target = t.lookup('s.test', '/')!;
    const other = t.lookup('other.test', '/')!;
    const otherBalancer = other.balancer;
    expect(target.balancer.policy).toBe('round-robin');
    // Round robin: even split regardless of load. Port 1 now has 10 requests in flight.
    const slow = target.balancer.pick()!;
    expect(slow.endpoint.port).toBe(1);
    slow.state.active += 10;
    expect(tally(() => target.balancer.pick(), 10)).toEqual({ 1: 5, 2: 5 });

    // A delta asks for least-request (as a re-registration with --lb-balance would).
    t.apply(delta(2, { endpoints: [ep('s', 1, 'least-request'), ep('s', 2, 'least-request')] }));
    expect(t.lookup('s.test', '/')).toBe(target); // the proxy's RouteTarget is the same object
    expect(target.balancer.policy).toBe('least-request');
    const peers = target.balancer.peers;
    expect(peers.find((p) => p.endpoint.port === 1)).toBe(slow); // the same Peer, with the new record
    expect(slow.endpoint.lbBalance).toBe('least-request');
    expect(slow.state.active).toBe(10); // not reset by the switch
    // Least request sends everything to the idle peer while the other is busy.
    expect(tally(() => target.balancer.pick(), 50)).toEqual({ 2: 50 });
    // A request sent to port 1 before the switch, retried after it, still avoids port 1.
    slow.state.active -= 10;
    for (let i = 0; i < 20; i++) expect(target.balancer.pick(slow)!.endpoint.port).toBe(2);
    slow.state.active += 10;
    // The other service was not touched.
    expect(other.balancer).toBe(otherBalancer);
    expect(other.balancer.policy).toBe('round-robin');
    expect(lines.find((l) => l.msg === 'balancing policy of the service changed')).toMatchObject({ service: 'default/s', policy: 'least-request', was: 'round-robin' });

    // In-flight requests finish (the proxy decrements the state it incremented): load evens out.
    slow.state.active -= 10;
    const even = tally(() => target.balancer.pick(), 400);
    expect(even[1]).toBeGreaterThan(100);
    expect(even[2]).toBeGreaterThan(100);

    // Back to the flag default when the endpoints stop asking.
    t.apply(delta(3, { endpoints: [ep('s', 1, ''), ep('s', 2, '')] }));
    expect(target.balancer.policy).toBe('round-robin');
    expect(tally(() => target.balancer.pick(), 10)).toEqual({ 1: 5, 2: 5 });
  });

  it('keeps in-flight counts across a switch with private per-peer states too (balancers used alone)', () => {
    const t = new RouteTable(undefined, undefined, balancerFor('round-robin'));
    t.apply(snapshot(1, [ep('s', 1), ep('s', 2)]));
    const target = t.lookup('s.test', '/')!;
    target.balancer.peers[0]!.state.active = 3;
    t.apply(delta(2, { endpoints: [ep('s', 1, 'least-request'), ep('s', 2, 'least-request', { weight: 2 })] }));
    expect(target.balancer.policy).toBe('least-request');
    expect(target.balancer.peers.find((p) => p.endpoint.port === 1)!.state.active).toBe(3);
  });

  it('a snapshot (the LB reconnecting) applies a changed policy to a surviving service', () => {
    const t = new RouteTable(undefined, undefined, balancerFor('round-robin', perOriginState()));
    t.apply(snapshot(1, [ep('s', 1), ep('s', 2)]));
    const target = t.lookup('s.test', '/')!;
    t.apply(snapshot(2, [ep('s', 1, 'least-request'), ep('s', 2, 'least-request')]));
    expect(t.lookup('s.test', '/')).toBe(target);
    expect(target.balancer.policy).toBe('least-request');
    expect(target.balancer.size).toBe(2);
  });
});
