// A container resolves through what CNI gave it: `corral agent` and `corral dns` in a host
// namespace, containers attached by the real corral-cni, the CNI result's `dns` written as the
// container's resolv.conf (iproute2 bind-mounts /etc/netns/<ns>/resolv.conf for `ip netns exec`),
// and busybox nslookup inside the container.
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corralCni } from '../test/support/cni.js';
import { startDaemon, type Daemon } from '../test/support/corral.js';
import { Netns } from '../test/support/netns.js';
import { until } from '../test/support/until.js';

let host: Netns;
let agent: Daemon;
let dns: Daemon;
const containers: Netns[] = [];

interface Attached { ns: Netns; address: string; nameserver: string }

/** ADD through corral-cni, then the resolv.conf a runtime writes from the result. */
async function attach(id: string, namespace: string): Promise<Attached> {
  const ns = await Netns.create('corral-dnsr');
  containers.push(ns);
  const add = await corralCni('ADD', { containerId: id, netns: ns.path, ifname: 'eth0' }, {
    cniVersion: '1.1.0', name: 'cnet', type: 'corral', namespace, agentSocket: agent.socket,
  });
  expect(add.code, add.stdout + add.stderr).toBe(0);
  const d = add.out.dns as { nameservers: string[]; search: string[]; options: string[] };
  mkdirSync(`/etc/netns/${ns.name}`, { recursive: true });
  writeFileSync(`/etc/netns/${ns.name}/resolv.conf`, [
    ...d.nameservers.map((n) => `nameserver ${n}`), `search ${d.search.join(' ')}`, `options ${d.options.join(' ')}`, '',
  ].join('\n'));
  return { ns, address: add.out.ips[0].address.split('/')[0], nameserver: d.nameservers[0]! };
}

async function nslookup(c: Attached, name: string): Promise<{ ok: boolean; out: string }> {
  return c.ns.exec('busybox', ['nslookup', name], { timeoutMs: 15_000 }).then(
    (r) => ({ ok: true, out: r.stdout }),
    (err: Error) => ({ ok: false, out: err.message }),
  );
}

/** The addresses nslookup printed after the server's own lines. */
function answers(out: string): string[] {
  const after = out.split(/\n\s*\n/).slice(1).join('\n');
  return [...new Set([...after.matchAll(/Address(?: \d+)?:\s+([\d.]+)/g)].map((m) => m[1]!))].sort();
}

beforeAll(async () => {
  host = await Netns.create('corral-dnsh');
  agent = await startDaemon('agent', { netns: host.name });
  dns = await startDaemon('dns', { netns: host.name, args: ['--agent-socket', agent.socket, '--dns-listen', 'gateway:53'] });
  await agent.cli(['register', 'web', '10.42.0.200:80', '-n', 'prod']);
  await agent.cli(['register', 'web', '10.42.0.201:80', '-n', 'dev']);
}, 120_000);

afterAll(async () => {
  await dns?.stop();
  await agent?.stop();
  for (const ns of containers) {
    rmSync(`/etc/netns/${ns.name}`, { recursive: true, force: true });
    await ns.delete();
  }
  await host?.delete();
});

describe('resolution through the CNI-provided resolv.conf', () => {
  it('resolves short and full names in the container\'s namespace, and other namespaces by full name', async () => {
    const prod = await attach('dns-prod-1', 'prod');
    const dev = await attach('dns-dev-1', 'dev');
    expect(prod.nameserver).toMatch(/^10\.42\.\d+\.1$/);

    // DNS binds the gateway once the agent has brought it up (at the first ADD): wait for it.
    const r = await until('DNS on the gateway', async () => {
      const l = await nslookup(prod, 'web');
      if (!l.ok) throw new Error(l.out);
      return l;
    }, { ms: 15_000, everyMs: 300 });
    expect(answers(r.out), r.out).toEqual(['10.42.0.200']);
    expect(answers((await nslookup(dev, 'web')).out)).toEqual(['10.42.0.201']);

    // Full names work from anywhere; `web.corral.internal` is read in the asker's namespace.
    expect(answers((await nslookup(prod, 'web.dev.corral.internal')).out)).toEqual(['10.42.0.201']);
    expect(answers((await nslookup(dev, 'web.prod.corral.internal')).out)).toEqual(['10.42.0.200']);
    expect(answers((await nslookup(prod, 'web.corral.internal')).out)).toEqual(['10.42.0.200']);

    // A service that exists only in another namespace is not reachable by its short name.
    await agent.cli(['register', 'billing', '10.42.0.202:80', '-n', 'dev']);
    expect((await nslookup(prod, 'billing')).ok).toBe(false);
    expect(answers((await nslookup(dev, 'billing')).out)).toEqual(['10.42.0.202']);

    // The container's own address has a PTR to its name.
    const ptr = await nslookup(prod, prod.address);
    expect(ptr.out).toMatch(/dns-prod-1|\.prod\.corral\.internal/);
  }, 90_000);
});
