// `corral switch | weight | rollback --registry etcd://…`: the operator's path when etcd's auth is
// on. Service records belong to the operator's etcd user (SECURITY.md), so the command writes
// the record itself, with the operator's credentials, by the same rules and compare-and-swap as
// the agent does (agent/color-changes.ts), instead of asking a host's agent, whose user may not.
// commands.ts loads this module only when --registry is given (it loads the etcd client).
import { logFormat, makeLogger } from '../api/log.js';
import type { ServiceReply } from '../api/types.js';
import { Catalog, PREFIX } from '../agent/catalog.js';
import { ColorChanges } from '../agent/color-changes.js';
import { EtcdRegistry, parseEtcdSpec } from '../agent/registry/etcd.js';
import { logFormatFlag } from './daemons.js';
import { type Parsed, UsageError } from './flags.js';


/** Runs one color change against etcd directly, with the credentials given by flags. */
export async function colorChangeInEtcd(p: Parsed, change: (c: ColorChanges) => Promise<ServiceReply>): Promise<ServiceReply> {
  const f = p.flags;
  if (!f.get('etcd-user') !== !f.get('etcd-password-file')) throw new UsageError('--etcd-user and --etcd-password-file go together');
  const registry = new EtcdRegistry({
    endpoints: parseEtcdSpec(f.get('registry')!),
    tls: f.get('etcd-ca') ? { ca: f.get('etcd-ca')!, cert: f.get('etcd-cert'), key: f.get('etcd-key') } : undefined,
    auth: f.get('etcd-user') ? { user: f.get('etcd-user')!, passwordFile: f.get('etcd-password-file')! } : undefined,
  });
  await registry.open();
  try {
    const catalog = new Catalog();
    catalog.load(await registry.range(PREFIX));
    return await change(new ColorChanges(registry, catalog, (ops, compares) => registry.txn(ops, compares), makeLogger('corral', 'warn', logFormat(logFormatFlag(p)))));
  } finally {
    await registry.close();
  }
}
