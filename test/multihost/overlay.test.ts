// Three hosts (netns on an underlay bridge), one etcd, an agent with wireguard-go per host,
// containers attached by corral-cni: the overlay as users see it.
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { procStat } from '../support/proc.js';
import { pings, reaches, startCluster, wgDump, wgPeers, wgPid, type Cluster, type TestContainer } from '../support/cluster.js';
import { until } from '../support/until.js';

const TTL = 3;
const json = (s: string) => JSON.parse(s);

describe('multi-host WireGuard overlay over etcd', () => {
  let c: Cluster;
  const ctr: TestContainer[] = [];
  beforeAll(async () => {
    c = await startCluster({ hosts: 3, leaseTtlS: TTL });
    for (const h of c.hosts) ctr.push(await c.container(h));
  });
  afterAll(async () => {
    await c?.close();
  });

  it('gives each host its own block and a peer for every other host', async () => {
    await until('three hosts published', async () => {
      const l = json((await c.hosts[0]!.agent!.cli(['hosts', '--json'])).stdout);
      return l.rows.length === 3 && l.rows.every((r: { host: { publicKey: string; block: string } }) => r.host.publicKey && r.host.block);
    }, { ms: 10_000, everyMs: 100 });
    const l = json((await c.hosts[0]!.agent!.cli(['hosts', '--json'])).stdout);
    const blocks = l.rows.map((r: { host: { block: string } }) => r.host.block);
    expect(new Set(blocks).size).toBe(3);
    for (const h of c.hosts) {
      const s = json((await h.agent!.cli(['status', '--json'])).stdout);
      expect(s.overlay).toBe('wireguard-go');
      // Connected is the last etcd call's outcome: one keep-alive that timed out on a starved
      // machine flips it until the next one succeeds (lease TTL 3 s here: within a second).
      await until(`${h.name} connected to etcd`, async () => json((await h.agent!.cli(['status', '--json'])).stdout).registryConnected === true, { ms: 10_000, everyMs: 100 });
      await until(`${h.name} has two peers`, async () => json((await h.agent!.cli(['status', '--json'])).stdout).peers.length === 2, { ms: 10_000, everyMs: 100 });
    }
  });

  it('lets every container reach every other over the overlay', async () => {
    for (const a of ctr) {
      for (const b of ctr) {
        if (a === b) continue;
        await reaches(c, a, b.address, `${a.host.name} -> ${b.host.name}`);
      }
    }
    // One line per host (its peers summed up from its last report), and one host's full peer list where it lives.
    const hosts = (await c.hosts[0]!.agent!.cli(['hosts'])).stdout;
    expect(hosts).toMatch(/^HOST +BLOCK +UNDERLAY +APPLIED +PEERS \(handshaken\)/);
    expect(hosts.split('\n').filter((x) => /^h\d/.test(x))).toHaveLength(3);
    await until('h1 lists both peers with a handshake', async () => {
      const one = (await c.hosts[0]!.agent!.cli(['hosts', 'h1'])).stdout;
      return /^h2 +\S+ +\d+s ago/m.test(one) && /^h3 +\S+ +\d+s ago/m.test(one);
    }, { ms: 10_000, everyMs: 100 });
    expect((await c.hosts[0]!.agent!.cli(['hosts', 'h2'])).stdout).toMatch(/from here +\S+, handshake \d+s ago/);
    await until('status reports handshakes', async () => /every peer handshook within 3 minutes/.test((await c.hosts[0]!.agent!.cli(['status'])).stdout), { ms: 10_000, everyMs: 100 });
  });

  it('shows only WireGuard UDP on the underlay, never the payload', async () => {
    const pattern = 'c0ffee15deadbeef';
    // Left out of the capture: ARP, IPv6 neighbour discovery of the bridge's links (router
    // solicitations as they come up) and etcd's own TCP; everything else must be WireGuard.
    const cap = spawn('ip', ['netns', 'exec', c.underlay.name, 'tcpdump', '-i', 'br0', '-n', '-l', '-x', '-c', '40', 'not arp and not icmp6 and not tcp port 2379 and not tcp port 2380'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    cap.stdout.on('data', (d: Buffer) => (out += d));
    await new Promise((r) => setTimeout(r, 700));
    try {
      await ctr[0]!.ns.exec('ping', ['-c', '10', '-i', '0.05', '-p', pattern, ctr[1]!.address]);
    } finally {
      await new Promise((r) => setTimeout(r, 300));
      cap.kill('SIGINT');
      await new Promise((r) => cap.once('close', r));
    }
    const headers = out.split('\n').filter((l) => /^\d\d:\d\d/.test(l));
    expect(headers.length).toBeGreaterThanOrEqual(10);
    for (const h of headers) expect(h).toMatch(/\.51820: UDP|\.51820 > .*UDP/);
    for (const h of headers) expect(h).not.toMatch(/ICMP/);
    expect(out.replace(/\s|0x[0-9a-f]+:/g, '')).not.toContain(pattern);
  });

  it('runs wireguard-go in a process group of its own, and brings it back with its peers when it dies', async () => {
    const h1 = c.hosts[0]!;
    const pid = wgPid(h1)!;
    const [, , pgrp, session] = procStat(pid);
    expect(pgrp).toBe(pid); // a signal to the agent's group (Ctrl-C) does not reach it
    expect(session).toBe(procStat(h1.agent!.child.pid!)[3]); // the agent's session: the same scheduling autogroup
    const t0 = Date.now();
    process.kill(pid, 'SIGKILL');
    await until('a new wireguard-go on h1', () => (wgPid(h1) ?? pid) !== pid, { ms: 15_000, everyMs: 100 });
    await until('h1 peers restored', async () => (await wgPeers(h1)) === 2, { ms: 10_000, everyMs: 100 });
    await reaches(c, ctr[1]!, ctr[0]!.address, 'h2 container -> h1 container');
    await reaches(c, ctr[0]!, ctr[2]!.address, 'h1 container -> h3 container');
    console.log(`wireguard-go killed: traffic back after ${Date.now() - t0} ms`);
    expect(h1.agent!.logs()).toMatch(/WireGuard device is gone/);
    expect(h1.agent!.logs()).toMatch(/WireGuard device restored with its peers/);
  });

  it('removes a dead host everywhere within the lease TTL plus 2 s, and restores it on restart', async () => {
    const h3 = c.hosts[2]!;
    const before = json((await h3.agent!.cli(['status', '--json'])).stdout);
    const t0 = Date.now();
    await h3.kill();
    // Measured on the data plane itself (each host's WireGuard peers) and in etcd, polled cheaply.
    const hostKey = Buffer.from('/corral/hosts/h3').toString('base64');
    await Promise.all([
      ...c.hosts.slice(0, 2).map((h) => until(`h3's peer gone from ${h.name}`, async () => (await wgPeers(h)) === 1, { ms: (TTL + 6) * 1000, everyMs: 100 })),
      // etcd's own answer, through its HTTP gateway on the underlay
      until('h3 record gone', async () => !(await c.underlay.exec('curl', ['-sf', '-m', '1', '-X', 'POST', '-d', JSON.stringify({ key: hostKey }), `${c.etcd.members[0]!.clientUrl}/v3/kv/range`])).stdout.includes('"kvs"'), { ms: (TTL + 6) * 1000, everyMs: 100 }),
    ]);
    const gone = Date.now() - t0;
    console.log(`dead host removed everywhere after ${gone} ms (lease TTL ${TTL} s)`);
    expect(gone).toBeLessThan((TTL + 2) * 1000);
    for (const h of c.hosts.slice(0, 2)) {
      const l = json((await h.agent!.cli(['hosts', '--json'])).stdout);
      expect(l.rows.map((x: { host: { name: string } }) => x.host.name).sort()).toEqual(['h1', 'h2']);
    }
    await h3.start();
    const after = json((await h3.agent!.cli(['status', '--json'])).stdout);
    expect(after.block).toBe(before.block);
    expect(after.publicKey).toBe(before.publicKey);
    await reaches(c, ctr[0]!, ctr[2]!.address, 'h1 container -> h3 container after restart');
    await reaches(c, ctr[2]!, ctr[1]!.address, 'h3 container -> h2 container after restart');
  });

  it('rotates a key under a running ping losing at most one handshake', async () => {
    const count = 60;
    const p = ctr[0]!.ns.exec('ping', ['-c', String(count), '-i', '0.05', '-W', '1', ctr[1]!.address], { timeoutMs: 30_000 }).catch((e: Error) => ({ stdout: e.message, stderr: '' }));
    await new Promise((r) => setTimeout(r, 700));
    const r = await c.hosts[1]!.agent!.cli(['rotate-keys', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rot = json(r.stdout);
    expect(rot.publicKey).not.toBe(rot.previousPublicKey);
    expect(rot.unconfirmed).toEqual([]);
    const res = await p;
    const m = /(\d+) packets transmitted, (\d+) received/.exec(res.stdout);
    expect(m, res.stdout).not.toBeNull();
    const lost = Number(m![1]) - Number(m![2]);
    console.log(`key rotation: ${lost} of ${m![1]} pings lost (50 ms interval)`);
    expect(lost).toBeLessThanOrEqual(3);
    await until('h3 -> h2 with the new key', () => pings(ctr[2]!, ctr[1]!.address), { ms: 10_000, everyMs: 100 }).catch(async (err) => {
      console.log('h2', await wgDump(c.hosts[1]!), 'h3', await wgDump(c.hosts[2]!), c.hosts[2]!.agent!.logs());
      throw err;
    });
  });
});
