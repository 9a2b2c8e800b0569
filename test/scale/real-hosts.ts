// The real part of the scale test bed (issue 11): three test hosts (netns on an underlay, as in
// test/support/cluster.ts), each with a real `corral agent` (wireguard-go), `corral dns` and
// `corral lb`, on a three-member etcd on that underlay, which the fleet simulator (fleet.ts) in
// this process reaches through a veth of its own. What users see is read on each host by a prober
// (prober.ts) inside its netns. A backend container on h1 (busybox httpd, attached by corral-cni)
// is what probe services point at, so h2's and h3's LBs route to it over the overlay; an nginx on
// h1's loopback is the backend wrk measures the LB against.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { agentClient, unary } from '../../api/grpc.js';
import type { EndpointReply, RegisterRequest } from '../../api/types.js';
import { startCluster, wgPeers, type Cluster, type TestContainer, type TestHost } from '../support/cluster.js';
import { childEnv, freePort, startDaemon, type Daemon } from '../support/corral.js';
import { cpuSeconds, rssBytes } from '../support/proc.js';
import { until } from '../support/until.js';
import { nginxConf } from '../bench/lb.js';

export interface ProbeResult { host: string; dnsMs: number; lbMs: number }

/** One prober per host, as a child in its netns. */
class Prober {
  private readonly waiting = new Map<string, (r: { dnsAt: number | null; lbAt: number | null }) => void>();
  private statsWaiter: ((s: ProbeStats) => void) | undefined;
  readonly ready: Promise<void>;

  constructor(readonly child: ChildProcess) {
    let ready: () => void;
    this.ready = new Promise((r) => (ready = r));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = JSON.parse(line) as { ready?: boolean; id?: string; dnsAt: number | null; lbAt: number | null; stats?: ProbeStats };
      if (m.ready) ready();
      else if (m.stats) this.statsWaiter?.(m.stats);
      else if (m.id) {
        this.waiting.get(m.id)?.(m);
        this.waiting.delete(m.id);
      }
    });
  }

  private send(o: unknown): void {
    this.child.stdin!.write(JSON.stringify(o) + '\n');
  }

  /** Resolves with when DNS answered and the LB routed (null: not within the prober's 20 s). */
  watch(id: string, name: string, addr: string, host: string): Promise<{ dnsAt: number | null; lbAt: number | null }> {
    return new Promise((res) => {
      this.waiting.set(id, res);
      this.send({ op: 'watch', id, name, addr, host });
    });
  }

  steady(name: string, addr: string, host: string): void {
    this.send({ op: 'steady', name, addr, host });
  }

  stats(): Promise<ProbeStats> {
    return new Promise((res) => {
      this.statsWaiter = res;
      this.send({ op: 'stats' });
    });
  }
}

export interface ProbeStats { dnsOk: number; dnsFail: number; lbOk: number; lbFail: number; lbWhy: Record<string, number> }

export interface RealHost {
  host: TestHost;
  dns: Daemon;
  lb: Daemon;
  prober: Prober;
}

export class RealHosts {
  readonly hosts: RealHost[] = [];
  backend: TestContainer | undefined;
  nginxPort = 0;
  private nginx: ChildProcess | undefined;
  private httpd: ChildProcess | undefined;
  private readonly dir = mkdtempSync(join(tmpdir(), 'corral-real-hosts-'));
  private seq = 0;

  private constructor(readonly cluster: Cluster) {}

  /** The cluster (etcd ×members on the underlay, `count` hosts with agents), DNS, LB and a prober on each, the backends on h1. */
  static async start(o: { count: number; etcdMembers: number; clusterCidr: string; leaseTtlS: number }): Promise<RealHosts> {
    const cluster = await startCluster({ hosts: o.count, etcdMembers: o.etcdMembers, leaseTtlS: o.leaseTtlS, rootLink: true, agentArgs: ['--cluster-cidr', o.clusterCidr] });
    const r = new RealHosts(cluster);
    try {
      for (const h of cluster.hosts) {
        const dns = await startDaemon('dns', { netns: h.ns.name, args: ['--agent-socket', h.agent!.socket, '--log-level', 'warn'] });
        const lb = await startDaemon('lb', { netns: h.ns.name, args: ['--agent-socket', h.agent!.socket, '--log-level', 'warn', '--lb-threads', '1'] });
        const child = spawn('nsenter', [`--net=${h.ns.path}`, process.execPath, '--import', 'tsx', 'test/scale/prober.ts', String(dns.dnsPort), String(lb.httpPort)], { env: childEnv(), stdio: ['pipe', 'pipe', 'inherit'] });
        const prober = new Prober(child);
        r.hosts.push({ host: h, dns, lb, prober });
        await prober.ready;
      }
      const h1 = cluster.hosts[0]!;
      r.backend = await cluster.container(h1);
      const www = join(r.dir, 'www');
      mkdirSync(www);
      writeFileSync(join(www, 'index.html'), 'probe backend on h1\n');
      r.httpd = r.backend.ns.spawn('busybox', ['httpd', '-f', '-p', '8080', '-h', www]);
      r.nginxPort = await freePort();
      writeFileSync(join(r.dir, 'nginx.conf'), nginxConf(r.dir, r.nginxPort));
      r.nginx = h1.ns.spawn('nginx', ['-e', join(r.dir, 'error.log'), '-c', join(r.dir, 'nginx.conf')]);
      await until('nginx on h1', async () => (await h1.ns.exec('curl', ['-sf', '-m', '1', `http://127.0.0.1:${r.nginxPort}/`]).then(() => true, () => false)), { ms: 10_000, everyMs: 100 });
    } catch (err) {
      await r.close();
      throw err;
    }
    return r;
  }

  /** etcd's client endpoints, reachable from this process. */
  get etcdEndpoints(): string[] {
    return this.cluster.etcd.endpoints;
  }

  /** Registers on h1's agent (over its gRPC socket): one endpoint of a service with an HTTP route. */
  async register(service: string, address: string, port: number, httpHost: string): Promise<EndpointReply> {
    const client = agentClient(this.hosts[0]!.host.agent!.socket);
    try {
      return await unary<RegisterRequest, EndpointReply>(client, 'Register', { service, namespace: 'default', address, port, color: '', httpHosts: [httpHost], httpPath: '/', weight: 1, healthCheck: null, portName: '' }, 30_000);
    } finally {
      client.close();
    }
  }

  /**
   * One endpoint change: a new service with one endpoint (the backend container on h1) and an
   * HTTP route, registered on h1; per host, how long after the registration was sent its DNS
   * answered the name with the address and its LB routed the Host to it (NaN: not within 20 s, or
   * the registration failed).
   */
  async probe(): Promise<ProbeResult[]> {
    const k = ++this.seq;
    const service = `probe-${k}`;
    const name = `${service}.default.corral.internal`;
    const httpHost = `${service}.test`;
    const addr = this.backend!.address;
    const watches = this.hosts.map((h) => h.prober.watch(`${service}`, name, addr, httpHost));
    // From the call (so the write itself is included): this process may answer late under load,
    // and a time taken after the reply could then come after what the probers saw.
    const t1 = Date.now();
    const ok = await this.register(service, addr, 8080, httpHost).then(() => true, () => false);
    if (!ok) {
      await Promise.all(watches);
      return this.hosts.map((h) => ({ host: h.host.name, dnsMs: NaN, lbMs: NaN }));
    }
    const seen = await Promise.all(watches);
    return seen.map((s, i) => ({ host: this.hosts[i]!.host.name, dnsMs: s.dnsAt === null ? NaN : Math.max(0, s.dnsAt - t1), lbMs: s.lbAt === null ? NaN : Math.max(0, s.lbAt - t1) }));
  }

  /** A name and route every host keeps checking (every 50 ms): failures are what users would see. */
  async steady(): Promise<void> {
    const addr = this.backend!.address;
    await this.register('steady', addr, 8080, 'steady.test');
    await Promise.all(this.hosts.map((h) => h.prober.watch('steady-first', 'steady.default.corral.internal', addr, 'steady.test')));
    for (const h of this.hosts) h.prober.steady('steady.default.corral.internal', addr, 'steady.test');
  }

  async stats(): Promise<ProbeStats> {
    const all = await Promise.all(this.hosts.map((h) => h.prober.stats()));
    const why: Record<string, number> = {};
    for (const s of all) for (const [k, n] of Object.entries(s.lbWhy ?? {})) why[k] = (why[k] ?? 0) + n;
    return all.reduce((a, s) => ({ dnsOk: a.dnsOk + s.dnsOk, dnsFail: a.dnsFail + s.dnsFail, lbOk: a.lbOk + s.lbOk, lbFail: a.lbFail + s.lbFail, lbWhy: why }), { dnsOk: 0, dnsFail: 0, lbOk: 0, lbFail: 0, lbWhy: why });
  }

  /**
   * The agent of host i killed (SIGKILL; wireguard-go, DNS and LB stay), an endpoint change made
   * while it is down, then the agent started again in place: ms from the start until it is ready
   * (admin /readyz) and until its DNS answers and its LB routes the change.
   */
  async restart(i: number): Promise<{ readyMs: number; dnsMs: number; lbMs: number }> {
    const h = this.hosts[i]!.host;
    const child = h.agent!.child;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    const k = ++this.seq;
    const service = `probe-${k}`;
    const addr = this.backend!.address;
    // Registered through h1 (host i is not h1).
    await this.register(service, addr, 8080, `${service}.test`);
    const seen = this.hosts[i]!.prober.watch(service, `${service}.default.corral.internal`, addr, `${service}.test`);
    const t0 = Date.now();
    await h.start([]);
    const readyMs = Date.now() - t0;
    const s = await seen;
    return { readyMs, dnsMs: s.dnsAt === null ? NaN : s.dnsAt - t0, lbMs: s.lbAt === null ? NaN : s.lbAt - t0 };
  }

  /** CPU seconds (user + system) of each host's agent, DNS and LB so far. */
  cpu(): Array<{ agent: number; dns: number; lb: number }> {
    return this.hosts.map((h) => ({ agent: cpuSeconds(h.host.agent!.child.pid), dns: cpuSeconds(h.dns.child.pid), lb: cpuSeconds(h.lb.child.pid) }));
  }

  rss(): Array<{ agent: number; dns: number; lb: number }> {
    return this.hosts.map((h) => ({ agent: rssBytes(h.host.agent!.child.pid), dns: rssBytes(h.dns.child.pid), lb: rssBytes(h.lb.child.pid) }));
  }

  /** Peers each host's wireguard-go holds (UAPI). */
  peers(): Promise<number[]> {
    return Promise.all(this.hosts.map((h) => wgPeers(h.host)));
  }

  /** `corral status --json` of each host: its view of the registry and whether DNS and LB applied it. */
  async status(): Promise<Array<{ revision: number; appliedRevision: number; registryConnected: boolean; components: Array<{ component: string; connected: boolean; appliedRevision: number }> }>> {
    return Promise.all(this.hosts.map(async (h) => {
      const r = await h.host.agent!.cli(['status', '--json']);
      if (r.code !== 0) throw new Error(`corral status on ${h.host.name}: ${r.stderr}`);
      return JSON.parse(r.stdout);
    }));
  }

  /** Hosts each agent lists (`corral hosts --json`). */
  hostCounts(): Promise<number[]> {
    return Promise.all(this.hosts.map(async (h) => {
      const r = await h.host.agent!.cli(['hosts', '--json']);
      return r.code === 0 ? (JSON.parse(r.stdout) as { rows: unknown[] }).rows.length : NaN;
    }));
  }

  async close(): Promise<void> {
    for (const h of this.hosts) {
      h.prober.child.stdin!.end();
      h.prober.child.kill('SIGKILL');
      await h.dns.stop().catch(() => {});
      await h.lb.stop().catch(() => {});
    }
    this.httpd?.kill('SIGKILL');
    // SIGTERM: nginx's master stops its workers (SIGKILL would leave them running).
    if (this.nginx && this.nginx.exitCode === null) {
      const gone = new Promise((r) => this.nginx!.once('exit', r));
      this.nginx.kill('SIGTERM');
      await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
    }
    await this.cluster.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
