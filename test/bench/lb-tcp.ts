// TCP routing throughput: iperf3 through a `corral.tcp.port` route of `corral lb --lb-threads 1`
// (lb/tcp/) versus HAProxy `mode tcp` (nbthread 1, its defaults: no splicing), both in front of
// the same iperf3 server, one thread each. Both directions (client→server, and -R), best of six
// alternating runs each. Target (issue 16): ≥ 0.8× HAProxy's throughput.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentClient, unary } from '../../api/grpc.js';
import type { EndpointReply, RegisterRequest } from '../../api/types.js';
import { childEnv, freePort, startDaemon, type Daemon } from '../support/corral.js';
import { cpuSeconds } from '../support/proc.js';
import { accepts } from '../support/tcp.js';
import { stopChild } from './lb.js';
import type { BenchSection } from './report.js';
import { ratioHigherBetter, ratioLowerBetter } from './report.js';

const SECONDS = 3;
/** Alternating runs per side and direction; the best of each is kept (a busy machine only slows runs down). */
const RUNS = 6;
const STREAMS = 4;

interface IperfResult { gbps: number; cpuSPerGB: number }

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (out += d));
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${out.slice(-2000)}`))));
  });
}

/** iperf3 through `port` for `seconds`; the proxy's CPU (pid) per gigabyte moved. */
async function iperf(port: number, seconds: number, reverse: boolean, pid?: number): Promise<IperfResult> {
  const cpu0 = cpuSeconds(pid);
  const out = await run('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', String(seconds), '-P', String(STREAMS), '-J', ...(reverse ? ['-R'] : [])]);
  const cpu = cpuSeconds(pid) - cpu0;
  const j = JSON.parse(out) as { end?: { sum_received?: { bits_per_second: number; bytes: number } }; error?: string };
  if (j.error || !j.end?.sum_received) throw new Error(`iperf3 through ${port}: ${j.error ?? 'no result'}`);
  const { bits_per_second: bps, bytes } = j.end.sum_received;
  return { gbps: bps / 1e9, cpuSPerGB: cpu / (bytes / 1e9) };
}

function haproxyTcpConf(port: number, backend: number): string {
  return `global
  nbthread 1
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:${port}
  default_backend be
backend be
  server iperf 127.0.0.1:${backend}
`;
}

async function untilAccepts(port: number, what: string, child?: ChildProcess): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child && child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}`);
    if (await accepts(port)) return;
    if (Date.now() > deadline) throw new Error(`${what} did not accept on ${port}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function benchLbTcp(): Promise<BenchSection> {
  const dir = mkdtempSync(join(tmpdir(), 'corral-bench-tcp-'));
  let iperfd: ChildProcess | undefined;
  let haproxy: ChildProcess | undefined;
  let agent: Daemon | undefined;
  let lb: Daemon | undefined;
  try {
    const iperfPort = await freePort();
    iperfd = spawn('iperf3', ['-s', '-p', String(iperfPort), '-B', '127.0.0.1'], { stdio: 'ignore' });
    await untilAccepts(iperfPort, 'iperf3 -s', iperfd);

    const haproxyPort = await freePort();
    writeFileSync(join(dir, 'haproxy.cfg'), haproxyTcpConf(haproxyPort, iperfPort));
    haproxy = spawn('haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], { env: childEnv(), stdio: ['ignore', 'ignore', 'ignore'] });
    await untilAccepts(haproxyPort, 'haproxy', haproxy);

    agent = await startDaemon('agent', { args: ['--log-level', 'warn'] });
    lb = await startDaemon('lb', { args: ['--agent-socket', agent.socket, '--log-level', 'warn', '--lb-threads', '1'] });
    const lbPort = await freePort();
    const client = agentClient(agent.socket);
    try {
      await unary<RegisterRequest, EndpointReply>(client, 'Register', {
        service: 'iperf', namespace: 'default', address: '127.0.0.1', port: iperfPort, color: '', httpHosts: [], httpPath: '',
        weight: 1, healthCheck: null, portName: '', tcpPort: lbPort,
      });
    } finally {
      client.close();
    }
    await untilAccepts(lbPort, 'corral lb TCP route');

    // A run iperf3 reports as failed is noted, per side, and made again (at most twice).
    const failures = { corral: [] as string[], haproxy: [] as string[] };
    const attempt = async (port: number, seconds: number, reverse: boolean, pid?: number): Promise<IperfResult> => {
      const side = port === lbPort ? failures.corral : failures.haproxy;
      for (let i = 0; ; i++) {
        try {
          return await iperf(port, seconds, reverse, pid);
        } catch (err) {
          side.push((err as Error).message.slice(0, 200));
          if (i >= 2) throw err;
        }
      }
    };
    const hp = haproxy.pid;
    const cp = lb.child.pid;
    for (const port of [haproxyPort, lbPort]) await attempt(port, 2, false);
    const better = (a: IperfResult, b: IperfResult) => (a.gbps >= b.gbps ? a : b);
    // Sides and directions alternate within each round, so a burst of load elsewhere on the
    // machine falls on all four rather than on one of them.
    const runs = { upH: [] as IperfResult[], upC: [] as IperfResult[], downH: [] as IperfResult[], downC: [] as IperfResult[] };
    for (let i = 0; i < RUNS; i++) {
      runs.upH.push(await attempt(haproxyPort, SECONDS, false, hp));
      runs.upC.push(await attempt(lbPort, SECONDS, false, cp));
      runs.downH.push(await attempt(haproxyPort, SECONDS, true, hp));
      runs.downC.push(await attempt(lbPort, SECONDS, true, cp));
    }
    const best = (l: IperfResult[]) => l.reduce(better);
    const up = { h: best(runs.upH), c: best(runs.upC) };
    const down = { h: best(runs.downH), c: best(runs.downC) };
    const target = (c: IperfResult, h: IperfResult) => ({ target: '≥ 0.8×', pass: c.gbps / h.gbps >= 0.8 });

    return {
      title: 'TCP routing: iperf3 through a corral.tcp.port route',
      anchor: 'HAProxy 2.6 `mode tcp` (nbthread 1, default buffers, no splice)',
      conditions: `iperf3 -t ${SECONDS} -P ${STREAMS} to an iperf3 server, through \`corral lb --lb-threads 1\` (one thread, like nbthread 1; route registered with tcpPort, fed by a real \`corral agent\`) and through HAProxy; client, proxy and server on 127.0.0.1 sharing the machine's cores; best of ${RUNS} rounds, each round running HAProxy and corral in both directions one after the other, after a 2 s warm-up (the machine is shared and busy: runs vary by 2× either way); CPU is the proxy process's user + system time during the kept run`,
      rows: [
        { metric: 'throughput client→server vs HAProxy', ours: up.c.gbps, anchor: up.h.gbps, unit: 'Gbit/s', ratio: ratioHigherBetter(up.c.gbps, up.h.gbps), ...target(up.c, up.h) },
        { metric: 'throughput server→client (-R) vs HAProxy', ours: down.c.gbps, anchor: down.h.gbps, unit: 'Gbit/s', ratio: ratioHigherBetter(down.c.gbps, down.h.gbps), ...target(down.c, down.h) },
        { metric: 'proxy CPU per GB client→server', ours: up.c.cpuSPerGB, anchor: up.h.cpuSPerGB, unit: 's/GB', ratio: ratioLowerBetter(up.c.cpuSPerGB, up.h.cpuSPerGB) },
        { metric: 'proxy CPU per GB server→client', ours: down.c.cpuSPerGB, anchor: down.h.cpuSPerGB, unit: 's/GB', ratio: ratioLowerBetter(down.c.cpuSPerGB, down.h.cpuSPerGB) },
      ],
      notes: [
        'the same thread count on both sides: one; with --lb-threads N the LB accepts TCP routes on N threads (SO_REUSEPORT), like nbthread N',
        `every run, Gbit/s: client→server corral ${runs.upC.map((r) => r.gbps.toFixed(1)).join(', ')} / HAProxy ${runs.upH.map((r) => r.gbps.toFixed(1)).join(', ')}; server→client corral ${runs.downC.map((r) => r.gbps.toFixed(1)).join(', ')} / HAProxy ${runs.downH.map((r) => r.gbps.toFixed(1)).join(', ')}`,
        `iperf3 runs that failed and were made again: corral ${failures.corral.length}${failures.corral.length ? ` (${failures.corral.join('; ')})` : ''}, HAProxy ${failures.haproxy.length}${failures.haproxy.length ? ` (${failures.haproxy.join('; ')})` : ''}`,
      ],
    };
  } finally {
    await lb?.stop();
    await agent?.stop();
    await stopChild(haproxy);
    await stopChild(iperfd);
    rmSync(dir, { recursive: true, force: true });
  }
}
