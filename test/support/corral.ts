// Runs the real `corral` executable (dist/corral.mjs) the way a user or systemd would:
// daemons as child processes with their own state and run dirs, commands as one-shot processes.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const CORRAL = resolve('dist/corral.mjs');

/** The environment a runtime gives a child: no CA bundle (it costs ~50 ms per node start). */
export function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  delete env.NODE_EXTRA_CA_CERTS;
  for (const k of Object.keys(env)) if (k.startsWith('CORRAL_') && !(k in extra)) delete env[k];
  return env;
}

/** A port free for both TCP and UDP on 127.0.0.1 (DNS listens on both). */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolvePort, reject) => {
      const s = createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolvePort(p));
      });
    });
    const udpFree = await new Promise<boolean>((res) => {
      const u = createSocket('udp4');
      u.once('error', () => res(false));
      u.bind(port, '127.0.0.1', () => u.close(() => res(true)));
    });
    if (udpFree) return port;
  }
}

export interface CliResult { code: number; stdout: string; stderr: string }

/** Runs `corral <args>` to completion (in a netns when given). */
export function corral(args: string[], opts: { netns?: string; env?: Record<string, string>; timeoutMs?: number } = {}): Promise<CliResult> {
  const [cmd, argv] = opts.netns
    ? ['nsenter', [`--net=/run/netns/${opts.netns}`, process.execPath, CORRAL, ...args]]
    : [process.execPath, [CORRAL, ...args]];
  return new Promise((res, rej) => {
    const child = spawn(cmd, argv, { env: childEnv(opts.env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.once('error', rej);
    child.once('close', (code) => {
      clearTimeout(timer);
      res({ code: code ?? -1, stdout, stderr });
    });
  });
}

export interface Daemon {
  child: ChildProcess;
  stateDir: string;
  runDir: string;
  socket: string;
  adminPort: number;
  dnsPort: number;
  httpPort: number;
  logs(): string;
  /** `corral <args>` against this daemon's socket. */
  cli(args: string[]): Promise<CliResult>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export interface DaemonOpts {
  netns?: string;
  stateDir?: string;       // reuse to test restarts
  runDir?: string;         // reuse to restart in place: a restarted agent keeps its socket path and finds what the last one left (wireguard-go's pid file)
  args?: string[];
  env?: Record<string, string>;
  dockerSocket?: string;   // default: none
  nodeName?: string;
  /** Another build of the executable (a bench's anchor: the code before a change); default dist/corral.mjs. */
  bin?: string;
  /** Flags for node itself (a bench's --cpu-prof, which NODE_OPTIONS does not take). */
  nodeArgs?: string[];
}

/** Starts `corral up|agent|dns|lb` and waits until its admin /readyz answers 200. */
export async function startDaemon(part: 'up' | 'agent' | 'dns' | 'lb', o: DaemonOpts = {}): Promise<Daemon> {
  const stateDir = o.stateDir ?? mkdtempSync(join(tmpdir(), 'corral-state-'));
  const runDir = o.runDir ?? mkdtempSync(join(tmpdir(), 'corral-run-'));
  if (o.runDir) mkdirSync(runDir, { recursive: true });
  const socket = join(runDir, 'agent.sock');
  const adminPort = await freePort();
  const dnsPort = await freePort();
  const httpPort = await freePort();
  const args = [
    part,
    '--state-dir', stateDir,
    '--run-dir', runDir,
    '--admin-listen', `127.0.0.1:${adminPort}`,
    '--dns-listen', `127.0.0.1:${dnsPort}`,
    '--http-listen', `127.0.0.1:${httpPort}`,
    '--docker-socket', o.dockerSocket ?? '',
    '--docker-plugin-socket', '', // a test that serves the Docker driver passes its own unique socket
    '--node-name', o.nodeName ?? 'test-node',
    '--dns-upstream', '127.0.0.1:9', // tests never forward outside; a test that forwards passes its own
    '--log-level', 'info',
    ...(o.args ?? []),
  ];
  const [cmd, argv] = o.netns
    ? ['nsenter', [`--net=/run/netns/${o.netns}`, process.execPath, ...(o.nodeArgs ?? []), o.bin ?? CORRAL, ...args]]
    : [process.execPath, [...(o.nodeArgs ?? []), o.bin ?? CORRAL, ...args]];
  const child = spawn(cmd, argv, { env: childEnv(o.env), stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (d: Buffer) => (log += d));
  child.stderr!.on('data', (d: Buffer) => (log += d));
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  const d: Daemon = {
    child, stateDir, runDir, socket, adminPort, dnsPort, httpPort,
    logs: () => log,
    cli: (a) => corral([...a, '--agent-socket', socket], { netns: o.netns }),
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(t);
      if (!o.runDir) rmSync(runDir, { recursive: true, force: true });
      if (!o.stateDir) rmSync(stateDir, { recursive: true, force: true });
      return code;
    },
  };
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`corral ${part} exited with ${child.exitCode} before it was ready:\n${log}`);
    // `up` is ready when its agent, DNS and LB all are (their admin ports follow the agent's).
    const ports = part === 'up' ? [adminPort, adminPort + 1, adminPort + 2] : [adminPort];
    if ((await Promise.all(ports.map((p) => ready(p, o.netns)))).every(Boolean)) break;
    if (Date.now() > deadline) {
      await d.stop('SIGKILL');
      throw new Error(`corral ${part} was not ready within 20 s:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  if (part === 'up' || part === 'agent') {
    while (!existsSync(socket)) await new Promise((r) => setTimeout(r, 20));
  }
  return d;
}

async function ready(adminPort: number, netns?: string): Promise<boolean> {
  if (netns) {
    const r = await new Promise<number>((res) => {
      const c = spawn('ip', ['netns', 'exec', netns, 'curl', '-sf', '-o', '/dev/null', `http://127.0.0.1:${adminPort}/readyz`], { stdio: 'ignore' });
      c.once('close', (code) => res(code ?? 1));
    });
    return r === 0;
  }
  try {
    const res = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
    return res.status === 200;
  } catch {
    return false;
  }
}
