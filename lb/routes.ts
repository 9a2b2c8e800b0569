// The route table: (Host, path prefix) -> service, patched by the agent's watch events.
//
// Matching rules (README.md says the same for users):
// - Host: lower-cased, port and trailing dot stripped. An exact host wins; otherwise the longest
//   matching wildcard suffix (`*.example.com` matches `a.example.com` and `a.b.example.com`,
//   not `example.com`); `*` alone matches any host, last. If the exact host has no path that
//   matches, the wildcards are tried next (like Traefik rules, unlike nginx server blocks).
// - Path: prefixes match on segment boundaries (Kubernetes Ingress `Prefix`): `/api` matches
//   `/api`, `/api/` and `/api/v1`, never `/apix`. The longest matching prefix wins. The raw
//   request path is matched, before the query string, without decoding.
// - Two services claiming the same host and path: the one whose "<ns>/<name>" sorts first wins,
//   and a warning names both.
//
// Balancing: each service's balancer has the policy its endpoints ask for (`lbBalance`, from the
// label `corral.lb.balance` or `corral register --lb-balance`), else the factory's default
// (`--lb-balance`). See `askedPolicy` for endpoints that disagree.
import type { Logger } from 'pino';
import { isBalancePolicy, serviceKey, type BalancePolicy, type Endpoint, type Service, type WatchEvent } from '../api/types.js';
import { balancerFor, originOf, type Balancer, type BalancerFactory } from './balancer.js';
import type { RouteMiddleware } from './middleware/chain.js';
import type { EdgeRoutes } from './middleware/edges.js';
import { EMPTY_EDGE, type EdgeConfig } from './middleware/labels.js';

const defaultBalancer: BalancerFactory = balancerFor('round-robin');

/** What a lookup returns: a service and the balancer over its serving endpoints. */
export interface RouteTarget {
  readonly key: string;
  readonly namespace: string;
  readonly name: string;
  readonly balancer: Balancer;
  /** The route's middlewares (lb/middleware/); null when its labels ask for none. */
  readonly middleware: RouteMiddleware | null;
}

/**
 * Told when no endpoint in the registry uses an upstream origin any more (close its pool).
 * `last` is the last endpoint record that used it (its drain time bounds the in-flight requests).
 */
export type OriginRemoved = (origin: string, last: Endpoint) => void;

class ServiceState implements RouteTarget {
  record: Service | undefined;
  readonly endpoints = new Map<string, Endpoint>();
  /** Route keys ("host path") this service claims now, with their parts. */
  claims = new Map<string, [host: string, path: string]>();
  /** The policy the endpoints ask for; undefined: the factory's default. */
  asked: BalancePolicy | undefined = undefined;
  /** The last disagreement among the endpoints that was logged ('' none), so it is logged once. */
  conflict = '';
  /** Edge labels (lb/middleware/edges.ts): their JSON, parsed config and middleware chain. */
  edgeKey = '';
  edge: EdgeConfig = EMPTY_EDGE;
  middleware: RouteMiddleware | null = null;
  constructor(
    readonly key: string,
    readonly namespace: string,
    readonly name: string,
    /** Replaced (not mutated into another policy) when the service's policy changes. */
    public balancer: Balancer,
  ) {}
}

interface PathClaim {
  /** Every service claiming this host+path, sorted by key; owners[0] wins. */
  owners: ServiceState[];
}

class HostRoutes {
  root: PathClaim | undefined;
  readonly paths = new Map<string, PathClaim>();
  /** Prefix length -> how many prefixes have it: lookups only slice at lengths that exist. */
  readonly lengths = new Map<number, number>();

  get empty(): boolean {
    return this.root === undefined && this.paths.size === 0;
  }

  match(path: string): ServiceState | undefined {
    if (this.paths.size > 0) {
      const lengths = this.lengths;
      let end = path.length;
      if (lengths.has(end)) {
        const hit = this.paths.get(path);
        if (hit) return hit.owners[0];
      }
      // Walk back over segment boundaries: "/a/b/c" tries "/a/b", then "/a".
      while (end > 1) {
        end = path.lastIndexOf('/', end - 1);
        if (end <= 0) break;
        if (lengths.has(end)) {
          const hit = this.paths.get(path.slice(0, end));
          if (hit) return hit.owners[0];
        }
      }
    }
    return this.root?.owners[0];
  }
}

/** Route path as stored: "/" for the root, otherwise a leading slash and no trailing one. */
export function normalizePath(p: string): string {
  let s = p.trim();
  const q = s.indexOf('?');
  if (q >= 0) s = s.slice(0, q);
  if (s === '' || s === '/') return '/';
  if (s[0] !== '/') s = `/${s}`;
  let end = s.length;
  while (end > 1 && s.charCodeAt(end - 1) === 47 /* / */) end--;
  return s.slice(0, end);
}

/** Host as matched: lower-case, no port, no trailing dot. Accepts "[v6]:port" too. */
export function normalizeHost(raw: string): string {
  let end = raw.length;
  if (raw.charCodeAt(0) === 91 /* [ */) {
    const close = raw.indexOf(']');
    if (close > 0) end = close + 1;
  } else {
    const colon = raw.indexOf(':');
    if (colon >= 0) end = colon;
  }
  if (end > 0 && raw.charCodeAt(end - 1) === 46 /* . */) end--;
  const host = end === raw.length ? raw : raw.slice(0, end);
  return host.toLowerCase();
}

export class RouteTable {
  private readonly services = new Map<string, ServiceState>();
  /** endpoint id -> service key, to find the service of a deleted endpoint. */
  private readonly endpointService = new Map<string, string>();
  private readonly exact = new Map<string, HostRoutes>();
  /** "*.example.com" is stored under "example.com"; "*" under "". */
  private readonly wildcard = new Map<string, HostRoutes>();
  /** origin -> how many endpoints use it. */
  private readonly origins = new Map<string, number>();
  private routeCount = 0;
  /** Origins whose count reached 0 during the current event (with the last record that used each); retired once it is fully applied. */
  private readonly released: Array<[string, Endpoint]> = [];

  /** Edge labels to middlewares (set by the thread's stack); unset: no middleware anywhere. */
  edges: EdgeRoutes | undefined;

  /** Revision of the last applied event; 0 until the first snapshot. */
  revision = 0;
  /** True once a snapshot has been applied: the table reflects the registry. */
  ready = false;

  constructor(
    private readonly log?: Logger,
    private readonly onOriginRemoved?: OriginRemoved,
    private readonly newBalancer: BalancerFactory = defaultBalancer,
  ) {}

  get stats(): { services: number; endpoints: number; routes: number; hosts: number; balancers: Record<BalancePolicy, number> } {
    const balancers: Record<BalancePolicy, number> = { 'round-robin': 0, 'least-request': 0 };
    for (const s of this.services.values()) balancers[s.balancer.policy]++;
    return {
      services: this.services.size,
      endpoints: this.endpointService.size,
      routes: this.routeCount,
      hosts: this.exact.size + this.wildcard.size,
      balancers,
    };
  }

  /** Apply one watch event: a snapshot replaces everything, a delta patches the services it touches. */
  apply(ev: WatchEvent): void {
    if (ev.snapshot) {
      this.replace(ev);
    } else {
      const touched = new Set<ServiceState>();
      for (const id of ev.deletedEndpoints) {
        const key = this.endpointService.get(id);
        const state = key === undefined ? undefined : this.services.get(key);
        if (!state) continue;
        const ep = state.endpoints.get(id)!;
        state.endpoints.delete(id);
        this.endpointService.delete(id);
        this.releaseOrigin(originOf(ep), ep);
        touched.add(state);
      }
      for (const key of ev.deletedServices) {
        const state = this.services.get(key);
        if (!state) continue;
        state.record = undefined;
        touched.add(state);
      }
      for (const svc of ev.services) {
        const state = this.stateFor(svc.namespace, svc.name);
        state.record = svc;
        touched.add(state);
      }
      for (const ep of ev.endpoints) touched.add(this.upsertEndpoint(ep));
      for (const state of touched) this.recompute(state);
    }
    this.revision = ev.revision;
    // An origin that left and came back in the same event (endpoint renamed) keeps its pool.
    for (const [origin, last] of this.released.splice(0)) {
      if (this.origins.has(origin)) continue;
      this.onOriginRemoved?.(origin, last);
    }
  }

  /** Every service the table holds ("<ns>/<name>"). */
  serviceKeys(): Iterable<string> {
    return this.services.keys();
  }

  /** The registered endpoints of a service (none for one the table does not hold). */
  endpointsOf(key: string): Iterable<Endpoint> {
    return this.services.get(key)?.endpoints.values() ?? [];
  }

  /** The service for a request, or undefined (404). `host` must be normalized (normalizeHost). */
  lookup(host: string, path: string): RouteTarget | undefined {
    const exact = this.exact.get(host);
    if (exact) {
      const hit = exact.match(path);
      if (hit) return hit;
    }
    if (this.wildcard.size === 0) return undefined;
    // Longest suffix first: "a.b.example.com" tries "b.example.com", "example.com", "com", "*".
    let dot = host.indexOf('.');
    while (dot >= 0) {
      const routes = this.wildcard.get(host.slice(dot + 1));
      if (routes) {
        const hit = routes.match(path);
        if (hit) return hit;
      }
      dot = host.indexOf('.', dot + 1);
    }
    return this.wildcard.get('')?.match(path);
  }

  /** Every routed service's exact hosts and edge config (for ACME: which names need certificates). */
  *routedServices(): Generator<{ key: string; hosts: string[]; edge: EdgeConfig }> {
    for (const s of this.services.values()) {
      if (s.claims.size === 0) continue;
      yield { key: s.key, hosts: [...new Set([...s.claims.values()].map(([h]) => h))], edge: s.edge };
    }
  }

  private replace(ev: WatchEvent): void {
    // Every origin in use before, with a record that used it: those the snapshot does not bring back are retired.
    const oldOrigins = new Map<string, Endpoint>();
    for (const state of this.services.values()) for (const ep of state.endpoints.values()) oldOrigins.set(originOf(ep), ep);
    // Keep ServiceState objects (and their balancer scores) for services that survive.
    const old = new Map(this.services);
    this.services.clear();
    this.endpointService.clear();
    this.exact.clear();
    this.wildcard.clear();
    this.origins.clear();
    this.routeCount = 0;
    for (const state of old.values()) {
      state.endpoints.clear();
      state.claims = new Map();
      state.record = undefined;
    }
    const touched = new Set<ServiceState>();
    const adopt = (ns: string, name: string): ServiceState => {
      const key = serviceKey(ns, name);
      const prior = old.get(key);
      if (prior && !this.services.has(key)) this.services.set(key, prior);
      return this.stateFor(ns, name);
    };
    for (const svc of ev.services) {
      const state = adopt(svc.namespace, svc.name);
      state.record = svc;
      touched.add(state);
    }
    for (const ep of ev.endpoints) {
      adopt(ep.namespace, ep.service);
      touched.add(this.upsertEndpoint(ep));
    }
    for (const state of touched) this.recompute(state);
    // Services gone from the registry stop serving: empty their balancers.
    for (const [key, state] of old) if (!this.services.has(key)) state.balancer.update(undefined, []);
    this.ready = true;
    this.released.push(...oldOrigins);
  }

  private stateFor(namespace: string, name: string): ServiceState {
    const key = serviceKey(namespace, name);
    let state = this.services.get(key);
    if (!state) this.services.set(key, (state = new ServiceState(key, namespace, name, this.newBalancer())));
    return state;
  }

  private upsertEndpoint(ep: Endpoint): ServiceState {
    const key = serviceKey(ep.namespace, ep.service);
    const formerKey = this.endpointService.get(ep.id);
    let touchedFormer: ServiceState | undefined;
    if (formerKey !== undefined) {
      const former = this.services.get(formerKey)!;
      const prev = former.endpoints.get(ep.id)!;
      this.releaseOrigin(originOf(prev), prev);
      if (formerKey !== key) {
        // An endpoint that changed service: take it out of the old one.
        former.endpoints.delete(ep.id);
        touchedFormer = former;
      }
    }
    const state = this.stateFor(ep.namespace, ep.service);
    state.endpoints.set(ep.id, ep);
    // The service's own key string: one per service, not one per endpoint.
    this.endpointService.set(ep.id, state.key);
    const origin = originOf(ep);
    this.origins.set(origin, (this.origins.get(origin) ?? 0) + 1);
    if (touchedFormer) this.recompute(touchedFormer);
    return state;
  }

  private releaseOrigin(origin: string, ep: Endpoint): void {
    const n = (this.origins.get(origin) ?? 1) - 1;
    if (n > 0) {
      this.origins.set(origin, n);
    } else {
      this.origins.delete(origin);
      this.released.push([origin, ep]);
    }
  }

  /** Bring one service's routes and balancer in line with its endpoints and record. */
  private recompute(state: ServiceState): void {
    const endpoints = [...state.endpoints.values()];
    // Every registered endpoint claims its routes, serving or not: a route whose endpoints are
    // all unhealthy answers 503 for that service instead of falling through to another one.
    const next = new Map<string, [string, string]>();
    for (const ep of endpoints) {
      if (ep.httpHosts.length === 0) continue;
      const path = normalizePath(ep.httpPath);
      for (const h of ep.httpHosts) {
        const host = normalizeRouteHost(h);
        if (host === undefined) continue;
        next.set(`${host} ${path}`, [host, path]);
      }
    }
    for (const [k, [host, path]] of state.claims) if (!next.has(k)) this.release(state, host, path);
    for (const [k, [host, path]] of next) if (!state.claims.has(k)) this.claim(state, host, path);
    state.claims = next;
    const asked = this.askedPolicy(state, endpoints);
    if (asked !== state.asked) {
      state.asked = asked;
      const replacement = this.newBalancer(asked);
      if (replacement.policy !== state.balancer.policy) {
        // A new object, swapped in with one assignment: a request picks from either the old or the
        // new one, never a half-updated one. The peers (and their in-flight counts) carry over.
        replacement.adopt(state.balancer);
        this.log?.info({ service: state.key, policy: replacement.policy, was: state.balancer.policy, asked: asked ?? 'nothing (--lb-balance)' }, 'balancing policy of the service changed');
        state.balancer = replacement;
      }
    }
    state.balancer.update(state.record, endpoints);
    this.edges?.update(state, endpoints);
    // Only if the table still points at this object: a later upsert may have made a new one.
    if (state.endpoints.size === 0 && state.record === undefined && this.services.get(state.key) === state) {
      this.services.delete(state.key);
    }
  }

  /**
   * The policy a service's endpoints ask for: the one most of them carry; endpoints that carry
   * none (or one this LB does not know) have no say; a tie goes to the name that sorts first
   * (least-request before round-robin). Undefined when none asks: the LB's --lb-balance. When they
   * disagree, one warning names the service (again only if the disagreement changes).
   */
  private askedPolicy(state: ServiceState, endpoints: Endpoint[]): BalancePolicy | undefined {
    let counts: Map<string, number> | undefined;
    for (const ep of endpoints) {
      const b = ep.lbBalance;
      if (b) (counts ??= new Map()).set(b, (counts.get(b) ?? 0) + 1);
    }
    let best: BalancePolicy | undefined;
    let conflict = '';
    if (counts) {
      let bestVotes = 0;
      for (const [policy, n] of counts) {
        if (isBalancePolicy(policy) && (n > bestVotes || (n === bestVotes && policy < best!))) {
          best = policy;
          bestVotes = n;
        }
      }
      if (counts.size > 1 || best === undefined) {
        conflict = [...counts].sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)).map(([p, n]) => `${p}=${n}`).join(' ');
      }
    }
    this.noteConflict(state, conflict, best);
    return best;
  }

  private noteConflict(state: ServiceState, conflict: string, chosen: BalancePolicy | undefined): void {
    if (conflict === state.conflict) return;
    state.conflict = conflict;
    if (!conflict) return;
    this.log?.warn(
      { service: state.key, asked: conflict, policy: chosen ?? 'the --lb-balance default' },
      'endpoints of one service ask for different or unknown balancing policies (corral.lb.balance, corral register --lb-balance); using the one most of them ask for, ties to the name first in order; give them all the same value',
    );
  }

  private hostRoutes(host: string, create: true): HostRoutes;
  private hostRoutes(host: string, create: false): HostRoutes | undefined;
  private hostRoutes(host: string, create: boolean): HostRoutes | undefined {
    const [map, name] = host.startsWith('*') ? [this.wildcard, host === '*' ? '' : host.slice(2)] : [this.exact, host];
    let routes = map.get(name);
    if (!routes && create) map.set(name, (routes = new HostRoutes()));
    return routes;
  }

  private claim(state: ServiceState, host: string, path: string): void {
    const routes = this.hostRoutes(host, true);
    let claim = path === '/' ? routes.root : routes.paths.get(path);
    if (!claim) {
      claim = { owners: [state] };
      if (path === '/') routes.root = claim;
      else {
        routes.paths.set(path, claim);
        routes.lengths.set(path.length, (routes.lengths.get(path.length) ?? 0) + 1);
      }
      this.routeCount++;
      return;
    }
    claim.owners.push(state);
    claim.owners.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    this.log?.warn(
      { host, path, services: claim.owners.map((s) => s.key), winner: claim.owners[0]!.key },
      'several services claim the same http host and path; routing to the first by namespace/name (set distinct corral.http.host or corral.http.path labels)',
    );
  }

  private release(state: ServiceState, host: string, path: string): void {
    const routes = this.hostRoutes(host, false);
    if (!routes) return;
    const claim = path === '/' ? routes.root : routes.paths.get(path);
    if (!claim) return;
    const i = claim.owners.indexOf(state);
    if (i >= 0) claim.owners.splice(i, 1);
    if (claim.owners.length > 0) return;
    this.routeCount--;
    if (path === '/') routes.root = undefined;
    else {
      routes.paths.delete(path);
      const n = (routes.lengths.get(path.length) ?? 1) - 1;
      if (n > 0) routes.lengths.set(path.length, n);
      else routes.lengths.delete(path.length);
    }
    if (routes.empty) {
      if (host.startsWith('*')) this.wildcard.delete(host === '*' ? '' : host.slice(2));
      else this.exact.delete(host);
    }
  }
}

/** A label's host as stored: normalized; "*" or "*.suffix" for wildcards; undefined if unusable. */
function normalizeRouteHost(h: string): string | undefined {
  const host = normalizeHost(h.trim());
  if (host === '') return undefined;
  if (host === '*') return host;
  if (host.startsWith('*')) return host.startsWith('*.') && host.length > 2 && !host.includes('*', 1) ? host : undefined;
  return host.includes('*') ? undefined : host;
}
