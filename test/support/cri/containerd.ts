// A private containerd (Debian's 1.6, with its CRI plugin) for one test host: its own root, state,
// socket, opt dir and CNI dirs, started inside the host's netns, so pods it makes are wired by the
// agent of that host. The machine's containerd (and dockerd's) is never touched. The sandbox
// ("pause") image and a busybox image are built offline from busybox-static and imported with
// `ctr -n k8s.io images import`. stop() kills what it started (and the shims that name its dirs),
// unmounts and removes its dirs.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, readFileSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Netns } from '../netns.js';
import { run } from '../netns.js';
import { until } from '../until.js';
import { childEnv } from '../corral.js';
import { killProcessesNaming, unmountUnder } from '../dockerd.js';

export const PAUSE_IMAGE = 'corral-test/pause:1';
export const BUSYBOX_IMAGE = 'corral-test/busybox:1';
const APPLETS = ['sh', 'httpd', 'nslookup', 'wget', 'ip', 'sleep', 'cat', 'echo', 'ls', 'timeout', 'hostname'];

export interface Containerd {
  dir: string;
  socket: string;
  /** The CNI dirs the CRI plugin reads (what `corral install-cni` writes into). */
  cniBinDir: string;
  cniConfDir: string;
  pid(): number | undefined;
  /** The daemon's log, for failure messages. */
  logTail(lines?: number): string;
  /** SIGTERM/SIGKILL only the daemon: shims and pods keep running (a containerd restart). */
  stopDaemon(signal?: NodeJS.Signals): Promise<void>;
  startDaemon(): Promise<void>;
  /** Everything: pods' shims, the daemon, mounts, dirs. */
  stop(): Promise<void>;
}

export async function ensureContainerdInstalled(): Promise<void> {
  const missing: string[] = [];
  for (const [bin, pkg] of [['containerd', 'containerd'], ['ctr', 'containerd'], ['containerd-shim-runc-v2', 'containerd'], ['runc', 'runc']] as const) {
    if (!(await run('sh', ['-c', `command -v ${bin}`]).then(() => true, () => false))) missing.push(`${bin} (${pkg})`);
  }
  if (!existsSync('/bin/busybox')) missing.push('/bin/busybox (busybox-static)');
  if (missing.length) throw new Error(`cannot start a private containerd: missing ${missing.join(', ')}; run \`bash scripts/setup.sh --test\` as root`);
  if (!existsSync('/sys/fs/cgroup/devices')) await run('cgroupfs-mount', []).catch(() => undefined);
}

/** Starts containerd in `netns` with the CRI plugin reading CNI config from its own dirs (or the given ones). */
/**
 * o.runtimes: more runtime handlers (RunPodSandbox's runtime_handler), each with a CNI config dir
 * of its own: one containerd can start pods on two networks side by side (the benchmark's anchor).
 */
export async function startContainerd(o: { netns: Netns; cniBinDir?: string; cniConfDir?: string; prefix?: string; runtimes?: Record<string, { cniConfDir: string }> }): Promise<Containerd> {
  await ensureContainerdInstalled();
  const dir = await mkdtemp(join(tmpdir(), `${o.prefix ?? 'corral-cri'}-ctrd-`));
  const socket = join(dir, 'containerd.sock');
  const cniBinDir = o.cniBinDir ?? join(dir, 'cni-bin');
  const cniConfDir = o.cniConfDir ?? join(dir, 'net.d');
  const logPath = join(dir, 'containerd.log');
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const toml = (s: string) => JSON.stringify(s);
  const config = [
    'version = 2',
    `root = ${toml(join(dir, 'root'))}`,
    `state = ${toml(join(dir, 'state'))}`,
    // Plugins this test does not use stay off: nothing outside our dirs.
    'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
    '[grpc]',
    `  address = ${toml(socket)}`,
    '[ttrpc]',
    `  address = ${toml(`${socket}.ttrpc`)}`,
    '[debug]',
    '  address = ""',
    '  level = "info"',
    '[metrics]',
    '  address = ""',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${toml(join(dir, 'opt'))}`,
    '[plugins."io.containerd.grpc.v1.cri"]',
    `  sandbox_image = ${toml(PAUSE_IMAGE)}`,
    // root here lacks CAP_SYS_RESOURCE: without this every sandbox fails in runc (TESTBED.md).
    '  restrict_oom_score_adj = true',
    '  enable_selinux = false',
    '  stream_server_address = "127.0.0.1"',
    '  stream_server_port = "0"',
    '  [plugins."io.containerd.grpc.v1.cri".containerd]',
    '    snapshotter = "overlayfs"',
    '    default_runtime_name = "runc"',
    '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
    '      runtime_type = "io.containerd.runc.v2"',
    ...Object.entries(o.runtimes ?? {}).flatMap(([name, rt]) => [
      `    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.${name}]`,
      '      runtime_type = "io.containerd.runc.v2"',
      `      cni_conf_dir = ${toml(rt.cniConfDir)}`,
      '      cni_max_conf_num = 1',
    ]),
    '  [plugins."io.containerd.grpc.v1.cri".cni]',
    `    bin_dir = ${toml(cniBinDir)}`,
    `    conf_dir = ${toml(cniConfDir)}`,
    '    max_conf_num = 1',
    '',
  ].join('\n');

  const logTail = (lines = 30): string => {
    try {
      return readFileSync(logPath, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no containerd log)';
    }
  };

  const startDaemon = async (): Promise<void> => {
    const log = createWriteStream(logPath, { flags: 'a' });
    // The environment of a containerd service: no NODE_EXTRA_CA_CERTS (CNI plugins inherit it, and it costs ~50 ms per node start).
    const proc = spawn('nsenter', [`--net=${o.netns.path}`, 'containerd', '--config', join(dir, 'config.toml')], { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv() });
    child = proc;
    proc.stdout!.pipe(log, { end: false });
    proc.stderr!.pipe(log, { end: false });
    exited = new Promise((resolve) => proc.once('exit', () => { log.end(); resolve(); }));
    await until('containerd answers with its CRI plugin', async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`containerd exited (${proc.exitCode ?? proc.signalCode})`);
      const r = await run('ctr', ['--address', socket, 'plugins', 'ls'], { timeoutMs: 5000 });
      const line = r.stdout.split('\n').find((l) => /io\.containerd\.grpc\.v1\s+cri\s/.test(l));
      if (line && !/\sok\s*$/.test(line)) throw new Error(`the CRI plugin is not ok: ${line}`);
      return !!line;
    }, { ms: 60_000, everyMs: 250, detail: () => logTail() });
  };

  const stopDaemon = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<void> => {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill(signal);
    const t = setTimeout(() => proc.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(t);
  };

  const stop = async (): Promise<void> => {
    // Pods' processes first, while the daemon can reach their shims (a killed shim orphans them).
    if (child) {
      const ctr = (args: string[]) => run('ctr', ['--address', socket, '-n', 'k8s.io', ...args], { timeoutMs: 15_000 });
      const ids = (await ctr(['tasks', 'ls', '-q']).catch(() => ({ stdout: '' }))).stdout.split('\n').map((l) => l.trim()).filter(Boolean);
      for (const id of ids) await ctr(['tasks', 'kill', '-a', '-s', 'SIGKILL', id]).catch(() => undefined);
    }
    await stopDaemon().catch(() => undefined);
    killProcessesNaming(socket);
    killProcessesNaming(dir);
    await unmountUnder(dir);
    await rm(dir, { recursive: true, force: true }).catch(async () => {
      await unmountUnder(dir);
      await rm(dir, { recursive: true, force: true });
    });
  };

  try {
    for (const d of [cniBinDir, cniConfDir]) await mkdir(d, { recursive: true });
    await writeFile(join(dir, 'config.toml'), config);
    await startDaemon();
    await importImages(dir, socket);
  } catch (err) {
    await stop().catch(() => undefined);
    throw new Error(`${(err as Error).message}\ncontainerd log:\n${logTail()}`);
  }
  return { dir, socket, cniBinDir, cniConfDir, pid: () => child?.pid, logTail, stopDaemon, startDaemon, stop };
}

/**
 * A Docker-archive tarball (manifest.json, config, one layer) of a busybox-static rootfs, tagged
 * both as the sandbox image (its command sleeps: the "pause" process) and as the busybox image.
 */
async function importImages(dir: string, socket: string): Promise<void> {
  const work = join(dir, 'image');
  const root = join(work, 'rootfs');
  for (const d of ['bin', 'www', 'tmp', 'etc']) await mkdir(join(root, d), { recursive: true });
  await copyFile('/bin/busybox', join(root, 'bin', 'busybox'));
  await chmod(join(root, 'bin', 'busybox'), 0o755);
  await chmod(join(root, 'tmp'), 0o1777);
  for (const a of APPLETS) await symlink('busybox', join(root, 'bin', a));
  await writeFile(join(root, 'www', 'index.html'), 'ok\n');
  await writeFile(join(root, 'etc', 'passwd'), 'root:x:0:0:root:/:/bin/sh\n');
  const layer = join(work, 'layer.tar');
  await run('tar', ['--numeric-owner', '-C', root, '-cf', layer, '.']);
  const diffId = `sha256:${createHash('sha256').update(await readFile(layer)).digest('hex')}`;
  const config = {
    architecture: process.arch === 'arm64' ? 'arm64' : 'amd64', os: 'linux',
    config: { Env: ['PATH=/bin'], Cmd: ['/bin/sleep', '2147483647'], WorkingDir: '/' },
    rootfs: { type: 'layers', diff_ids: [diffId] },
    history: [{ created_by: 'corral test: busybox-static rootfs' }],
  };
  const configJson = JSON.stringify(config);
  const configName = `${createHash('sha256').update(configJson).digest('hex')}.json`;
  await writeFile(join(work, configName), configJson);
  await writeFile(join(work, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: [PAUSE_IMAGE, BUSYBOX_IMAGE], Layers: ['layer.tar'] }]));
  const tar = join(dir, 'images.tar');
  await run('tar', ['-C', work, '-cf', tar, 'manifest.json', configName, 'layer.tar']);
  await run('ctr', ['--address', socket, '-n', 'k8s.io', 'images', 'import', '--no-unpack', tar], { timeoutMs: 120_000 });
  await rm(work, { recursive: true, force: true });
  await rm(tar, { force: true });
}

