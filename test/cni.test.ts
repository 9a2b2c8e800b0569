// corral-cni driven exactly as a runtime drives it (CNI_* environment, config on stdin) against
// a real agent in its own network namespace, with every container in a fresh namespace.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from './support/corral.js';
import { corralCni, REFERENCE_PLUGINS, runPlugin } from './support/cni.js';
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

async function ping(from: Netns, to: string): Promise<boolean> {
  return from.exec('busybox', ['ping', '-c', '1', '-W', '1', to]).then(() => true, () => false);
}

beforeAll(async () => {
  host = await Netns.create('corral-h');
  agent = await startDaemon('agent', { netns: host.name });
  conf = { cniVersion: '1.1.0', name: 'cnet', type: 'corral', namespace: 'prod', agentSocket: agent.socket };
});

afterAll(async () => {
  await agent?.stop();
  for (const ns of made) await ns.delete();
  await host?.delete();
});

describe('corral-cni', () => {
  it('VERSION lists 0.4.0, 1.0.0 and 1.1.0', async () => {
    const r = await corralCni('VERSION', {}, { cniVersion: '1.0.0' });
    expect(r.code).toBe(0);
    expect(r.out).toEqual({ cniVersion: '1.0.0', supportedVersions: ['0.4.0', '1.0.0', '1.1.0'] });
  });

  it('answers bad environment and bad config with the spec error code and what to fix', async () => {
    const c = await container();
    const vars = { containerId: 'bad1', netns: c.path, ifname: 'eth0' };
    const cases: Array<[string, Promise<Awaited<ReturnType<typeof corralCni>>>, number, RegExp]> = [
      ['no CNI_COMMAND', runPlugin((await import('./support/cni.js')).CORRAL_CNI, {}, conf), 4, /CNI_COMMAND is not set/],
      ['not JSON', corralCni('ADD', vars, '{nope'), 6, /not JSON/],
      ['unknown cniVersion', corralCni('ADD', vars, { ...conf, cniVersion: '9.9.9' }), 1, /cniVersion "9.9.9" is not supported/],
      ['wrong type', corralCni('ADD', vars, { ...conf, type: 'bridge' }), 7, /this plugin is "corral"/],
      ['bad mtu', corralCni('ADD', vars, { ...conf, mtu: 'big' }), 7, /"mtu"/],
      ['bad namespace', corralCni('ADD', vars, { ...conf, namespace: 'Not_A_Label' }), 7, /not a DNS label/],
      ['no CNI_NETNS', corralCni('ADD', { containerId: 'bad1', ifname: 'eth0' }, conf), 4, /CNI_NETNS is not set/],
      ['missing netns', corralCni('ADD', { ...vars, netns: '/run/netns/corral-does-not-exist' }, conf), 4, /does not exist/],
      ['no CNI_IFNAME on DEL', corralCni('DEL', { containerId: 'bad1' }, conf), 4, /CNI_IFNAME is not set/],
      ['CHECK of an unknown container', corralCni('CHECK', vars, conf), 3, /no Corral attachment/],
    ];
    for (const [what, p, code, msg] of cases) {
      const r = await p;
      expect(r.code, what).toBe(1);
      expect(r.out?.code, what).toBe(code);
      expect(r.out?.msg, what).toMatch(msg);
    }
    // Nothing was left behind by the failed ADDs.
    expect((await c.exec('ip', ['-o', 'link'])).stdout).not.toMatch(/eth0/);
    const ls = JSON.parse((await agent.cli(['ipam', 'ls', '--json'])).stdout);
    expect(ls.allocations.filter((a: { containerId: string }) => a.containerId === 'bad1')).toEqual([]);
  });

  it('ADD gives an address, a default route via the gateway, the MTU and DNS; CHECK passes; DEL removes it and is idempotent', async () => {
    const c = await container();
    const vars = { containerId: 'ctr-add', netns: c.path, ifname: 'eth0', args: 'K8S_POD_NAME=web-0' };
    const add = await corralCni('ADD', vars, conf);
    expect(add.code, add.stdout).toBe(0);
    const addr = add.out.ips[0].address.split('/')[0];
    expect(add.out.ips[0]).toMatchObject({ address: `${addr}/32`, gateway: '10.42.0.1', interface: 1 });
    expect(add.out.routes).toEqual([{ dst: '0.0.0.0/0', gw: '10.42.0.1' }]);
    expect(add.out.dns).toEqual({ nameservers: ['10.42.0.1'], search: ['prod.corral.internal', 'corral.internal'], options: ['ndots:2'] });
    expect(add.out.interfaces[1]).toMatchObject({ name: 'eth0', sandbox: c.path });
    const link = (await c.exec('ip', ['-o', 'addr', 'show', 'eth0'])).stdout;
    expect(link).toContain(`inet ${addr}/32`);
    expect((await c.exec('ip', ['link', 'show', 'eth0'])).stdout).toMatch(/mtu 1420/);
    expect((await c.exec('ip', ['route'])).stdout).toMatch(/default via 10\.42\.0\.1 dev eth0/);
    expect((await host.exec('ip', ['route'])).stdout).toContain(`${addr} dev ${add.out.interfaces[0].name}`);
    expect(await ping(c, '10.42.0.1')).toBe(true);
    const ls = JSON.parse((await agent.cli(['ipam', 'ls', '--json'])).stdout);
    expect(ls.allocations).toContainEqual(expect.objectContaining({ address: addr, containerId: 'ctr-add', ifname: 'eth0', namespace: 'prod', name: 'web-0', node: 'test-node' }));

    expect((await corralCni('CHECK', vars, { ...conf, prevResult: add.out })).code).toBe(0);
    const mtu = await corralCni('CHECK', vars, { ...conf, mtu: 1400, prevResult: add.out });
    expect(mtu.out).toMatchObject({ code: 101 });
    expect(mtu.out.msg).toMatch(/MTU 1420, the config says 1400/);
    const dup = await corralCni('ADD', vars, conf);
    expect(dup.out.code).toBe(102);

    const del = await corralCni('DEL', vars, conf);
    expect(del.code, del.stdout).toBe(0);
    expect((await c.exec('ip', ['-o', 'link'])).stdout).not.toMatch(/eth0/);
    expect((await host.exec('ip', ['route'])).stdout).not.toContain(addr);
    expect((await corralCni('DEL', vars, conf)).code).toBe(0);
    await c.delete();
    expect((await corralCni('DEL', vars, conf)).code).toBe(0);
    const after = JSON.parse((await agent.cli(['ipam', 'ls', '--json'])).stdout);
    expect(after.allocations.map((a: { address: string }) => a.address)).not.toContain(addr);
  });

  it('DEL succeeds when the netns is already gone, and frees the address', async () => {
    const c = await container();
    const vars = { containerId: 'ctr-gone', netns: c.path, ifname: 'eth0' };
    const add = await corralCni('ADD', vars, conf);
    expect(add.code, add.stdout).toBe(0);
    await c.delete();
    expect((await corralCni('DEL', vars, conf)).code).toBe(0);
    const ls = JSON.parse((await agent.cli(['ipam', 'ls', '--json'])).stdout);
    expect(ls.allocations.filter((a: { containerId: string }) => a.containerId === 'ctr-gone')).toEqual([]);
  });

  it('two containers of one namespace reach each other; a third in another namespace cannot', async () => {
    const [a, b, x] = [await container(), await container(), await container()];
    const ra = await corralCni('ADD', { containerId: 'iso-a', netns: a.path, ifname: 'eth0' }, conf);
    const rb = await corralCni('ADD', { containerId: 'iso-b', netns: b.path, ifname: 'eth0' }, conf);
    const rx = await corralCni('ADD', { containerId: 'iso-x', netns: x.path, ifname: 'eth0' }, { ...conf, namespace: 'dev' });
    expect([ra.code, rb.code, rx.code]).toEqual([0, 0, 0]);
    expect(rx.out.dns.search).toEqual(['dev.corral.internal', 'corral.internal']);
    const ip = (r: typeof ra) => r.out.ips[0].address.split('/')[0];
    expect(await ping(a, ip(rb))).toBe(true);
    expect(await ping(b, ip(ra))).toBe(true);
    expect(await ping(x, ip(ra))).toBe(false);
    expect(await ping(a, ip(rx))).toBe(false);
    for (const [id, ns] of [['iso-a', a], ['iso-b', b], ['iso-x', x]] as const) {
      expect((await corralCni('DEL', { containerId: id, netns: ns.path, ifname: 'eth0' }, conf)).code).toBe(0);
    }
  });

  it('chains with portmap: prevResult passes through, and the host port reaches the container from another container and from the host', async () => {
    const [web, client] = [await container(), await container()];
    // Debian's reference plugins speak up to 1.0.0: the whole list uses it.
    const list = { cniVersion: '1.0.0', name: 'cnet' };
    const first = await corralCni('ADD', { containerId: 'pm-web', netns: web.path, ifname: 'eth0' }, { ...conf, ...list });
    expect(first.code, first.stdout).toBe(0);
    const pmConf = { ...list, type: 'portmap', capabilities: { portMappings: true }, runtimeConfig: { portMappings: [{ hostPort: 18080, containerPort: 8080, protocol: 'tcp' }] }, prevResult: first.out };
    const pmEnv = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'pm-web', CNI_NETNS: web.path, CNI_IFNAME: 'eth0' };
    // A runtime runs every plugin of the list in the host's namespace: here, the agent's.
    const portmap = await host.exec('env', [...Object.entries(pmEnv).map(([k, v]) => `${k}=${v}`), `CNI_PATH=${REFERENCE_PLUGINS}`, `${REFERENCE_PLUGINS}/portmap`], { input: JSON.stringify(pmConf) });
    const chained = JSON.parse(portmap.stdout);
    expect(chained.ips).toEqual(first.out.ips);
    expect(chained.dns).toEqual(first.out.dns);
    const cl = await corralCni('ADD', { containerId: 'pm-client', netns: client.path, ifname: 'eth0' }, { ...conf, ...list });
    expect(cl.code).toBe(0);
    const www = mkdtempSync(join(tmpdir(), 'corral-www-'));
    writeFileSync(join(www, 'index.html'), 'hello from corral\n');
    const webd = spawn('ip', ['netns', 'exec', web.name, 'busybox', 'httpd', '-f', '-p', '8080', '-h', www], { stdio: 'ignore' });
    try {
      const webIp = first.out.ips[0].address.split('/')[0];
      // portmap installed its DNAT for the host port in the host's namespace.
      expect((await host.exec('iptables-save', ['-t', 'nat'])).stdout).toMatch(new RegExp(`--dport 18080 .*-j DNAT --to-destination ${webIp.replace(/\./g, '\\.')}:8080`));
      // Traffic through the host port: from another container (PREROUTING) and from the host itself (OUTPUT), to the host's gateway address.
      const viaPort = (ns: Netns) => ns.exec('busybox', ['timeout', '5', 'wget', '-q', '-O', '-', 'http://10.42.0.1:18080/']).then((r) => r.stdout, (e: Error) => e.message);
      await until('the web container reaches its gateway', () => ping(web, '10.42.0.1'), { ms: 5_000, everyMs: 100 });
      expect(await viaPort(client)).toBe('hello from corral\n');
      expect(await viaPort(host)).toBe('hello from corral\n');
    } finally {
      webd.kill('SIGKILL');
      rmSync(www, { recursive: true, force: true });
    }
    await host.exec('env', [...Object.entries({ ...pmEnv, CNI_COMMAND: 'DEL' }).map(([k, v]) => `${k}=${v}`), `CNI_PATH=${REFERENCE_PLUGINS}`, `${REFERENCE_PLUGINS}/portmap`], { input: JSON.stringify(pmConf) });
    expect((await corralCni('DEL', { containerId: 'pm-web', netns: web.path, ifname: 'eth0' }, conf)).code).toBe(0);
    expect((await corralCni('DEL', { containerId: 'pm-client', netns: client.path, ifname: 'eth0' }, conf)).code).toBe(0);
  });

  it('ipMasq: traffic to an address outside the cluster CIDR leaves with the host\'s address; without ipMasq it keeps its own; DEL removes the rule', async () => {
    // An "outside" network: a test netns on a veth from the host with 10.200.0.0/24, and a CGI that echoes the client address.
    const out = await container();
    const [hv, ov] = [`co${out.name.slice(-8)}`, 'eth0'];
    await host.exec('ip', ['link', 'add', hv, 'type', 'veth', 'peer', 'name', ov, 'netns', out.name]);
    await host.exec('ip', ['addr', 'add', '10.200.0.1/24', 'dev', hv]);
    await host.exec('ip', ['link', 'set', hv, 'up']);
    await out.exec('ip', ['addr', 'add', '10.200.0.2/24', 'dev', ov]);
    await out.exec('ip', ['link', 'set', ov, 'up']);
    await out.exec('ip', ['route', 'add', '10.42.0.0/16', 'via', '10.200.0.1']);
    const www = mkdtempSync(join(tmpdir(), 'corral-www-'));
    mkdirSync(join(www, 'cgi-bin'));
    writeFileSync(join(www, 'cgi-bin', 'who'), '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "$REMOTE_ADDR"\n', { mode: 0o755 });
    const outd = spawn('ip', ['netns', 'exec', out.name, 'busybox', 'httpd', '-f', '-p', '8081', '-h', www], { stdio: 'ignore' });
    const [m, n] = [await container(), await container()];
    try {
      const rm = await corralCni('ADD', { containerId: 'masq-on', netns: m.path, ifname: 'eth0' }, conf);
      const rn = await corralCni('ADD', { containerId: 'masq-off', netns: n.path, ifname: 'eth0' }, { ...conf, ipMasq: false });
      expect([rm.code, rn.code]).toEqual([0, 0]);
      const who = (ns: Netns) => ns.exec('busybox', ['timeout', '5', 'wget', '-q', '-O', '-', 'http://10.200.0.2:8081/cgi-bin/who']).then((r) => r.stdout.trim().replace(/^\[::ffff:(.*)\]$/, '$1'), (e: Error) => e.message);
      await until('the outside server sees the masqueraded address', async () => (await who(m)) === '10.200.0.1', { ms: 5_000, everyMs: 100 });
      expect(await who(m)).toBe('10.200.0.1');
      expect(await who(n)).toBe(rn.out.ips[0].address.split('/')[0]);
      const masqAddr = rm.out.ips[0].address.split('/')[0];
      expect((await host.exec('nft', ['list', 'set', 'ip', 'corral', 'masq'])).stdout).toContain(masqAddr);
      expect((await corralCni('DEL', { containerId: 'masq-on', netns: m.path, ifname: 'eth0' }, conf)).code).toBe(0);
      expect((await host.exec('nft', ['list', 'set', 'ip', 'corral', 'masq'])).stdout).not.toContain(masqAddr);
      expect((await corralCni('DEL', { containerId: 'masq-off', netns: n.path, ifname: 'eth0' }, conf)).code).toBe(0);
    } finally {
      outd.kill('SIGKILL');
      rmSync(www, { recursive: true, force: true });
      await host.exec('ip', ['link', 'del', hv]).catch(() => undefined);
    }
  });

  it('GC frees every attachment of the network not in cni.dev/valid-attachments', async () => {
    const [g1, g2] = [await container(), await container()];
    const r1 = await corralCni('ADD', { containerId: 'gc-1', netns: g1.path, ifname: 'eth0' }, conf);
    const r2 = await corralCni('ADD', { containerId: 'gc-2', netns: g2.path, ifname: 'eth0' }, conf);
    expect([r1.code, r2.code]).toEqual([0, 0]);
    const gc = await corralCni('GC', {}, { ...conf, 'cni.dev/valid-attachments': [{ containerID: 'gc-1', ifname: 'eth0' }] });
    expect(gc.code, gc.stdout).toBe(0);
    const owners = JSON.parse((await agent.cli(['ipam', 'ls', '--json'])).stdout).allocations.map((a: { containerId: string }) => a.containerId);
    expect(owners).toContain('gc-1');
    expect(owners).not.toContain('gc-2');
    expect((await g2.exec('ip', ['-o', 'link'])).stdout).not.toMatch(/eth0/);
    expect((await corralCni('DEL', { containerId: 'gc-1', netns: g1.path, ifname: 'eth0' }, conf)).code).toBe(0);
  });

  it('STATUS is 0 with the agent up and 50 when it is unreachable; ADD then says try again later (11)', async () => {
    expect((await corralCni('STATUS', {}, conf)).code).toBe(0);
    const down = { ...conf, agentSocket: '/run/corral-test-no-agent.sock' };
    const st = await corralCni('STATUS', {}, down);
    expect(st.out).toMatchObject({ code: 50 });
    expect(st.out.msg).toMatch(/cannot reach the agent/);
    const c = await container();
    const add = await corralCni('ADD', { containerId: 'down', netns: c.path, ifname: 'eth0' }, down);
    expect(add.out).toMatchObject({ code: 11 });
  });
});
