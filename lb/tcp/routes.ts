// The TCP/TLS route table: LB port -> the service for plain TCP, and TLS server name -> service
// on that port, patched by the agent's watch events like the HTTP table (lb/routes.ts). Each
// service keeps one balancer (lb/balancer.ts) over `servingEndpoints` (api/traffic.ts), so health,
// draining, colors, canary weights and `corral switch` act on TCP exactly as on HTTP: from the
// revision that carries them, for new connections.
//
// Claims: an endpoint with `tcpPort` P and no `tlsSni` claims plain TCP on P; with `tlsSni` it
// claims those names on P (or, with no `tcpPort`, on the HTTPS port: key HTTPS_PORT). Two
// services claiming the same thing: the one whose "<ns>/<name>" sorts first wins, with a warning.
import type { Logger } from 'pino';
import { isBalancePolicy, serviceKey, type BalancePolicy, type Endpoint, type Service, type WatchEvent } from '../../api/types.js';
import type { Balancer, BalancerFactory } from '../balancer.js';

/** Port key of SNI routes without `corral.tcp.port`: they share the LB's HTTPS port. */
export const HTTPS_PORT = 0;

/** A service as TCP connections see it. */
export interface TcpService {
  readonly key: string;
  readonly balancer: Balancer;
}

class ServiceState implements TcpService {
  record: Service | undefined;
  readonly endpoints = new Map<string, Endpoint>();
  /** "port" (plain) or "port name" (SNI) keys this service claims now. */
  claims = new Set<string>();
  asked: BalancePolicy | undefined;
  constructor(readonly key: string, public balancer: Balancer) {}
}

/** Several services may claim one thing; owners[0] (by key) wins. */
type Owners = ServiceState[];

/** What one LB port routes. */
export class PortRoutes {
  plain: Owners = [];
  readonly exact = new Map<string, Owners>();
  /** "*.example.com" under "example.com". */
  readonly wildcard = new Map<string, Owners>();

  constructor(readonly port: number) {}

  /** True when connections must be read for a ClientHello before they can be routed. */
  get bySni(): boolean {
    return this.exact.size > 0 || this.wildcard.size > 0;
  }

  /** The plain-TCP service of the port (also the fallback for TLS without a known name). */
  get fallback(): TcpService | undefined {
    return this.plain[0];
  }

  /** The service for a TLS server name: exact first, then the longest wildcard suffix. */
  sni(name: string): TcpService | undefined {
    const hit = this.exact.get(name);
    if (hit) return hit[0];
    let dot = name.indexOf('.');
    while (dot >= 0) {
      const w = this.wildcard.get(name.slice(dot + 1));
      if (w) return w[0];
      dot = name.indexOf('.', dot + 1);
    }
    return undefined;
  }

  get empty(): boolean {
    return this.plain.length === 0 && !this.bySni;
  }
}

export class TcpRouteTable {
  private readonly services = new Map<string, ServiceState>();
  private readonly endpointService = new Map<string, string>();
  private readonly byPort = new Map<number, PortRoutes>();
  revision = 0;

  constructor(
    private readonly newBalancer: BalancerFactory,
    private readonly log?: Logger,
    /**
     * Where SNI routes without `tcpPort` go: HTTPS_PORT when the LB terminates HTTPS (they share
     * its listener), else the HTTPS port's number (a plain route on that port is their fallback).
     */
    private readonly sniPort: number = HTTPS_PORT,
  ) {}

  /** The routes of a port (HTTPS_PORT for SNI routes on the HTTPS port), or undefined. */
  port(port: number): PortRoutes | undefined {
    return this.byPort.get(port);
  }

  /** Ports that have routes now. */
  get ports(): number[] {
    return [...this.byPort.keys()];
  }

  get stats(): { tcpServices: number; tcpPorts: number } {
    let n = 0;
    for (const s of this.services.values()) if (s.claims.size > 0) n++;
    return { tcpServices: n, tcpPorts: this.byPort.size };
  }

  apply(ev: WatchEvent): void {
    const touched = new Set<ServiceState>();
    if (ev.snapshot) {
      // Every known service is emptied, then refilled from the snapshot; those left empty go.
      for (const s of this.services.values()) {
        s.endpoints.clear();
        s.record = undefined;
        touched.add(s);
      }
      this.endpointService.clear();
    } else {
      for (const id of ev.deletedEndpoints) {
        const key = this.endpointService.get(id);
        const s = key === undefined ? undefined : this.services.get(key);
        if (!s) continue;
        s.endpoints.delete(id);
        this.endpointService.delete(id);
        touched.add(s);
      }
      for (const key of ev.deletedServices) {
        const s = this.services.get(key);
        if (!s) continue;
        s.record = undefined;
        touched.add(s);
      }
    }
    for (const svc of ev.services) {
      const s = this.stateFor(serviceKey(svc.namespace, svc.name));
      s.record = svc;
      touched.add(s);
    }
    for (const ep of ev.endpoints) {
      const key = serviceKey(ep.namespace, ep.service);
      const former = this.endpointService.get(ep.id);
      if (former !== undefined && former !== key) {
        const f = this.services.get(former);
        if (f) {
          f.endpoints.delete(ep.id);
          touched.add(f);
        }
      }
      const s = this.stateFor(key);
      s.endpoints.set(ep.id, ep);
      this.endpointService.set(ep.id, key);
      touched.add(s);
    }
    for (const s of touched) this.recompute(s);
    this.revision = ev.revision;
  }

  private stateFor(key: string): ServiceState {
    let s = this.services.get(key);
    if (!s) this.services.set(key, (s = new ServiceState(key, this.newBalancer())));
    return s;
  }

  private recompute(s: ServiceState): void {
    const endpoints = [...s.endpoints.values()];
    const next = new Set<string>();
    for (const ep of endpoints) {
      const port = ep.tcpPort || this.sniPort;
      const names = ep.tlsSni ?? [];
      if (names.length > 0) for (const n of names) next.add(`${port} ${n}`);
      else if (ep.tcpPort) next.add(String(ep.tcpPort));
    }
    for (const c of s.claims) if (!next.has(c)) this.release(s, c);
    for (const c of next) if (!s.claims.has(c)) this.claim(s, c);
    s.claims = next;
    if (next.size > 0) {
      const asked = askedPolicy(endpoints);
      if (asked !== s.asked) {
        s.asked = asked;
        const replacement = this.newBalancer(asked);
        if (replacement.policy !== s.balancer.policy) {
          replacement.adopt(s.balancer);
          s.balancer = replacement;
        }
      }
      s.balancer.update(s.record, endpoints);
    } else {
      // No TCP route: nothing picks from it; keep no peers (their states belong to the HTTP side too).
      s.balancer.update(undefined, []);
    }
    if (s.endpoints.size === 0 && s.record === undefined && this.services.get(s.key) === s) this.services.delete(s.key);
  }

  private owners(claim: string, create: boolean): { routes: PortRoutes; list: Owners; set(l: Owners): void; drop(): void } | undefined {
    const sp = claim.indexOf(' ');
    const port = Number(sp < 0 ? claim : claim.slice(0, sp));
    let routes = this.byPort.get(port);
    if (!routes) {
      if (!create) return undefined;
      this.byPort.set(port, (routes = new PortRoutes(port)));
    }
    const r = routes;
    if (sp < 0) return { routes: r, list: r.plain, set: (l) => (r.plain = l), drop: () => (r.plain = []) };
    const name = claim.slice(sp + 1);
    const [map, k] = name.startsWith('*.') ? [r.wildcard, name.slice(2)] : [r.exact, name];
    const list = map.get(k);
    if (!list && !create) return undefined;
    return { routes: r, list: list ?? [], set: (l) => map.set(k, l), drop: () => map.delete(k) };
  }

  private claim(s: ServiceState, claim: string): void {
    const o = this.owners(claim, true)!;
    const list = [...o.list, s].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    o.set(list);
    if (list.length > 1) {
      this.log?.warn({ route: describe(claim), services: list.map((x) => x.key), winner: list[0]!.key },
        'several services claim the same TCP port or TLS server name; routing to the first by namespace/name (give them distinct corral.tcp.port or corral.tls.sni labels)');
    }
  }

  private release(s: ServiceState, claim: string): void {
    const o = this.owners(claim, false);
    if (!o) return;
    const list = o.list.filter((x) => x !== s);
    if (list.length > 0) o.set(list);
    else o.drop();
    if (o.routes.empty) this.byPort.delete(o.routes.port);
  }
}

function describe(claim: string): string {
  const sp = claim.indexOf(' ');
  if (sp < 0) return `tcp port ${claim}`;
  const port = claim.slice(0, sp);
  return `tls ${claim.slice(sp + 1)} on ${port === '0' ? 'the HTTPS port' : `port ${port}`}`;
}

/** The policy most endpoints ask for (corral.lb.balance); ties to the name first in order. */
function askedPolicy(endpoints: Endpoint[]): BalancePolicy | undefined {
  const votes = new Map<BalancePolicy, number>();
  for (const ep of endpoints) if (isBalancePolicy(ep.lbBalance)) votes.set(ep.lbBalance, (votes.get(ep.lbBalance) ?? 0) + 1);
  let best: BalancePolicy | undefined;
  for (const [p, n] of votes) if (best === undefined || n > votes.get(best)! || (n === votes.get(best)! && p < best)) best = p;
  return best;
}
