// podman as a real CNI client of corral-cni: a private podman (its own containers.conf, storage
// root, run root and CNI config dir, so the machine's podman is untouched) runs in a test host
// netns beside the agent; `corral install-cni` writes the plugin and conflist it uses. Two
// containers reach each other by address and, through Corral DNS on the block gateway, by name.
import { chmod, copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corral, startDaemon, type Daemon } from './support/corral.js';
import { Netns, run } from './support/netns.js';
import { until } from './support/until.js';

const IMAGE = 'localhost/corral-test/busybox:1';
const GATEWAY = '10.42.0.1';
let host: Netns;
let agent: Daemon;
let dir: string;

function podman(args: string[], timeoutMs = 60_000): Promise<string> {
  return run('nsenter', [`--net=${host.path}`, 'env', `CONTAINERS_CONF=${join(dir, 'containers.conf')}`, 'podman',
    '--root', join(dir, 'root'), '--runroot', join(dir, 'runroot'), '--storage-driver', 'vfs', '--tmpdir', join(dir, 'tmp'), ...args], { timeoutMs }).then((r) => r.stdout.trim());
}

/** busybox wget with a time bound (this busybox build crashes on `wget -T`). */
function wget(container: string, url: string, seconds = 5): Promise<string> {
  return podman(['exec', container, 'busybox', 'timeout', String(seconds), 'wget', '-q', '-O', '-', url]);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'corral-podman-'));
  host = await Netns.create('corral-ph');
  agent = await startDaemon('up', { netns: host.name, args: ['--dns-listen', '0.0.0.0:53'] });
  const bin = join(dir, 'bin');
  const conf = join(dir, 'net.d');
  const inst = await corral(['install-cni', '--bin-dir', bin, '--conf-dir', conf, '-n', 'prod', '--agent-socket', agent.socket]);
  expect(inst.code, inst.stderr).toBe(0);
  await writeFile(join(dir, 'containers.conf'), [
    '[containers]',
    // This sandbox refuses raising rlimits (TESTBED.md).
    'default_ulimits = ["nofile=20000:20000", "nproc=1000:1000"]',
    '[network]',
    'network_backend = "cni"',
    `cni_plugin_dirs = ["${bin}", "/usr/lib/cni"]`,
    `network_config_dir = "${conf}"`,
    '[engine]',
    'cgroup_manager = "cgroupfs"',
    'events_logger = "file"',
    `events_logfile_path = "${join(dir, 'events.log')}"`,
    '',
  ].join('\n'));
  await mkdir(join(dir, 'tmp'), { recursive: true });
  // The offline busybox image, from the same kind of rootfs the Docker tests import.
  const root = join(dir, 'rootfs');
  for (const d of ['bin', 'www', 'tmp', 'etc']) await mkdir(join(root, d), { recursive: true });
  await copyFile('/bin/busybox', join(root, 'bin', 'busybox'));
  await chmod(join(root, 'bin', 'busybox'), 0o755);
  for (const a of ['sh', 'httpd', 'nslookup', 'wget', 'ip', 'sleep', 'cat']) await symlink('busybox', join(root, 'bin', a));
  await writeFile(join(root, 'www', 'index.html'), 'ok\n');
  await run('tar', ['-C', root, '-cf', join(dir, 'rootfs.tar'), '.']);
  await podman(['import', '--change', 'ENV PATH=/bin', join(dir, 'rootfs.tar'), IMAGE], 120_000);
});

afterAll(async () => {
  if (dir) {
    await podman(['rm', '-f', '-a', '-t', '0']).catch(() => undefined);
    await run('umount', ['-R', join(dir, 'root')]).catch(() => undefined);
    await run('umount', ['-R', join(dir, 'runroot')]).catch(() => undefined);
  }
  await agent?.stop();
  await host?.delete();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('podman with a Corral CNI network', () => {
  it('runs two containers that reach each other by address and by name; removing them frees the addresses', async () => {
    const dnsArgs = ['--dns', GATEWAY, '--dns-search', 'prod.corral.internal', '--dns-search', 'corral.internal', '--dns-option', 'ndots:2'];
    await podman(['run', '-d', '--pull=never', '--name', 'p-web', '--network', 'corral', ...dnsArgs, IMAGE, 'httpd', '-f', '-p', '8080', '-h', '/www']);
    await podman(['run', '-d', '--pull=never', '--name', 'p-client', '--network', 'corral', ...dnsArgs, IMAGE, 'sleep', '600']);
    const ipOf = async (name: string) => (await podman(['inspect', '-f', '{{.NetworkSettings.Networks.corral.IPAddress}}', name]));
    const web = await ipOf('p-web');
    const client = await ipOf('p-client');
    expect(web).toMatch(/^10\.42\.0\.\d+$/);
    expect(client).toMatch(/^10\.42\.0\.\d+$/);
    const allocs = JSON.parse((await agent.cli(['ipam', 'ls', '--json'])).stdout).allocations as Array<{ address: string; namespace: string }>;
    expect(allocs.map((a) => a.address).sort()).toEqual([web, client].sort());
    expect(allocs.every((a) => a.namespace === 'prod')).toBe(true);

    expect(await wget('p-client', `http://${web}:8080/`)).toBe('ok');
    // By name: a service registered for the podman container (podman has no labels Corral reads).
    const reg = await agent.cli(['register', 'web', `${web}:8080`, '-n', 'prod']);
    expect(reg.code, reg.stderr).toBe(0);
    await until('web in DNS', async () => ((await podman(['exec', 'p-client', 'nslookup', 'web.prod.corral.internal'])).includes(web) ? true : undefined));
    expect(await wget('p-client', 'http://web:8080/')).toBe('ok');

    await podman(['rm', '-f', '-t', '0', 'p-web', 'p-client']);
    const after = JSON.parse((await agent.cli(['ipam', 'ls', '--json'])).stdout).allocations as unknown[];
    expect(after).toEqual([]);
  });
});
