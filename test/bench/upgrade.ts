// `corral upgrade` against the same steps done by hand: a script that starts the new containers
// with `docker run` (the labels copied by hand), waits until `corral endpoints` says they are
// healthy, then sets each step with `corral weight` / `corral switch` and stops the old ones. Both
// under the same wrk load through the LB, runs alternating, medians. Reported: time to the first
// canary step and to completion, and the LB CPU per request with the gates' figures counted and
// read, against the hand runs (the counting itself is always on; its cost per request is also
// measured in-process against the Prometheus tallies alone).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Endpoint } from '../../api/types.js';
import { bothObservers, GateFigures } from '../../lb/gate.js';
import { LbMetrics } from '../../lb/metrics.js';
import type { RouteTarget } from '../../lb/routes.js';
import { makeAppImage, parseWrk } from '../support/app-images.js';
import { CORRAL, childEnv, startDaemon, type Daemon } from '../support/corral.js';
import { startDockerd, type Dockerd } from '../support/dockerd.js';
import { endpoint } from '../support/records.js';
import type { BenchSection } from './report.js';
import { ratioLowerBetter } from './report.js';

const RUNS = 3;
const STEPS = [10, 50, 100];
const STEP_MS = 2000;
const LABELS = { 'corral.service': 'web', 'corral.port': '8080', 'corral.http.host': 'web.test', 'corral.health.path': '/health', 'corral.health.interval': '500ms', 'corral.drain': '1s' };

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** user+system CPU seconds of a process so far. */
function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

interface Run { firstStepMs: number; doneMs: number; cpuUsPerRequest: number; requests: number; errors: number }

async function underLoad(docker: Dockerd, up: Daemon, work: () => Promise<{ firstStepMs: number; doneMs: number }>): Promise<Run> {
  const wrk = spawn('nsenter', [`--net=${docker.netns.path}`, 'wrk', '-t1', '-c2', '-d60s', '--timeout', '5s', '-H', 'Host: web.test', `http://127.0.0.1:${up.httpPort}/cgi-bin/app`], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  wrk.stdout!.on('data', (d: Buffer) => (out += d));
  await new Promise((r) => setTimeout(r, 1000));
  const cpu0 = cpuSeconds(up.child.pid!);
  const t = await work();
  const cpu1 = cpuSeconds(up.child.pid!);
  // wrk prints its summary on SIGINT.
  const ended = new Promise((r) => wrk.once('close', r));
  wrk.kill('SIGINT');
  await ended;
  const w = parseWrk(out);
  const seconds = Number(/requests in ([\d.]+)s/.exec(out)?.[1] ?? 60);
  const during = w.requests * (t.doneMs / 1000 / seconds);
  return { ...t, cpuUsPerRequest: ((cpu1 - cpu0) * 1e6) / Math.max(1, during), requests: w.requests, errors: w.non2xx + w.socketErrors };
}

/** `corral upgrade`, timed by its JSON events as they arrive. */
async function ours(up: Daemon, docker: Dockerd, image: string): Promise<{ firstStepMs: number; doneMs: number }> {
  const t0 = performance.now();
  const child = spawn('nsenter', [`--net=${docker.netns.path}`, process.execPath, CORRAL, 'upgrade', 'web', '--image', image, '--steps', STEPS.join(','), '--step-time', `${STEP_MS}ms`, '--json', '--agent-socket', up.socket], { env: childEnv(), stdio: ['ignore', 'pipe', 'inherit'] });
  let firstStepMs = NaN;
  let doneMs = NaN;
  for await (const line of createInterface({ input: child.stdout! })) {
    const ev = JSON.parse(line) as { upgrade: { phase: string; step: number } };
    if (Number.isNaN(firstStepMs) && ev.upgrade.phase === 'stepping') firstStepMs = performance.now() - t0;
    if (ev.upgrade.phase === 'completed') doneMs = performance.now() - t0;
  }
  if (Number.isNaN(doneMs)) throw new Error(`corral upgrade did not complete:\n${up.logs().slice(-3000)}`);
  return { firstStepMs, doneMs };
}

/** The same steps by hand: docker run with the labels, wait healthy, corral weight per step, docker stop. */
async function byHand(up: Daemon, docker: Dockerd, image: string, from: string, to: string): Promise<{ firstStepMs: number; doneMs: number }> {
  const t0 = performance.now();
  const labels = Object.entries({ ...LABELS, 'corral.color': to }).flatMap(([k, v]) => ['-l', `${k}=${v}`]);
  await Promise.all(['web1', 'web2'].map((n) => docker.exec(['run', '-d', '--name', `${n}-${to}`, ...labels, '-e', 'APP_SETTING=kept', '--restart', 'on-failure:3', '--memory', '64m', image])));
  for (;;) {
    const r = await up.cli(['endpoints', 'web', '--json']);
    const eps = (JSON.parse(r.stdout) as { endpoints: Endpoint[] }).endpoints.filter((e) => e.color === to && e.healthy && !e.draining);
    if (eps.length === 2) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  let firstStepMs = NaN;
  for (const pct of STEPS) {
    const r = pct === 100 ? await up.cli(['switch', 'web', to]) : await up.cli(['weight', 'web', `${from}=${100 - pct}`, `${to}=${pct}`]);
    if (r.code !== 0) throw new Error(`step ${pct}: ${r.stderr}`);
    if (Number.isNaN(firstStepMs)) firstStepMs = performance.now() - t0;
    await new Promise((res) => setTimeout(res, STEP_MS));
  }
  await Promise.all(['web1', 'web2'].map((n) => docker.exec(['stop', '-t', '1', `${n}-${from}`])));
  return { firstStepMs, doneMs: performance.now() - t0 };
}

/** ns per response: the Prometheus tallies alone, and with the gate's figures counted too. */
function countingCost(): { metricsNs: number; bothNs: number } {
  const metrics = new LbMetrics(false);
  const gate = new GateFigures();
  const both = bothObservers(metrics, gate);
  const target = { namespace: 'default', name: 'web', key: 'default/web' } as unknown as RouteTarget;
  const eps = [endpoint({ color: 'blue' }), endpoint({ color: 'green', address: '10.42.0.3' })];
  const N = 2_000_000;
  const time = (fn: (i: number) => void) => {
    for (let i = 0; i < 200_000; i++) fn(i);
    const t = process.hrtime.bigint();
    for (let i = 0; i < N; i++) fn(i);
    return Number(process.hrtime.bigint() - t) / N;
  };
  const best = (fn: (i: number) => void) => Math.min(time(fn), time(fn), time(fn));
  const metricsNs = best((i) => metrics.response(target, eps[i & 1], 200, 0.003));
  const bothNs = best((i) => both.response(target, eps[i & 1], 200, 0.003));
  return { metricsNs, bothNs };
}

export async function benchUpgrade(): Promise<BenchSection> {
  const docker = await startDockerd();
  const stateDir = mkdtempSync(join(tmpdir(), 'corral-bench-upgrade-'));
  const up = await startDaemon('up', { netns: docker.netns.name, dockerSocket: docker.socket, stateDir, args: ['--log-level', 'warn', '--lb-threads', '1'] });
  const oursRuns: Run[] = [];
  const handRuns: Run[] = [];
  try {
    await makeAppImage(docker, 'corral-test/app:1', { version: '1' });
    await makeAppImage(docker, 'corral-test/app:2', { version: '2' });
    const labels = Object.entries({ ...LABELS, 'corral.color': 'blue' }).flatMap(([k, v]) => ['-l', `${k}=${v}`]);
    for (const n of ['web1', 'web2']) await docker.exec(['run', '-d', '--name', `${n}-blue`, ...labels, '-e', 'APP_SETTING=kept', '--restart', 'on-failure:3', '--memory', '64m', 'corral-test/app:1']);
    let from = 'blue';
    for (let i = 0; i < RUNS * 2; i++) {
      const to = from === 'blue' ? 'green' : 'blue';
      const image = i % 4 < 2 ? 'corral-test/app:2' : 'corral-test/app:1';
      // Wait for the active color to serve, then run one side; the old containers are removed after.
      for (;;) {
        const r = await docker.netns.exec('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-H', 'Host: web.test', `http://127.0.0.1:${up.httpPort}/cgi-bin/app`]).catch(() => ({ stdout: '' }));
        if (r.stdout === '200') break;
        await new Promise((res) => setTimeout(res, 100));
      }
      if (i % 2 === 0) oursRuns.push(await underLoad(docker, up, () => ours(up, docker, image)));
      else handRuns.push(await underLoad(docker, up, () => byHand(up, docker, image, from, to)));
      for (const n of ['web1', 'web2']) await docker.exec(['rm', '-f', `${n}-${from}`]);
      from = to;
    }
  } finally {
    await up.stop();
    await docker.stop();
    rmSync(stateDir, { recursive: true, force: true });
  }
  const m = (runs: Run[], k: keyof Run) => median(runs.map((r) => r[k]));
  const cost = countingCost();
  const first = m(oursRuns, 'firstStepMs');
  const firstHand = m(handRuns, 'firstStepMs');
  const done = m(oursRuns, 'doneMs');
  const doneHand = m(handRuns, 'doneMs');
  const cpu = m(oursRuns, 'cpuUsPerRequest');
  const cpuHand = m(handRuns, 'cpuUsPerRequest');
  return {
    title: 'corral upgrade vs the same steps by hand (single host)',
    anchor: 'a script doing the same steps by hand: `docker run` of each new container with its labels copied, polling `corral endpoints` until they are healthy, `corral weight` / `corral switch` per step with the same step time, `docker stop -t 1` of the old ones (no gates)',
    conditions: `${RUNS} runs each, alternating, medians; 2 busybox httpd containers (CGI app, health check every 500 ms, rise 2), steps ${STEPS.join(',')} of ${STEP_MS} ms; wrk -c2 through the LB (one thread) during every run; \`corral up\` with the embedded registry and a private dockerd (vfs) in a test netns. CPU: user+system of the \`corral up\` process (agent, DNS and LB) over the run, per request wrk made in that time`,
    rows: [
      { metric: 'time to the first canary step (median)', ours: first, anchor: firstHand, unit: 'ms', ratio: ratioLowerBetter(first, firstHand), target: '≥ 1× (no slower)', pass: first <= firstHand },
      { metric: 'time to completion, old containers stopped (median)', ours: done, anchor: doneHand, unit: 'ms', ratio: ratioLowerBetter(done, doneHand), target: '≥ 1× (no slower)', pass: done <= doneHand },
      { metric: '`corral up` CPU per request over the whole run, the upgrade\'s own work included (median)', ours: cpu, anchor: cpuHand, unit: 'µs', ratio: ratioLowerBetter(cpu, cpuHand) },
      { metric: 'LB counting per response: Prometheus tallies + gate figures vs tallies alone (in-process)', ours: cost.bothNs, anchor: cost.metricsNs, unit: 'ns', ratio: ratioLowerBetter(cost.bothNs, cost.metricsNs) },
    ],
    notes: [
      `per run, ours: first step ${oursRuns.map((r) => Math.round(r.firstStepMs)).join(', ')} ms; done ${oursRuns.map((r) => Math.round(r.doneMs)).join(', ')} ms; non-2xx + socket errors under wrk ${oursRuns.map((r) => r.errors).join(', ')}`,
      `per run, by hand: first step ${handRuns.map((r) => Math.round(r.firstStepMs)).join(', ')} ms; done ${handRuns.map((r) => Math.round(r.doneMs)).join(', ')} ms; non-2xx + socket errors under wrk ${handRuns.map((r) => r.errors).join(', ')}`,
      `the gates' extra LB CPU: counting ${(cost.bothNs - cost.metricsNs).toFixed(0)} ns per response on top of the Prometheus tallies' ${cost.metricsNs.toFixed(0)} ns, ${((100 * (cost.bothNs - cost.metricsNs)) / 1000 / cpuHand).toFixed(3)}% of the ${cpuHand.toFixed(0)} µs \`corral up\` spent per request in the hand runs; reading them is two admin requests per host per step`,
      'the CPU row charges the whole `corral up` process (agent: Docker API calls, registry writes, the progress stream; DNS; LB) over each run to the requests wrk made meanwhile; CGI backends keep the request rate low, so the upgrade\'s fixed work weighs a lot per request',
    ],
  };
}
