// Real etcd (Debian's etcd-server, 3.4) for tests: one member or a cluster of three, each with its
// own data dir, on loopback or on addresses inside a test netns. Stopped and removed afterwards.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './corral.js';

export interface EtcdMember {
  name: string;
  clientUrl: string;   // http://ADDR:PORT
  child: ChildProcess | undefined;
  logs(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
  start(): Promise<void>;
}

export interface EtcdCluster {
  members: EtcdMember[];
  /** "etcd://a:p,b:p" for --registry. */
  spec: string;
  endpoints: string[];
  stop(): Promise<void>;
}

interface MemberPlan { name: string; host: string; clientPort: number; peerPort: number; netns?: string; tls?: EtcdTestTls; args?: string[] }

/** Client TLS for etcd: its certificate, and the client certificate it demands (--client-cert-auth). */
export interface EtcdTestTls { ca: string; cert: string; key: string; clientCert: string; clientKey: string }

/** Starts `size` members (on 127.0.0.1, or on the given host addresses, each optionally in a netns). */
/** `args`: more etcd flags for every member (e.g. `--auth-token-ttl`). */
export async function startEtcd(o: { size?: number; hosts?: Array<{ address: string; netns?: string }>; tls?: EtcdTestTls; args?: string[] } = {}): Promise<EtcdCluster> {
  const size = o.hosts?.length ?? o.size ?? 1;
  const plans: MemberPlan[] = [];
  for (let i = 0; i < size; i++) {
    const h = o.hosts?.[i];
    plans.push({ name: `m${i}`, host: h?.address ?? '127.0.0.1', clientPort: h ? 2379 : await freePort(), peerPort: h ? 2380 : await freePort(), netns: h?.netns, tls: o.tls, args: o.args });
  }
  const dir = mkdtempSync(join(tmpdir(), 'corral-etcd-'));
  const initial = plans.map((p) => `${p.name}=http://${p.host}:${p.peerPort}`).join(',');
  const members: EtcdMember[] = plans.map((p) => member(p, join(dir, p.name), initial));
  const cluster: EtcdCluster = {
    members,
    endpoints: plans.map((p) => `${p.host}:${p.clientPort}`),
    spec: `etcd://${plans.map((p) => `${p.host}:${p.clientPort}`).join(',')}`,
    async stop() {
      await Promise.all(members.map((m) => m.stop('SIGKILL')));
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await Promise.all(members.map((m) => m.start()));
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}

function member(p: MemberPlan, dataDir: string, initial: string): EtcdMember {
  let log = '';
  const m: EtcdMember = {
    name: p.name,
    clientUrl: `${p.tls ? 'https' : 'http'}://${p.host}:${p.clientPort}`,
    child: undefined,
    logs: () => log,
    async start() {
      const args = [
        '--name', p.name, '--data-dir', dataDir,
        '--listen-client-urls', m.clientUrl, '--advertise-client-urls', m.clientUrl,
        '--listen-peer-urls', `http://${p.host}:${p.peerPort}`, '--initial-advertise-peer-urls', `http://${p.host}:${p.peerPort}`,
        '--initial-cluster', initial, '--initial-cluster-state', 'new', '--initial-cluster-token', 'corral-test',
        '--heartbeat-interval', '50', '--election-timeout', '500', '--log-level', 'warn', '--logger', 'zap',
        '--snapshot-count', '100000', '--quota-backend-bytes', String(256 * 1024 * 1024),
        ...(p.tls ? ['--cert-file', p.tls.cert, '--key-file', p.tls.key, '--trusted-ca-file', p.tls.ca, '--client-cert-auth'] : []),
        ...(p.args ?? []),
      ];
      const child = p.netns ? spawn('nsenter', [`--net=/run/netns/${p.netns}`, 'etcd', ...args], { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn('etcd', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      m.child = child;
      child.stdout!.on('data', (d: Buffer) => (log += d));
      child.stderr!.on('data', (d: Buffer) => (log += d));
      const deadline = Date.now() + 20_000;
      for (;;) {
        if (child.exitCode !== null) throw new Error(`etcd ${p.name} exited with ${child.exitCode}:\n${log}`);
        if (await healthy(m.clientUrl, p.netns, p.tls)) return;
        if (Date.now() > deadline) throw new Error(`etcd ${p.name} not healthy within 20 s:\n${log}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async stop(signal = 'SIGTERM') {
      const child = m.child;
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill(signal);
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
  return m;
}

async function healthy(url: string, netns?: string, tls?: EtcdTestTls): Promise<boolean> {
  // Members of a new cluster answer /health only once a leader exists: start them together.
  const args = ['-sf', '-m', '1', ...(tls ? ['--cacert', tls.ca, '--cert', tls.clientCert, '--key', tls.clientKey] : []), `${url}/health`];
  const r = await new Promise<string>((res) => {
    const c = netns ? spawn('ip', ['netns', 'exec', netns, 'curl', ...args]) : spawn('curl', args);
    let out = '';
    c.stdout!.on('data', (d: Buffer) => (out += d));
    c.once('close', () => res(out));
  });
  return r.includes('"true"');
}
