// Scale (issue 11): what each host costs etcd with a fleet of 1,000 simulated hosts running the
// agent's own mesh code (test/scale/fleet.ts), 50,000 endpoints in 5,000 services and endpoint
// churn, on a three-member etcd, measured on etcd itself (test/scale/meter.ts). The anchor is the
// protocol before issue 11 (test/scale/legacy.ts: every host rewrites its Host record with every
// peer's status every 5 s), run on the same etcd.
// Knobs: SCALE_HOSTS (1000), SCALE_ENDPOINTS (50000), SCALE_SERVICES (5000), SCALE_CHURN (50/s),
// SCALE_SOAK_S (180), SCALE_TTL_S (30), SCALE_SETTLE_S (65: one status period before the soak), SCALE_LEGACY_HOSTS ("50,200,1000"), SCALE_LEGACY_S (20).
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { startEtcd } from '../support/etcd.js';
import { eventually, Fleet } from '../scale/fleet.js';
import { LegacyFleet } from '../scale/legacy.js';
import { EtcdMeter, windowOf, type MeterWindow } from '../scale/meter.js';
import type { BenchRow, BenchSection } from './report.js';
import { ratioLowerBetter as lower } from './report.js';

/** anchor / ours; ours 0 (nothing written) is "infinitely better", not 0×. */
const ratioLowerBetter = (ours: number, anchor: number) => (ours === 0 ? (anchor > 0 ? Infinity : NaN) : lower(ours, anchor));

const env = (k: string, d: number) => Number(process.env[k] ?? d);
const HOSTS = env('SCALE_HOSTS', 1000);
const ENDPOINTS = env('SCALE_ENDPOINTS', 50_000);
const SERVICES = env('SCALE_SERVICES', 5000);
const CHURN = env('SCALE_CHURN', 50);
const SOAK_S = env('SCALE_SOAK_S', 180);
const LEGACY_S = env('SCALE_LEGACY_S', 20);
const SETTLE_S = env('SCALE_SETTLE_S', 65);
/** Lease TTL of the simulated hosts: longer than an agent's 10 s, because 1,000 hosts' keep-alives share one event loop here. */
const TTL_S = env('SCALE_TTL_S', 30);
const LEGACY_HOSTS = (process.env.SCALE_LEGACY_HOSTS ?? '50,200,1000').split(',').map(Number).filter((n) => n > 0);

const log = (msg: string) => process.stderr.write(`scale: ${new Date().toISOString().slice(11, 19)} ${msg}\n`);
const mb = (b: number) => b / 1e6;

interface LegacyRun { hosts: number; record: number; seconds: number; writesPerS: number; bytesPerS: number; offeredBytesPerS: number; growthPer30s: number; failures: number; skipped: number }

export async function benchScale(): Promise<BenchSection> {
  const etcd = await startEtcd({ size: 3 });
  const meter = new EtcdMeter(etcd.endpoints);
  const lag = monitorEventLoopDelay({ resolution: 20 });
  lag.enable();
  const notes: string[] = [];
  try {
    await meter.start();
    const fleet = new Fleet({ endpoints: etcd.endpoints, leaseTtlS: TTL_S, coalesceEvents: true });
    await fleet.start();

    // Join: 50 at a time (each host's join is a few round trips), until every device holds every peer.
    log(`${HOSTS} hosts joining`);
    const t0 = Date.now();
    await fleet.join(Array.from({ length: HOSTS }, (_, i) => fleet.host(i)), 50);
    const joinedS = (Date.now() - t0) / 1000;
    await eventually(`${HOSTS} hosts converged`, () => fleet.converged(), 1_800_000, () => `peers: min ${Math.min(...fleet.running().map((h) => h.device.peerCount))}`);
    const convergedS = (Date.now() - t0) / 1000;
    const maxCalls = Math.max(...fleet.hosts.map((h) => h.device.setPeersCalls));
    const lastJoiner = fleet.hosts[HOSTS - 1]!.device.peersPerCall;
    log(`Host records deleted during the join (leases lost): ${meter.reading().kinds.hosts.deletes}`);
    log(`joined in ${joinedS.toFixed(1)} s, converged in ${convergedS.toFixed(1)} s; last joiner's device calls: ${lastJoiner.join(',')}`);

    log(`${ENDPOINTS} endpoints in ${SERVICES} services`);
    const e0 = Date.now();
    await fleet.registerEndpoints(ENDPOINTS, SERVICES, 64);
    const endpointsS = (Date.now() - e0) / 1000;
    await eventually('endpoints in the catalog', () => fleet.catalog.endpoints.size === ENDPOINTS, 300_000);
    log(`endpoints written in ${endpointsS.toFixed(1)} s; waiting a status period so the soak starts settled`);
    await new Promise((r) => setTimeout(r, SETTLE_S * 1000));

    // Soak: idle hosts under endpoint churn.
    fleet.startChurn(CHURN);
    await meter.settle();
    const [db0] = [Math.max(...(await meter.dbSizes()))];
    const r0 = meter.reading();
    lag.reset();
    log(`soak ${SOAK_S} s with churn ${CHURN}/s`);
    await new Promise((r) => setTimeout(r, SOAK_S * 1000));
    fleet.stopChurn();
    await meter.settle();
    const soak = windowOf(r0, meter.reading());
    const db1 = Math.max(...(await meter.dbSizes()));
    const lagP99 = lag.percentile(99) / 1e6;
    const sizes = [...meter.reading().keys].reduce((m, [k, v]) => {
      const kind = k.startsWith('/corral/hosts/') ? 'host' : 'status';
      m[kind] = Math.max(m[kind], v.size);
      return m;
    }, { host: 0, status: 0 });
    const perHost = hostCosts(soak, HOSTS);
    log(`soak: ${JSON.stringify({ ...perHost, sizes, churned: fleet.churned, churnErrors: fleet.churnErrors, db0, db1, lagP99 })}`);
    const lostLeases = soak.kinds.hosts.deletes;
    const fleetErrors = fleet.logged.errors;
    await fleet.close();

    // The anchor: the same etcd, the old protocol at each size, one window each.
    const legacy: LegacyRun[] = [];
    for (const n of LEGACY_HOSTS) {
      await new Promise((r) => setTimeout(r, 12_000)); // the previous hosts' leases expire
      await meter.compact();
      log(`old protocol: ${n} hosts, ${LEGACY_S} s`);
      const lf = new LegacyFleet(meter.client, etcd.endpoints, n);
      await lf.start();
      await new Promise((r) => setTimeout(r, 6000)); // one full heartbeat period before measuring
      await meter.settle();
      const d0 = Math.max(...(await meter.dbSizes()));
      const a = meter.reading();
      await new Promise((r) => setTimeout(r, LEGACY_S * 1000));
      await meter.settle();
      const w = windowOf(a, meter.reading());
      const d1 = Math.max(...(await meter.dbSizes()));
      await lf.stop();
      const run: LegacyRun = {
        hosts: n, record: lf.largest, seconds: w.seconds, writesPerS: w.kinds.hosts.puts / w.seconds, bytesPerS: w.kinds.hosts.bytes / w.seconds,
        offeredBytesPerS: (lf.largest * n) / 5, growthPer30s: ((d1 - d0) * 30) / w.seconds, failures: lf.failures, skipped: lf.skipped,
      };
      legacy.push(run);
      log(`old protocol: ${JSON.stringify(run)}`);
    }
    const anchor = legacy.find((l) => l.hosts === HOSTS) ?? legacy[legacy.length - 1]!;

    // Where etcd could not absorb the old protocol (heartbeats skipped), its own rate is the anchor: 12 writes/min per host, record × N / 5 s.
    const saturated = anchor.skipped > 0 || anchor.failures > 0;
    const offered = saturated ? ' (anchor: offered; etcd absorbed less)' : '';
    const anchorWritesPerMin = saturated ? 12 : (anchor.writesPerS * 60) / anchor.hosts;
    const anchorFleetBytesS = saturated ? anchor.offeredBytesPerS : anchor.bytesPerS;
    const ourBytesPerHostS = perHost.bytesPerHostPerMin / 60;
    const anchorBytesPerHostS = anchorFleetBytesS / anchor.hosts;
    const rows: BenchRow[] = [
      { metric: `Host record (bytes, largest of ${HOSTS})`, ours: sizes.host, anchor: anchor.record, unit: 'B', ratio: ratioLowerBetter(sizes.host, anchor.record), target: '≤ 2048 B, independent of N', pass: sizes.host <= 2048 },
      { metric: 'HostStatus record (bytes, largest); anchor: the old Host record that carried it', ours: sizes.status, anchor: anchor.record, unit: 'B', ratio: ratioLowerBetter(sizes.status, anchor.record), target: '≤ 2048 B', pass: sizes.status <= 2048 },
      { metric: `registry writes per idle host per minute (Host + status)${offered}`, ours: perHost.writesPerHostPerMin, anchor: anchorWritesPerMin, unit: '/min', ratio: ratioLowerBetter(perHost.writesPerHostPerMin, anchorWritesPerMin), target: '≤ 1/min', pass: perHost.writesPerHostPerMin <= 1 },
      { metric: `Host record writes in the soak (all hosts)${offered}`, ours: soak.kinds.hosts.puts, anchor: (anchorWritesPerMin * anchor.hosts * soak.seconds) / 60, unit: 'writes', ratio: ratioLowerBetter(soak.kinds.hosts.puts, (anchorWritesPerMin * anchor.hosts * soak.seconds) / 60), target: '0', pass: soak.kinds.hosts.puts === 0 },
      { metric: `bytes written per idle host per second${offered}`, ours: ourBytesPerHostS, anchor: anchorBytesPerHostS, unit: 'B/s', ratio: ratioLowerBetter(ourBytesPerHostS, anchorBytesPerHostS), target: '≤ 2 KB per write, ≤ 1 write/min' },
      { metric: `host-written bytes/s to etcd, whole fleet (${HOSTS} hosts)${offered}`, ours: perHost.fleetBytesPerS, anchor: anchorFleetBytesS, unit: 'B/s', ratio: ratioLowerBetter(perHost.fleetBytesPerS, anchorFleetBytesS) },
      { metric: 'etcd db growth per 30 s (all writes, endpoint churn included)', ours: mb(((db1 - db0) * 30) / soak.seconds), anchor: mb(anchor.growthPer30s), unit: 'MB', ratio: ratioLowerBetter(((db1 - db0) * 30) / soak.seconds, anchor.growthPer30s) },
      { metric: `time for ${HOSTS} hosts to join and converge (every device ${HOSTS - 1} peers)`, ours: convergedS, anchor: NaN, unit: 's', ratio: NaN },
    ];
    notes.push(
      `Soak: ${soak.seconds.toFixed(0)} s (SCALE_SOAK_S) with ${fleet.churned} endpoint changes (${(fleet.churned / soak.seconds).toFixed(1)}/s, ${fleet.churnErrors} failed); etcd revisions in the soak: ${soak.revisions} (hosts ${soak.kinds.hosts.revisions}, status ${soak.kinds.status.revisions}, endpoints ${soak.kinds.endpoints.revisions}); status writes ${soak.kinds.status.puts} (${(soak.kinds.status.puts / HOSTS).toFixed(2)} per host), Host record puts ${soak.kinds.hosts.puts}, deletes ${lostLeases}.`,
      `etcd db size (largest member): ${mb(db0).toFixed(1)} MB at the soak's start, ${mb(db1).toFixed(1)} MB at its end; endpoint churn bytes in the soak: ${mb(soak.kinds.endpoints.bytes).toFixed(1)} MB.`,
      `Join: ${HOSTS} hosts, 50 joining at a time, all up in ${joinedS.toFixed(1)} s, every device with ${HOSTS - 1} peers after ${convergedS.toFixed(1)} s; the last host's device calls carried ${lastJoiner.join(', ')} peer changes (most calls on any host: ${maxCalls}). ${ENDPOINTS} endpoints written in ${endpointsS.toFixed(1)} s. The simulator runs all ${HOSTS} meshes on one 2-core process (event-loop delay p99 in the soak ${lagP99.toFixed(0)} ms): join and convergence times are this process's, an upper bound.`,
      ...legacy.map((l) => `Old protocol, ${l.hosts} hosts (${l.seconds.toFixed(0)} s window): record ${(l.record / 1000).toFixed(1)} KB, ${l.writesPerS.toFixed(1)} writes/s, ${mb(l.bytesPerS).toFixed(2)} MB/s written (offered ${mb(l.offeredBytesPerS).toFixed(2)} MB/s), etcd growth ${mb(l.growthPer30s).toFixed(1)} MB per 30 s, ${l.failures} writes failed, ${l.skipped} heartbeats skipped while the host's previous write was still waiting for etcd. Issue 11's table: 50 hosts 8.7 KB, 0.09 MB/s; 200 hosts 34.7 KB, 1.4 MB/s, 42 MB per 30 s.`),
      `Simulated hosts logged ${fleetErrors} errors.`,
    );
    return {
      title: `Scale: ${HOSTS} hosts, ${ENDPOINTS} endpoints on a three-member etcd`,
      anchor: `the protocol before issue 11 (test/scale/legacy.ts: each host rewrites its Host record, with every peer's handshake and byte counters, every 5 s) on the same etcd, at ${anchor.hosts} hosts`,
      conditions: `${HOSTS} simulated hosts (the agent's Mesh and EtcdRegistry each, in-memory WireGuard device, one Etcd3 client shared, one lease each, TTL ${TTL_S} s), ${ENDPOINTS} endpoints in ${SERVICES} services, churn ${CHURN}/s, soak ${SOAK_S} s; etcd 3.4 ×3 on loopback; measured by a watch of "/" and the Status RPC`,
      rows,
      notes,
    };
  } finally {
    lag.disable();
    await meter.close();
    await etcd.stop();
  }
}

/** Writes and bytes by the hosts themselves (Host records and status reports) in a window. */
function hostCosts(w: MeterWindow, hosts: number): { writesPerHostPerMin: number; bytesPerHostPerMin: number; fleetBytesPerS: number; maxWritesOneHost: number } {
  const writes = w.kinds.hosts.puts + w.kinds.status.puts;
  const bytes = w.kinds.hosts.bytes + w.kinds.status.bytes;
  let most = 0;
  for (const k of w.keys.values()) most = Math.max(most, k.writes);
  return { writesPerHostPerMin: (writes / hosts) * (60 / w.seconds), bytesPerHostPerMin: (bytes / hosts) * (60 / w.seconds), fleetBytesPerS: bytes / w.seconds, maxWritesOneHost: most };
}
