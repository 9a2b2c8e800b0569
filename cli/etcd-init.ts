// `corral etcd-init`: etcd's users and roles for a Corral cluster (agent/registry/etcd-roles.ts),
// made with root's credentials; each host's and the operator's password is read from, or
// generated into, <password dir>/<user>.password (mode 600). Run again, it changes nothing.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { IOptions } from 'etcd3';
import { type FlagSpec, type Parsed, UsageError } from './flags.js';

export const ETCD_INIT_USAGE = 'etcd-init --registry etcd://HOST:PORT --etcd-password-file <root password file> --hosts h1,h2,... --password-dir DIR [--enable-auth]';

export const ETCD_INIT_FLAGS: FlagSpec[] = [
  { name: 'registry', help: 'etcd://h1:2379,h2:2379' },
  { name: 'etcd-ca', help: 'CA certificate (PEM); enables TLS to etcd' },
  { name: 'etcd-cert', help: 'client certificate (PEM)' },
  { name: 'etcd-key', help: 'client key (PEM)' },
  { name: 'etcd-user', help: 'the etcd user to act as (default root)' },
  { name: 'etcd-password-file', help: 'its password (root\'s: with auth still off, root is created with it)' },
  { name: 'hosts', help: 'comma-separated host names (each agent\'s --node-name): a user and a role corral-host-<host> each' },
  { name: 'operator-user', help: 'the operator\'s user, who may change service colors and weights (default corral-operator)' },
  { name: 'password-dir', help: 'where <user>.password files are read, or written (mode 600) when missing' },
  { name: 'enable-auth', boolean: true, help: 'turn etcd\'s authentication on afterwards' },
];

const NODE = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;

/** The password in dir/<user>.password, made (24 random bytes, base64url) when the file is missing. */
function passwordFor(dir: string, user: string, readPassword: (f: string) => string): { password: string; file: string; made: boolean } {
  const file = join(dir, `${user}.password`);
  if (existsSync(file)) return { password: readPassword(file), file, made: false };
  const password = randomBytes(24).toString('base64url');
  writeFileSync(file, password + '\n', { mode: 0o600, flag: 'wx' });
  return { password, file, made: true };
}

export async function runEtcdInit(p: Parsed): Promise<number> {
  // Loaded here, so other commands do not load the etcd client.
  const { Etcd3 } = await import('etcd3');
  const { parseEtcdSpec, readPassword, tlsCredentials } = await import('../agent/registry/etcd.js');
  const { applyRoles, ensureRoot } = await import('../agent/registry/etcd-roles.js');
  const f = p.flags;
  if (p.args.length) throw new UsageError(`usage: corral ${ETCD_INIT_USAGE}`);
  for (const need of ['registry', 'etcd-password-file', 'hosts', 'password-dir']) if (!f.get(need)) throw new UsageError(`--${need} is needed; usage: corral ${ETCD_INIT_USAGE}`);
  const endpoints = parseEtcdSpec(f.get('registry')!);
  const hosts = f.get('hosts')!.split(',').map((h) => h.trim()).filter(Boolean);
  const operator = f.get('operator-user') ?? 'corral-operator';
  for (const h of [...hosts, operator]) {
    if (!NODE.test(h)) throw new UsageError(`"${h}" is not a host name (letters, digits, ".", "_", "-")`);
    if (h === 'root') throw new UsageError('"root" is etcd\'s own administrator: name no host or operator root');
  }
  if (hosts.includes(operator)) throw new UsageError(`the operator user "${operator}" is also a host: give --operator-user another name`);
  const dir = f.get('password-dir')!;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const rootUser = f.get('etcd-user') ?? 'root';
  const rootPassword = readPassword(f.get('etcd-password-file')!);

  const base: IOptions = { hosts: endpoints.map((h) => `${f.has('etcd-ca') ? 'https' : 'http'}://${h}`), dialTimeout: 3000 };
  if (f.has('etcd-ca')) base.credentials = tlsCredentials({ ca: f.get('etcd-ca')!, cert: f.get('etcd-cert'), key: f.get('etcd-key') });
  // With auth off, etcd refuses to authenticate anyone: find out which it is without credentials.
  const anonymous = new Etcd3(base);
  const authOn = await anonymous.kv.range({ key: Buffer.from('/corral/'), limit: 1, keys_only: true }).then(() => false, (err: Error) => {
    if (/user name is empty|permission denied|invalid auth token|authentication/i.test(err.message)) return true;
    throw new Error(`cannot reach etcd at ${endpoints.join(',')}: ${err.message.replace(/\s*\n\s*/g, ' ')}`);
  }).finally(() => anonymous.close());
  const client = authOn ? new Etcd3({ ...base, auth: { username: rootUser, password: rootPassword } }) : new Etcd3(base);
  try {
    if (!authOn) await ensureRoot(client, rootPassword);
    const plan = { hosts: new Map<string, string>(), operator: { user: operator, password: '' } };
    const files: string[] = [];
    for (const user of [...hosts, operator]) {
      const pw = passwordFor(dir, user, readPassword);
      files.push(`${pw.made ? 'wrote' : 'kept'} ${pw.file}`);
      if (user === operator) plan.operator.password = pw.password;
      else plan.hosts.set(user, pw.password);
    }
    const lines = [...files, ...(await applyRoles(client, plan))];
    if (authOn) lines.push('etcd authentication was already on');
    else if (p.bools.has('enable-auth')) {
      await client.auth.authEnable({});
      lines.push('etcd authentication is now on');
    } else lines.push('etcd authentication is still off: run again with --enable-auth to turn it on');
    process.stdout.write(lines.join('\n') + '\n');
    return 0;
  } finally {
    client.close();
  }
}
