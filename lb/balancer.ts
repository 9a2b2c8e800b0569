// Which endpoint of a service gets the next request: smooth weighted round robin (nginx's
// algorithm) over the serving endpoints that api/traffic.ts computes, so health, draining,
// the active colors and canary weights all come from the same rule DNS uses.
import { servingEndpoints } from '../api/traffic.js';
import type { Endpoint, Service } from '../api/types.js';

/** One endpoint as the balancer sees it. `origin` is computed once per revision, not per request. */
export interface Peer {
  readonly endpoint: Endpoint;
  readonly origin: string;
  readonly weight: number;
  current: number;
}

/** A balancing policy for one service. Swap the class to change policy; callers see only this. */
export interface Balancer {
  /** Replace the peer set (called when a revision touches the service). */
  update(service: Service | undefined, endpoints: Endpoint[]): void;
  /** The peer for the next request, or undefined when nothing is serving. */
  pick(): Peer | undefined;
  readonly size: number;
}

/** "http://addr:port", with IPv6 addresses in brackets: the key of the upstream connection pool. */
export function originOf(ep: Endpoint): string {
  return ep.address.includes(':') ? `http://[${ep.address}]:${ep.port}` : `http://${ep.address}:${ep.port}`;
}

export class SmoothWeightedRoundRobin implements Balancer {
  private peers: Peer[] = [];
  private total = 0;

  get size(): number {
    return this.peers.length;
  }

  update(service: Service | undefined, endpoints: Endpoint[]): void {
    // Keep each surviving endpoint's running score so a weight change does not restart the cycle.
    const previous = new Map<string, number>();
    for (const p of this.peers) previous.set(p.endpoint.id, p.current);
    const next: Peer[] = [];
    let total = 0;
    for (const { endpoint, weight } of servingEndpoints(service, endpoints)) {
      if (!(weight > 0)) continue;
      next.push({ endpoint, origin: originOf(endpoint), weight, current: previous.get(endpoint.id) ?? 0 });
      total += weight;
    }
    // Stable order makes the sequence reproducible for a given revision.
    next.sort((a, b) => (a.endpoint.id < b.endpoint.id ? -1 : a.endpoint.id > b.endpoint.id ? 1 : 0));
    this.peers = next;
    this.total = total;
  }

  pick(): Peer | undefined {
    const peers = this.peers;
    const n = peers.length;
    if (n === 0) return undefined;
    if (n === 1) return peers[0];
    let best = peers[0]!;
    for (let i = 0; i < n; i++) {
      const p = peers[i]!;
      p.current += p.weight;
      if (p.current > best.current) best = p;
    }
    best.current -= this.total;
    return best;
  }
}
