// Agent CPU per endpoint change (issue 11: an idle host's agent under fleet churn). One real
// `corral agent` (--overlay off) with `corral dns` and `corral lb --lb-threads 1` watching its
// socket, on a one-member etcd that holds AGENT_CHURN_ENDPOINTS endpoints in
// AGENT_CHURN_SERVICES services (each an HTTP route) written by AGENT_CHURN_HOSTS other hosts; a
// writer makes AGENT_CHURN_RATE endpoint changes/s as the scale bench's fleet does (health flips,
// one in five a re-registration: a delete, then a put). Measured: the agent's user+sys CPU from
// /proc/<pid>/stat over AGENT_CHURN_S seconds, per change and as % of a core; DNS's and LB's too.
// Anchor: the same run with the executable built from AGENT_CHURN_ANCHOR (a git revision, the code
// before the per-change work), on the same etcd and records, rounds alternating ours / anchor.
// AGENT_CHURN_PROF=<dir>: the agent runs with --cpu-prof into <dir>/<variant>-<round>/ (see
// test/bench/cpuprofile-top.ts to read the churn window of it).
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Etcd3 } from 'etcd3';
import { blockKey } from '../../agent/blocks.js';
import { keys } from '../../agent/catalog.js';
import { initialService } from '../../agent/colors.js';
import { newEndpoint } from '../../agent/endpoints.js';
import type { Endpoint, Host } from '../../api/types.js';
import { VERSION } from '../../api/version.js';
import { corral, startDaemon, type Daemon } from '../support/corral.js';
import { startEtcd } from '../support/etcd.js';
import { cpuSeconds } from '../support/proc.js';
import { until } from '../support/until.js';
import { intToIp } from '../scale/fleet.js';
import type { BenchRow, BenchSection } from './report.js';
import { ratioLowerBetter } from './report.js';

const log = (m: string) => process.stderr.write(`[agent-churn ${new Date().toISOString().slice(11, 19)}] ${m}\n`);
const env = (k: string, d: number) => Number(process.env[k] ?? d);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const CIDR = '10.64.0.0/11';
/** The code before the per-change work (this bench's anchor). */
const DEFAULT_ANCHOR = 'b5f2d29';

interface Window { seconds: number; changes: number; revisions: number; agentS: number; dnsS: number; lbS: number; floorS: number; quietPct: number; catchUpMs: number }

/** The executable built from a git revision, in a temporary directory (node_modules shared through a symlink). */
function buildAt(rev: string): { bin: string; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'corral-bench-anchor-'));
  const tar = spawnSync('sh', ['-c', `git archive ${rev} | tar -x -C ${dir}`], { stdio: 'inherit' });
  if (tar.status !== 0) throw new Error(`git archive ${rev} failed`);
  symlinkSync(resolve('node_modules'), join(dir, 'node_modules'));
  execFileSync(process.execPath, ['scripts/build.mjs'], { cwd: dir, stdio: 'inherit' });
  return { bin: join(dir, 'dist/corral.mjs'), dir };
}

export async function benchAgentChurn(): Promise<BenchSection> {
  const N = env('AGENT_CHURN_ENDPOINTS', 10_000);
  const S = env('AGENT_CHURN_SERVICES', 1_000);
  const H = env('AGENT_CHURN_HOSTS', Math.max(1, Math.ceil(N / 200)));
  const rate = env('AGENT_CHURN_RATE', 50);
  const seconds = env('AGENT_CHURN_S', 60);
  const quietS = env('AGENT_CHURN_QUIET_S', 10);
  const warmS = env('AGENT_CHURN_WARM_S', 20);
  const rounds = env('AGENT_CHURN_ROUNDS', 1);
  const anchorRev = process.env.AGENT_CHURN_ANCHOR ?? DEFAULT_ANCHOR;
  const prof = process.env.AGENT_CHURN_PROF;
  log(`building the anchor at ${anchorRev}`);
  const anchor = process.env.AGENT_CHURN_ANCHOR_BIN ? { bin: process.env.AGENT_CHURN_ANCHOR_BIN, dir: '' } : buildAt(anchorRev);
  const etcd = await startEtcd();
  const client = new Etcd3({ hosts: etcd.endpoints.map((h) => `http://${h}`) });
  const running: Daemon[] = [];
  const floors: ChildProcess[] = [];
  try {
    log(`${H} hosts, ${N} endpoints in ${S} services`);
    const endpoints: Endpoint[] = [];
    const puts: Array<[string, string]> = [];
    for (let h = 0; h < H; h++) {
      const name = `churn-${String(h).padStart(4, '0')}`;
      const block = `${intToIp(0x0a400000 + (16 + h) * 256)}/24`;
      const host: Host = { name, block, underlay: `198.18.${(h >> 8) & 255}.${h & 255}`, publicKey: '', nextPublicKey: '', version: VERSION, wgPort: 0, mtu: 0, overlay: '' };
      puts.push([blockKey(name, block), JSON.stringify({ block, node: name, sinceMs: Date.now() })], [keys.host(name), JSON.stringify(host)]);
    }
    for (let e = 0; e < N; e++) {
      const h = e % H;
      const node = `churn-${String(h).padStart(4, '0')}`;
      const address = intToIp(0x0a400000 + (16 + h) * 256 + 2 + Math.floor(e / H));
      const service = `svc-${e % S}`;
      const ep = newEndpoint({ id: `manual:default:${service}:${address}:8080`, service, address, port: 8080, origin: 'manual', node, httpHosts: [`${service}.churn.test`] });
      endpoints.push(ep);
      puts.push([keys.endpoint(node, ep.id), JSON.stringify(ep)]);
      if (e < S) puts.push([keys.service(ep.namespace, ep.service), JSON.stringify(initialService(ep.namespace, ep.service, ep.color))]);
    }
    let next = 0;
    await Promise.all(Array.from({ length: 32 }, async () => {
      while (next < puts.length) {
        const [k, v] = puts[next++]!;
        await client.put(k).value(v);
      }
    }));

    const head = async () => Number((await client.get('/corral/none').exec()).header.revision);
    const applied = async (d: Daemon, rev: number) => {
      const r = await corral(['status', '--json', '--agent-socket', d.socket]);
      if (r.code !== 0) return false;
      const s = JSON.parse(r.stdout) as { revision: number; components: Array<{ component: string; connected: boolean; appliedRevision: number }> };
      return s.revision >= rev && ['dns', 'lb'].every((c) => s.components.some((x) => x.component === c && x.connected && x.appliedRevision >= rev));
    };

    /** The writer: `rate` changes/s for `s` seconds, the fleet's shape. */
    const churn = async (s: number): Promise<{ changes: number; revisions: number }> => {
      const r0 = await head();
      let changes = 0;
      let owed = 0;
      let n = 0;
      let last = Date.now();
      const end = last + s * 1000;
      const inFlight = new Set<Promise<unknown>>();
      while (Date.now() < end) {
        const now = Date.now();
        owed += ((now - last) * rate) / 1000;
        last = now;
        while (owed >= 1) {
          owed--;
          const i = Math.floor(Math.random() * endpoints.length);
          const cur = endpoints[i]!;
          const reRegister = n++ % 5 === 4;
          const ep = { ...cur, healthy: reRegister ? cur.healthy : !cur.healthy, healthReason: cur.healthy ? 'GET / answered 500' : 'GET / answered 200' };
          endpoints[i] = ep;
          const key = keys.endpoint(ep.node, ep.id);
          const p = (reRegister ? client.delete().key(key).exec().then(() => client.put(key).value(JSON.stringify(ep)).exec()) : client.put(key).value(JSON.stringify(ep)).exec())
            .then(() => changes++);
          inFlight.add(p);
          void p.finally(() => inFlight.delete(p));
        }
        await sleep(20);
      }
      await Promise.all(inFlight);
      return { changes, revisions: (await head()) - r0 };
    };

    const run = async (variant: 'ours' | 'anchor', round: number): Promise<Window> => {
      const bin = variant === 'ours' ? undefined : anchor.bin;
      // AGENT_CHURN_NODE_ARGS: more flags for the agent's node (--trace-deopt, …).
      const nodeArgs: string[] = (process.env.AGENT_CHURN_NODE_ARGS ?? '').split(' ').filter(Boolean);
      if (prof) {
        const dir = resolve(prof, `${variant}-${round}`);
        mkdirSync(dir, { recursive: true });
        nodeArgs.push('--cpu-prof', `--cpu-prof-dir=${dir}`);
      }
      // AGENT_CHURN_PERF=<dir>: \`perf record\` of the agent over the churn window (CPU cycles, not wall time: on a
      // loaded machine a V8 profile charges the waits for a core to whatever code was running).
      const perfDir = process.env.AGENT_CHURN_PERF;
      if (perfDir) nodeArgs.push('--perf-basic-prof-only-functions', '--interpreted-frames-native-stack');
      const agent = await startDaemon('agent', { bin, nodeName: 'churn-real', nodeArgs, args: ['--registry', etcd.spec, '--overlay', 'off', '--cluster-cidr', CIDR, '--log-level', 'warn'] });
      running.push(agent);
      const dns = await startDaemon('dns', { bin, args: ['--agent-socket', agent.socket, '--log-level', 'warn'] });
      running.push(dns);
      const lb = await startDaemon('lb', { bin, args: ['--agent-socket', agent.socket, '--log-level', 'warn', '--lb-threads', '1'] });
      running.push(lb);
      // The etcd client alone, watching the same prefix through the same code from now (warmed up as the agent is): what any agent on it pays per change.
      const floor = spawn(process.execPath, ['--import', 'tsx', 'test/bench/etcd-watch-floor.ts', etcd.endpoints[0]!], { stdio: ['ignore', 'ignore', 'inherit'] });
      floors.push(floor);
      const rev0 = await head();
      await until(`${variant}: DNS and LB applied the registry`, () => applied(agent, rev0), { ms: 300_000, everyMs: 500 });
      await churn(warmS); // warm-up: V8 compiles the hot paths (a long-running agent has long done it)
      await until(`${variant}: caught up after the warm-up`, async () => applied(agent, await head()), { ms: 120_000, everyMs: 200 });
      const pids = [agent.child.pid!, dns.child.pid!, lb.child.pid!, floor.pid!];
      const q0 = cpuSeconds(pids[0]);
      await sleep(quietS * 1000);
      const quietPct = (100 * (cpuSeconds(pids[0]) - q0)) / quietS;
      const c0 = pids.map(cpuSeconds);
      const t0 = Date.now();
      const m0 = process.hrtime.bigint() / 1000n;
      const perf = perfDir ? spawn('perf', ['record', '-F', '499', '-g', '-p', String(pids[0]), '-o', join(perfDir, `${variant}-${round}.data`)], { stdio: 'ignore' }) : undefined;
      const w = await churn(seconds);
      perf?.kill('SIGINT');
      if (perf) await new Promise((r) => perf.once('exit', r));
      const t1 = Date.now();
      // The churn window on the monotonic clock, in µs as a .cpuprofile's times are (cpuprofile-top.ts --from --to).
      if (prof) log(`${variant} round ${round}: churn window --from ${m0} --to ${process.hrtime.bigint() / 1000n}`);
      const revEnd = await head();
      await until(`${variant}: caught up after the churn`, () => applied(agent, revEnd), { ms: 120_000, everyMs: 100 });
      const catchUpMs = Date.now() - t1;
      const c1 = pids.map(cpuSeconds);
      floor.kill('SIGTERM');
      // AGENT_CHURN_LOGS=<dir>: the three daemons' logs of each run.
      const logs = process.env.AGENT_CHURN_LOGS;
      if (logs) for (const [name, d] of [['agent', agent], ['dns', dns], ['lb', lb]] as const) writeFileSync(join(logs, `${variant}-${round}-${name}.log`), d.logs());
      for (const d of [lb, dns, agent]) {
        await d.stop();
        running.splice(running.indexOf(d), 1);
      }
      const out = { seconds: (t1 - t0) / 1000, changes: w.changes, revisions: w.revisions, agentS: c1[0]! - c0[0]!, dnsS: c1[1]! - c0[1]!, lbS: c1[2]! - c0[2]!, floorS: c1[3]! - c0[3]!, quietPct, catchUpMs };
      log(`${variant} round ${round}: ${JSON.stringify(out)}; agent ${((1000 * out.agentS) / out.changes).toFixed(3)} ms/change, ${((100 * out.agentS) / out.seconds).toFixed(2)} % of a core`);
      return out;
    };

    const ours: Window[] = [];
    const anchors: Window[] = [];
    for (let r = 0; r < rounds; r++) {
      ours.push(await run('ours', r));
      anchors.push(await run('anchor', r));
    }
    const sum = (ws: Window[], f: (w: Window) => number) => ws.reduce((a, w) => a + f(w), 0);
    const perChange = (ws: Window[], f: (w: Window) => number) => (1000 * sum(ws, f)) / sum(ws, (w) => w.changes);
    const pctCore = (ws: Window[], f: (w: Window) => number) => (100 * sum(ws, f)) / sum(ws, (w) => w.seconds);
    const oursMs = perChange(ours, (w) => w.agentS);
    const anchorMs = perChange(anchors, (w) => w.agentS);
    const oursPct = pctCore(ours, (w) => w.agentS);
    const anchorPct = pctCore(anchors, (w) => w.agentS);
    const rows: BenchRow[] = [
      { metric: `agent CPU per endpoint change (ms, user+sys over ${seconds} s × ${rounds} of churn ${rate}/s)`, ours: oursMs, anchor: anchorMs, unit: 'ms', ratio: ratioLowerBetter(oursMs, anchorMs), target: '≤ 0.4 ms', pass: oursMs <= 0.4 },
      { metric: `agent CPU under churn ${rate}/s (% of a core)`, ours: oursPct, anchor: anchorPct, unit: '%', ratio: ratioLowerBetter(oursPct, anchorPct), target: '≤ 2%', pass: oursPct <= 2 },
      { metric: `agent CPU without churn (% of a core, ${quietS} s)`, ours: sum(ours, (w) => w.quietPct) / rounds, anchor: sum(anchors, (w) => w.quietPct) / rounds, unit: '%', ratio: ratioLowerBetter(sum(ours, (w) => w.quietPct), sum(anchors, (w) => w.quietPct)) },
      { metric: 'the etcd client alone (agent/registry/etcd.ts watching /corral/, nothing done with the events) per change, in the same windows (ms): the floor under both', ours: perChange(ours, (w) => w.floorS), anchor: perChange(anchors, (w) => w.floorS), unit: 'ms', ratio: NaN },
      { metric: 'corral dns CPU per endpoint change (ms)', ours: perChange(ours, (w) => w.dnsS), anchor: perChange(anchors, (w) => w.dnsS), unit: 'ms', ratio: ratioLowerBetter(perChange(ours, (w) => w.dnsS), perChange(anchors, (w) => w.dnsS)) },
      { metric: 'corral lb CPU per endpoint change (ms)', ours: perChange(ours, (w) => w.lbS), anchor: perChange(anchors, (w) => w.lbS), unit: 'ms', ratio: ratioLowerBetter(perChange(ours, (w) => w.lbS), perChange(anchors, (w) => w.lbS)) },
    ];
    const line = (name: string, ws: Window[]) => ws.map((w, i) => `${name} ${i + 1}: ${w.changes} changes (${w.revisions} revisions) in ${w.seconds.toFixed(1)} s, agent ${w.agentS.toFixed(2)} s CPU (${((1000 * w.agentS) / w.changes).toFixed(3)} ms/change), DNS ${w.dnsS.toFixed(2)} s, LB ${w.lbS.toFixed(2)} s, etcd client alone ${w.floorS.toFixed(2)} s, agent without churn ${w.quietPct.toFixed(2)} %, caught up ${w.catchUpMs} ms after the last write`).join('; ');
    return {
      title: `Agent CPU per endpoint change: ${N.toLocaleString('en')} endpoints, churn ${rate}/s`,
      anchor: `the same executables built from ${anchorRev} (before the per-change work), same etcd and records, in the same run`,
      conditions: `one-member etcd on loopback; ${H} other hosts' records (block lease, Host), ${N} endpoints in ${S} services (each an HTTP route); one \`corral agent --overlay off\`, \`corral dns\` and \`corral lb --lb-threads 1\` on its socket; churn as the scale bench's fleet makes it (health flips, every fifth a delete then a put); rounds alternate ours / anchor; a "change" is one such write (a re-registration is two revisions)`,
      rows,
      notes: [
        `Knobs: ${Object.entries(process.env).filter(([k]) => k.startsWith('AGENT_CHURN_')).map(([k, v]) => `${k}=${v}`).join(' ') || 'defaults'}; warm-up ${warmS} s of churn before each window (V8 takes about a minute of churn to compile the hot paths of a fresh process; a long-running agent has done it).`,
        line('ours', ours), line('anchor', anchors),
        'CPU time per change is what this measures; % of a core depends on the rate, and on this shared 2-core machine the wall clock is noisy. "Without churn" is 10 s right after the warm-up, in 10 ms clock ticks: ±0.1 %.',
      ],
    };
  } finally {
    for (const d of running) await d.stop().catch(() => {});
    for (const f of floors) f.kill('SIGKILL');
    client.close();
    await etcd.stop();
    if (anchor.dir) rmSync(anchor.dir, { recursive: true, force: true });
  }
}
