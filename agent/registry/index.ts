// Chooses the registry implementation from --registry.
import { EmbeddedRegistry, type RegistryLog } from './embedded.js';
import { EtcdRegistry, parseEtcdSpec, type EtcdAuth, type EtcdTls } from './etcd.js';
import type { Registry } from './registry.js';
import { RegistryError } from './registry.js';

export interface RegistryExtras {
  /** --etcd-ca/--etcd-cert/--etcd-key: TLS to etcd when the CA is given. */
  tls?: EtcdTls;
  /** --etcd-user/--etcd-password-file: etcd password authentication. */
  auth?: EtcdAuth;
  /** --lease-ttl: seconds a dead host's records outlive it. */
  leaseTtlS?: number;
  /** Embedded: where it reports a migration or a torn record dropped at open (default: its own logger on stderr). */
  log?: RegistryLog;
}

export function registryFor(spec: string, stateDir: string, extras: RegistryExtras = {}): Registry {
  if (spec === 'embedded' || spec === '') return new EmbeddedRegistry(stateDir, { log: extras.log });
  if (spec.startsWith('etcd://')) return new EtcdRegistry({ endpoints: parseEtcdSpec(spec), tls: extras.tls, auth: extras.auth, leaseTtlS: extras.leaseTtlS });
  throw new RegistryError(`--registry "${spec}" is not understood: use "embedded" or "etcd://host1:2379,host2:2379"`);
}
