// Registry records and watch events for tests that feed DNS or the LB directly, without an agent.
import type { Endpoint, Service, WatchEvent } from '../../api/types.js';
import { emptyEvent } from '../../api/types.js';

/**
 * An endpoint record as `corral register web 127.0.0.1:8080` makes it (the agent's defaults:
 * path `/`, 10 s drain, no health check); any field can be overridden, and the id follows the
 * namespace, service, address and port unless given.
 */
export function endpoint(over: Partial<Endpoint> = {}): Endpoint {
  const service = over.service ?? 'web';
  const namespace = over.namespace ?? 'default';
  const address = over.address ?? '127.0.0.1';
  const port = over.port ?? 8080;
  return {
    id: `manual:${namespace}:${service}:${address}:${port}`,
    service, namespace, address, port,
    portName: 'http', color: 'default', weight: 1, healthy: true, healthReason: '', origin: 'manual', node: 'test',
    httpHosts: [], httpPath: '/', healthCheck: null, deploy: 'manual', drainMs: 10_000, containerId: '', containerName: '', draining: false,
    ...over,
  };
}

/** A service record: which colors serve, with their weights. */
export function service(name: string, active: Record<string, number>, namespace = 'default'): Service {
  return { namespace, name, active, previous: {} };
}

/** A delta (not a snapshot) at revision 1 unless `over` says otherwise. */
export function watchEvent(over: Partial<WatchEvent>): WatchEvent {
  return { ...emptyEvent(1, false), ...over };
}

export function snapshot(revision: number, endpoints: Endpoint[], services: Service[] = []): WatchEvent {
  return { ...emptyEvent(revision, true), endpoints, services };
}

export function delta(revision: number, p: Partial<Omit<WatchEvent, 'revision' | 'snapshot'>>): WatchEvent {
  return { ...emptyEvent(revision, false), ...p };
}
