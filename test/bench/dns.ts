// DNS throughput: a real `corral dns` (fed by a real `corral agent`) against unbound serving the
// same names as local-data, both driven by dnsperf with the same query file, like with like: one
// thread each (the rows with targets), then each on its default thread count here (no target).
// Latency at half of unbound's maximum rate (dnsperf -Q), p99 from per-query -v output.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentClient, unary } from '../../api/grpc.js';
import type { EndpointReply, RegisterRequest } from '../../api/types.js';
import { dig, startUnbound } from '../support/dns.js';
import { childEnv, startDaemon } from '../support/corral.js';
import type { BenchSection } from './report.js';
import { ratioHigherBetter, ratioLowerBetter } from './report.js';

const SERVICES = 100;
const ENDPOINTS_PER_SERVICE = 2;
const SECONDS = 10;

interface PerfResult {
  qps: number;
  sent: number;
  lost: number;
  avgMs: number;
  p99Ms: number;
}

function address(svc: number, ep: number): string {
  return `10.42.${ep}.${svc + 1}`;
}

/** dnsperf against 127.0.0.1:port; with a rate, per-query latencies give p99. */
function dnsperf(port: number, queryFile: string, rate?: number): Promise<PerfResult> {
  const args = ['-s', '127.0.0.1', '-p', String(port), '-d', queryFile, '-l', String(SECONDS), '-q', '200', '-t', '2'];
  if (rate) args.push('-Q', String(rate), '-v');
  return new Promise((resolve, reject) => {
    const child = spawn('dnsperf', args, { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const latencies: number[] = [];
    let partial = '';
    child.stdout.on('data', (d: Buffer) => {
      const text = partial + d.toString();
      const lines = text.split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        // -v: "> NOERROR svc1.default.corral.internal A 0.000123"
        if (rate && line.startsWith('> ')) {
          const s = Number(line.slice(line.lastIndexOf(' ') + 1));
          if (Number.isFinite(s)) latencies.push(s * 1000);
        } else out += line + '\n';
      }
    });
    child.stderr.on('data', (d: Buffer) => (err += d));
    child.once('error', reject);
    child.once('close', (code) => {
      out += partial;
      if (code !== 0) return reject(new Error(`dnsperf exited ${code}: ${err}${out.slice(-2000)}`));
      const num = (re: RegExp) => Number(re.exec(out)?.[1] ?? NaN);
      latencies.sort((a, b) => a - b);
      resolve({
        qps: num(/Queries per second:\s+([\d.]+)/),
        sent: num(/Queries sent:\s+(\d+)/),
        lost: num(/Queries lost:\s+(\d+)/),
        avgMs: num(/Average Latency \(s\):\s+([\d.]+)/) * 1000,
        p99Ms: latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * 0.99))]! : NaN,
      });
    });
  });
}

async function waitForAnswers(port: number, name: string, want: number): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await dig(port, name, 'A').catch(() => null);
    if (r && r.answer.length === want) return;
    if (Date.now() > deadline) throw new Error(`${name} did not resolve to ${want} addresses on port ${port}: ${r?.raw ?? 'no reply'}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

export async function benchDns(): Promise<BenchSection> {
  const dir = mkdtempSync(join(tmpdir(), 'corral-bench-dns-'));
  const queryFile = join(dir, 'queries.txt');
  const names = Array.from({ length: SERVICES }, (_, i) => `svc${i}.default.corral.internal`);
  writeFileSync(queryFile, names.map((n) => `${n} A`).join('\n') + '\n');
  // Forwarded names: a zone unbound serves, which corral dns forwards to it (cache warm).
  const forwardFile = join(dir, 'forwarded.txt');
  const forwarded = Array.from({ length: SERVICES }, (_, i) => `name${i}.example.test`);
  writeFileSync(forwardFile, forwarded.map((n) => `${n} A`).join('\n') + '\n');
  const localData = [
    'corral.internal. 5 IN SOA ns.corral.internal. hostmaster.corral.internal. 1 3600 600 86400 5',
    ...names.flatMap((n, i) => Array.from({ length: ENDPOINTS_PER_SERVICE }, (_, e) => `${n}. 5 IN A ${address(i, e)}`)),
    'example.test. 3600 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60',
    ...forwarded.flatMap((n, i) => Array.from({ length: ENDPOINTS_PER_SERVICE }, (_, e) => `${n}. 3600 IN A ${address(i, e)}`)),
  ];
  let unbound: Awaited<ReturnType<typeof startUnbound>> | undefined;
  let unboundN: Awaited<ReturnType<typeof startUnbound>> | undefined;
  let agent: Awaited<ReturnType<typeof startDaemon>> | undefined;
  let dns: Awaited<ReturnType<typeof startDaemon>> | undefined;
  let dnsN: Awaited<ReturnType<typeof startDaemon>> | undefined;
  try {
    unbound = await startUnbound(localData, { localZones: ['corral.internal.', 'example.test.'], threads: 1 });
    agent = await startDaemon('agent', { args: ['--log-level', 'warn'] });
    // One thread, like unbound's; product defaults otherwise (--dns-rate-limit: loopback is exempt).
    dns = await startDaemon('dns', { args: ['--agent-socket', agent.socket, '--log-level', 'warn', '--dns-threads', '1', '--dns-upstream', `127.0.0.1:${unbound.port}`] });
    // The default thread count (--dns-threads 0: min(4, CPUs)) against unbound with as many.
    dnsN = await startDaemon('dns', { args: ['--agent-socket', agent.socket, '--log-level', 'warn', '--dns-upstream', `127.0.0.1:${unbound.port}`] });
    const status = (await (await fetch(`http://127.0.0.1:${dnsN.adminPort}/`)).json()) as { threads: number };
    unboundN = await startUnbound(localData, { localZones: ['corral.internal.', 'example.test.'], threads: status.threads });
    const client = agentClient(agent.socket);
    try {
      for (let i = 0; i < SERVICES; i++) {
        for (let e = 0; e < ENDPOINTS_PER_SERVICE; e++) {
          await unary<RegisterRequest, EndpointReply>(client, 'Register', {
            service: `svc${i}`, namespace: 'default', address: address(i, e), port: 8080, color: '', httpHosts: [], httpPath: '',
            weight: 1, healthCheck: null, portName: '',
          });
        }
      }
    } finally {
      client.close();
    }
    await waitForAnswers(dns.dnsPort, names[SERVICES - 1]!, ENDPOINTS_PER_SERVICE);
    await waitForAnswers(dnsN.dnsPort, names[SERVICES - 1]!, ENDPOINTS_PER_SERVICE);
    await waitForAnswers(unbound.port, names[SERVICES - 1]!, ENDPOINTS_PER_SERVICE);
    await waitForAnswers(unboundN.port, names[SERVICES - 1]!, ENDPOINTS_PER_SERVICE);

    // Warm both (JIT, caches), then measure each at full speed, then both at half unbound's rate.
    await Promise.all([dig(dns.dnsPort, names[0]!, 'A'), dig(unbound.port, names[0]!, 'A')]);
    const anchorMax = await dnsperf(unbound.port, queryFile);
    const oursMax = await dnsperf(dns.dnsPort, queryFile);
    const half = Math.max(100, Math.floor(anchorMax.qps / 2));
    const anchorHalf = await dnsperf(unbound.port, queryFile, half);
    const oursHalf = await dnsperf(dns.dnsPort, queryFile, half);
    const lostPct = (r: PerfResult) => (r.sent ? (100 * r.lost) / r.sent : 0);

    // Forwarded names with the cache warm: every name asked once through corral dns first.
    for (const n of forwarded) await dig(dns.dnsPort, n, 'A');
    const anchorFwd = await dnsperf(unbound.port, forwardFile);
    const oursFwd = await dnsperf(dns.dnsPort, forwardFile);

    await Promise.all([dig(dnsN.dnsPort, names[0]!, 'A'), dig(unboundN.port, names[0]!, 'A')]);
    const anchorMaxN = await dnsperf(unboundN.port, queryFile);
    const oursMaxN = await dnsperf(dnsN.dnsPort, queryFile);

    return {
      title: 'DNS: authoritative answers for service names, and forwarded names with the cache warm',
      anchor: 'unbound 1.17 serving the same names as local-data in a static local-zone, on as many threads as corral dns (1, then the default); for forwarded names, the same unbound is corral dns\'s upstream and is also asked directly',
      conditions: `${SERVICES} service names × A (${ENDPOINTS_PER_SERVICE} addresses each), one dnsperf query file for both; dnsperf -q 200, ${SECONDS} s each, UDP on 127.0.0.1; \`corral dns\` fed by a real \`corral agent\` with endpoints registered over gRPC; rows without a thread count: \`corral dns --dns-threads 1\` against unbound num-threads 1; latency run at ${half} q/s (half of unbound's max); forwarded: ${SERVICES} names × A in a zone unbound serves (TTL 1 h), each asked once through corral dns before the run`,
      rows: [
        { metric: `queries/s at full load, ${status.threads} threads each (corral dns's default here; no target)`, ours: oursMaxN.qps, anchor: anchorMaxN.qps, unit: 'q/s', ratio: ratioHigherBetter(oursMaxN.qps, anchorMaxN.qps) },
        { metric: 'queries/s at full load, 1 thread each', ours: oursMax.qps, anchor: anchorMax.qps, unit: 'q/s', ratio: ratioHigherBetter(oursMax.qps, anchorMax.qps), target: '≥ 0.8× (issue 5)', pass: oursMax.qps >= 0.8 * anchorMax.qps },
        { metric: 'lost queries at full load', ours: lostPct(oursMax), anchor: lostPct(anchorMax), unit: '%', ratio: lostPct(oursMax) === 0 ? 1 : ratioLowerBetter(lostPct(oursMax), lostPct(anchorMax)) },
        { metric: 'average latency at half load', ours: oursHalf.avgMs, anchor: anchorHalf.avgMs, unit: 'ms', ratio: ratioLowerBetter(oursHalf.avgMs, anchorHalf.avgMs) },
        { metric: 'p99 latency at half load', ours: oursHalf.p99Ms, anchor: anchorHalf.p99Ms, unit: 'ms', ratio: ratioLowerBetter(oursHalf.p99Ms, anchorHalf.p99Ms), target: 'within 2× of unbound (≥ 0.5×, issue 5)', pass: oursHalf.p99Ms <= 2 * anchorHalf.p99Ms },
        { metric: 'lost queries at half load', ours: lostPct(oursHalf), anchor: lostPct(anchorHalf), unit: '%', ratio: lostPct(oursHalf) === 0 ? 1 : ratioLowerBetter(lostPct(oursHalf), lostPct(anchorHalf)) },
        { metric: 'forwarded names, cache warm: queries/s (ours through corral dns, anchor unbound directly)', ours: oursFwd.qps, anchor: anchorFwd.qps, unit: 'q/s', ratio: ratioHigherBetter(oursFwd.qps, anchorFwd.qps) },
        { metric: 'forwarded names, cache warm: lost queries', ours: lostPct(oursFwd), anchor: lostPct(anchorFwd), unit: '%', ratio: lostPct(oursFwd) === 0 ? 1 : ratioLowerBetter(lostPct(oursFwd), lostPct(anchorFwd)) },
      ],
      notes: [
        `full load: ours ${oursMax.sent} sent / ${oursMax.lost} lost, unbound ${anchorMax.sent} sent / ${anchorMax.lost} lost; forwarded: ours ${oursFwd.sent} sent / ${oursFwd.lost} lost, unbound ${anchorFwd.sent} sent / ${anchorFwd.lost} lost`,
        `with ${status.threads} threads: ours ${oursMaxN.sent} sent / ${oursMaxN.lost} lost, unbound ${anchorMaxN.sent} sent / ${anchorMaxN.lost} lost; corral dns's threads are the main thread and workers reading one socket, unbound's its num-threads. The bench client is on loopback, which --dns-rate-limit exempts`,
        'dnsperf, the server under test and the other server share the same cores; the idle server is not queried during a run',
      ],
    };
  } finally {
    await dns?.stop();
    await dnsN?.stop();
    await agent?.stop();
    await unbound?.stop();
    await unboundN?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
