// The agent's typed view of the registry: keys <-> records, and registry batches turned into
// the WatchEvents that DNS, LB and the CLI consume. One revision per batch, as the registry made it.
import type { Allocation, Endpoint, Host, Service, WatchEvent } from '../api/types.js';
import { emptyEvent, serviceKey } from '../api/types.js';
import type { KvBatch, RangeResult } from './registry/registry.js';

export const PREFIX = '/corral/';
const EP = '/corral/endpoints/';
const SVC = '/corral/services/';
const HOST = '/corral/hosts/';
const ALLOC = '/corral/allocations/';

export const keys = {
  endpoint: (id: string) => EP + id,
  service: (ns: string, name: string) => SVC + serviceKey(ns, name),
  host: (name: string) => HOST + name,
  allocation: (address: string) => ALLOC + address,
};

export class Catalog {
  revision = 0;
  readonly endpoints = new Map<string, Endpoint>();
  readonly services = new Map<string, Service>();   // "<ns>/<name>"
  readonly hosts = new Map<string, Host>();
  readonly allocations = new Map<string, Allocation>(); // by address
  /** modRevision per key, for compare-and-swap transactions. */
  readonly modRevisions = new Map<string, number>();

  load(r: RangeResult): WatchEvent {
    this.endpoints.clear();
    this.services.clear();
    this.hosts.clear();
    this.allocations.clear();
    this.modRevisions.clear();
    this.revision = r.revision;
    for (const kv of r.kvs) {
      this.modRevisions.set(kv.key, kv.modRevision);
      this.put(kv.key, kv.value);
    }
    return this.snapshot();
  }

  apply(b: KvBatch): WatchEvent {
    const ev = emptyEvent(b.revision, false);
    for (const e of b.events) {
      if (e.type === 'put') {
        this.modRevisions.set(e.key, b.revision);
        const rec = this.put(e.key, e.value);
        if (rec?.kind === 'endpoint') ev.endpoints.push(rec.value);
        else if (rec?.kind === 'service') ev.services.push(rec.value);
        else if (rec?.kind === 'host') ev.hosts.push(rec.value);
        else if (rec?.kind === 'allocation') ev.allocations.push(rec.value);
      } else {
        this.modRevisions.delete(e.key);
        if (e.key.startsWith(EP)) {
          const id = e.key.slice(EP.length);
          if (this.endpoints.delete(id)) ev.deletedEndpoints.push(id);
        } else if (e.key.startsWith(SVC)) {
          const k = e.key.slice(SVC.length);
          if (this.services.delete(k)) ev.deletedServices.push(k);
        } else if (e.key.startsWith(HOST)) {
          const k = e.key.slice(HOST.length);
          if (this.hosts.delete(k)) ev.deletedHosts.push(k);
        } else if (e.key.startsWith(ALLOC)) {
          const k = e.key.slice(ALLOC.length);
          if (this.allocations.delete(k)) ev.deletedAllocations.push(k);
        }
      }
    }
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

  endpointsOf(namespace: string, service: string): Endpoint[] {
    const out: Endpoint[] = [];
    for (const ep of this.endpoints.values()) if (ep.namespace === namespace && ep.service === service) out.push(ep);
    return out;
  }

  private put(key: string, value: string):
    | { kind: 'endpoint'; value: Endpoint }
    | { kind: 'service'; value: Service }
    | { kind: 'host'; value: Host }
    | { kind: 'allocation'; value: Allocation }
    | undefined {
    let parsed: unknown;
    try {
      parsed = JSON.parse(value);
    } catch {
      return undefined; // a record we cannot read is not served; the registry keeps it as it is
    }
    if (key.startsWith(EP)) {
      const ep = parsed as Endpoint;
      this.endpoints.set(key.slice(EP.length), ep);
      return { kind: 'endpoint', value: ep };
    }
    if (key.startsWith(SVC)) {
      const s = parsed as Service;
      this.services.set(key.slice(SVC.length), s);
      return { kind: 'service', value: s };
    }
    if (key.startsWith(HOST)) {
      const h = parsed as Host;
      this.hosts.set(key.slice(HOST.length), h);
      return { kind: 'host', value: h };
    }
    if (key.startsWith(ALLOC)) {
      const a = parsed as Allocation;
      this.allocations.set(key.slice(ALLOC.length), a);
      return { kind: 'allocation', value: a };
    }
    return undefined;
  }
}
