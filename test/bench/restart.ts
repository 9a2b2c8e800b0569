// Agent restart to serving at size (issue 11): two real hosts on etcd, a simulated fleet of
// SCALE_HOSTS hosts holding SCALE_ENDPOINTS endpoints, then h2's agent killed (SIGKILL; its
// wireguard-go, DNS and LB keep running), a change made through h1 while it is down, and the agent
// started again: until ready, until its DNS answers the change and its LB routes it. The scale
// bench measures the same once at full size with everything else; this one repeats it alone.
import { writeFileSync } from 'node:fs';
import { Fleet } from '../scale/fleet.js';
import { RealHosts } from '../scale/real-hosts.js';
import type { BenchRow, BenchSection } from './report.js';
import { scaleFromEnv } from './scale.js';

const log = (m: string) => process.stderr.write(`[restart ${new Date().toISOString().slice(11, 19)}] ${m}\n`);
const CIDR = '10.64.0.0/11';

export async function benchRestart(): Promise<BenchSection> {
  // The fleet's size from the scale bench's SCALE_* knobs; 250 hosts by default (the fewest that
  // hold 50,000 endpoints in their /24 blocks).
  const { hosts, endpoints, services } = scaleFromEnv({ hosts: 250 });
  const times = Number(process.env.RESTART_TIMES ?? 3);
  const real = await RealHosts.start({ count: 2, etcdMembers: 1, clusterCidr: CIDR, leaseTtlS: 10 });
  const fleet = new Fleet({ endpoints: real.etcdEndpoints, leaseTtlS: 30, coalesceEvents: true, clusterCidr: CIDR, blockOffset: 16, httpRoutes: true, deliverEvents: false });
  try {
    await fleet.start();
    log(`${hosts} simulated hosts joining`);
    await fleet.join(Array.from({ length: hosts }, (_, i) => fleet.host(i)), 50, 20);
    log(`${endpoints} endpoints in ${services} services`);
    await fleet.registerEndpoints(endpoints, services, 64);
    const runs: Array<{ readyMs: number; dnsMs: number; lbMs: number }> = [];
    for (let k = 0; k < times; k++) {
      const r = await real.restart(1);
      log(`restart ${k + 1}: ready ${r.readyMs} ms, DNS ${r.dnsMs} ms, LB ${r.lbMs} ms`);
      runs.push(r);
      // RESTART_LOGS=<dir>: h2's agent, DNS and LB logs after each restart, for a look at where the time went.
      const dir = process.env.RESTART_LOGS;
      if (dir) {
        const h2 = real.hosts[1]!;
        writeFileSync(`${dir}/restart-${k + 1}-agent.log`, h2.host.agent!.logs());
        writeFileSync(`${dir}/restart-${k + 1}-dns.log`, h2.dns.logs());
        writeFileSync(`${dir}/restart-${k + 1}-lb.log`, h2.lb.logs());
      }
    }
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const serving = runs.map((r) => Math.max(r.dnsMs, r.lbMs));
    const rows: BenchRow[] = [
      { metric: `agent restart (SIGKILL, start) to ready, median of ${times} (ms)`, ours: med(runs.map((r) => r.readyMs)), anchor: NaN, unit: 'ms', ratio: NaN },
      { metric: `agent restart to serving a change made while it was down (DNS answers and LB routes it), median of ${times} (ms)`, ours: med(serving), anchor: NaN, unit: 'ms', ratio: NaN, target: '≤ 3000 ms', pass: med(serving) <= 3000 },
      { metric: `the same, worst of ${times} (ms)`, ours: Math.max(...serving), anchor: NaN, unit: 'ms', ratio: NaN },
    ];
    return {
      title: `Agent restart to serving with ${endpoints.toLocaleString('en')} endpoints, ${services.toLocaleString('en')} services, ${hosts + 2} hosts`,
      anchor: 'none: the target is issue 11\'s (≤ 3 s)',
      conditions: `two real hosts (agent with wireguard-go, corral dns, corral lb --lb-threads 1) on one etcd member; ${hosts} simulated hosts (test/scale/fleet.ts) hold the endpoints; h2's agent restarted ${times} times`,
      rows,
      notes: runs.map((r, i) => `Restart ${i + 1}: ready ${r.readyMs} ms, DNS answered the change after ${r.dnsMs} ms, LB routed it after ${r.lbMs} ms.`),
    };
  } finally {
    await fleet.close().catch(() => {});
    await real.close();
  }
}
