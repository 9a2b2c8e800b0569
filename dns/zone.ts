// The authoritative index of the Corral domain: names -> record sets, fed by the agent's watch
// stream. A snapshot replaces everything; a delta adds or removes the names of the endpoints it
// carries (their own name and PTR), rebuilds only the service-wide names of the services it
// touches, and tells listeners which names changed, so cached answers for everything else stay
// valid. What a change costs grows with the size of its service, not with the zone.
// Memory: each endpoint's own name and PTR are not stored as names (two per endpoint, most of what
// a zone held): they are worked out from the name asked (`<addr label>.<service base>`, reversed
// address) against each service's address counts, so an endpoint costs a few Map entries.
import { isIPv4, isIPv6 } from 'node:net';
import { colorEndpoints, servingEndpoints } from '../api/traffic.js';
import { DEFAULT_NAMESPACE, serviceKey, type Allocation, type Endpoint, type Service, type WatchEvent } from '../api/types.js';
import { expandIPv6, RCODE, TYPE, HEADER_FLAGS, type ResourceRecord, type Sections } from './wire.js';

/** One SRV record: priority 0; the target is the endpoint name of `address` under `base` (made when answered). */
export interface SrvTarget {
  weight: number;
  port: number;
  address: string;
  base: string;
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
    return (this.merged ??= merge(this.owners.values()));
  }
}

const APEX_OWNER = '@apex';
const ALLOC_OWNER = '@alloc:';
/** Owner of a service's endpoint names and PTRs (the service key owns its service-wide names). */
const ENDPOINTS_OWNER = '@endpoints:';

/** One service's endpoints (an array: a change costs a pass over its service anyway). */
interface ServiceEndpoints {
  /** The service key, one string shared by every reference to it (byAddress). */
  readonly key: string;
  readonly eps: Endpoint[];
  /** `<svc>.<ns>.<domain>` */
  readonly base: string;
}

/** How many times `owners` (a byAddress value) lists `key`: the service's endpoints at that address. */
function countOf(owners: string | string[] | undefined, key: string): number {
  if (owners === undefined) return 0;
  if (typeof owners === 'string') return owners === key ? 1 : 0;
  let n = 0;
  for (const k of owners) if (k === key) n++;
  return n;
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
  /** `<svc>.<ns>.<domain>` -> service key, for endpoint names. */
  private readonly bases = new Map<string, string>();
  /**
   * Address key -> the service key of each endpoint at that address (one string when there is
   * one endpoint; a key repeats for a service with several endpoints there): endpoint names, PTRs.
   */
  private readonly byAddress = new Map<string, string | string[]>();
  /** Endpoint names (one per address per service): each has a PTR too. */
  private endpointNames = 0;
  /** Names the zone holds (each endpoint's, PTRs, services'...). */
  get nameCount(): number {
    return this.names.size + 2 * this.endpointNames;
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
      this.bases.clear();
      this.byAddress.clear();
      this.endpointNames = 0;
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
    return name !== this.domain && name.endsWith(this.domainSuffix) && this.lookup(name) === undefined;
  }

  /** Records at a name, or undefined when the name does not exist. */
  lookup(name: string): RRsets | undefined {
    const stored = this.names.get(name)?.records();
    const own = this.endpointRecords(name);
    const ptr = own === undefined ? this.ptrRecords(name) : undefined;
    const found = own ?? ptr;
    if (found === undefined) return stored;
    return stored === undefined ? found : merge([stored, found]);
  }

  /** `<addr label>.<svc>.<ns>.<domain>` of a registered endpoint: its address. */
  private endpointRecords(name: string): RRsets | undefined {
    const dot = name.indexOf('.');
    if (dot <= 0) return undefined;
    const key = this.bases.get(name.slice(dot + 1));
    if (key === undefined) return undefined;
    const se = this.byService.get(key);
    const address = labelAddress(name.slice(0, dot));
    if (se === undefined || address === null || countOf(this.byAddress.get(address), se.key) === 0) return undefined;
    return isIPv4(address) ? { a: [address], aaaa: NONE, srv: NONE, ptr: NONE, ns: NONE, soa: false } : { a: NONE, aaaa: [compressIPv6(address)], srv: NONE, ptr: NONE, ns: NONE, soa: false };
  }

  /** The PTR name of a registered endpoint's address: the endpoint name in each service with it. */
  private ptrRecords(name: string): RRsets | undefined {
    const address = reverseAddress(name);
    if (address === null) return undefined;
    const owners = this.byAddress.get(address);
    if (owners === undefined) return undefined;
    const ptr: string[] = [];
    for (const key of typeof owners === 'string' ? [owners] : new Set(owners)) {
      const se = this.byService.get(key);
      if (se) ptr.push(endpointName(address, se.base));
    }
    return { a: NONE, aaaa: NONE, srv: NONE, ptr, ns: NONE, soa: false };
  }

  /**
   * The authoritative reply for (name, qtype), or null when the name is not ours (forward it).
   * PTR names of our endpoints are ours even though in-addr.arpa is not. With a client
   * namespace, a relative name (see isRelative) is answered from `<prefix>.<ns>.<domain>`,
   * under the name asked.
   */
  answer(name: string, qtype: number, clientNamespace: string | null = null): Sections | null {
    const inDomain = this.inDomain(name);
    // Only names under the domain and reverse names can be worked out; any other is stored or not ours.
    let rr = inDomain || name.endsWith('.arpa') ? this.lookup(name) : this.names.get(name)?.records();
    if (!rr && !inDomain) return null;
    if (!rr && clientNamespace !== null && name !== this.domain && inDomain) {
      const prefix = name.slice(0, name.length - this.domainSuffix.length);
      rr = this.lookup(`${prefix}.${clientNamespace.toLowerCase()}${this.domainSuffix}`);
    }
    const out: Sections = { flags: HEADER_FLAGS.AA, answer: [], authority: [], additional: [] };
    if (!rr) {
      out.flags |= RCODE.NXDOMAIN;
      out.authority.push(this.soaRecord());
      return out;
    }
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
        const target = endpointName(s.address, s.base);
        out.answer.push({ name, ttl, data: { type: TYPE.SRV, priority: 0, weight: s.weight, port: s.port, target } });
        if (!seen.has(target)) {
          seen.add(target);
          this.addressRecords(target, out.additional);
        }
      }
    }
    if (out.answer.length === 0 && inDomain) out.authority.push(this.soaRecord());
    return out;
  }

  /** Counts for the status page. */
  stats(): { revision: number; names: number; services: number; endpoints: number } {
    return { revision: this.revision, names: this.nameCount, services: this.views.size, endpoints: this.endpoints.size };
  }

  private addressRecords(target: string, into: ResourceRecord[]): void {
    const rr = this.lookup(target);
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
    if (!se) {
      this.byService.set(key, (se = { key, eps: [], base: serviceBase(key, this.domain) }));
      this.bases.set(se.base, key);
    }
    se.eps.push(ep);
    const address = addressKey(ep.address);
    if (address === null) return key;
    const owners = this.byAddress.get(address);
    const count = countOf(owners, se.key);
    if (owners === undefined) this.byAddress.set(address, se.key);
    else if (typeof owners === 'string') this.byAddress.set(address, [owners, se.key]);
    else owners.push(se.key);
    if (count > 0) return key;
    this.endpointNames++;
    changed?.add(endpointName(address, se.base));
    changed?.add(reverseName(address));
    return key;
  }

  /** Takes an endpoint out of its service, and its name and PTR once no endpoint of the service has its address. */
  private removeEndpoint(ep: Endpoint, changed: Set<string> | null): string {
    const key = endpointKey(ep);
    this.endpoints.delete(ep.id);
    const se = this.byService.get(key);
    const at = se ? se.eps.findIndex((e) => e.id === ep.id) : -1;
    if (!se || at < 0) return key;
    se.eps.splice(at, 1);
    const address = addressKey(ep.address);
    if (address === null) return key;
    const owners = this.byAddress.get(address);
    if (owners === se.key) this.byAddress.delete(address);
    else if (Array.isArray(owners)) {
      const i = owners.indexOf(se.key);
      if (i >= 0) owners.splice(i, 1);
      if (owners.length === 1) this.byAddress.set(address, owners[0]!);
    }
    if (countOf(this.byAddress.get(address), se.key) > 0) return key;
    this.endpointNames--;
    changed?.add(endpointName(address, se.base));
    changed?.add(reverseName(address));
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
    if (se && se.eps.length === 0) {
      this.byService.delete(key);
      this.bases.delete(se.base);
    }
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
    for (const ep of this.byService.get(key)?.eps ?? []) eps.push(ep);
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
      srv.srv.push({ weight: Math.min(65535, Math.max(1, Math.round(weight * factor))), port: ep.port, address: ep.address, base });
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

/** The records of several owners at one name, each value once. */
function merge(all: Iterable<RRsets>): RRsets {
  const m = rrsets();
  for (const rr of all) {
    for (const x of rr.a) if (!m.a.includes(x)) m.a.push(x);
    for (const x of rr.aaaa) if (!m.aaaa.includes(x)) m.aaaa.push(x);
    for (const x of rr.ptr) if (!m.ptr.includes(x)) m.ptr.push(x);
    for (const x of rr.ns) if (!m.ns.includes(x)) m.ns.push(x);
    m.srv.push(...rr.srv);
    m.soa ||= rr.soa;
  }
  return m;
}

/**
 * An endpoint address as the zone keys it, one key per address: IPv4 as written, IPv6 as eight
 * hex groups without leading zeros (what its endpoint name and PTR spell); null for neither.
 */
function addressKey(address: string): string | null {
  if (isIPv4(address)) return address;
  if (isIPv6(address)) return expandIPv6(address).map((g) => g.toString(16)).join(':');
  return null;
}

/** An IPv6 address key (eight groups) the way RFC 5952 writes it: the longest run of zero groups (two or more) as `::`. */
function compressIPv6(key: string): string {
  const g = key.split(':');
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === '0') j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  if (best < 0) return key;
  return `${g.slice(0, best).join(':')}::${g.slice(best + bestLen).join(':')}`;
}

/** The address key an endpoint name's first label spells (`10-42-0-5`, `fd00-0-0-0-0-0-0-1`), or null. */
function labelAddress(label: string): string | null {
  const parts = label.split('-');
  if (parts.length === 4) {
    const a = parts.join('.');
    return isIPv4(a) ? a : null;
  }
  if (parts.length !== 8) return null;
  for (const p of parts) if (!/^(0|[1-9a-f][0-9a-f]{0,3})$/.test(p)) return null;
  return parts.join(':');
}

/** The address key a reverse name (`5.0.42.10.in-addr.arpa`, 32 nibbles `.ip6.arpa`) spells, or null. */
function reverseAddress(name: string): string | null {
  if (name.endsWith('.in-addr.arpa')) {
    const parts = name.slice(0, -'.in-addr.arpa'.length).split('.');
    if (parts.length !== 4) return null;
    const a = parts.reverse().join('.');
    return isIPv4(a) ? a : null;
  }
  if (!name.endsWith('.ip6.arpa')) return null;
  const nibbles = name.slice(0, -'.ip6.arpa'.length).split('.');
  if (nibbles.length !== 32) return null;
  const groups: string[] = [];
  for (let g = 0; g < 8; g++) {
    let v = 0;
    for (let i = 0; i < 4; i++) {
      const n = nibbles[31 - (g * 4 + i)]!;
      if (!/^[0-9a-f]$/.test(n)) return null;
      v = v * 16 + parseInt(n, 16);
    }
    groups.push(v.toString(16));
  }
  return groups.join(':');
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
