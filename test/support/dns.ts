// Real DNS tools for the tests and the benchmark: dig/kdig as clients, unbound as an upstream
// or a reference server. 127.0.0.1 only. Servers started in-process (runDns) use dnsThreads: 1:
// worker threads load the bundled module, so they are tested through dist/corral.mjs.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeLogger } from '../../api/log.js';
import { defaultOptions } from '../../api/options.js';
import { childEnv, freePort } from './corral.js';
import { runDns, type RunningDns } from '../../dns/main.js';

export interface DigRecord {
  name: string;
  ttl: number;
  type: string;
  data: string;
}

export interface DigResult {
  status: string;
  flags: string[];
  answer: DigRecord[];
  authority: DigRecord[];
  additional: DigRecord[];
  raw: string;
}

export { freePort };

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env: childEnv(), timeout: 20_000 }, (err, stdout, stderr) => {
      // dig exits non-zero for "no servers could be reached"; the output says so.
      if (err && !stdout) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

/** Parses dig or kdig text output (both print ";; ... SECTION:" blocks and zone-file lines). */
export function parseDigOutput(raw: string): DigResult {
  const status = /status: ([A-Z]+)/.exec(raw)?.[1] ?? 'NONE';
  const flagText = /flags: ([a-z ]*);/i.exec(raw)?.[1] ?? '';
  const out: DigResult = { status, flags: flagText.trim().split(/\s+/).filter(Boolean), answer: [], authority: [], additional: [], raw };
  let section: DigRecord[] | null = null;
  for (const line of raw.split('\n')) {
    if (/ANSWER SECTION/.test(line)) section = out.answer;
    else if (/AUTHORITY SECTION/.test(line)) section = out.authority;
    else if (/ADDITIONAL SECTION/.test(line)) section = out.additional;
    else if (/^;;.*SECTION/.test(line)) section = null;
    else if (line.startsWith(';') || line.trim() === '') {
      if (line.trim() === '') section = section === out.additional ? null : section;
    } else if (section) {
      const f = line.trim().split(/\s+/);
      if (f.length < 4) continue;
      // name ttl [class] type data...
      const hasClass = f[2] === 'IN';
      section.push({ name: f[0]!, ttl: Number(f[1]), type: f[hasClass ? 3 : 2]!, data: f.slice(hasClass ? 4 : 3).join(' ') });
    }
  }
  return out;
}

/** dig @127.0.0.1 -p PORT name type [options] */
export async function dig(port: number, name: string, type: string, ...opts: string[]): Promise<DigResult> {
  const raw = await run('dig', ['@127.0.0.1', '-p', String(port), name, type, '+tries=1', '+time=3', ...opts]);
  return parseDigOutput(raw);
}

/** kdig @127.0.0.1 -p PORT name type [options] */
export async function kdig(port: number, name: string, type: string, ...opts: string[]): Promise<DigResult> {
  const raw = await run('kdig', ['@127.0.0.1', '-p', String(port), name, type, '+retry=0', '+time=3', ...opts]);
  return parseDigOutput(raw);
}

export interface Unbound {
  port: number;
  dir: string;
  proc: ChildProcess;
  stop(): Promise<void>;
}

/** Starts unbound on 127.0.0.1 serving only `localData` lines (everything else REFUSED). */
export async function startUnbound(localData: string[], opts: { localZones?: string[]; threads?: number } = {}): Promise<Unbound> {
  const dir = mkdtempSync(join(tmpdir(), 'corral-unbound-'));
  const port = await freePort();
  const conf = [
    'server:',
    '  interface: 127.0.0.1',
    `  port: ${port}`,
    '  do-daemonize: no',
    '  chroot: ""',
    '  username: ""',
    `  directory: "${dir}"`,
    `  pidfile: "${join(dir, 'unbound.pid')}"`,
    '  use-syslog: no',
    '  logfile: ""',
    '  verbosity: 0',
    '  do-ip6: no',
    `  num-threads: ${opts.threads ?? 1}`,
    '  access-control: 127.0.0.0/8 allow',
    '  module-config: "iterator"',
    '  local-zone: "." refuse', // never recurse to the outside world
    ...(opts.localZones ?? []).map((z) => `  local-zone: "${z}" static`),
    ...localData.map((d) => (d.includes('"') ? `  local-data: '${d}'` : `  local-data: "${d}"`)),
    '',
  ].join('\n');
  writeFileSync(join(dir, 'unbound.conf'), conf);
  const proc = spawn('unbound', ['-d', '-c', join(dir, 'unbound.conf')], { env: childEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    }
    rmSync(dir, { recursive: true, force: true });
  };
  for (let i = 0; i < 100; i++) {
    if (proc.exitCode !== null) break;
    const r = await dig(port, '.', 'SOA', '+time=1').catch(() => null);
    if (r && r.status !== 'NONE') return { port, dir, proc, stop };
    await new Promise((res) => setTimeout(res, 100));
  }
  await stop();
  throw new Error(`unbound did not start: ${stderr}`);
}

/**
 * `corral dns` in this process on a free 127.0.0.1 port, with no agent (the test feeds it with
 * `dns.apply`), one thread, and an upstream nobody answers.
 */
export async function startStandaloneDns(forwarderTimeoutMs: number): Promise<{ dns: RunningDns; port: number }> {
  const port = await freePort();
  const dns = await runDns(
    {
      ...defaultOptions(), dnsListen: [`127.0.0.1:${port}`], adminListen: '127.0.0.1:0', dnsThreads: 1,
      agentSocket: '/nonexistent/corral-test-agent.sock', dnsUpstream: [`127.0.0.1:${await freePort()}`],
    },
    makeLogger('dns', 'silent'),
    { forwarder: { timeoutMs: forwarderTimeoutMs, rounds: 1 } },
  );
  return { dns, port };
}
