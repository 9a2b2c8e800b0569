// Chooses the registry implementation from --registry.
import { EmbeddedRegistry } from './embedded.js';
import type { Registry } from './registry.js';
import { RegistryError } from './registry.js';

export function registryFor(spec: string, stateDir: string): Registry {
  if (spec === 'embedded' || spec === '') return new EmbeddedRegistry(stateDir);
  if (spec.startsWith('etcd://')) {
    throw new RegistryError('--registry etcd:// is not available in this version yet (it comes with the multi-host overlay); use --registry embedded');
  }
  throw new RegistryError(`--registry "${spec}" is not understood: use "embedded" or "etcd://host1:2379,host2:2379"`);
}
