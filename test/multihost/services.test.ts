// Services across hosts: a backend on host h2, registered there, is answered by `corral dns` on
// host h1 and balanced by `corral lb` on h1 over the WireGuard overlay; containers get the
// overlay's MTU in their interface and in the CNI result.
import { mkdirSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from '../support/corral.js';
import { pings, reaches, startCluster, type Cluster, type TestContainer } from '../support/cluster.js';
import { until } from '../support/until.js';

const json = (s: string) => JSON.parse(s);

describe('services across hosts over the overlay', () => {
  let c: Cluster;
  const backends: TestContainer[] = [];
  const httpds: ChildProcess[] = [];
  const daemons: Daemon[] = [];
  let dns: Daemon;
  let lb: Daemon;
  let www: string;

  beforeAll(async () => {
    c = await startCluster({ hosts: 2, leaseTtlS: 5 });
    const [h1, h2] = c.hosts as [Cluster['hosts'][0], Cluster['hosts'][0]];
    www = mkdtempSync(join(tmpdir(), 'corral-www-'));
    for (let i = 0; i < 2; i++) {
      const b = await c.container(h2);
      backends.push(b);
      const dir = join(www, String(i));
      mkdirSync(dir);
      writeFileSync(join(dir, 'index.html'), `backend ${i} on h2\n`);
      writeFileSync(join(dir, 'big'), Buffer.alloc(1 << 20, 0x61));
      httpds.push(b.ns.spawn('busybox', ['httpd', '-f', '-p', '8080', '-h', dir]));
    }
    dns = await startDaemon('dns', { netns: h1.ns.name, args: ['--agent-socket', h1.agent!.socket] });
    daemons.push(dns);
    lb = await startDaemon('lb', { netns: h1.ns.name, args: ['--agent-socket', h1.agent!.socket] });
    daemons.push(lb);
    // the overlay is up: h1 reaches the backends on h2
    for (const b of backends) await reaches(c, h1, b.address, `h1 -> ${b.address}`);
  });
  afterAll(async () => {
    for (const d of daemons) await d.stop().catch(() => {});
    for (const p of httpds) p.kill('SIGKILL');
    await c?.close();
    if (www) rmSync(www, { recursive: true, force: true });
  });

  it('gives containers the overlay MTU (underlay 1500 − 60) in the interface and the CNI result', async () => {
    const h2 = c.hosts[1]!;
    const status = json((await h2.agent!.cli(['hosts', '--json'])).stdout);
    expect(status.rows.find((r: { host: { name: string } }) => r.host.name === 'h2').host.mtu).toBe(1440);
    const b = backends[0]!;
    const ifaces = b.result.interfaces ?? [];
    expect(ifaces.length).toBe(2);
    for (const i of ifaces) expect(i.mtu).toBe(1440);
    expect((await b.ns.exec('ip', ['link', 'show', 'eth0'])).stdout).toMatch(/mtu 1440 /);
    expect((await h2.ns.exec('ip', ['link', 'show', h2.ifname])).stdout).toMatch(/mtu 1440 /);
  });

  it('answers a service registered on h2 from the DNS on h1', async () => {
    const h1 = c.hosts[0]!;
    const h2 = c.hosts[1]!;
    for (const b of backends) {
      const r = await h2.agent!.cli(['register', 'web', `${b.address}:8080`, '--http-host', 'web.test', '--json']);
      expect(r.code, r.stderr).toBe(0);
    }
    const want = backends.map((b) => b.address).sort();
    const dig = async () => (await h1.ns.exec('dig', ['+short', '+time=1', '+tries=1', '-p', String(dns.dnsPort), '@127.0.0.1', 'web.default.corral.internal', 'A'])).stdout.trim().split('\n').filter(Boolean).sort();
    await until('h1 DNS answers both h2 backends', async () => JSON.stringify(await dig()) === JSON.stringify(want), { ms: 10_000, everyMs: 100 });
    expect(await dig()).toEqual(want);
    // and PTR for the remote container's address
    const ptr = (await h1.ns.exec('dig', ['+short', '-p', String(dns.dnsPort), '@127.0.0.1', '-x', backends[0]!.address])).stdout;
    expect(ptr).toMatch(/corral\.internal\.$/m);
  });

  it('balances requests on h1 over both backends on h2, through the overlay', async () => {
    const h1 = c.hosts[0]!;
    const get = async (path = '/') => (await h1.ns.exec('curl', ['-sf', '-m', '5', '-H', 'Host: web.test', `http://127.0.0.1:${lb.httpPort}${path}`])).stdout;
    await until('h1 LB routes web.test', async () => /on h2/.test(await get()), { ms: 10_000, everyMs: 100 });
    const seen = new Map<string, number>();
    for (let i = 0; i < 10; i++) {
      const body = (await get()).trim();
      seen.set(body, (seen.get(body) ?? 0) + 1);
    }
    expect([...seen.keys()].sort()).toEqual(['backend 0 on h2', 'backend 1 on h2']);
    expect(seen.get('backend 0 on h2')).toBe(5);
    // a response far larger than one packet crosses the overlay whole (the MTU fits WireGuard)
    const size = (await h1.ns.exec('curl', ['-sf', '-m', '10', '-o', '/dev/null', '-w', '%{size_download}', '-H', 'Host: web.test', `http://127.0.0.1:${lb.httpPort}/big`])).stdout;
    expect(Number(size)).toBe(1 << 20);
  });

  it('drops a backend deregistered on h2 from h1 DNS and LB', async () => {
    const h1 = c.hosts[0]!;
    const h2 = c.hosts[1]!;
    const r = await h2.agent!.cli(['deregister', 'web', `${backends[1]!.address}:8080`]);
    expect(r.code, r.stderr).toBe(0);
    // draining (default 10 s) keeps it in the LB for in-flight requests; DNS drops it at once
    await until('h1 DNS drops the deregistered backend', async () => (await h1.ns.exec('dig', ['+short', '-p', String(dns.dnsPort), '@127.0.0.1', 'web.default.corral.internal'])).stdout.trim() === backends[0]!.address, { ms: 5_000, everyMs: 100 });
    const get = async () => (await h1.ns.exec('curl', ['-sf', '-m', '5', '-H', 'Host: web.test', `http://127.0.0.1:${lb.httpPort}/`])).stdout.trim();
    await until('h1 LB stops sending new requests to it', async () => (await get()) === 'backend 0 on h2' && (await get()) === 'backend 0 on h2', { ms: 5_000, everyMs: 100 });
    for (let i = 0; i < 4; i++) expect(await get()).toBe('backend 0 on h2');
  });
});
