// The EndpointSink over the registry: what Docker, `corral register`, health checks and CNI say
// about this node's endpoints becomes registry writes. Endpoints are ephemeral (on this host's
// lease); a stopping one drains (marked, then removed after its drain time); a service seen for
// the first time gets its record in the same revision, unless etcd says service records are not
// this host's to write (its auth on: they belong to the operator), then it serves every color
// present until an operator sets its colors.
import type { Logger } from '../api/log.js';
import type { Endpoint, Service } from '../api/types.js';
import { serviceKey } from '../api/types.js';
import { type Catalog, keys } from './catalog.js';
import { initialService } from './colors.js';
import { PermissionDenied, type Compare, type TxnOp } from './registry/registry.js';
import type { EndpointSink } from './sink.js';

/** A registry transaction whose result the catalog has applied when it resolves (null: a compare failed). */
export type Commit = (ops: TxnOp[], compares?: Compare[]) => Promise<number | null>;

export class EndpointWriter implements EndpointSink {
  private readonly drainTimers = new Map<string, NodeJS.Timeout>();
  /** etcd refused this host's user a service record once: it does not try again. */
  private servicesDenied = false;

  constructor(private readonly catalog: Catalog, private readonly node: string, private readonly commit: Commit, private readonly log: Logger) {}

  close(): void {
    for (const t of this.drainTimers.values()) clearTimeout(t);
    this.drainTimers.clear();
  }

  async sync(origin: string, endpoints: Endpoint[]): Promise<void> {
    const want = new Map(endpoints.map((e) => [e.id, e]));
    const ops: TxnOp[] = [];
    for (const ep of this.catalog.endpoints.values()) {
      if (ep.node === this.node && ep.origin === origin && !want.has(ep.id)) ops.push({ delete: keys.endpoint(ep.node, ep.id) });
    }
    for (const ep of endpoints) {
      this.cancelDrain(ep.id);
      ops.push({ put: keys.endpoint(ep.node, ep.id), value: JSON.stringify(this.keepHealth(ep)), ephemeral: true });
    }
    await this.writeWithServices(ops, endpoints);
  }

  async upsert(endpoint: Endpoint): Promise<void> {
    this.cancelDrain(endpoint.id);
    await this.writeWithServices([{ put: keys.endpoint(endpoint.node, endpoint.id), value: JSON.stringify(this.keepHealth(endpoint)), ephemeral: true }], [endpoint]);
  }

  async remove(id: string, opts: { immediate?: boolean } = {}): Promise<void> {
    const ep = this.catalog.endpoints.get(id);
    if (!ep) return;
    if (opts.immediate || ep.drainMs <= 0) {
      this.cancelDrain(id);
      await this.commit([{ delete: keys.endpoint(ep.node, id) }]);
      return;
    }
    if (this.drainTimers.has(id)) return;
    await this.commit([{ put: keys.endpoint(ep.node, id), value: JSON.stringify({ ...ep, draining: true, healthReason: 'draining' }), ephemeral: true }]);
    const timer = setTimeout(() => {
      this.drainTimers.delete(id);
      if (this.catalog.endpoints.get(id)?.draining) {
        this.commit([{ delete: keys.endpoint(ep.node, id) }]).catch((err: Error) => this.log.error({ err, id }, 'cannot remove a drained endpoint'));
      }
    }, ep.drainMs);
    timer.unref();
    this.drainTimers.set(id, timer);
  }

  async setHealth(id: string, healthy: boolean, reason: string): Promise<void> {
    const ep = this.catalog.endpoints.get(id);
    if (!ep || ep.node !== this.node || ep.draining) return;
    if (ep.healthy === healthy && ep.healthReason === reason) return;
    this.log.info({ endpoint: id, service: ep.service, namespace: ep.namespace, healthy, reason }, 'endpoint health changed');
    await this.commit([{ put: keys.endpoint(ep.node, id), value: JSON.stringify({ ...ep, healthy, healthReason: reason }), ephemeral: true }]);
  }

  private cancelDrain(id: string): void {
    const t = this.drainTimers.get(id);
    if (t) clearTimeout(t);
    this.drainTimers.delete(id);
  }

  /** A re-registered endpoint with an active check keeps the health it had, not "waiting". */
  private keepHealth(ep: Endpoint): Endpoint {
    const old = this.catalog.endpoints.get(ep.id);
    if (!old || !ep.healthCheck || !old.healthCheck) return ep;
    return { ...ep, healthy: old.healthy, healthReason: old.healthReason };
  }

  /** Writes ops in one revision, creating the service record of any service seen for the first time. */
  private async writeWithServices(ops: TxnOp[], endpoints: Endpoint[]): Promise<void> {
    const fresh = new Map<string, Service>();
    for (const ep of endpoints) {
      const k = serviceKey(ep.namespace, ep.service);
      if (!this.catalog.services.has(k) && !fresh.has(k)) fresh.set(k, initialService(ep.namespace, ep.service, ep.color));
    }
    if (fresh.size === 0 || this.servicesDenied) {
      await this.commit(ops);
      return;
    }
    const svcOps: TxnOp[] = [...fresh.values()].map((s) => ({ put: keys.service(s.namespace, s.name), value: JSON.stringify(s) }));
    const compares = [...fresh.values()].map((s) => ({ key: keys.service(s.namespace, s.name), modRevision: 0 }));
    try {
      if ((await this.commit([...ops, ...svcOps], compares)) !== null) return;
    } catch (err) {
      if (!(err instanceof PermissionDenied)) throw err;
      this.servicesDenied = true;
    }
    await this.commit(ops);
  }
}
