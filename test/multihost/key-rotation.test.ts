// Key rotation on a schedule (--key-rotation): every host rotates its WireGuard key by itself,
// peers keep reaching each other through every rotation; and a killed host leaves no wireguard-go
// behind, not even a zombie.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pings, reaches, startCluster, type Cluster, type TestContainer } from '../support/cluster.js';
import { until } from '../support/until.js';

const INTERVAL_S = 4;

describe('scheduled key rotation', () => {
  let c: Cluster;
  const ctr: TestContainer[] = [];
  beforeAll(async () => {
    c = await startCluster({ hosts: 2, leaseTtlS: 5, agentArgs: ['--key-rotation', `${INTERVAL_S}s`] });
    for (const h of c.hosts) ctr.push(await c.container(h));
    await reaches(c, ctr[0]!, ctr[1]!.address, 'overlay up');
  });
  afterAll(async () => {
    await c?.close();
  });

  it(`rotates every host's key each ${INTERVAL_S} s while its peers keep reaching it`, async () => {
    const seen = c.hosts.map(() => new Set<string>());
    const count = 140;
    const ping = ctr[0]!.ns.exec('ping', ['-c', String(count), '-i', '0.1', '-W', '1', ctr[1]!.address], { timeoutMs: 40_000 }).catch((e: Error) => ({ stdout: e.message, stderr: '' }));
    let done = false;
    void ping.then(() => (done = true));
    while (!done) {
      for (const [i, h] of c.hosts.entries()) {
        const r = await h.agent!.cli(['status', '--json']);
        if (r.code === 0) seen[i]!.add(JSON.parse(r.stdout).publicKey);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
    const res = await ping;
    const m = /(\d+) packets transmitted, (\d+) received/.exec(res.stdout);
    expect(m, res.stdout).not.toBeNull();
    const lost = Number(m![1]) - Number(m![2]);
    const rotations = seen.reduce((n, s) => n + s.size - 1, 0);
    console.log(`scheduled rotation: keys seen per host ${seen.map((s) => s.size).join(', ')} (${rotations} rotations); ${lost} of ${m![1]} pings lost (100 ms interval)`);
    // 14 s at one rotation per 4 s: at least two rotations on each host
    for (const s of seen) expect(s.size).toBeGreaterThanOrEqual(3);
    // at most one handshake's worth (a few 100 ms pings) per rotation
    expect(lost).toBeLessThanOrEqual(2 * rotations);
    expect(await pings(ctr[0]!, ctr[1]!.address)).toBe(true);
    expect(await pings(ctr[1]!, ctr[0]!.address)).toBe(true);
    for (const h of c.hosts) expect(JSON.parse((await h.agent!.cli(['status', '--json'])).stdout).peers).toHaveLength(1);
    // What Prometheus sees of the mesh: the rotations, the one peer, and a recent handshake with it.
    for (const [i, h] of c.hosts.entries()) {
      const text = (await h.ns.exec('curl', ['-sf', '-m', '5', `http://127.0.0.1:${h.agent!.adminPort}/metrics`])).stdout;
      const other = c.hosts[1 - i]!.name;
      expect(Number(/^corral_agent_mesh_key_rotations_total (\d+)$/m.exec(text)?.[1])).toBeGreaterThanOrEqual(2);
      expect(text).toMatch(/^corral_agent_mesh_peers 1$/m);
      expect(Number(new RegExp(`^corral_agent_mesh_peer_handshake_age_seconds\\{peer="${other}"\\} (\\S+)$`, 'm').exec(text)?.[1])).toBeLessThan(180);
    }
  });

  it('leaves no wireguard-go process, and no zombie, when a host is killed', async () => {
    const h = c.hosts[1]!;
    const pid = Number(readFileSync(join(h.agent!.runDir, `wireguard-go-${h.ifname}.pid`), 'utf8'));
    expect(readFileSync(`/proc/${pid}/comm`, 'utf8').trim()).toBe('wireguard-go');
    await h.kill();
    // gone from the process table: not running, and reaped (a zombie keeps its /proc entry)
    await until(`wireguard-go ${pid} reaped`, () => { try { readFileSync(`/proc/${pid}/stat`); return false; } catch { return true; } }, { ms: 3000, everyMs: 100 });
  });
});
