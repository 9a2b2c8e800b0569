// A private Docker engine for one test file: its own netns, socket, data and exec dirs, and the
// offline busybox image `corral-test/busybox:1`. stop() leaves nothing behind (containers,
// processes, mounts, dirs, netns), and unique names keep a crashed earlier run out of the way.
import type { ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, readFileSync, readdirSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, symlink, copyFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Netns, run } from './netns.js';

export const TEST_IMAGE = 'corral-test/busybox:1';
const BUSYBOX = '/bin/busybox';
const APPLETS = ['sh', 'httpd', 'nslookup', 'wget', 'ip', 'sleep', 'cat', 'echo', 'ls', 'rm', 'mkdir', 'test', 'touch', 'true', 'false', 'kill', 'ps'];

export interface Dockerd {
  /** Unix socket path of the private engine. */
  socket: string;
  netns: Netns;
  dir: string;
  /** The docker CLI against this engine; resolves to trimmed stdout. */
  exec(args: string[], opts?: { timeoutMs?: number }): Promise<string>;
  /** Stop only the daemon, keeping its data (to test reconnects); startDaemon() brings it back. */
  stopDaemon(): Promise<void>;
  startDaemon(): Promise<void>;
  /** Remove every container, stop the daemon, unmount and delete everything it made. */
  stop(): Promise<void>;
}

/** Throws one clear line when this machine cannot run the private engine. */
export async function ensureDockerInstalled(): Promise<void> {
  const missing: string[] = [];
  for (const [bin, pkg] of [['dockerd', 'docker.io'], ['docker', 'docker.io'], ['nsenter', 'util-linux'], ['ip', 'iproute2']] as const) {
    if (!(await run('sh', ['-c', `command -v ${bin}`]).then(() => true, () => false))) missing.push(`${bin} (${pkg})`);
  }
  if (!existsSync(BUSYBOX)) missing.push(`${BUSYBOX} (busybox-static)`);
  else {
    const file = await run('file', ['-L', BUSYBOX]).then((r) => r.stdout, () => '');
    if (file && !/statically linked/.test(file)) missing.push(`a static ${BUSYBOX} (busybox-static; the dynamic busybox cannot run in an empty rootfs)`);
  }
  if (missing.length) throw new Error(`cannot start a private dockerd: missing ${missing.join(', ')}; run \`bash scripts/setup.sh --test\` as root`);
  if (process.getuid?.() !== 0) throw new Error('cannot start a private dockerd: tests that use Docker must run as root');
  if (!existsSync('/sys/fs/cgroup/devices')) {
    await run('cgroupfs-mount', []).catch(() => undefined);
    if (!existsSync('/sys/fs/cgroup/devices')) throw new Error('cannot start a private dockerd: the cgroup v1 devices hierarchy is not mounted; run `cgroupfs-mount` (Debian package cgroupfs-mount)');
  }
}

/**
 * o.netns: run in this (test host's) namespace, left in place by stop(). o.daemonJson: what
 * daemon.json starts with; with it the engine gets no `--bip` flag (dockerd refuses a key given
 * both ways), so daemon.json decides Docker's default bridge. o.bip: the default bridge's address
 * otherwise (10.77.0.1/24 unless given; two engines whose containers route to each other need two).
 */
export async function startDockerd(o: { netns?: Netns; daemonJson?: Record<string, unknown>; bip?: string } = {}): Promise<Dockerd> {
  await ensureDockerInstalled();
  const dir = await mkdtemp(join(tmpdir(), 'corral-dockerd-'));
  const netns = o.netns ?? await Netns.create();
  const socket = join(dir, 'docker.sock');
  const logPath = join(dir, 'dockerd.log');
  const env = { ...process.env, DOCKER_CONFIG: join(dir, 'cli'), DOCKER_HOST: `unix://${socket}` };
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();

  const exec = async (args: string[], opts: { timeoutMs?: number } = {}): Promise<string> => {
    const r = await run('docker', ['--host', `unix://${socket}`, ...args], { timeoutMs: opts.timeoutMs ?? 60_000 });
    return r.stdout.trim();
  };

  const logTail = (): string => {
    try {
      return readFileSync(logPath, 'utf8').split('\n').slice(-25).join('\n');
    } catch {
      return '(no dockerd log)';
    }
  };

  const startDaemon = async (): Promise<void> => {
    const log = createWriteStream(logPath, { flags: 'a' });
    const proc = netns.spawn('dockerd', [
      '--storage-driver=vfs', '--iptables=false', '--ip6tables=false', ...(o.daemonJson ? [] : ['--ip-masq=false', '--bip', o.bip ?? '10.77.0.1/24']),
      '--host', `unix://${socket}`, '--data-root', join(dir, 'data'), '--exec-root', join(dir, 'exec'),
      '--pidfile', join(dir, 'docker.pid'), '--config-file', join(dir, 'daemon.json'), '--shutdown-timeout', '2',
    ], { env });
    child = proc;
    proc.stdout?.pipe(log, { end: false });
    proc.stderr?.pipe(log, { end: false });
    exited = new Promise((resolve) => proc.once('exit', () => { log.end(); resolve(); }));
    const deadline = Date.now() + 60_000;
    let lastErr = '';
    while (Date.now() < deadline) {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        throw new Error(`dockerd exited (${proc.exitCode ?? proc.signalCode}) while starting; log tail:\n${logTail()}`);
      }
      try {
        await exec(['info', '--format', '{{.ServerVersion}}'], { timeoutMs: 5000 });
        return;
      } catch (err) {
        lastErr = (err as Error).message;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`dockerd did not answer \`docker info\` within 60s (${lastErr}); log tail:\n${logTail()}`);
  };

  const stopDaemon = async (): Promise<void> => {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(timer);
  };

  const stop = async (): Promise<void> => {
    if (child) {
      const ids = await exec(['ps', '-aq'], { timeoutMs: 10_000 }).catch(() => '');
      if (ids) await exec(['rm', '-f', '-v', ...ids.split(/\s+/)], { timeoutMs: 60_000 }).catch(() => undefined);
    }
    await stopDaemon().catch(() => undefined);
    killProcessesNaming(dir);
    await unmountUnder(dir);
    await rm(dir, { recursive: true, force: true }).catch(async () => {
      // A mount that would not go lazily: one more pass, then give up loudly.
      await unmountUnder(dir);
      await rm(dir, { recursive: true, force: true });
    });
    if (!o.netns) await netns.delete();
  };

  try {
    await writeFile(join(dir, 'daemon.json'), JSON.stringify(o.daemonJson ?? {}) + '\n');
    await startDaemon();
    await importImage(dir, exec);
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  return { socket, netns, dir, exec, stopDaemon, startDaemon, stop };
}

async function importImage(dir: string, exec: Dockerd['exec']): Promise<void> {
  const root = join(dir, 'rootfs');
  for (const d of ['bin', 'www', 'tmp', 'etc']) await mkdir(join(root, d), { recursive: true });
  await copyFile(BUSYBOX, join(root, 'bin', 'busybox'));
  await chmod(join(root, 'bin', 'busybox'), 0o755);
  await chmod(join(root, 'tmp'), 0o1777);
  for (const a of APPLETS) await symlink('busybox', join(root, 'bin', a));
  await writeFile(join(root, 'www', 'index.html'), 'ok\n');
  const tar = join(dir, 'rootfs.tar');
  await run('tar', ['-C', root, '-cf', tar, '.']);
  await exec(['import', '--change', 'ENV PATH=/bin', tar, TEST_IMAGE], { timeoutMs: 120_000 });
  await rm(root, { recursive: true, force: true });
  await rm(tar, { force: true });
}

/** Processes whose command line names `s` (our dirs or socket): containerd, shims, pod processes. */
export function killProcessesNaming(s: string): void {
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmdline.includes(s)) process.kill(Number(pid), 'SIGKILL');
    } catch {
      // gone already, or not ours to read
    }
  }
}

/** Lazily unmounts every mount at or under dir, deepest first. */
export async function unmountUnder(dir: string): Promise<void> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const points = info.split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p): p is string => !!p && (p === dir || p.startsWith(dir + '/')))
    .map((p) => p.replace(/\\040/g, ' '))
    .sort((a, b) => b.length - a.length);
  for (const p of points) {
    await run('umount', ['-l', p]).catch(() => undefined);
  }
}
