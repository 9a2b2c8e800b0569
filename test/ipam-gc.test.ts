// `corral ipam gc`, the real bundled executable against a real agent: a container attached by
// the real corral-cni plugin whose network namespace disappeared without a DEL (a runtime that
// crashed, a node that rebooted) gets its address, host route and Allocation back; a container
// that is still there keeps its attachment.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IpamGcReply } from '../api/types.js';
import { corralCni } from './support/cni.js';
import { startDaemon, type Daemon } from './support/corral.js';
import { Netns } from './support/netns.js';
import { until } from './support/until.js';

let host: Netns;
let agent: Daemon;
const made: Netns[] = [];
let conf: Record<string, unknown>;

async function container(): Promise<Netns> {
  const ns = await Netns.create('corral-c');
  made.push(ns);
  return ns;
}

interface Alloc { address: string; containerId: string; ifname: string }

async function allocations(): Promise<Alloc[]> {
  const r = await agent.cli(['ipam', 'ls', '--json']);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { allocations: Alloc[] }).allocations;
}

beforeAll(async () => {
  host = await Netns.create('corral-h');
  agent = await startDaemon('agent', { netns: host.name });
  conf = { cniVersion: '1.1.0', name: 'gcnet', type: 'corral', namespace: 'prod', agentSocket: agent.socket };
});

afterAll(async () => {
  await agent?.stop();
  for (const ns of made) await ns.delete();
  await host?.delete();
});

describe('corral ipam gc', () => {
  it('frees the attachment whose network namespace is gone (address, host route, Allocation) and keeps the live one', async () => {
    const [live, gone] = [await container(), await container()];
    const liveVars = { containerId: 'gc-live', netns: live.path, ifname: 'eth0' };
    const goneVars = { containerId: 'gc-gone', netns: gone.path, ifname: 'eth0' };
    const addLive = await corralCni('ADD', liveVars, conf);
    const addGone = await corralCni('ADD', goneVars, conf);
    expect([addLive.code, addGone.code], `${addLive.stdout}${addGone.stdout}`).toEqual([0, 0]);
    const liveAddr = addLive.out.ips[0].address.split('/')[0] as string;
    const goneAddr = addGone.out.ips[0].address.split('/')[0] as string;
    const goneVeth = addGone.out.interfaces[0].name as string;
    await until('both Allocations listed', async () => {
      const owners = (await allocations()).map((a) => a.containerId);
      return owners.includes('gc-live') && owners.includes('gc-gone');
    });

    // The runtime loses the container without telling the plugin: no DEL.
    await gone.delete();
    const gc = await agent.cli(['ipam', 'gc', '--json']);
    expect(gc.code, gc.stderr).toBe(0);
    const reply = JSON.parse(gc.stdout) as IpamGcReply;
    expect(reply.freed).toEqual([expect.objectContaining({ address: goneAddr, containerId: 'gc-gone', ifname: 'eth0', namespace: 'prod' })]);

    // Its Allocation leaves the registry (published after the answer, hence the wait), its host
    // side is removed, and the IPAM no longer knows the attachment.
    await until('the freed Allocation gone from `corral ipam ls`', async () => !(await allocations()).some((a) => a.address === goneAddr));
    const hostLinks = (await host.exec('ip', ['-o', 'link'])).stdout;
    expect(hostLinks).not.toContain(goneVeth);
    expect((await host.exec('ip', ['route'])).stdout).not.toContain(`${goneAddr} dev`);
    const check = await corralCni('CHECK', { ...goneVars, netns: live.path }, conf);
    expect(check.out).toMatchObject({ code: 3 });
    expect(check.out.msg).toMatch(/no Corral attachment for container gc-gone/);

    // The live container keeps everything: its Allocation, a passing CHECK, its traffic.
    expect(await allocations()).toContainEqual(expect.objectContaining({ address: liveAddr, containerId: 'gc-live', ifname: 'eth0' }));
    expect((await corralCni('CHECK', liveVars, { ...conf, prevResult: addLive.out })).code).toBe(0);
    expect(await live.exec('busybox', ['ping', '-c', '1', '-W', '2', '10.42.0.1']).then(() => true, () => false)).toBe(true);

    // Nothing else to free: a second run says so.
    const again = await agent.cli(['ipam', 'gc']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe('nothing to free: every allocation has a live container\n');
    expect((await corralCni('DEL', liveVars, conf)).code).toBe(0);
  });
});
