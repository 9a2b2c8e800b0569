// Which endpoint of a service gets the next request, over the serving endpoints that
// api/traffic.ts computes (so health, draining, the active colors and canary weights all come
// from the same rule DNS uses). Two policies behind one interface, chosen per service by its
// endpoints (label `corral.lb.balance`, `corral register --lb-balance`; routes.ts decides) and
// otherwise by `--lb-balance`: smooth weighted round robin (nginx's algorithm, the default) and
// least-request with the power of two choices (Envoy's). Both skip endpoints this LB has ejected
// on its own (passive health), unless every endpoint is ejected: then they serve anyway (a guess
// beats a certain 503).
import { servingEndpoints } from '../api/traffic.js';
import type { BalancePolicy, Endpoint, Service } from '../api/types.js';

/** What this LB knows about one upstream origin, shared by every Peer object for it. */
export interface PeerState {
  /** Requests in flight to this origin (least-request reads it). */
  active: number;
  /** Taken out by passive health until a probe passes. */
  ejected: boolean;
}

/** The state object for an origin; the LB passes its passive-health registry. */
export type PeerStateOf = (origin: string, endpoint: Endpoint) => PeerState;

/** For a balancer used alone (tests): a private state per peer. */
export const standaloneState: PeerStateOf = () => ({ active: 0, ejected: false });

/** One endpoint as the balancer sees it. `origin` is computed once per revision, not per request. */
export interface Peer {
  /** The latest record of the endpoint (updated in place when only non-balancing fields change). */
  endpoint: Endpoint;
  readonly origin: string;
  readonly weight: number;
  readonly state: PeerState;
  current: number;
}

/** A balancing policy for one service. Callers see only this. */
export interface Balancer {
  readonly policy: BalancePolicy;
  /** Replace the peer set (called when a revision touches the service). */
  update(service: Service | undefined, endpoints: Endpoint[]): void;
  /**
   * Take over the peers of the balancer this one replaces (a service switching policy), before
   * the first update: the same Peer objects, so their in-flight counts, round-robin scores and
   * `pick(avoid)` identity of a request being retried carry over.
   */
  adopt(from: Balancer): void;
  /** The current peers, in a stable order (read-only). */
  readonly peers: readonly Peer[];
  /** The peer for the next request (another than `avoid` when there is one), or undefined when nothing serves. */
  pick(avoid?: Peer): Peer | undefined;
  readonly size: number;
}

/** "http://addr:port", with IPv6 addresses in brackets: the key of the upstream connection pool. */
export function originOf(ep: Endpoint): string {
  // join makes one flat string; a template literal this long is a tree of V8 cons strings (~130
  // bytes more), and every peer and passive-health record keeps its origin for as long as it lives.
  return ep.address.includes(':') ? ['http://[', ep.address, ']:', ep.port].join('') : ['http://', ep.address, ':', ep.port].join('');
}

/**
 * Makes the balancer of one service: for the policy its endpoints ask for, or, called without
 * one, for the LB's default (`--lb-balance`).
 */
export type BalancerFactory = (policy?: BalancePolicy) => Balancer;

/** A balancer factory whose default is the configured policy (`--lb-balance`). */
export function balancerFor(defaultPolicy: BalancePolicy, stateOf: PeerStateOf = standaloneState): BalancerFactory {
  return (policy = defaultPolicy) => (policy === 'least-request' ? new LeastRequest(stateOf) : new SmoothWeightedRoundRobin(stateOf));
}

abstract class PeerSet {
  abstract readonly policy: BalancePolicy;
  protected list: Peer[] = [];

  constructor(protected readonly stateOf: PeerStateOf = standaloneState) {}

  get size(): number {
    return this.list.length;
  }

  get peers(): readonly Peer[] {
    return this.list;
  }

  adopt(from: Balancer): void {
    this.list = [...from.peers];
    this.updated();
  }

  update(service: Service | undefined, endpoints: Endpoint[]): void {
    // A surviving endpoint keeps its Peer object when nothing the balancer uses changed (origin,
    // weight, state), else its running score: a weight change does not restart the cycle, and a
    // request being retried across a revision (or a policy switch) still recognizes its peer.
    const previous = new Map<string, Peer>();
    for (const p of this.list) previous.set(p.endpoint.id, p);
    const standalone = this.stateOf === standaloneState;
    const next: Peer[] = [];
    for (const { endpoint, weight } of servingEndpoints(service, endpoints)) {
      if (!(weight > 0)) continue;
      const prev = previous.get(endpoint.id);
      const origin = prev !== undefined && prev.endpoint === endpoint ? prev.origin : originOf(endpoint);
      // Always asked: the LB's state registry also learns the origin's latest record (probe path).
      let state = this.stateOf(origin, endpoint);
      // A private state (tests) would start at zero in flight: keep the one the origin had.
      if (standalone && prev !== undefined && prev.origin === origin) state = prev.state;
      if (prev !== undefined && prev.origin === origin && prev.weight === weight && prev.state === state) {
        prev.endpoint = endpoint; // the newest record of the same endpoint (a label or color changed)
        next.push(prev);
      } else {
        next.push({ endpoint, origin, weight, state, current: prev?.current ?? 0 });
      }
    }
    // Stable order makes the sequence reproducible for a given revision.
    next.sort((a, b) => (a.endpoint.id < b.endpoint.id ? -1 : a.endpoint.id > b.endpoint.id ? 1 : 0));
    this.list = next;
    this.updated();
  }

  protected updated(): void {}
}

export class SmoothWeightedRoundRobin extends PeerSet implements Balancer {
  readonly policy = 'round-robin';

  pick(avoid?: Peer): Peer | undefined {
    const peers = this.list;
    const n = peers.length;
    if (n === 0) return undefined;
    if (n === 1) return peers[0];
    let best: Peer | undefined;
    let total = 0;
    for (let i = 0; i < n; i++) {
      const p = peers[i]!;
      if (p.state.ejected || p === avoid) continue;
      p.current += p.weight;
      total += p.weight;
      if (best === undefined || p.current > best.current) best = p;
    }
    if (best === undefined) {
      // Everything usable is ejected: serve anyway (panic mode), still avoiding `avoid`.
      for (let i = 0; i < n; i++) {
        const p = peers[i]!;
        if (p === avoid) continue;
        p.current += p.weight;
        total += p.weight;
        if (best === undefined || p.current > best.current) best = p;
      }
    }
    best!.current -= total;
    return best;
  }
}

/**
 * Least outstanding requests, power of two choices: two peers drawn at random in proportion to
 * their weights (so canary splits hold when idle), the one with fewer requests in flight relative
 * to its weight wins.
 */
export class LeastRequest extends PeerSet implements Balancer {
  readonly policy = 'least-request';
  /** Running sums of weights, for weighted draws. */
  private sums: Float64Array = new Float64Array(0);

  protected override updated(): void {
    const sums = new Float64Array(this.list.length);
    let t = 0;
    for (let i = 0; i < this.list.length; i++) sums[i] = t += this.list[i]!.weight;
    this.sums = sums;
  }

  pick(avoid?: Peer): Peer | undefined {
    const peers = this.list;
    const n = peers.length;
    if (n === 0) return undefined;
    if (n === 1) return peers[0];
    for (let tries = 0; tries < 4; tries++) {
      const i = this.draw();
      let j = this.draw();
      // Two distinct peers: with replacement, two peers would compare a peer with itself a quarter of the time.
      if (j === i) j = (i + 1 + Math.floor(Math.random() * (n - 1))) % n;
      const a = peers[i]!;
      const b = peers[j]!;
      const aOk = a !== avoid && !a.state.ejected;
      const bOk = b !== avoid && !b.state.ejected;
      if (aOk && bOk) return b.state.active * a.weight < a.state.active * b.weight ? b : a;
      if (aOk) return a;
      if (bOk) return b;
    }
    // Unlucky draws or most peers unusable: the least loaded usable one, else any but `avoid`.
    let best: Peer | undefined;
    for (const p of peers) if (p !== avoid && !p.state.ejected && (!best || p.state.active * best.weight < best.state.active * p.weight)) best = p;
    return best ?? (peers[0] === avoid ? peers[1] : peers[0]);
  }

  private draw(): number {
    const sums = this.sums;
    const r = Math.random() * sums[sums.length - 1]!;
    let lo = 0;
    let hi = sums.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (sums[mid]! > r) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
}
