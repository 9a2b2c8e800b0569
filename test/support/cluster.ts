// Several Corral hosts on one machine: each host is a netns joined to an underlay bridge
// (10.99.<n>.0/24, in a netns of its own), etcd members live on that underlay, and every host
// runs `corral agent --registry etcd://…` with wireguard-go under a distinct interface name
// (wireguard-go's UAPI socket directory is not per-netns). Containers are attached by the real
// corral-cni. With etcdAuth, `corral etcd-init` makes a user per host and turns etcd's auth on
// before the agents start, each with its own user. Everything is removed afterwards, also when a
// test fails.
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect } from 'node:net';
import { join } from 'node:path';
import type { CniResult } from '../../api/cni.js';
import { corralCni } from './cni.js';
import { corral, startDaemon, type CliResult, type Daemon } from './corral.js';
import { startEtcd, type EtcdCluster } from './etcd.js';
import { Netns, run } from './netns.js';
import { makePki, type TestPki } from './tls.js';
import { until } from './until.js';

export interface TestHost {
  name: string;
  ns: Netns;
  address: string;          // underlay address
  ifname: string;           // WireGuard interface
  stateDir: string;
  /** The agent's run dir, the same across restarts like /run/corral (socket, wireguard-go's pid file). */
  runDir: string;
  agent: Daemon | undefined;
  /** (Re)starts the agent with the same state dir and run dir (its socket path stays). */
  start(extraArgs?: string[]): Promise<Daemon>;
  /** Kills the agent and its wireguard-go: the host is gone. */
  kill(): Promise<void>;
}

export interface TestContainer { id: string; ns: Netns; address: string; host: TestHost; result: CniResult }

export interface Cluster {
  id: string;
  underlay: Netns;
  /** With rootLink: this machine's own address on the underlay (a veth into the underlay's bridge), from which the test reaches etcd. */
  rootAddress: string | undefined;
  etcd: EtcdCluster;
  /** With etcdTls: the CA, etcd's and the agents' certificates the cluster runs with. */
  pki: TestPki | undefined;
  hosts: TestHost[];
  containers: TestContainer[];
  /** With etcdAuth: root's password file, the dir of <user>.password files, and etcd-init's result. */
  auth: { rootPasswordFile: string; dir: string; init: CliResult } | undefined;
  /** Attaches a new container netns on host through corral-cni ADD. */
  container(host: TestHost): Promise<TestContainer>;
  addHost(): Promise<TestHost>;
  close(): Promise<void>;
}

let subnetSeq = 0;

export async function startCluster(o: { hosts: number; etcdMembers?: number; leaseTtlS?: number; agentArgs?: string[]; etcdTls?: boolean; etcdAuth?: boolean; etcdArgs?: string[]; rootLink?: boolean }): Promise<Cluster> {
  const id = randomBytes(2).toString('hex');
  // One /24 per cluster in 10.99.0.0/16, so clusters of consecutive test files never overlap.
  const net = `10.99.${(process.pid + subnetSeq++) % 250}`;
  const underlay = await Netns.create(`corral-ul-${id}`);
  const hosts: TestHost[] = [];
  const containers: TestContainer[] = [];
  let etcd: EtcdCluster | undefined;
  let pki: TestPki | undefined;
  let auth: Cluster['auth'];
  const tlsArgs = () => (pki ? ['--etcd-ca', pki.ca, '--etcd-cert', pki.clientCert, '--etcd-key', pki.clientKey] : []);
  const authArgs = (name: string) => (auth ? ['--etcd-user', name, '--etcd-password-file', join(auth.dir, `${name}.password`)] : []);
  let rootAddress: string | undefined;
  const cluster: Cluster = {
    id, underlay, hosts, containers,
    get auth() {
      return auth;
    },
    get rootAddress() {
      return rootAddress;
    },
    get pki() {
      return pki;
    },
    get etcd() {
      return etcd!;
    },
    async container(host) {
      const cid = `c${randomBytes(6).toString('hex')}`;
      const ns = await Netns.create(`corral-c-${id}`);
      const r = await corralCni('ADD', { containerId: cid, netns: ns.path, ifname: 'eth0' }, { cniVersion: '1.1.0', name: 'corral', type: 'corral', agentSocket: host.agent!.socket, ipMasq: false });
      if (r.code !== 0) {
        await ns.delete();
        throw new Error(`corral-cni ADD on ${host.name} failed (${r.code}): ${r.stdout} ${r.stderr}`);
      }
      const address = String(r.out.ips[0].address).split('/')[0]!;
      const c = { id: cid, ns, address, host, result: r.out as CniResult };
      containers.push(c);
      return c;
    },
    async addHost() {
      const i = hosts.length + 1;
      const name = `h${i}`;
      const ns = await Netns.create(`corral-${name}-${id}`);
      const address = `${net}.${10 + i}`;
      const v = `u${id}${name}`;
      await run('ip', ['link', 'add', v, 'type', 'veth', 'peer', 'name', `${v}p`]);
      await run('ip', ['link', 'set', `${v}p`, 'netns', ns.name]);
      await run('ip', ['link', 'set', v, 'netns', underlay.name]);
      await underlay.exec('ip', ['link', 'set', v, 'master', 'br0', 'up']);
      await ns.exec('ip', ['link', 'set', `${v}p`, 'name', 'eth0']);
      await ns.exec('ip', ['addr', 'add', `${address}/24`, 'dev', 'eth0']);
      await ns.exec('ip', ['link', 'set', 'eth0', 'up']);
      const stateDir = mkdtempSync(join(tmpdir(), `corral-${name}-`));
      const runDir = mkdtempSync(join(tmpdir(), `corral-run-${name}-`));
      const ifname = `wg${id}${name}`;
      const h: TestHost = {
        name, ns, address, ifname, stateDir, runDir, agent: undefined,
        async start(extra = []) {
          h.agent = await startDaemon('agent', {
            netns: ns.name, stateDir, runDir, nodeName: name,
            args: ['--registry', etcd!.spec, '--overlay', 'wireguard-go', '--wg-interface', ifname, '--underlay-address', address, '--lease-ttl', String(o.leaseTtlS ?? 10), ...tlsArgs(), ...authArgs(name), ...(o.agentArgs ?? []), ...extra],
          });
          return h.agent;
        },
        async kill() {
          // wireguard-go first, while the agent that started it lives to reap it: killed after
          // the agent it would be an orphan of PID 1, which in some sandboxes never reaps (zombies).
          const pid = wgPid(h);
          if (pid) {
            try {
              process.kill(pid, 'SIGKILL');
            } catch {
              // gone already
            }
            await until(`wireguard-go ${pid} reaped`, () => !existsSync(`/proc/${pid}`), { ms: 3000, everyMs: 100 }).catch(() => {});
          }
          await h.agent?.stop('SIGKILL');
          await ns.exec('ip', ['link', 'del', ifname]).catch(() => {});
          rmSync(`/var/run/wireguard/${ifname}.sock`, { force: true });
          rmSync(join(runDir, `wireguard-go-${ifname}.pid`), { force: true }); // the run dir outlives the agent: no stale pid
        },
      };
      hosts.push(h);
      return h;
    },
    async close() {
      for (const c of containers) {
        await corralCni('DEL', { containerId: c.id, netns: c.ns.path, ifname: 'eth0' }, { cniVersion: '1.1.0', name: 'corral', type: 'corral', agentSocket: c.host.agent?.socket ?? '/nonexistent' }).catch(() => {});
        await c.ns.delete();
      }
      for (const h of hosts) {
        await h.kill().catch(() => {});
        await h.ns.delete();
        rmSync(h.stateDir, { recursive: true, force: true });
        rmSync(h.runDir, { recursive: true, force: true });
      }
      await etcd?.stop();
      pki?.remove();
      if (auth) rmSync(join(auth.dir, '..'), { recursive: true, force: true });
      if (rootAddress) await run('ip', ['link', 'del', `u${id}root`]).catch(() => {});
      await underlay.delete();
    },
  };
  try {
    await underlay.exec('ip', ['link', 'add', 'br0', 'type', 'bridge']);
    await underlay.exec('ip', ['link', 'set', 'br0', 'up']);
    const members = o.etcdMembers ?? 1;
    for (let m = 0; m < members; m++) await underlay.exec('ip', ['addr', 'add', `${net}.${2 + m}/24`, 'dev', 'br0']);
    if (o.rootLink) {
      // The test process itself on the underlay (e.g. a fleet simulator writing to etcd): a veth
      // whose far end is on the bridge; it goes when the underlay namespace is deleted.
      const v = `u${id}root`;
      await run('ip', ['link', 'add', v, 'type', 'veth', 'peer', 'name', `${v}p`]);
      await run('ip', ['link', 'set', `${v}p`, 'netns', underlay.name]);
      await underlay.exec('ip', ['link', 'set', `${v}p`, 'master', 'br0', 'up']);
      rootAddress = `${net}.250`;
      await run('ip', ['addr', 'add', `${rootAddress}/24`, 'dev', v]);
      await run('ip', ['link', 'set', v, 'up']);
    }
    const etcdHosts = Array.from({ length: members }, (_, m) => ({ address: `${net}.${2 + m}`, netns: underlay.name }));
    if (o.etcdTls) pki = await makePki(etcdHosts.map((h) => h.address));
    etcd = await startEtcd({ hosts: etcdHosts, args: o.etcdArgs, tls: pki && { ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, clientCert: pki.clientCert, clientKey: pki.clientKey } });
    for (let i = 0; i < o.hosts; i++) await cluster.addHost();
    if (o.etcdAuth) {
      const dir = mkdtempSync(join(tmpdir(), 'corral-etcd-auth-'));
      const rootPasswordFile = join(dir, 'root.password');
      writeFileSync(rootPasswordFile, `root-${randomBytes(8).toString('hex')}\n`, { mode: 0o600 });
      const init = await corral(['etcd-init', '--registry', etcd.spec, ...tlsArgs(), '--etcd-password-file', rootPasswordFile, '--hosts', hosts.map((h) => h.name).join(','), '--password-dir', join(dir, 'users'), '--enable-auth'], { netns: underlay.name });
      auth = { rootPasswordFile, dir: join(dir, 'users'), init };
      if (init.code !== 0) throw new Error(`corral etcd-init failed (${init.code}): ${init.stdout}${init.stderr}`);
    }
    for (const h of hosts) await h.start();
  } catch (err) {
    await cluster.close();
    throw err;
  }
  return cluster;
}

/** wireguard-go's pid, from the file the agent writes in its run dir. */
export function wgPid(h: TestHost): number | undefined {
  if (!h.agent) return undefined;
  try {
    return Number(readFileSync(join(h.agent.runDir, `wireguard-go-${h.ifname}.pid`), 'utf8').trim()) || undefined;
  } catch {
    return undefined;
  }
}

/** wireguard-go's own view (UAPI get=1) of a host's interface: peers, keys, handshakes. */
export function wgDump(h: TestHost): Promise<string> {
  return new Promise((res, rej) => {
    const sock = connect(`/var/run/wireguard/${h.ifname}.sock`);
    let buf = '';
    const t = setTimeout(() => sock.destroy(new Error('UAPI timeout')), 2000);
    sock.on('connect', () => sock.write('get=1\n\n'));
    sock.on('data', (d) => {
      buf += d;
      if (/errno=-?\d+\n\n/.test(buf)) {
        clearTimeout(t);
        sock.end();
        res(buf);
      }
    });
    sock.on('error', (e) => {
      clearTimeout(t);
      rej(e);
    });
  });
}

/** Number of peers wireguard-go holds on a host (0 when it does not answer). */
export async function wgPeers(h: TestHost): Promise<number> {
  return ((await wgDump(h).catch(() => '')).match(/^public_key=/gm) ?? []).length;
}

/**
 * Waits until `from` pings `to` over the overlay. The mesh forms in about a second; the wait is
 * long only so a loaded machine does not fail it. On timeout the error carries what explains it:
 * every host's agent log tail and wireguard-go's peers.
 */
export async function reaches(c: Cluster, from: TestContainer | TestHost, to: string, what: string, ms = 30_000): Promise<void> {
  try {
    await until(what, () => pings(from, to), { ms, everyMs: 100 });
  } catch (err) {
    const parts: string[] = [(err as Error).message];
    for (const h of c.hosts) {
      const dump = await wgDump(h).catch((e: Error) => `(no answer: ${e.message})`);
      const peers = dump.split('\n').filter((l) => /^(public_key|endpoint|allowed_ip|last_handshake_time_sec)=/.test(l)).join(' ');
      parts.push(`--- ${h.name} wireguard-go: ${peers}`, `--- ${h.name} agent log (tail):`, (h.agent?.logs() ?? '').split('\n').slice(-25).join('\n'));
    }
    throw new Error(parts.join('\n'));
  }
}

/** One ping from a container to an address; true when answered. */
export async function pings(from: TestContainer | TestHost, to: string, waitS = 1): Promise<boolean> {
  try {
    await from.ns.exec('ping', ['-c', '1', '-W', String(waitS), to], { timeoutMs: (waitS + 2) * 1000 });
    return true;
  } catch {
    return false;
  }
}
