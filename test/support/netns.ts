// Network namespaces owned by one test: uniquely named, loopback up, removed afterwards.
// Ordinary commands run under `ip netns exec`; daemons that need the host's /sys (cgroups:
// dockerd, node) run under `nsenter --net=…`, which switches only the network namespace.
import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface RunResult { stdout: string; stderr: string }

/** Run a command on the host; rejects with its stderr in the message. */
export async function run(cmd: string, args: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
  try {
    const p = execFileP(cmd, args, { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024 });
    if (opts.input !== undefined) {
      p.child.stdin?.end(opts.input);
    }
    const { stdout, stderr } = await p;
    return { stdout: String(stdout), stderr: String(stderr) };
  } catch (err) {
    const e = err as Error & { stderr?: string; stdout?: string; code?: number | string };
    throw new Error(`${cmd} ${args.join(' ')} failed (${e.code ?? 'error'}): ${(e.stderr || e.stdout || e.message).toString().trim()}`);
  }
}

export class Netns {
  private constructor(readonly name: string) {}

  get path(): string {
    return `/run/netns/${this.name}`;
  }

  /** A new namespace `corral-t-<random>` with `lo` up. */
  static async create(prefix = 'corral-t'): Promise<Netns> {
    const name = `${prefix}-${randomBytes(4).toString('hex')}`;
    await run('ip', ['netns', 'add', name]);
    const ns = new Netns(name);
    try {
      await run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    } catch (err) {
      await ns.delete();
      throw err;
    }
    return ns;
  }

  /** An ordinary command (curl, wget, dig, ip) inside the namespace. */
  exec(cmd: string, args: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
    return run('ip', ['netns', 'exec', this.name, cmd, ...args], opts);
  }

  /** A command that needs the host's /sys (cgroups), e.g. dockerd or node. */
  nsenter(cmd: string, args: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
    return run('nsenter', [`--net=${this.path}`, cmd, ...args], opts);
  }

  /** A long-running process inside the namespace (nsenter execs it: the pid is the daemon's). */
  spawn(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    return spawn('nsenter', [`--net=${this.path}`, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  }

  async delete(): Promise<void> {
    if (!existsSync(this.path)) return;
    await run('ip', ['netns', 'del', this.name]).catch(() => undefined);
  }
}
