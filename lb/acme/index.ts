// Starting ACME for `corral lb` (lb/main.ts): the shared store (etcd when the cluster has one,
// else an embedded store of the LB's own in <state dir>/acme/registry) and the manager.
import { join } from 'node:path';
import type { Registry as PromRegistry } from 'prom-client';
import { registryFor } from '../../agent/registry/index.js';
import type { Registry } from '../../agent/registry/registry.js';
import type { Logger } from '../../api/log.js';
import type { AcmeOptions, DaemonOptions } from '../../api/options.js';
import type { RouteTable } from '../routes.js';
import { acmeDirs, makeAcmeDirs } from './files.js';
import { acmeHosts } from './hosts.js';
import { AcmeManager as Manager } from './manager.js';
import { AcmeStore } from './store.js';

export interface AcmeManager {
  wantFrom(routes: RouteTable): void;
  status(): ReturnType<Manager['status']>;
  close(): Promise<void>;
}

export async function startAcme(opts: DaemonOptions, o: AcmeOptions, metrics: PromRegistry, log: Logger, shared?: Registry): Promise<AcmeManager> {
  const dirs = acmeDirs(o.dir);
  makeAcmeDirs(dirs);
  const m = opts.mesh;
  const registry = shared ?? (opts.registry.startsWith('etcd://')
    ? registryFor(opts.registry, opts.stateDir, {
      leaseTtlS: m.leaseTtlS,
      tls: m.etcdCa ? { ca: m.etcdCa, cert: m.etcdCert || undefined, key: m.etcdKey || undefined } : undefined,
      auth: m.etcdUser ? { user: m.etcdUser, passwordFile: m.etcdPasswordFile } : undefined,
    })
    : registryFor('embedded', join(dirs.root, 'registry')));
  const manager = new Manager(o, dirs, new AcmeStore(registry, opts.nodeName), opts.nodeName, log, metrics);
  try {
    await manager.start();
  } catch (err) {
    await manager.close().catch(() => undefined);
    throw new Error(`ACME: cannot start (${(err as Error).message}); check --acme-directory, --acme-ca and the registry`);
  }
  return {
    wantFrom: (routes) => manager.want(acmeHosts(routes, o.allHosts, log)),
    status: () => manager.status(),
    close: () => manager.close(),
  };
}

export type { HostAcme } from './manager.js';
