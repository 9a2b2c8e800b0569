// What the console page shows, cut from the agent's catalog: hosts, service rows (colors with
// their share, serving/total endpoints, routes) and endpoints in a compact form. A snapshot is
// read from the catalog whole; a watch event becomes a delta naming only the rows it changed, so
// a switch costs the page one service row, whatever the registry's size.
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

export interface ColorRow { color: string; share: number; total: number; serving: number }

export interface ServiceRow {
  key: string;
  namespace: string;
  name: string;
  /** The service record's colors and shares ({} when it has no record: every color present serves). */
  active: Record<string, number>;
  previous: Record<string, number>;
  /** Every color present or named, with the share it gets now (the traffic rule, api/traffic.ts). */
  colors: ColorRow[];
  serving: number;
  total: number;
  /** "host/path" the LB routes to it. */
  routes: string[];
}

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

export interface ViewSnapshot { revision: number; hosts: HostRow[]; services: ServiceRow[]; endpoints: EndpointRow[] }

export interface ViewDelta {
  revision: number;
  hosts: HostRow[];
  deletedHosts: string[];
  services: ServiceRow[];
  deletedServices: string[];
  endpoints: EndpointRow[];
  deletedEndpoints: string[];
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
    if (!row) colors.set(c, (row = { color: c, share: shares.get(c) ?? 0, total: 0, serving: 0 }));
    return row;
  };
  for (const c of Object.keys(svc?.active ?? {})) color(c);
  let serving = 0;
  const routes = new Set<string>();
  for (const ep of eps) {
    const row = color(ep.color);
    row.total++;
    if (isServing(ep)) {
      row.serving++;
      if (row.share > 0) serving++;
    }
    for (const h of ep.httpHosts) routes.add(`${h}${ep.httpPath || '/'}`);
  }
  return {
    key: serviceKey(namespace, name), namespace, name,
    active: svc?.active ?? {}, previous: svc?.previous ?? {},
    colors: [...colors.values()].sort((a, b) => b.share - a.share || a.color.localeCompare(b.color)),
    serving, total: eps.length, routes: [...routes].sort(),
  };
}

export class ConsoleView {
  /** The service of every endpoint seen, so a deleted endpoint's service row is redone too. */
  private readonly serviceOf = new Map<string, string>();

  constructor(private readonly catalog: CatalogView) {}

  snapshot(): ViewSnapshot {
    const c = this.catalog;
    this.serviceOf.clear();
    const keys = new Set<string>(c.services.keys());
    const endpoints: EndpointRow[] = [];
    for (const ep of c.endpoints.values()) {
      const k = serviceKey(ep.namespace, ep.service);
      this.serviceOf.set(ep.id, k);
      keys.add(k);
      endpoints.push(endpointRow(ep));
    }
    return {
      revision: c.revision,
      hosts: [...c.hosts.values()].map(hostRow),
      services: [...keys].map((k) => this.row(k)!).filter(Boolean),
      endpoints,
    };
  }

  /** The rows an event changed; undefined when it changed nothing the console shows (allocations). */
  delta(ev: WatchEvent): ViewDelta | undefined {
    const touched = new Set<string>();
    for (const s of ev.services) touched.add(serviceKey(s.namespace, s.name));
    for (const k of ev.deletedServices) touched.add(k);
    const endpoints: EndpointRow[] = [];
    for (const ep of ev.endpoints) {
      const k = serviceKey(ep.namespace, ep.service);
      const before = this.serviceOf.get(ep.id);
      if (before !== undefined && before !== k) touched.add(before);
      this.serviceOf.set(ep.id, k);
      touched.add(k);
      endpoints.push(endpointRow(ep));
    }
    for (const id of ev.deletedEndpoints) {
      const k = this.serviceOf.get(id);
      if (k !== undefined) touched.add(k);
      this.serviceOf.delete(id);
    }
    if (touched.size === 0 && ev.hosts.length === 0 && ev.deletedHosts.length === 0) return undefined;
    const services: ServiceRow[] = [];
    const deletedServices: string[] = [];
    for (const k of touched) {
      const row = this.row(k);
      if (row) services.push(row);
      else deletedServices.push(k);
    }
    return { revision: ev.revision, hosts: ev.hosts.map(hostRow), deletedHosts: ev.deletedHosts, services, deletedServices, endpoints, deletedEndpoints: ev.deletedEndpoints };
  }

  /** A service's row, or undefined when it has neither a record nor an endpoint any more. */
  private row(key: string): ServiceRow | undefined {
    const slash = key.indexOf('/');
    const ns = key.slice(0, slash);
    const name = key.slice(slash + 1);
    const svc = this.catalog.services.get(key);
    const eps = this.catalog.endpointsOf(ns, name);
    if (!svc && eps.length === 0) return undefined;
    return serviceRow(ns, name, svc, eps);
  }
}
