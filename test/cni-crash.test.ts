// kill -9 of the agent in the middle of 50 parallel ADDs, then restart and GC: every ADD that
// was acknowledged keeps its address, no address is held twice, nothing is leaked.
import { afterAll, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon, type Daemon } from './support/corral.js';
import { corralCni, type CniRun } from './support/cni.js';
import { Netns } from './support/netns.js';

const N = 50;
const made: Netns[] = [];
let host: Netns | undefined;
const agents: Daemon[] = [];
const stateDir = mkdtempSync(join(tmpdir(), 'corral-crash-'));

afterAll(async () => {
  for (const a of agents) await a.stop('SIGKILL').catch(() => undefined);
  for (const ns of made) await ns.delete();
  await host?.delete();
  rmSync(stateDir, { recursive: true, force: true });
});

it('keeps every acknowledged allocation and never doubles one across kill -9, restart and GC', async () => {
  host = await Netns.create('corral-h');
  const first = await startDaemon('agent', { netns: host.name, stateDir });
  agents.push(first);
  for (let i = 0; i < N; i++) made.push(await Netns.create('corral-c'));
  const conf = { cniVersion: '1.1.0', name: 'crash', type: 'corral', agentSocket: first.socket };
  let acked = 0;
  const results: Array<Promise<CniRun>> = made.map((ns, i) => corralCni('ADD', { containerId: `crash-${i}`, netns: ns.path, ifname: 'eth0' }, conf).then((r) => {
    if (r.code === 0) acked++;
    return r;
  }));
  // Kill while ADDs are in flight: after the first few are acknowledged.
  await expect.poll(() => acked, { timeout: 60_000, interval: 5 }).toBeGreaterThanOrEqual(5);
  first.child.kill('SIGKILL');
  const done = await Promise.all(results);
  const ok = new Map<string, string>();
  done.forEach((r, i) => {
    if (r.code === 0) ok.set(`crash-${i}`, r.out.ips[0].address.split('/')[0]);
    else expect([5, 11], r.stdout).toContain(r.out?.code);
  });
  expect(ok.size).toBeGreaterThanOrEqual(5);
  expect(ok.size).toBeLessThan(N);

  const second = await startDaemon('agent', { netns: host.name, stateDir });
  agents.push(second);
  const list = async () => JSON.parse((await second.cli(['ipam', 'ls', '--json'])).stdout).allocations as Array<{ address: string; containerId: string }>;
  const before = await list();
  // Every acknowledged allocation survived, with the address the runtime was given.
  for (const [id, addr] of ok) expect(before).toContainEqual(expect.objectContaining({ containerId: id, address: addr }));
  expect(new Set(before.map((a) => a.address)).size).toBe(before.length);

  // The runtime's GC: only what it was told about is valid.
  const gc = await corralCni('GC', {}, { ...conf, agentSocket: second.socket, 'cni.dev/valid-attachments': [...ok.keys()].map((id) => ({ containerID: id, ifname: 'eth0' })) });
  expect(gc.code, gc.stdout).toBe(0);
  const after = await list();
  expect(after.map((a) => a.containerId).sort()).toEqual([...ok.keys()].sort());
  expect(new Set(after.map((a) => a.address)).size).toBe(after.length);
  // No leaked host ends: one veth per live attachment.
  const links = (await host.exec('ip', ['-o', 'link'])).stdout.split('\n').filter((l) => /: cr[0-9a-f]{11}@/.test(l));
  expect(links.length).toBe(ok.size);
  // The acknowledged ones still work after the restart.
  for (const [id] of ok) {
    const i = Number(id.split('-')[1]);
    expect((await corralCni('CHECK', { containerId: id, netns: made[i]!.path, ifname: 'eth0' }, { ...conf, agentSocket: second.socket })).code).toBe(0);
  }
});
