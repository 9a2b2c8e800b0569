// The authoritative index of the Corral domain: names -> record sets, fed by the agent's watch
// stream. A snapshot replaces everything; a delta adds or removes the names of the endpoints it
// carries (their own name and PTR), rebuilds only the service-wide names of the services it
// touches, and tells listeners which names changed, so cached answers for everything else stay
// valid. What a change costs grows with the size of its service, not with the zone.
import { isIPv4, isIPv6 } from 'node:net';
import { colorEndpoints, servingEndpoints } from '../api/traffic.js';
import { DEFAULT_NAMESPACE, serviceKey, type Allocation, type Endpoint, type Service, type WatchEvent } from '../api/types.js';
import { expandIPv6, RCODE, TYPE, HEADER_FLAGS, type ResourceRecord, type Sections } from './wire.js';

export interface SrvTarget {
  priority: number;
  weight: number;
  port: number;
  target: string;
}

/** The records one owner (a service, or the apex) puts at one name. Empty = empty non-terminal. */
export interface RRsets {
  a: string[];
  aaaa: string[];
  srv: SrvTarget[];
  ptr: string[];
  ns: string[];
  soa: boolean;
}

function rrsets(): RRsets {
  return { a: [], aaaa: [], srv: [], ptr: [], ns: [], soa: false };
}

/** The record sets of one endpoint's own names share this for the types they do not have. */
const NONE = Object.freeze([]) as unknown as never[];

/**
 * One name; several services may own records at it (a namespace, a shared address's PTR). Most
 * names have one owner (an endpoint's name and PTR: two per endpoint), kept without a Map.
 */
class NameNode {
  private owner: string | undefined;
  private only: RRsets | undefined;
  /** Two owners or more. */
  private owners: Map<string, RRsets> | undefined;
  private merged: RRsets | undefined;

  get empty(): boolean {
    return this.owner === undefined && this.owners === undefined;
  }

  set(owner: string, rr: RRsets): void {
    this.merged = undefined;
    if (this.owners === undefined) {
      if (this.owner === undefined || this.owner === owner) {
        this.owner = owner;
        this.only = rr;
        return;
      }
      this.owners = new Map([[this.owner, this.only!]]);
      this.owner = this.only = undefined;
    }
    this.owners.set(owner, rr);
  }

  delete(owner: string): void {
    this.merged = undefined;
    if (this.owners === undefined) {
      if (this.owner === owner) this.owner = this.only = undefined;
      return;
    }
    this.owners.delete(owner);
    if (this.owners.size === 1) {
      [[this.owner, this.only]] = this.owners;
      this.owners = undefined;
    }
  }

  records(): RRsets {
    if (this.owners === undefined) return this.only!;
    if (this.merged) return this.merged;
    const m = rrsets();
    for (const rr of this.owners.values()) {
      for (const x of rr.a) if (!m.a.includes(x)) m.a.push(x);
      for (const x of rr.aaaa) if (!m.aaaa.includes(x)) m.aaaa.push(x);
      for (const x of rr.ptr) if (!m.ptr.includes(x)) m.ptr.push(x);
      for (const x of rr.ns) if (!m.ns.includes(x)) m.ns.push(x);
      m.srv.push(...rr.srv);
      m.soa ||= rr.soa;
    }
    return (this.merged = m);
  }
}

const APEX_OWNER = '@apex';
const ALLOC_OWNER = '@alloc:';
/** Owner of a service's endpoint names and PTRs (the service key owns its service-wide names). */
const ENDPOINTS_OWNER = '@endpoints:';

/** One service's endpoints, and how many of them have each endpoint name (one per address). */
interface ServiceEndpoints {
  readonly ids: Set<string>;
  readonly names: Map<string, number>;
  /** `<svc>.<ns>.<domain>` */
  readonly base: string;
}

/** The namespace of a client without an Allocation record (the host, other machines). */

/** The SRV port name when an endpoint has none. */
export const DEFAULT_PORT_NAME = 'http';

export interface ZoneChange {
  /** Names whose records changed; null means everything (a snapshot). */
  names: string[] | null;
}

export class Zone {
  readonly domain: string;
  readonly ttl: number;
  revision = 0;
  /** Has the first snapshot arrived? */
  synced = false;
  private readonly endpoints = new Map<string, Endpoint>();
  private readonly services = new Map<string, Service>();
  private readonly byService = new Map<string, ServiceEndpoints>();
  private readonly views = new Map<string, Map<string, RRsets>>();
  private readonly names = new Map<string, NameNode>();
  /** Names the zone holds (each endpoint's, PTRs, services'...). */
  get nameCount(): number {
    return this.names.size;
  }
  /** Allocation records by address: PTR names and each client's namespace. */
  private readonly allocations = new Map<string, Allocation>();
  private readonly listeners: Array<(c: ZoneChange) => void> = [];
  private readonly domainSuffix: string;
  private readonly nsName: string;

  constructor(domain = 'corral.internal', ttl = 5) {
    this.domain = domain.toLowerCase().replace(/\.$/, '');
    this.ttl = ttl;
    this.domainSuffix = `.${this.domain}`;
    this.nsName = `ns.${this.domain}`;
    this.addApex();
  }

  onChange(fn: (c: ZoneChange) => void): void {
    this.listeners.push(fn);
  }

  /** Applies one watch event: snapshot=true replaces everything, otherwise a patch. */
  apply(ev: WatchEvent): void {
    if (ev.snapshot) {
      this.endpoints.clear();
      this.services.clear();
      this.byService.clear();
      this.views.clear();
      this.names.clear();
      this.allocations.clear();
      this.addApex();
      for (const a of ev.allocations ?? []) this.putAllocation(a, null);
      for (const s of ev.services) this.services.set(serviceKey(s.namespace || DEFAULT_NAMESPACE, s.name), s);
      for (const ep of ev.endpoints) this.putEndpoint(ep, null);
      for (const key of this.allServiceKeys()) this.recompute(key, null);
      this.revision = ev.revision;
      this.synced = true;
      this.emit({ names: null });
      return;
    }
    const touched = new Set<string>();
    const changed = new Set<string>();
    for (const id of ev.deletedEndpoints) {
      const old = this.endpoints.get(id);
      if (!old) continue;
      touched.add(this.removeEndpoint(old, changed));
    }
    for (const ep of ev.endpoints) {
      const old = this.endpoints.get(ep.id);
      if (old) touched.add(this.removeEndpoint(old, changed));
      touched.add(this.putEndpoint(ep, changed));
    }
    for (const key of ev.deletedServices) {
      this.services.delete(key);
      touched.add(key);
    }
    for (const s of ev.services) {
      const key = serviceKey(s.namespace || DEFAULT_NAMESPACE, s.name);
      this.services.set(key, s);
      touched.add(key);
    }
    for (const address of ev.deletedAllocations ?? []) this.deleteAllocation(address, changed);
    for (const a of ev.allocations ?? []) this.putAllocation(a, changed);
    for (const key of touched) this.recompute(key, changed);
    if (ev.revision) this.revision = ev.revision;
    // The SOA serial is patched into cached answers on the way out, so a revision alone
    // invalidates nothing.
    if (changed.size > 0) this.emit({ names: [...changed] });
  }

  /** Is this name under our domain (or the apex itself)? */
  inDomain(name: string): boolean {
    return name === this.domain || name.endsWith(this.domainSuffix);
  }

  /** The namespace of a Corral-attached client address, or undefined. */
  namespaceOf(address: string): string | undefined {
    return this.allocations.get(address)?.namespace;
  }

  /**
   * A name under our domain that does not exist as written (`web.corral.internal`): it is read
   * relative to the asking client's namespace, as the search path `<ns>.<domain> <domain>` implies.
   */
  isRelative(name: string): boolean {
    return name !== this.domain && !this.names.has(name) && name.endsWith(this.domainSuffix);
  }

  /** Records at a name, or undefined when the name does not exist. */
  lookup(name: string): RRsets | undefined {
    return this.names.get(name)?.records();
  }

  /**
   * The authoritative reply for (name, qtype), or null when the name is not ours (forward it).
   * PTR names of our endpoints are ours even though in-addr.arpa is not. With a client
   * namespace, a relative name (see isRelative) is answered from `<prefix>.<ns>.<domain>`,
   * under the name asked.
   */
  answer(name: string, qtype: number, clientNamespace: string | null = null): Sections | null {
    let node = this.names.get(name);
    const inDomain = this.inDomain(name);
    if (!node && !inDomain) return null;
    if (!node && clientNamespace !== null && this.isRelative(name)) {
      const prefix = name.slice(0, name.length - this.domainSuffix.length);
      node = this.names.get(`${prefix}.${clientNamespace.toLowerCase()}${this.domainSuffix}`);
    }
    const out: Sections = { flags: HEADER_FLAGS.AA, answer: [], authority: [], additional: [] };
    if (!node) {
      out.flags |= RCODE.NXDOMAIN;
      out.authority.push(this.soaRecord());
      return out;
    }
    const rr = node.records();
    const ttl = this.ttl;
    const any = qtype === TYPE.ANY;
    if (qtype === TYPE.A || any) for (const a of rr.a) out.answer.push({ name, ttl, data: { type: TYPE.A, address: a } });
    if (qtype === TYPE.AAAA || any) for (const a of rr.aaaa) out.answer.push({ name, ttl, data: { type: TYPE.AAAA, address: a } });
    if ((qtype === TYPE.SOA || any) && rr.soa) out.answer.push(this.soaRecord());
    if (qtype === TYPE.NS || any) {
      for (const ns of rr.ns) {
        out.answer.push({ name, ttl, data: { type: TYPE.NS, target: ns } });
        this.addressRecords(ns, out.additional);
      }
    }
    if (qtype === TYPE.PTR || any) for (const p of rr.ptr) out.answer.push({ name, ttl, data: { type: TYPE.PTR, target: p } });
    if (qtype === TYPE.SRV || any) {
      const seen = new Set<string>();
      for (const s of rr.srv) {
        out.answer.push({ name, ttl, data: { type: TYPE.SRV, priority: s.priority, weight: s.weight, port: s.port, target: s.target } });
        if (!seen.has(s.target)) {
          seen.add(s.target);
          this.addressRecords(s.target, out.additional);
        }
      }
    }
    if (out.answer.length === 0 && inDomain) out.authority.push(this.soaRecord());
    return out;
  }

  /** Counts for the status page. */
  stats(): { revision: number; names: number; services: number; endpoints: number } {
    return { revision: this.revision, names: this.names.size, services: this.views.size, endpoints: this.endpoints.size };
  }

  private addressRecords(target: string, into: ResourceRecord[]): void {
    const rr = this.names.get(target)?.records();
    if (!rr) return;
    for (const a of rr.a) into.push({ name: target, ttl: this.ttl, data: { type: TYPE.A, address: a } });
    for (const a of rr.aaaa) into.push({ name: target, ttl: this.ttl, data: { type: TYPE.AAAA, address: a } });
  }

  private soaRecord(): ResourceRecord {
    return {
      name: this.domain,
      ttl: this.ttl,
      data: {
        type: TYPE.SOA, mname: this.nsName, rname: `hostmaster.${this.domain}`, serial: this.revision >>> 0,
        refresh: 3600, retry: 600, expire: 86400, minimum: this.ttl,
      },
    };
  }

  private addApex(): void {
    const apex = rrsets();
    apex.soa = true;
    apex.ns.push(this.nsName);
    this.node(this.domain).set(APEX_OWNER, apex);
    const ns = rrsets();
    ns.a.push('127.0.0.1');
    this.node(this.nsName).set(APEX_OWNER, ns);
  }

  private node(name: string): NameNode {
    let n = this.names.get(name);
    if (!n) this.names.set(name, (n = new NameNode()));
    return n;
  }

  private putAllocation(a: Allocation, changed: Set<string> | null): void {
    const address = normalizeAddress(a.address);
    if (!address) return;
    if (this.allocations.has(address)) this.deleteAllocation(address, changed);
    this.allocations.set(address, a);
    const rr = rrsets();
    rr.ptr.push(`${dnsLabel(a.name || a.containerId.slice(0, 12) || address)}.${(a.namespace || DEFAULT_NAMESPACE).toLowerCase()}.${this.domain}`);
    const ptrName = reverseName(address);
    this.node(ptrName).set(ALLOC_OWNER + address, rr);
    changed?.add(ptrName);
  }

  private deleteAllocation(address: string, changed: Set<string> | null): void {
    const norm = normalizeAddress(address);
    if (!norm || !this.allocations.delete(norm)) return;
    const ptrName = reverseName(norm);
    const n = this.names.get(ptrName);
    if (!n) return;
    n.delete(ALLOC_OWNER + norm);
    if (n.empty) this.names.delete(ptrName);
    changed?.add(ptrName);
  }

  /** Adds an endpoint to its service, and its name and PTR unless another endpoint of the service has its address. */
  private putEndpoint(ep: Endpoint, changed: Set<string> | null): string {
    const key = endpointKey(ep);
    this.endpoints.set(ep.id, ep);
    let se = this.byService.get(key);
    if (!se) this.byService.set(key, (se = { ids: new Set(), names: new Map(), base: serviceBase(key, this.domain) }));
    se.ids.add(ep.id);
    const v4 = isIPv4(ep.address);
    if (!v4 && !isIPv6(ep.address)) return key;
    const own = endpointName(ep.address, se.base);
    const count = se.names.get(own) ?? 0;
    se.names.set(own, count + 1);
    if (count > 0) return key;
    const owner = ENDPOINTS_OWNER + key;
    this.node(own).set(owner, { a: v4 ? [ep.address] : NONE, aaaa: v4 ? NONE : [ep.address], srv: NONE, ptr: NONE, ns: NONE, soa: false });
    const ptrName = reverseName(ep.address);
    this.node(ptrName).set(owner, { a: NONE, aaaa: NONE, srv: NONE, ptr: [own], ns: NONE, soa: false });
    changed?.add(own);
    changed?.add(ptrName);
    return key;
  }

  /** Takes an endpoint out of its service, and its name and PTR once no endpoint of the service has its address. */
  private removeEndpoint(ep: Endpoint, changed: Set<string> | null): string {
    const key = endpointKey(ep);
    this.endpoints.delete(ep.id);
    const se = this.byService.get(key);
    if (!se || !se.ids.delete(ep.id)) return key;
    if (!isIPv4(ep.address) && !isIPv6(ep.address)) return key;
    const own = endpointName(ep.address, se.base);
    const count = (se.names.get(own) ?? 1) - 1;
    if (count > 0) {
      se.names.set(own, count);
      return key;
    }
    se.names.delete(own);
    const owner = ENDPOINTS_OWNER + key;
    for (const name of [own, reverseName(ep.address)]) {
      const n = this.names.get(name);
      if (!n) continue;
      n.delete(owner);
      if (n.empty) this.names.delete(name);
      changed?.add(name);
    }
    return key;
  }

  private allServiceKeys(): Set<string> {
    return new Set([...this.byService.keys(), ...this.services.keys()]);
  }

  /** Replaces one service's names in the index; adds every name it touched to `changed`. */
  private recompute(key: string, changed: Set<string> | null): void {
    const old = this.views.get(key);
    if (old) {
      for (const name of old.keys()) {
        const n = this.names.get(name);
        if (!n) continue;
        n.delete(key);
        if (n.empty) this.names.delete(name);
        changed?.add(name);
      }
    }
    const se = this.byService.get(key);
    if (se && se.ids.size === 0) this.byService.delete(key);
    const view = this.buildView(key);
    if (view.size === 0) {
      this.views.delete(key);
      return;
    }
    this.views.set(key, view);
    for (const [name, rr] of view) {
      this.node(name).set(key, rr);
      changed?.add(name);
    }
  }

  /** The service-wide names (endpoint names and PTRs are kept by putEndpoint). */
  private buildView(key: string): Map<string, RRsets> {
    const view = new Map<string, RRsets>();
    const service = this.services.get(key);
    const eps: Endpoint[] = [];
    for (const id of this.byService.get(key)?.ids ?? []) eps.push(this.endpoints.get(id)!);
    if (eps.length === 0 && !service) return view;
    const base = serviceBase(key, this.domain);
    const nsName = base.slice(base.indexOf('.') + 1);
    const at = (name: string) => {
      let rr = view.get(name);
      if (!rr) view.set(name, (rr = rrsets()));
      return rr;
    };
    at(nsName); // the namespace is an empty non-terminal: it exists
    const root = at(base);
    const inRoot = new Set<string>();

    // Service name and SRV: serving endpoints of the active colors.
    const serving = servingEndpoints(service, eps);
    let maxWeight = 0;
    for (const s of serving) maxWeight = Math.max(maxWeight, s.weight);
    const factor = maxWeight > 0 ? Math.min(100, 65535 / maxWeight) : 1;
    for (const { endpoint: ep, weight } of serving) {
      if (!isIPv4(ep.address) && !isIPv6(ep.address)) continue;
      addAddressOnce(root, ep.address, inRoot);
      at(`_tcp.${base}`);
      const srv = at(`_${(ep.portName || DEFAULT_PORT_NAME).toLowerCase()}._tcp.${base}`);
      srv.srv.push({
        priority: 0,
        weight: Math.min(65535, Math.max(1, Math.round(weight * factor))),
        port: ep.port,
        target: endpointName(ep.address, base),
      });
    }

    // <color>.<svc>: serving endpoints of that color, active or not (test green before switching).
    const colors = new Set<string>();
    for (const ep of eps) if (ep.color) colors.add(ep.color);
    for (const color of colors) {
      const rr = at(`${color.toLowerCase()}.${base}`);
      const seen = new Set<string>();
      for (const ep of colorEndpoints(eps, color)) addAddressOnce(rr, ep.address, seen);
    }
    return view;
  }

  private emit(c: ZoneChange): void {
    for (const fn of this.listeners) fn(c);
  }
}

function endpointKey(ep: Endpoint): string {
  return serviceKey(ep.namespace || DEFAULT_NAMESPACE, ep.service);
}

/** Adds an address unless `seen` (what this record set holds, IPv6 expanded) has it: one pass over a service, not one per address. */
function addAddressOnce(rr: RRsets, address: string, seen: Set<string>): void {
  if (isIPv4(address)) {
    if (seen.has(address)) return;
    seen.add(address);
    rr.a.push(address);
  } else if (isIPv6(address)) {
    const norm = expandIPv6(address).map((g) => g.toString(16)).join(':');
    if (seen.has(norm)) return;
    seen.add(norm);
    rr.aaaa.push(address);
  }
}

/** `<svc>.<ns>.<domain>` of a service key `<ns>/<svc>`. */
function serviceBase(key: string, domain: string): string {
  const slash = key.indexOf('/');
  return `${key.slice(slash + 1).toLowerCase()}.${key.slice(0, slash).toLowerCase()}.${domain}`;
}

/** An address as clients see it in their packets' source (IPv6 compressed the usual way). */
function normalizeAddress(address: string): string | null {
  const a = address.trim();
  if (isIPv4(a)) return a;
  if (isIPv6(a)) return expandIPv6(a).map((g) => g.toString(16)).join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
  return null;
}

/** A container name as one DNS label: lowercase letters, digits and '-', at most 63 octets. */
function dnsLabel(text: string): string {
  const l = text.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 63);
  return l || 'container';
}

/** `10-42-0-5.<svc>.<ns>.<domain>`, `fd00-0-0-0-0-0-0-1.<...>`: the name of one endpoint. */
export function endpointName(address: string, base: string): string {
  const label = isIPv4(address) ? address.replace(/\./g, '-') : expandIPv6(address).map((g) => g.toString(16)).join('-');
  return `${label}.${base}`;
}

/** The in-addr.arpa / ip6.arpa name of an address. */
export function reverseName(address: string): string {
  if (isIPv4(address)) return `${address.split('.').reverse().join('.')}.in-addr.arpa`;
  const nibbles: string[] = [];
  for (const g of expandIPv6(address)) nibbles.push(...g.toString(16).padStart(4, '0').split(''));
  return `${nibbles.reverse().join('.')}.ip6.arpa`;
}
