// The agent's typed view of the registry: keys <-> records, and registry batches turned into
// the WatchEvents that DNS, LB and the CLI consume. One revision per batch, as the registry made it.
//
// Every value is untrusted (another host, an operator's etcdctl, a bug may have written it):
// a record is served only if it passes its schema (api/records.ts), its key names it, and — for
// a host — the block it claims is leased to it. A record that fails is not served (a valid one it
// replaced is withdrawn) and reported once per key, not once per event.
import { IPv4CidrRange } from 'ip-num';
import type { Allocation, Endpoint, Host, HostStatus, Service, WatchEvent } from '../api/types.js';
import { emptyEvent, serviceKey } from '../api/types.js';
import { InvalidRecord, MAX_RECORD_BYTES, type RecordKind, RecordRules, writerOf } from '../api/records.js';
import type { KvBatch, RangeResult } from './registry/registry.js';

// The key layout gives each host a prefix of its own for everything it writes (its host record,
// status, block leases, allocations, endpoints), so etcd's role-based access can let a host's
// user write only there (SECURITY.md). Service records belong to the operator.
export const PREFIX = '/corral/';
export const EP = '/corral/endpoints/';
export const SVC = '/corral/services/';
export const HOST = '/corral/hosts/';
export const ALLOC = '/corral/allocations/';
export const BLOCK = '/corral/blocks/';
/** `corral upgrade`: one record per service upgrade, and each host's report of its part (agent/upgrade/). */
export const UPGRADE = '/corral/upgrades/';
export const UPGRADE_REPORT = '/corral/upgrade-reports/';
/** Host status reports: outside PREFIX, so no watch (agent, DNS, LB) receives them. */
export const STATUS = '/corral-status/';

export const keys = {
  endpoint: (node: string, id: string) => `${EP}${node}/${id}`,
  service: (ns: string, name: string) => SVC + serviceKey(ns, name),
  host: (name: string) => HOST + name,
  allocation: (node: string, address: string) => `${ALLOC}${node}/${address}`,
  block: (node: string, cidr: string) => `${BLOCK}${node}/${cidr.replace('/', '_')}`,
  status: (name: string) => STATUS + name,
};

/** The keys each host may write (exact keys and prefixes): what its etcd role grants. */
export function hostKeys(node: string): { keys: string[]; prefixes: string[] } {
  return { keys: [HOST + node, STATUS + node], prefixes: [`${EP}${node}/`, `${ALLOC}${node}/`, `${BLOCK}${node}/`, `${UPGRADE_REPORT}${node}/`] };
}

/** "<node>/<rest>" after a per-host prefix -> [node, rest] (node '' when the key has no "/"). */
function split(rest: string): [string, string] {
  const i = rest.indexOf('/');
  return i < 0 ? ['', rest] : [rest.slice(0, i), rest.slice(i + 1)];
}

/** A record the catalog does not serve, reported once per key. */
export interface Problem {
  key: string;
  field: string;
  problem: string;
  writer: string;
}

export type ProblemSink = (p: Problem) => void;

/** A block lease; first..last are its addresses as numbers (ip-num's contains() costs ~100 µs). */
interface BlockClaim { node: string; cidr: string; first: number; last: number; modRevision: number }

export class Catalog {
  revision = 0;
  readonly endpoints = new Map<string, Endpoint>();
  readonly services = new Map<string, Service>();   // "<ns>/<name>"
  /** Hosts whose record is valid and whose block is leased to them. */
  readonly hosts = new Map<string, Host>();
  readonly allocations = new Map<string, Allocation>(); // by address
  /** modRevision per key, for compare-and-swap transactions. */
  readonly modRevisions = new Map<string, number>();
  /** The key each served endpoint id (and allocated address) comes from: the first writer keeps it. */
  private readonly endpointKeys = new Map<string, string>();
  private readonly allocationKeys = new Map<string, string>();
  /** Endpoints by service ("<ns>/<name>"), so a change costs the size of its service, not of the registry. */
  private readonly byService = new Map<string, Map<string, Endpoint>>();
  /** Keys not served, and why (one entry per key). */
  readonly problems = new Map<string, Problem>();
  readonly rules: RecordRules;
  /** Valid host records, served or not (a host waits in here until its block lease is seen). */
  private readonly hostRecords = new Map<string, Host>();
  /** Block leases by key; the older of two overlapping leases wins. */
  private readonly blocks = new Map<string, BlockClaim>();
  /** Block -> node for the leases that won. */
  private granted = new Map<string, string>();

  constructor(clusterCidr = '10.42.0.0/16', private readonly onProblem: ProblemSink = () => {}) {
    this.rules = new RecordRules(clusterCidr);
  }

  load(r: RangeResult): WatchEvent {
    this.endpoints.clear();
    this.byService.clear();
    this.services.clear();
    this.hosts.clear();
    this.hostRecords.clear();
    this.blocks.clear();
    this.allocations.clear();
    this.endpointKeys.clear();
    this.allocationKeys.clear();
    this.modRevisions.clear();
    this.revision = r.revision;
    const scratch = emptyEvent(r.revision, true);
    for (const kv of r.kvs) {
      this.modRevisions.set(kv.key, kv.modRevision);
      this.put(kv.key, kv.value, kv.modRevision, scratch);
    }
    this.grantBlocks();
    this.reviewHosts(scratch);
    return this.snapshot();
  }

  apply(b: KvBatch): WatchEvent {
    const ev = emptyEvent(b.revision, false);
    let blocksChanged = false;
    let hostsChanged = false;
    for (const e of b.events) {
      if (e.key.startsWith(BLOCK)) blocksChanged = true;
      else if (e.key.startsWith(HOST)) hostsChanged = true;
      if (e.type === 'put') {
        this.modRevisions.set(e.key, b.revision);
        this.put(e.key, e.value, b.revision, ev);
      } else {
        this.modRevisions.delete(e.key);
        this.problems.delete(e.key);
        this.drop(e.key, ev);
      }
    }
    if (blocksChanged) this.grantBlocks();
    // O(hosts): only when hosts or blocks changed, so an endpoint change costs the same in any fleet.
    if (blocksChanged || hostsChanged) this.reviewHosts(ev);
    this.revision = b.revision;
    return ev;
  }

  snapshot(): WatchEvent {
    const ev = emptyEvent(this.revision, true);
    ev.endpoints = [...this.endpoints.values()];
    ev.services = [...this.services.values()];
    ev.hosts = [...this.hosts.values()];
    ev.allocations = [...this.allocations.values()];
    return ev;
  }

  /**
   * What changed since a past revision, as one delta at the current revision, given the keys the
   * registry held then: every record whose key was written or deleted since, as served now. A
   * consumer that applied everything up to that revision ends where this catalog is. null when a
   * block lease changed meanwhile: which hosts are served then depends on more than their own keys.
   */
  since(revision: number, keysThen: ReadonlySet<string>): WatchEvent | null {
    const touched: string[] = [];
    for (const [key, mod] of this.modRevisions) if (mod > revision) touched.push(key);
    for (const key of keysThen) if (!this.modRevisions.has(key)) touched.push(key);
    const ev = emptyEvent(this.revision, false);
    // By what a consumer keys on (endpoint id, service, host, address): two hosts' records of one id are one change.
    const seen = new Set<string>();
    const once = (id: string) => !seen.has(id) && !!seen.add(id);
    for (const key of touched) {
      if (key.startsWith(BLOCK)) return null;
      if (key.startsWith(EP)) {
        const id = split(key.slice(EP.length))[1];
        if (!once(`e${id}`)) continue;
        const ep = this.endpoints.get(id);
        if (ep) ev.endpoints.push(ep);
        else ev.deletedEndpoints.push(id);
      } else if (key.startsWith(SVC)) {
        const k = key.slice(SVC.length);
        if (!once(`s${k}`)) continue;
        const svc = this.services.get(k);
        if (svc) ev.services.push(svc);
        else ev.deletedServices.push(k);
      } else if (key.startsWith(HOST)) {
        const name = key.slice(HOST.length);
        if (!once(`h${name}`)) continue;
        const h = this.hosts.get(name);
        if (h) ev.hosts.push(h);
        else ev.deletedHosts.push(name);
      } else if (key.startsWith(ALLOC)) {
        const address = split(key.slice(ALLOC.length))[1];
        if (!once(`a${address}`)) continue;
        const a = this.allocations.get(address);
        if (a) ev.allocations.push(a);
        else ev.deletedAllocations.push(address);
      }
    }
    return ev;
  }

  endpointsOf(namespace: string, service: string): Endpoint[] {
    const eps = this.byService.get(serviceKey(namespace, service));
    return eps ? [...eps.values()] : [];
  }

  /**
   * Throws InvalidRecord when a value this host is about to write would not be served: writers
   * and readers share one schema, so a bug here is caught at the source, not on every other host.
   */
  check(key: string, value: string): void {
    const kind = kindOf(key);
    if (!kind || kind === 'block') return;
    if (value.length > MAX_RECORD_BYTES[kind]) throw new InvalidRecord('record', `${value.length} bytes, at most ${MAX_RECORD_BYTES[kind]} for a ${kind} record`);
    this.accept(kind, key, JSON.parse(value), 0, emptyEvent(0, false), false);
  }

  /**
   * A host's status report (`/corral-status/<name>`, read on demand: no watch carries reports),
   * through the same checks as every record; throws InvalidRecord.
   */
  status(key: string, value: string): HostStatus {
    if (value.length > MAX_RECORD_BYTES.status) throw new InvalidRecord('record', `${value.length} bytes, at most ${MAX_RECORD_BYTES.status} for a status record`);
    let parsed: unknown;
    try {
      parsed = JSON.parse(value);
    } catch {
      throw new InvalidRecord('record', 'not JSON');
    }
    const st = this.rules.status(parsed);
    named(keys.status(st.name), key, 'name');
    return st;
  }

  /** The node a block is leased to ('' when no lease names it). */
  blockOwner(block: string): string {
    return this.granted.get(block) ?? '';
  }

  private put(key: string, value: string, modRevision: number, ev: WatchEvent): void {
    const kind = kindOf(key);
    if (!kind) return;
    let parsed: unknown;
    try {
      if (value.length > MAX_RECORD_BYTES[kind]) throw new InvalidRecord('record', `${value.length} bytes, at most ${MAX_RECORD_BYTES[kind]} for a ${kind} record`);
      try {
        parsed = JSON.parse(value);
      } catch {
        throw new InvalidRecord('record', 'not JSON');
      }
      this.accept(kind, key, parsed, modRevision, ev);
      // A host's block problem is settled by reviewHosts, after the whole batch.
      if (this.problems.get(key)?.field !== 'block' || (kind !== 'host' && kind !== 'block')) this.problems.delete(key);
    } catch (err) {
      if (!(err instanceof InvalidRecord)) throw err;
      this.drop(key, ev);
      this.report({ key, field: err.field, problem: err.problem, writer: keyWriter(key) || writerOf(parsed) });
    }
  }

  /** Validates a parsed record for its key and, with store, serves it. */
  private accept(kind: RecordKind, key: string, parsed: unknown, modRevision: number, ev: WatchEvent, store = true): void {
    const r = this.rules;
    switch (kind) {
      case 'endpoint': {
        const ep = r.endpoint(parsed);
        const [node, id] = split(key.slice(EP.length));
        named(ep.node, node, 'node');
        named(ep.id, id, 'id');
        if (!store) return;
        const owner = this.endpointKeys.get(ep.id);
        if (owner !== undefined && owner !== key) throw new InvalidRecord('id', `"${ep.id.slice(0, 80)}" is already served from ${owner.slice(0, 120)}`);
        this.endpointKeys.set(ep.id, key);
        this.unindex(this.endpoints.get(ep.id));
        this.endpoints.set(ep.id, ep);
        const k = serviceKey(ep.namespace, ep.service);
        let eps = this.byService.get(k);
        if (!eps) this.byService.set(k, (eps = new Map()));
        eps.set(ep.id, ep);
        ev.endpoints.push(ep);
        return;
      }
      case 'service': {
        const s = r.service(parsed);
        named(serviceKey(s.namespace, s.name), key.slice(SVC.length), 'namespace/name');
        if (!store) return;
        this.services.set(serviceKey(s.namespace, s.name), s);
        ev.services.push(s);
        return;
      }
      case 'host': {
        const h = r.host(parsed);
        named(h.name, key.slice(HOST.length), 'name');
        if (!store) return;
        this.hostRecords.set(h.name, h);
        return; // served by reviewHosts once its block checks out
      }
      case 'allocation': {
        const a = r.allocation(parsed);
        const [node, address] = split(key.slice(ALLOC.length));
        named(a.node, node, 'node');
        named(a.address, address, 'address');
        if (!store) return;
        const owner = this.allocationKeys.get(a.address);
        if (owner !== undefined && owner !== key) throw new InvalidRecord('address', `${a.address} is already allocated by ${owner.slice(0, 120)}`);
        this.allocationKeys.set(a.address, key);
        this.allocations.set(a.address, a);
        ev.allocations.push(a);
        return;
      }
      case 'block': {
        const l = r.blockLease(parsed);
        const [node, block] = split(key.slice(BLOCK.length));
        named(l.node, node, 'node');
        named(l.block.replace('/', '_'), block, 'block');
        if (!store) return;
        const range = IPv4CidrRange.fromCidr(l.block);
        this.blocks.set(key, { node: l.node, cidr: range.toCidrString(), first: Number(range.getFirst().getValue()), last: Number(range.getLast().getValue()), modRevision });
        return;
      }
      default:
        return;
    }
  }

  /** Withdraws whatever the key served. */
  private drop(key: string, ev: WatchEvent): void {
    if (key.startsWith(EP)) {
      const id = split(key.slice(EP.length))[1];
      if (this.endpointKeys.get(id) !== key) return; // another host's record of that id is served
      this.endpointKeys.delete(id);
      const old = this.endpoints.get(id);
      if (old) {
        this.unindex(old);
        this.endpoints.delete(id);
        ev.deletedEndpoints.push(id);
      }
    } else if (key.startsWith(SVC)) {
      const k = key.slice(SVC.length);
      if (this.services.delete(k)) ev.deletedServices.push(k);
    } else if (key.startsWith(HOST)) {
      this.hostRecords.delete(key.slice(HOST.length));
    } else if (key.startsWith(ALLOC)) {
      const k = split(key.slice(ALLOC.length))[1];
      if (this.allocationKeys.get(k) !== key) return;
      this.allocationKeys.delete(k);
      if (this.allocations.delete(k)) ev.deletedAllocations.push(k);
    } else if (key.startsWith(BLOCK)) {
      this.blocks.delete(key);
    }
  }

  private unindex(ep: Endpoint | undefined): void {
    if (!ep) return;
    const k = serviceKey(ep.namespace, ep.service);
    const eps = this.byService.get(k);
    eps?.delete(ep.id);
    if (eps?.size === 0) this.byService.delete(k);
  }

  private report(p: Problem): void {
    const old = this.problems.get(p.key);
    this.problems.set(p.key, p);
    if (!old || old.field !== p.field || old.problem !== p.problem) this.onProblem(p);
  }

  /**
   * Overlapping block leases: the older (lower revision) wins; the other is reported. The winners
   * are disjoint, kept sorted by first address, so each claim is checked by one binary search:
   * a cluster of thousands of hosts (or a writer of thousands of leases) costs milliseconds here,
   * not seconds of a blocked event loop on every block change.
   */
  private grantBlocks(): void {
    const claims = [...this.blocks].sort((a, b) => a[1].modRevision - b[1].modRevision || (a[0] < b[0] ? -1 : 1));
    const won: BlockClaim[] = [];
    const granted = new Map<string, string>();
    for (const [key, c] of claims) {
      // The last winner starting at or before this claim's end is the only one that can reach it.
      let lo = 0;
      let hi = won.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (won[mid]!.first <= c.last) lo = mid + 1;
        else hi = mid;
      }
      const clash = lo > 0 && won[lo - 1]!.last >= c.first ? won[lo - 1] : undefined;
      if (clash) {
        this.report({ key, field: 'block', problem: `${c.cidr} overlaps ${clash.cidr}, leased earlier to ${clash.node}`, writer: c.node });
        continue;
      }
      if (this.problems.get(key)?.field === 'block') this.problems.delete(key);
      won.splice(lo, 0, c);
      granted.set(c.cidr, c.node);
    }
    this.granted = granted;
  }

  /** Serves the host records whose block is leased to them; withdraws the rest. */
  private reviewHosts(ev: WatchEvent): void {
    for (const [name, h] of this.hostRecords) {
      const key = HOST + name;
      const owner = h.block ? this.blockOwner(h.block) : name;
      if (owner !== name) {
        this.report({ key, field: 'block', problem: owner ? `${h.block} is leased to ${owner}` : `no lease names ${h.block}`, writer: name });
        if (this.hosts.delete(name)) ev.deletedHosts.push(name);
        continue;
      }
      if (this.problems.get(key)?.field === 'block') this.problems.delete(key);
      const cur = this.hosts.get(name);
      if (cur !== h) {
        this.hosts.set(name, h);
        if (!ev.snapshot) ev.hosts.push(h);
      }
    }
    for (const name of this.hosts.keys()) {
      if (!this.hostRecords.has(name)) {
        this.hosts.delete(name);
        ev.deletedHosts.push(name);
      }
    }
  }
}

function kindOf(key: string): RecordKind | undefined {
  if (key.startsWith(EP)) return 'endpoint';
  if (key.startsWith(SVC)) return 'service';
  if (key.startsWith(HOST)) return 'host';
  if (key.startsWith(ALLOC)) return 'allocation';
  if (key.startsWith(BLOCK)) return 'block';
  return undefined;
}

/** The host a key belongs to, from its per-host prefix ('' for service records). */
export function keyWriter(key: string): string {
  if (key.startsWith(HOST)) return key.slice(HOST.length);
  if (key.startsWith(STATUS)) return key.slice(STATUS.length);
  for (const p of [EP, ALLOC, BLOCK]) if (key.startsWith(p)) return split(key.slice(p.length))[0];
  return '';
}

function named(inRecord: string, inKey: string, field: string): void {
  if (inRecord !== inKey) throw new InvalidRecord(field, `"${inRecord.slice(0, 80)}" does not match its key ("${inKey.slice(0, 80)}")`);
}

/**
 * Deltas in revision order as one delta at the last revision: each record's last state (a
 * consumer applies deletions, then upserts, so a record ends in one list or the other).
 */
export function mergeEvents(evs: WatchEvent[]): WatchEvent {
  if (evs.length === 1) return evs[0]!;
  const out = emptyEvent(evs[evs.length - 1]!.revision, false);
  const eps = new Map<string, Endpoint | null>();
  const svcs = new Map<string, Service | null>();
  const hosts = new Map<string, Host | null>();
  const allocs = new Map<string, Allocation | null>();
  for (const ev of evs) {
    for (const id of ev.deletedEndpoints) eps.set(id, null);
    for (const ep of ev.endpoints) eps.set(ep.id, ep);
    for (const k of ev.deletedServices) svcs.set(k, null);
    for (const s of ev.services) svcs.set(serviceKey(s.namespace, s.name), s);
    for (const name of ev.deletedHosts) hosts.set(name, null);
    for (const h of ev.hosts) hosts.set(h.name, h);
    for (const a of ev.deletedAllocations) allocs.set(a, null);
    for (const a of ev.allocations) allocs.set(a.address, a);
  }
  const into = <T>(m: Map<string, T | null>, up: T[], del: string[]) => {
    for (const [k, v] of m) {
      if (v) up.push(v);
      else del.push(k);
    }
  };
  into(eps, out.endpoints, out.deletedEndpoints);
  into(svcs, out.services, out.deletedServices);
  into(hosts, out.hosts, out.deletedHosts);
  into(allocs, out.allocations, out.deletedAllocations);
  return out;
}
