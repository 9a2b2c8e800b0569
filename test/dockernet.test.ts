// The Corral Docker network driver, driven by the real docker CLI against a private dockerd:
// `docker network create -d <plugin> --ipam-driver <plugin>` and `docker run --network` give
// containers Corral addresses from the agent's IPAM; they reach each other by address and, through
// Corral DNS on the block gateway, by service name; another namespace's network cannot reach
// them; removing a container frees its address. The plugin socket name is unique per run
// (Docker looks for plugins in the global /run/docker/plugins) and is gone after the agent stops.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from './support/corral.js';
import { startDockerd, TEST_IMAGE, type Dockerd } from './support/dockerd.js';
import { until } from './support/until.js';

const PLUGIN = `corral-t${randomBytes(3).toString('hex')}`;
const PLUGIN_SOCKET = `/run/docker/plugins/${PLUGIN}.sock`;
const GATEWAY = '10.42.0.1';
let docker: Dockerd;
let up: Daemon;

interface Alloc { address: string; namespace: string; containerId: string; ifname: string }

async function allocations(): Promise<Alloc[]> {
  return JSON.parse((await up.cli(['ipam', 'ls', '--json'])).stdout).allocations as Alloc[];
}

async function addressOf(name: string, network: string): Promise<{ ip: string; prefix: number }> {
  const j = JSON.parse(await docker.exec(['inspect', name]))[0].NetworkSettings.Networks[network];
  return { ip: j.IPAddress, prefix: j.IPPrefixLen };
}

/** Runs a busybox container on `network` using Corral DNS as Docker's upstream, as README says. */
function run(name: string, network: string, ns: string, args: string[], labels: string[] = []): Promise<string> {
  return docker.exec([
    'run', '-d', '--name', name, '--network', network,
    '--dns', GATEWAY, '--dns-search', `${ns}.corral.internal`, '--dns-search', 'corral.internal', '--dns-opt', 'ndots:2',
    ...labels.flatMap((l) => ['-l', l]), TEST_IMAGE, ...args,
  ]);
}

/** busybox wget with a time bound (this busybox build crashes on `wget -T`). */
function wget(container: string, url: string, seconds = 5): Promise<string> {
  return docker.exec(['exec', container, 'busybox', 'timeout', String(seconds), 'wget', '-q', '-O', '-', url]);
}

beforeAll(async () => {
  docker = await startDockerd();
  // DNS on every address of the private netns, so on the gateway as soon as it exists.
  up = await startDaemon('up', {
    netns: docker.netns.name, dockerSocket: docker.socket,
    args: ['--docker-plugin-socket', PLUGIN_SOCKET, '--dns-listen', '0.0.0.0:53'],
  });
});

afterAll(async () => {
  await docker?.exec(['rm', '-f', 'c-web', 'c-client', 'c-dev']).catch(() => undefined);
  await docker?.exec(['network', 'rm', 'prodnet', 'devnet']).catch(() => undefined);
  await up?.stop();
  await docker?.stop();
});

describe('Docker network driver', () => {
  it('refuses a network without the Corral IPAM driver, saying which flag to add', async () => {
    const err = await docker.exec(['network', 'create', '-d', PLUGIN, 'badnet']).then(() => '', (e: Error) => e.message);
    expect(err).toMatch(new RegExp(`--ipam-driver ${PLUGIN}`));
  });

  it('gives containers Corral /32 addresses; they reach each other by address and by service name; another namespace cannot', async () => {
    await docker.exec(['network', 'create', '-d', PLUGIN, '--ipam-driver', PLUGIN, '--opt', 'corral.namespace=prod', 'prodnet']);
    await docker.exec(['network', 'create', '-d', PLUGIN, '--ipam-driver', PLUGIN, '--opt', 'corral.namespace=dev', '--opt', 'com.docker.network.driver.mtu=1380', 'devnet']);
    await run('c-web', 'prodnet', 'prod', ['httpd', '-f', '-p', '8080', '-h', '/www'], ['corral.service=web', 'corral.namespace=prod', 'corral.port=8080']);
    await run('c-client', 'prodnet', 'prod', ['sleep', '600']);
    await run('c-dev', 'devnet', 'dev', ['sleep', '600']);
    const web = await addressOf('c-web', 'prodnet');
    const client = await addressOf('c-client', 'prodnet');
    expect(web.ip).toMatch(/^10\.42\.0\.\d+$/);
    expect(web.prefix).toBe(32);
    expect(client.ip).toMatch(/^10\.42\.0\.\d+$/);
    expect(client.ip).not.toBe(web.ip);

    // Inside: eth0 with the /32, the link route to the gateway and the default route via it.
    // MTU: the overlay's when the network names none (no overlay here: the 1420 default), else the network's.
    expect(await docker.exec(['exec', 'c-client', 'cat', '/sys/class/net/eth0/mtu'])).toBe('1420');
    expect(await docker.exec(['exec', 'c-dev', 'cat', '/sys/class/net/eth0/mtu'])).toBe('1380');
    const routes = await docker.exec(['exec', 'c-client', 'ip', 'route']);
    expect(routes).toMatch(new RegExp(`default via ${GATEWAY.replace(/\./g, '\\.')} dev eth0`));
    // Same IPAM as CNI: keyed by Docker's endpoint id, in the network's namespace.
    const allocs = await allocations();
    const endpointId = JSON.parse(await docker.exec(['inspect', 'c-web']))[0].NetworkSettings.Networks.prodnet.EndpointID;
    expect(allocs).toContainEqual(expect.objectContaining({ address: web.ip, namespace: 'prod', containerId: endpointId, ifname: 'docker' }));

    // By address.
    expect(await wget('c-client', `http://${web.ip}:8080/`)).toBe('ok');
    // Labels still expose it, at its Corral address.
    await until('web registered at its Corral address', async () => {
      const r = await up.cli(['endpoints', 'web', '-n', 'prod', '--json']);
      return JSON.parse(r.stdout).endpoints.some((e: { address: string }) => e.address === web.ip) ? true : undefined;
    });
    // By name: Docker's resolver forwards to Corral DNS on the gateway; the search path makes `web` web.prod.corral.internal.
    const ns = await docker.exec(['exec', 'c-client', 'nslookup', 'web.prod.corral.internal']);
    expect(ns).toContain(web.ip);
    expect(await wget('c-client', 'http://web:8080/')).toBe('ok');

    // Namespaces do not reach each other.
    const cross = await wget('c-dev', `http://${web.ip}:8080/`, 2).then(() => 'reached', () => 'blocked');
    expect(cross).toBe('blocked');
  });

  it('removing a container removes its veth and frees its address', async () => {
    const web = await addressOf('c-web', 'prodnet');
    const hostLinksBefore = (await docker.netns.exec('ip', ['-o', 'link'])).stdout;
    expect(hostLinksBefore).toMatch(/cr[0-9a-f]{11}/);
    expect((await docker.netns.exec('ip', ['route'])).stdout).toContain(web.ip);
    await docker.exec(['rm', '-f', 'c-web']);
    await until('address freed', async () => ((await allocations()).some((a) => a.address === web.ip) ? undefined : true));
    expect((await docker.netns.exec('ip', ['route'])).stdout).not.toContain(`${web.ip} dev`);
    await docker.exec(['rm', '-f', 'c-client', 'c-dev']);
    await until('all addresses freed', async () => ((await allocations()).length === 0 ? true : undefined));
    expect((await docker.netns.exec('ip', ['-o', 'link'])).stdout).not.toMatch(/cr[0-9a-f]{11}/);
    await docker.exec(['network', 'rm', 'prodnet', 'devnet']);
  });

  it('the plugin socket goes away with the agent', async () => {
    expect(existsSync(PLUGIN_SOCKET)).toBe(true);
    await up.stop();
    expect(existsSync(PLUGIN_SOCKET)).toBe(false);
  });
});
