// `corral switch | weight | rollback`: a read-modify-write of one service record, guarded by its
// revision, as one registry revision (so DNS and every LB change together). The record read back
// is checked like any other; the rules of each change are in colors.ts.
import type { Logger } from '../api/log.js';
import type { Endpoint, RollbackRequest, Service, ServiceReply, SwitchRequest, WeightRequest } from '../api/types.js';
import { DEFAULT_NAMESPACE } from '../api/types.js';
import { NotFound } from './api.js';
import { type Catalog, keys } from './catalog.js';
import { ColorError, initialService, rollback, setWeights, switchColor } from './colors.js';
import type { Commit } from './endpoint-writer.js';
import type { Registry } from './registry/registry.js';

export class ColorChanges {
  constructor(private readonly registry: Registry, private readonly catalog: Catalog, private readonly commit: Commit, private readonly log: Logger) {}

  switchColor(req: SwitchRequest): Promise<ServiceReply> {
    return this.change(req.namespace, req.service, (svc, eps) => switchColor(svc, eps, req.color));
  }

  weight(req: WeightRequest): Promise<ServiceReply> {
    return this.change(req.namespace, req.service, (svc, eps) => setWeights(svc, eps, req.weights));
  }

  rollback(req: RollbackRequest): Promise<ServiceReply> {
    return this.change(req.namespace, req.service, (svc) => rollback(svc));
  }

  private async change(nsIn: string, name: string, fn: (svc: Service, eps: Endpoint[]) => Service): Promise<ServiceReply> {
    const ns = nsIn || DEFAULT_NAMESPACE;
    const key = keys.service(ns, name);
    for (let attempt = 0; attempt < 5; attempt++) {
      const r = await this.registry.range(key);
      const kv = r.kvs.find((k) => k.key === key);
      const eps = this.catalog.endpointsOf(ns, name);
      if (!kv && eps.length === 0) throw new NotFound(`no service ${name} in namespace ${ns}; see \`corral services\``);
      const current = kv ? this.stored(key, kv.value) : initialService(ns, name, eps[0]!.color);
      const next = fn(current, eps);
      if (next === current) return { revision: r.revision, service: current };
      const rev = await this.commit([{ put: key, value: JSON.stringify(next) }], [{ key, modRevision: kv?.modRevision ?? 0 }]);
      if (rev !== null) {
        this.log.info({ service: name, namespace: ns, active: next.active, revision: rev }, 'service colors changed');
        return { revision: rev, service: next };
      }
    }
    throw new ColorError(`service ${name} in namespace ${ns} kept changing under this command; try again`);
  }

  /** The stored record, through its schema: a broken one is reported, not built upon. */
  private stored(key: string, value: string): Service {
    try {
      return this.catalog.rules.service(JSON.parse(value));
    } catch (err) {
      throw new ColorError(`the registry's record ${key} is not valid (${(err as Error).message}); fix or delete it (etcdctl del ${key}), then try again`);
    }
  }
}
