// Docker and Compose with no per-container flags, on two hosts: each host runs `corral agent
// --docker-daemon-json <its dockerd's daemon.json>`, which merges Docker's defaults for the host
// (the default bridge in its block, Corral DNS, the overlay MTU) into the file the user already
// has; dockerd restarts once, as the agent says. Then a plain `docker run -l corral.service=…`,
// and Compose files (Debian's docker-compose 1.29) whose default network uses the Corral driver,
// give containers every other host reaches by address, by name and through its LB. Each host
// serves the driver under a name of its own (Docker looks for plugins in the one global
// /run/docker/plugins), handed to Compose as CORRAL_DRIVER; README's files say `corral`.
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCluster, type Cluster, type TestHost } from '../support/cluster.js';
import { startDaemon, type Daemon } from '../support/corral.js';
import { startDockerd, TEST_IMAGE, type Dockerd } from '../support/dockerd.js';
import { corralCni } from '../support/cni.js';
import { Netns, run } from '../support/netns.js';
import { until } from '../support/until.js';

interface Node { host: TestHost; docker: Dockerd; dns: Daemon; lb: Daemon; gateway: string; block: string; driver: string }

const NETWORKS = `networks:
  default:
    driver: \${CORRAL_DRIVER}
    ipam:
      driver: \${CORRAL_DRIVER}
`;

const WEB_COMPOSE = `version: "2.4"
services:
  web:
    image: ${TEST_IMAGE}
    command: ["sh", "-c", "busybox hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    labels:
      corral.service: web
      corral.http.host: web.test
${NETWORKS}`;
const CLIENT_COMPOSE = `version: "2.4"
services:
  client:
    image: ${TEST_IMAGE}
    command: ["sleep", "3600"]
${NETWORKS}`;

describe('Docker and Compose on two hosts with Docker defaults from the agent', () => {
  let c: Cluster;
  const nodes: Node[] = [];
  // Everything started, stopped in reverse even when the setup failed half-way.
  const started: Array<() => Promise<unknown>> = [];
  let dir: string;

  const compose = (n: Node, project: string, file: string, args: string[]) =>
    run('env', [`DOCKER_HOST=unix://${n.docker.socket}`, `CORRAL_DRIVER=${n.driver}`, 'docker-compose', '-p', project, '-f', join(dir, file), ...args], { timeoutMs: 120_000 }).then((r) => r.stdout.trim());
  const dig = async (n: Node, name: string) => (await n.host.ns.exec('dig', ['+short', '+time=1', '+tries=1', `@${n.gateway}`, name])).stdout.trim().split('\n').filter(Boolean).sort();
  const viaLb = (n: Node, host: string) => n.host.ns.exec('curl', ['-s', '-m', '5', '-o', '-', '-w', '\n%{http_code}', '-H', `Host: ${host}`, `http://127.0.0.1:${n.lb.httpPort}/`]).then((r) => r.stdout);
  const wget = (n: Node, container: string, url: string) => n.docker.exec(['exec', container, 'busybox', 'timeout', '5', 'wget', '-q', '-O', '-', url]);
  const ipOf = async (n: Node, container: string) => Object.values(JSON.parse(await n.docker.exec(['inspect', container]))[0].NetworkSettings.Networks as Record<string, { IPAddress: string }>)[0]!.IPAddress;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'corral-compose-'));
    writeFileSync(join(dir, 'web.yml'), WEB_COMPOSE);
    writeFileSync(join(dir, 'client.yml'), CLIENT_COMPOSE);
    c = await startCluster({ hosts: 0 });
    const hosts = [await c.addHost(), await c.addHost()];
    // The two hosts come up side by side (each dockerd imports its image on vfs: the slow part).
    nodes.push(...await Promise.all(hosts.map(async (host) => {
      // The user's daemon.json already says something: the agent must keep it.
      const docker = await startDockerd({ netns: host.ns, daemonJson: { 'log-level': 'warn', 'max-concurrent-downloads': 2 } });
      started.push(() => docker.stop());
      const driver = `corral-t${randomBytes(3).toString('hex')}`;
      await host.start(['--docker-socket', docker.socket, '--docker-daemon-json', join(docker.dir, 'daemon.json'), '--docker-plugin-socket', `/run/docker/plugins/${driver}.sock`]);
      const row = JSON.parse((await host.agent!.cli(['hosts', '--json'])).stdout).rows.find((r: { host: { name: string } }) => r.host.name === host.name);
      const block = String(row.host.block);
      const dns = await startDaemon('dns', { netns: host.ns.name, nodeName: host.name, args: ['--agent-socket', host.agent!.socket, '--dns-listen', 'gateway:53'] });
      started.push(() => dns.stop());
      const lb = await startDaemon('lb', { netns: host.ns.name, nodeName: host.name, args: ['--agent-socket', host.agent!.socket] });
      started.push(() => lb.stop());
      return { host, docker, dns, lb, block, driver, gateway: block.replace(/\.0\/24$/, '.1') };
    })));
  });

  afterAll(async () => {
    for (const n of nodes) {
      for (const p of ['webs', 'clients']) await compose(n, p, p === 'webs' ? 'web.yml' : 'client.yml', ['down', '-t', '0']).catch(() => undefined);
    }
    for (const stop of started.reverse()) await stop().catch(() => undefined);
    await c?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('merges Docker\'s defaults into daemon.json, keeping the user\'s keys, and says dockerd needs a restart', async () => {
    await Promise.all(nodes.map(async (n) => {
      const j = JSON.parse(readFileSync(join(n.docker.dir, 'daemon.json'), 'utf8'));
      const net = n.block.replace(/\.0\/24$/, '');
      expect(j).toEqual({
        'log-level': 'warn', 'max-concurrent-downloads': 2,
        bip: `${net}.129/25`, mtu: 1440,
        dns: [n.gateway], 'dns-search': ['default.corral.internal', 'corral.internal'], 'dns-opts': ['ndots:2'], 'ip-masq': false,
      });
      expect(n.host.agent!.logs()).toMatch(/Docker defaults written: restart dockerd/);
      await n.docker.stopDaemon();
      await n.docker.startDaemon();
    }));
  });

  it('a plain `docker run` on h2 is reached from h1 by address, by name and through h1\'s LB; it has Corral DNS and the overlay MTU', async () => {
    const [n1, n2] = nodes as [Node, Node];
    await n2.docker.exec(['run', '-d', '--name', 'api', '-l', 'corral.service=api', '-l', 'corral.http.host=api.test', TEST_IMAGE, 'httpd', '-f', '-p', '80', '-h', '/www']);
    const ip = await ipOf(n2, 'api');
    expect(ip.startsWith(n2.block.replace(/0\/24$/, ''))).toBe(true);
    expect(Number(ip.split('.')[3])).toBeGreaterThan(128);
    expect(await n2.docker.exec(['exec', 'api', 'cat', '/etc/resolv.conf'])).toMatch(new RegExp(`nameserver ${n2.gateway.replace(/\./g, '\\.')}[\\s\\S]*search default\\.corral\\.internal corral\\.internal|search default\\.corral\\.internal corral\\.internal[\\s\\S]*nameserver ${n2.gateway.replace(/\./g, '\\.')}`));
    expect(await n2.docker.exec(['exec', 'api', 'ip', 'link', 'show', 'eth0'])).toMatch(/mtu 1440 /);
    await n1.docker.exec(['run', '-d', '--name', 'probe', TEST_IMAGE, 'sleep', '3600']);
    await until('probe on h1 reaches api on h2 by address', async () => (await wget(n1, 'probe', `http://${ip}/`)) === 'ok', { ms: 20_000, everyMs: 250 });
    await until('probe on h1 reaches api by name', async () => (await wget(n1, 'probe', 'http://api/')) === 'ok', { ms: 20_000, everyMs: 250 });
    await until('h1\'s LB routes api.test to h2', async () => (await viaLb(n1, 'api.test')) === 'ok\n\n200', { ms: 20_000, everyMs: 250 });
  });

  it('keeps Docker\'s default-bridge containers (namespace default) out of other namespaces', async () => {
    const [n1] = nodes as [Node, Node];
    const added: Array<{ id: string; ns: Netns }> = [];
    try {
      const attach = async (namespace: string) => {
        const ns = await Netns.create('corral-dd');
        const id = `dd${randomBytes(4).toString('hex')}`;
        added.push({ id, ns });
        const r = await corralCni('ADD', { containerId: id, netns: ns.path, ifname: 'eth0' }, { cniVersion: '1.1.0', name: 'corral', type: 'corral', agentSocket: n1.host.agent!.socket, namespace });
        expect(r.code, r.stdout).toBe(0);
        return String(r.out.ips[0].address).split('/')[0]!;
      };
      const same = await attach('default');
      const other = await attach('prod');
      const ping = (to: string) => n1.docker.exec(['exec', 'probe', 'busybox', 'ping', '-c', '1', '-W', '1', to]).then(() => true, () => false);
      await until('probe (docker0) pings a default-namespace attachment', () => ping(same), { ms: 10_000, everyMs: 250 });
      expect(await ping(other)).toBe(false);
    } finally {
      for (const a of added) {
        await corralCni('DEL', { containerId: a.id, netns: a.ns.path, ifname: 'eth0' }, { cniVersion: '1.1.0', name: 'corral', type: 'corral', agentSocket: n1.host.agent!.socket });
        await a.ns.delete();
      }
    }
  });

  it('a Compose project on h1 reaches a Compose service on h2 by name and through h1\'s LB; --scale web=3 gives three endpoints; down removes them', async () => {
    const [n1, n2] = nodes as [Node, Node];
    await compose(n2, 'webs', 'web.yml', ['up', '-d', '--scale', 'web=3']);
    await compose(n1, 'clients', 'client.yml', ['up', '-d']);
    const webs = (await n2.docker.exec(['ps', '-q', '--filter', 'label=com.docker.compose.project=webs'])).split('\n').filter(Boolean);
    expect(webs.length).toBe(3);
    const ips = (await Promise.all(webs.map((id) => ipOf(n2, id)))).sort();
    // From h2's Corral IPAM: the lower half of its block (Docker's bridge has the upper).
    const net = n2.block.replace(/0\/24$/, '');
    for (const ip of ips) expect(ip.startsWith(net) && Number(ip.split('.')[3]) < 128).toBe(true);
    // Three endpoints in every host's DNS.
    await until('h1 DNS answers the three web containers on h2', async () => JSON.stringify(await dig(n1, 'web.default.corral.internal')) === JSON.stringify(ips), { ms: 20_000, everyMs: 250 });
    // The Compose client on h1, by the short name (Docker's embedded DNS forwards to Corral DNS).
    const client = (await n1.docker.exec(['ps', '-q', '--filter', 'label=com.docker.compose.project=clients'])).trim();
    expect(await n1.docker.exec(['exec', client, 'ip', 'link', 'show', 'eth0'])).toMatch(/mtu 1440 /);
    const names = new Set<string>();
    await until('the client on h1 reaches web on h2 by name', async () => /^[0-9a-f]{12}$/.test(await wget(n1, client, 'http://web/')), { ms: 20_000, everyMs: 250 });
    // Through h1's LB: round robin over the three.
    await until('h1\'s LB balances over all three', async () => {
      const body = await viaLb(n1, 'web.test');
      if (body.endsWith('\n200')) names.add(body.split('\n')[0]!);
      return names.size === 3;
    }, { ms: 20_000, everyMs: 50 });
    await compose(n2, 'webs', 'web.yml', ['down', '-t', '1']);
    await until('h1 DNS no longer answers web', async () => (await dig(n1, 'web.default.corral.internal')).length === 0, { ms: 20_000, everyMs: 250 });
    await until('h1\'s LB no longer routes web.test', async () => !(await viaLb(n1, 'web.test')).endsWith('\n200'), { ms: 30_000, everyMs: 250 });
  }, 180_000);
});
