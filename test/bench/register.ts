// Registration throughput of the single-host stack as the registry grows: a real `corral up`
// (embedded registry, no Docker) and 16 gRPC clients calling Register on its agent socket, each
// waiting for its answer before the next. The first 10,000 endpoints, then 10,000 more on top
// of 40,000; and `corral up`'s resident memory with none and with 50,000. Then the embedded
// registry alone (in this process, no agent around it) with the same records and writers: what
// the registry costs, and how long a compaction of 50,000 keys holds the event loop.
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { EmbeddedRegistry } from '../../agent/registry/embedded.js';
import { agentClient, unary } from '../../api/grpc.js';
import type { EndpointReply, RegisterRequest, StatusReply } from '../../api/types.js';
import { startDaemon } from '../support/corral.js';
import { cpuSeconds, procStat } from '../support/proc.js';
import type { BenchSection } from './report.js';
import { ratioHigherBetter, ratioLowerBetter } from './report.js';

const CLIENTS = 16;
const SERVICES = 1000;
const MEASURED = 10_000;
const LATER_AT = 40_000;
const TARGET_RATE = 1000;
const TARGET_RSS_MB = 200;
const TARGET_KB_PER_ENDPOINT = 2;
/** Before the write-ahead log (registry.json rewritten per transaction), measured by hand on this machine. */
const BEFORE = process.env.CORRAL_BENCH_REGISTER_BEFORE ?? '';

/** The i-th endpoint a bench registers: 1,000 services, one HTTP host each, distinct addresses. */
export function request(i: number): RegisterRequest {
  const s = i % SERVICES;
  return {
    service: `svc${s}`, namespace: 'default', address: `10.${64 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`, port: 8080, color: '',
    httpHosts: [`svc${s}.bench.test`], httpPath: '', weight: 1, healthCheck: null, portName: '',
  };
}

/** Registers endpoints [from, to) with CLIENTS concurrent clients; resolves with registrations/s. */
export async function register(socket: string, from: number, to: number): Promise<number> {
  const clients = Array.from({ length: CLIENTS }, () => agentClient(socket));
  let next = from;
  const t0 = process.hrtime.bigint();
  try {
    await Promise.all(clients.map(async (c) => {
      for (let i = next++; i < to; i = next++) await unary<RegisterRequest, EndpointReply>(c, 'Register', request(i), 60_000);
    }));
  } finally {
    for (const c of clients) c.close();
  }
  return (to - from) / (Number(process.hrtime.bigint() - t0) / 1e9);
}

/** Resident memory of a process and every process under it, in MB (VmRSS from /proc). */
function rssMb(pid: number): number {
  const children = new Map<number, number[]>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const ppid = procStat(Number(d))[1]!;
      children.set(ppid, [...(children.get(ppid) ?? []), Number(d)]);
    } catch {
      // gone meanwhile
    }
  }
  let kb = 0;
  const visit = (p: number) => {
    try {
      kb += Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0);
    } catch {
      // gone meanwhile
    }
    for (const c of children.get(p) ?? []) visit(c);
  };
  visit(pid);
  return kb / 1024;
}

interface RegistryAlone {
  first: number;
  later: number;
  txnsPerSync: number;
  compactMs: number;
  compactMaxDelayMs: number;
  openLogMs: number;
  openSnapshotMs: number;
  snapshotMiB: number;
}

/** The embedded registry by itself: 16 writers putting endpoint records like `sample`. */
async function registryAlone(sample: string): Promise<RegistryAlone> {
  const dir = mkdtempSync(join(tmpdir(), 'corral-bench-registry-'));
  const quiet = { info() {}, warn() {} };
  try {
    const r = new EmbeddedRegistry(dir, { log: quiet });
    await r.open();
    const write = async (reg: EmbeddedRegistry, from: number, to: number) => {
      let next = from;
      const t0 = process.hrtime.bigint();
      await Promise.all(Array.from({ length: CLIENTS }, async () => {
        for (let i = next++; i < to; i = next++) await reg.txn([{ put: `/corral/endpoints/bench-${i}`, value: sample.replace(/"address":"[^"]*"/, `"address":"${request(i).address}"`) }]);
      }));
      return (to - from) / (Number(process.hrtime.bigint() - t0) / 1e9);
    };
    const first = await write(r, 0, MEASURED);
    await write(r, MEASURED, LATER_AT);
    const syncs = r.stats.logSyncs;
    const later = await write(r, LATER_AT, LATER_AT + MEASURED);
    const txnsPerSync = MEASURED / (r.stats.logSyncs - syncs);
    await r.close();
    // Reopened with thresholds that make the next transaction compact all 50,000 keys.
    let t0 = Date.now();
    const small = new EmbeddedRegistry(dir, { log: quiet, logMinBytes: 1, logMaxBytes: 1 });
    await small.open();
    const openLogMs = Date.now() - t0;
    const delay = monitorEventLoopDelay({ resolution: 1 });
    delay.enable();
    t0 = Date.now();
    await small.txn([{ put: '/bench/compact', value: '1' }]);
    for (let i = 0; small.stats.compactions === 0; i++) {
      await small.txn([{ put: '/bench/during', value: String(i) }]);
      await new Promise((res) => setTimeout(res, 1));
    }
    const compactMs = Date.now() - t0;
    delay.disable();
    await small.close();
    t0 = Date.now();
    const again = new EmbeddedRegistry(dir, { log: quiet });
    await again.open();
    const openSnapshotMs = Date.now() - t0;
    await again.close();
    return { first, later, txnsPerSync, compactMs, compactMaxDelayMs: delay.max / 1e6, openLogMs, openSnapshotMs, snapshotMiB: statSync(join(dir, 'registry.snapshot')).size / 2 ** 20 };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The filesystem type a path is on (what an fdatasync costs depends on it). */
function fsType(path: string): string {
  let best = { point: '', type: 'unknown' };
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [, point, type] = line.split(' ');
    if (point && type && (path === point || path.startsWith(point.endsWith('/') ? point : point + '/')) && point.length >= best.point.length) best = { point, type };
  }
  return best.type;
}

/** Memory 3 s after a burst: the heap still holds the burst's garbage (V8 collects on allocation and on idle). */
async function rssAfterBurst(pid: number): Promise<number> {
  await new Promise((r) => setTimeout(r, 3000));
  return rssMb(pid);
}

/**
 * Memory once idle: the lowest RSS while idle, polled every 5 s until no new low for 60 s (at most
 * idleS). V8's memory reducer gives a burst's heap back in steps, one isolate at a time: after
 * 10,000 registrations `corral up` went from 448 MB to 227 MB over ~3.5 minutes.
 */
export async function settledRss(pid: number, rss: (pid: number) => number = rssMb, idleS = 300): Promise<number> {
  let low = rss(pid);
  let lowAt = 0;
  for (let t = 5; t <= idleS && t - lowAt <= 60; t += 5) {
    await new Promise((r) => setTimeout(r, 5000));
    const now = rss(pid);
    if (now < low * 0.99) lowAt = t;
    low = Math.min(low, now);
  }
  return low;
}

export async function benchRegister(): Promise<BenchSection> {
  const up = await startDaemon('up', { args: ['--registry', 'embedded', '--log-level', 'warn'] });
  try {
    const pid = up.child.pid!;
    const status = async () => {
      const c = agentClient(up.socket);
      try {
        return await unary<Record<string, never>, StatusReply>(c, 'Status', {});
      } finally {
        c.close();
      }
    };
    const rss0 = await settledRss(pid);
    const cpu0 = cpuSeconds(pid);
    const first = await register(up.socket, 0, MEASURED);
    const cpu1 = cpuSeconds(pid);
    const fillT0 = Date.now();
    await register(up.socket, MEASURED, LATER_AT);
    const fillS = (Date.now() - fillT0) / 1000;
    const cpu2 = cpuSeconds(pid);
    const later = await register(up.socket, LATER_AT, LATER_AT + MEASURED);
    const cpu3 = cpuSeconds(pid);
    const total = LATER_AT + MEASURED;
    const s = await status();
    if (Number(s.endpoints) !== total) throw new Error(`corral up holds ${s.endpoints} endpoints after ${total} registrations`);
    const rssBurst = await rssAfterBurst(pid);
    const rss50 = await settledRss(pid);
    const stateBytes = readdirSync(up.stateDir).filter((f) => f.startsWith('registry')).reduce((n, f) => n + statSync(join(up.stateDir, f)).size, 0);
    // One endpoint record as the agent stored it (a snapshot line is [key, value, modRevision]).
    const line = readFileSync(join(up.stateDir, 'registry.snapshot'), 'utf8').split('\n').find((l) => l.startsWith('["/corral/endpoints/'));
    if (!line) throw new Error(`no endpoint record in ${up.stateDir}/registry.snapshot`);
    const sample = (JSON.parse(line) as [string, string, number])[1];
    await up.stop();
    const alone = await registryAlone(sample);
    const perEndpointKb = ((rss50 - rss0) * 1024) / total;
    return {
      title: 'Registering endpoints through the agent API as the registry grows (single host, embedded registry)',
      anchor: `issue 11's targets: ≥ ${TARGET_RATE} registrations/s, the same with 40,000 endpoints registered as with none, \`corral up\` ≤ ${TARGET_RSS_MB} MB and ≤ ${TARGET_KB_PER_ENDPOINT} KB per endpoint at 50,000` +
        (BEFORE ? `; before the write-ahead log (registry.json rewritten per transaction): ${BEFORE}` : ''),
      conditions: `one \`corral up --registry embedded --docker-socket ""\` (agent, DNS and LB in one process; state dir under ${tmpdir()}, ${fsType(up.stateDir)}); ${CLIENTS} gRPC clients on its unix socket, each calling Register (${SERVICES} services, one HTTP host each, distinct addresses) and waiting for the answer before the next; ${MEASURED} registrations timed from none, then ${LATER_AT - MEASURED} untimed, then ${MEASURED} timed from ${LATER_AT}; RSS is VmRSS of the process and its children: settled = the lowest while idle, until no new low for 60 s (at most 5 min), and 3 s after the last registration`,
      rows: [
        { metric: `registrations/s, the first ${MEASURED}`, ours: first, anchor: TARGET_RATE, unit: '/s', ratio: ratioHigherBetter(first, TARGET_RATE), target: `≥ ${TARGET_RATE}/s`, pass: first >= TARGET_RATE },
        { metric: `registrations/s, ${MEASURED} more from ${LATER_AT} (anchor: the first ${MEASURED})`, ours: later, anchor: first, unit: '/s', ratio: ratioHigherBetter(later, first), target: `≥ ${TARGET_RATE}/s and ≥ 0.8× the first`, pass: later >= TARGET_RATE && later >= 0.8 * first },
        { metric: `registry alone: transactions/s, the first ${MEASURED}`, ours: alone.first, anchor: TARGET_RATE, unit: '/s', ratio: ratioHigherBetter(alone.first, TARGET_RATE) },
        { metric: `registry alone: transactions/s, ${MEASURED} more from ${LATER_AT} (anchor: the first ${MEASURED})`, ours: alone.later, anchor: alone.first, unit: '/s', ratio: ratioHigherBetter(alone.later, alone.first), target: '≥ 0.8× the first', pass: alone.later >= 0.8 * alone.first },
        { metric: 'corral up RSS, no endpoints', ours: rss0, anchor: TARGET_RSS_MB, unit: 'MB', ratio: ratioLowerBetter(rss0, TARGET_RSS_MB) },
        { metric: `corral up RSS, ${total} endpoints, 3 s after the last registration`, ours: rssBurst, anchor: TARGET_RSS_MB, unit: 'MB', ratio: ratioLowerBetter(rssBurst, TARGET_RSS_MB) },
        { metric: `corral up RSS, ${total} endpoints, settled`, ours: rss50, anchor: TARGET_RSS_MB, unit: 'MB', ratio: ratioLowerBetter(rss50, TARGET_RSS_MB), target: `≤ ${TARGET_RSS_MB} MB`, pass: rss50 <= TARGET_RSS_MB },
        { metric: 'RSS per endpoint, settled', ours: perEndpointKb, anchor: TARGET_KB_PER_ENDPOINT, unit: 'KB', ratio: ratioLowerBetter(perEndpointKb, TARGET_KB_PER_ENDPOINT), target: `≤ ${TARGET_KB_PER_ENDPOINT} KB`, pass: perEndpointKb <= TARGET_KB_PER_ENDPOINT },
      ],
      notes: [
        `CPU of corral up per registration: ${((1e6 * (cpu1 - cpu0)) / MEASURED).toFixed(0)} µs for the first ${MEASURED}, ${((1e6 * (cpu3 - cpu2)) / MEASURED).toFixed(0)} µs from ${LATER_AT}; the untimed ${LATER_AT - MEASURED} took ${fillS.toFixed(1)} s (${((LATER_AT - MEASURED) / fillS).toFixed(0)}/s)`,
        `registry state on disk at ${total} endpoints (snapshot + log): ${(stateBytes / 2 ** 20).toFixed(1)} MiB; registry revision ${s.revision}`,
        `registry alone (agent/registry/embedded.ts in the bench process, ${CLIENTS} writers, records like the agent's, ${sample.length} B): ${alone.txnsPerSync.toFixed(1)} transactions per fdatasync from ${LATER_AT}; ` +
          `a compaction of ${total} keys took ${alone.compactMs} ms with the event loop held at most ${alone.compactMaxDelayMs.toFixed(0)} ms; open ${alone.openLogMs} ms replaying the log, ${alone.openSnapshotMs} ms from the ${alone.snapshotMiB.toFixed(1)} MiB snapshot`,
        'the clients and corral up share the same cores',
      ],
    };
  } finally {
    await up.stop();
  }
}
