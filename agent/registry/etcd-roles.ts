// Who may write what in etcd when its auth is on (SECURITY.md): one role per host, allowed only
// that host's keys (agent/catalog.ts hostKeys), a read role every agent needs for its watch, and
// an operator role that owns service records (colors and weights). `corral etcd-init` applies
// this plan; applying it twice changes nothing but passwords given anew.
import { Etcd3, EtcdRoleExistsError, EtcdUserExistsError, type IPermissionRequest, Range } from 'etcd3';
import { hostKeys, STATUS, SVC, PREFIX } from '../catalog.js';
import { COMPACTOR_KEY } from './compaction.js';

export const READER_ROLE = 'corral-reader';
export const OPERATOR_ROLE = 'corral-operator';
export const hostRole = (host: string) => `corral-host-${host}`;

/** What every agent reads: the records under /corral/ (its watch), status reports, the compactor post. */
const READ: IPermissionRequest[] = [PREFIX, STATUS, COMPACTOR_KEY].map((p) => ({ permission: 'Read', range: Range.prefix(p) }));

/** A host's own keys; and the compactor post, which any agent may hold (compacting needs no more in etcd 3.4). */
export function hostPermissions(host: string): IPermissionRequest[] {
  const own = hostKeys(host);
  return [
    ...own.keys.map((k) => ({ permission: 'Readwrite' as const, range: new Range(k) })),
    ...own.prefixes.map((p) => ({ permission: 'Readwrite' as const, range: Range.prefix(p) })),
    { permission: 'Readwrite', range: new Range(COMPACTOR_KEY) },
    // The LBs' shared ACME state (lb/acme/store.ts): any host's LB may order any route's certificate.
    { permission: 'Readwrite', range: Range.prefix('/corral-acme/') },
  ];
}

export const OPERATOR_PERMISSIONS: IPermissionRequest[] = [{ permission: 'Readwrite', range: Range.prefix(SVC) }];

export interface RolePlan {
  /** user name -> password, for each host (the user is the host's name, as --node-name). */
  hosts: Map<string, string>;
  /** The operator's user and password. */
  operator: { user: string; password: string };
}

/** One line per change made (or confirmed), for the command's output. */
export async function applyRoles(client: Etcd3, plan: RolePlan): Promise<string[]> {
  const lines: string[] = [];
  const role = async (name: string, perms: IPermissionRequest[]) => {
    await client.role(name).create().catch((err: Error) => {
      if (!(err instanceof EtcdRoleExistsError)) throw err;
    });
    await client.role(name).grant(perms);
  };
  const user = async (name: string, password: string, roles: string[]) => {
    let made = true;
    await client.user(name).create(password).catch(async (err: Error) => {
      if (!(err instanceof EtcdUserExistsError)) throw err;
      made = false;
      await client.user(name).setPassword(password);
    });
    for (const r of roles) await client.user(name).addRole(r);
    lines.push(`${made ? 'created' : 'updated'} user ${name} with roles ${roles.join(', ')}`);
  };
  await role(READER_ROLE, READ);
  await role(OPERATOR_ROLE, OPERATOR_PERMISSIONS);
  for (const [host, password] of plan.hosts) {
    await role(hostRole(host), hostPermissions(host));
    await user(host, password, [hostRole(host), READER_ROLE]);
  }
  await user(plan.operator.user, plan.operator.password, [OPERATOR_ROLE, READER_ROLE]);
  return lines;
}

/** etcd needs a root user with the root role before auth can be enabled. */
export async function ensureRoot(client: Etcd3, password: string): Promise<void> {
  await client.role('root').create().catch((err: Error) => {
    if (!(err instanceof EtcdRoleExistsError)) throw err;
  });
  await client.user('root').create(password).catch((err: Error) => {
    if (!(err instanceof EtcdUserExistsError)) throw err;
  });
  await client.user('root').addRole('root');
}
