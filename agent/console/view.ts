// What the console page shows, cut from the agent's catalog: hosts, and one row per service
// (colors with their share, serving/total endpoints, routes); endpoints are read per service when
// the page opens one. Rows are kept encoded and patched by the watch's deltas (a row is redone
// only when its service changed, and only when someone asks), so a page's first load costs a join
// of ready strings, and a switch costs the open pages one service row, whatever the registry's size.
import { activeColors, isServing } from '../../api/traffic.js';
import type { Endpoint, Host, Service, WatchEvent } from '../../api/types.js';
import { serviceKey } from '../../api/types.js';

/** What the view reads: the agent's catalog (agent/catalog.ts). */
export interface CatalogView {
  readonly revision: number;
  readonly endpoints: ReadonlyMap<string, Endpoint>;
  readonly services: ReadonlyMap<string, Service>;
  readonly hosts: ReadonlyMap<string, Host>;
  endpointsOf(namespace: string, service: string): Endpoint[];
}

export interface HostRow { name: string; block: string; underlay: string; overlay: string; version: string; mtu: number; rotating: boolean }

/** [color, share now (the traffic rule, api/traffic.ts), endpoints, serving endpoints]. */
export type ColorRow = [color: string, share: number, total: number, serving: number];

/**
 * A service as the page lists it, as a tuple: 5,000 of them are a fifth of the bytes as objects.
 * serving counts the endpoints that get traffic (healthy, not draining, of a color with a share).
 */
export type ServiceRow = [namespace: string, name: string, colors: ColorRow[], serving: number, total: number, routes: string[], previous: Record<string, number>];

export interface EndpointRow {
  id: string;
  service: string;      // "<ns>/<name>"
  address: string;      // "addr:port"
  color: string;
  weight: number;
  healthy: boolean;
  reason: string;
  draining: boolean;
  node: string;
  origin: string;
  name: string;         // container name, when it has one
}

export function hostRow(h: Host): HostRow {
  return { name: h.name, block: h.block, underlay: h.underlay, overlay: h.overlay, version: h.version, mtu: h.mtu, rotating: h.nextPublicKey !== '' };
}

export function endpointRow(e: Endpoint): EndpointRow {
  return {
    id: e.id, service: serviceKey(e.namespace, e.service), address: e.address.includes(':') ? `[${e.address}]:${e.port}` : `${e.address}:${e.port}`,
    color: e.color, weight: e.weight, healthy: e.healthy, reason: e.healthReason, draining: e.draining, node: e.node, origin: e.origin, name: e.containerName,
  };
}

/** One service's row from its record (if any) and its endpoints. */
export function serviceRow(namespace: string, name: string, svc: Service | undefined, eps: Endpoint[]): ServiceRow {
  const shares = activeColors(svc, eps);
  const colors = new Map<string, ColorRow>();
  const color = (c: string) => {
    let row = colors.get(c);
    if (!row) colors.set(c, (row = [c, shares.get(c) ?? 0, 0, 0]));
    return row;
  };
  for (const c of Object.keys(svc?.active ?? {})) color(c);
  let serving = 0;
  const routes = new Set<string>();
  for (const ep of eps) {
    const row = color(ep.color);
    row[2]++;
    if (isServing(ep)) {
      row[3]++;
      if (row[1] > 0) serving++;
    }
    for (const h of ep.httpHosts) routes.add(`${h}${ep.httpPath || '/'}`);
  }
  const sorted = [...colors.values()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return [namespace, name, sorted, serving, eps.length, [...routes].sort(), svc?.previous ?? {}];
}

export class ConsoleView {
  /** The service of every endpoint seen, so a deleted endpoint's service row is redone too. */
  private readonly serviceOf = new Map<string, string>();
  /** Encoded rows by service key and by host name. */
  private readonly services = new Map<string, string>();
  private readonly hosts = new Map<string, string>();
  /** Services changed since their row was encoded; everything after a snapshot (rows are built on first demand). */
  private readonly dirty = new Set<string>();
  private whole = true;

  constructor(private readonly catalog: CatalogView) {}

  /**
   * Follows one watch event: which rows it changed. Cheap (map lookups per record), since it
   * runs for every event whether or not a page is open; rows are encoded later, on demand.
   */
  note(ev: WatchEvent): { services: Set<string>; hosts: boolean } {
    const touched = new Set<string>();
    if (ev.snapshot) {
      this.whole = true;
      return { services: touched, hosts: true };
    }
    // Nothing encoded yet (no page ever opened), or a snapshot pending: the next encoding reads the catalog whole.
    if (this.whole) return { services: touched, hosts: false };
    for (const s of ev.services) touched.add(serviceKey(s.namespace, s.name));
    for (const k of ev.deletedServices) touched.add(k);
    for (const ep of ev.endpoints) {
      const k = serviceKey(ep.namespace, ep.service);
      const before = this.serviceOf.get(ep.id);
      if (before !== undefined && before !== k) touched.add(before);
      this.serviceOf.set(ep.id, k);
      touched.add(k);
    }
    for (const id of ev.deletedEndpoints) {
      const k = this.serviceOf.get(id);
      if (k !== undefined) touched.add(k);
      this.serviceOf.delete(id);
    }
    for (const k of touched) this.dirty.add(k);
    for (const h of ev.hosts) this.hosts.set(h.name, JSON.stringify(hostRow(h)));
    for (const n of ev.deletedHosts) this.hosts.delete(n);
    return { services: touched, hosts: ev.hosts.length > 0 || ev.deletedHosts.length > 0 };
  }

  /** The page's first state: `{"revision":…,"hosts":[HostRow…],"services":[ServiceRow…]}`. */
  snapshotJson(): string {
    this.clean();
    return `{"revision":${this.catalog.revision},"hosts":[${[...this.hosts.values()].join(',')}],"services":[${[...this.services.values()].join(',')}]}`;
  }

  /** What one event changed, for open pages: undefined when nothing they show (allocations). */
  deltaJson(ev: WatchEvent, changed: { services: Set<string>; hosts: boolean }): string | undefined {
    if (changed.services.size === 0 && !changed.hosts && ev.endpoints.length === 0 && ev.deletedEndpoints.length === 0) return undefined;
    this.clean();
    const rows: string[] = [];
    const gone: string[] = [];
    for (const k of changed.services) {
      const row = this.services.get(k);
      if (row) rows.push(row);
      else gone.push(k);
    }
    return `{"revision":${ev.revision},"hosts":[${ev.hosts.map((h) => this.hosts.get(h.name) ?? JSON.stringify(hostRow(h))).join(',')}],"deletedHosts":${JSON.stringify(ev.deletedHosts)},` +
      `"services":[${rows.join(',')}],"deletedServices":${JSON.stringify(gone)},` +
      `"endpoints":${JSON.stringify(ev.endpoints.map(endpointRow))},"deletedEndpoints":${JSON.stringify(ev.deletedEndpoints)}}`;
  }

  /** One service's endpoints, for the page's detail pane. */
  endpointsOf(key: string): EndpointRow[] {
    const slash = key.indexOf('/');
    return this.catalog.endpointsOf(key.slice(0, slash), key.slice(slash + 1)).map(endpointRow);
  }

  /** Encodes what changed since the last encoding (everything after a snapshot). */
  private clean(): void {
    const c = this.catalog;
    if (this.whole) {
      this.whole = false;
      this.dirty.clear();
      this.serviceOf.clear();
      this.services.clear();
      this.hosts.clear();
      for (const ep of c.endpoints.values()) {
        const k = serviceKey(ep.namespace, ep.service);
        this.serviceOf.set(ep.id, k);
        this.dirty.add(k);
      }
      for (const k of c.services.keys()) this.dirty.add(k);
      for (const h of c.hosts.values()) this.hosts.set(h.name, JSON.stringify(hostRow(h)));
    }
    for (const k of this.dirty) {
      const slash = k.indexOf('/');
      const ns = k.slice(0, slash);
      const name = k.slice(slash + 1);
      const svc = c.services.get(k);
      const eps = c.endpointsOf(ns, name);
      if (!svc && eps.length === 0) this.services.delete(k);
      else this.services.set(k, JSON.stringify(serviceRow(ns, name, svc, eps)));
    }
    this.dirty.clear();
  }
}
