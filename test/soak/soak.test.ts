// The soak with faults as a test: 3 minutes in `npm test`, SOAK_MINUTES=30 in `npm run soak`
// (which also writes the summary to test/soak/RESULTS.md). Bounds are on state, never on time.
import { readFileSync, writeFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { runSoak, summary, type SoakReport } from './soak.js';

const minutes = Number(process.env.SOAK_MINUTES ?? 3);
// RSS after warm-up: 10% over a long run, as the issue asks. A 3-minute run compares 36 s in with
// the last 10 s, while V8 still sizes its heaps under load and a fault's work (a resync, a repair)
// may have just run: its runs moved by -10% to +35%. It catches gross growth only (50%); the
// 30-minute run is the memory check.
const rssTolerance = minutes >= 20 ? 0.1 : 0.5;
// Descriptors come and go with connections in flight (etcd, clients of the agent, keep-alive).
const fdSlack = (n: number) => Math.max(8, Math.ceil(n * 0.1));

let report: SoakReport;

describe(`soak with faults (${minutes} min)`, () => {
  beforeAll(async () => {
    report = await runSoak({ minutes, log: (l) => console.log(l) });
    const table = summary(report);
    console.log(`\nsoak summary\n\n${table}\n`);
    if (process.env.SOAK_RESULTS) {
      const file = process.env.SOAK_RESULTS;
      const head = readFileSync(file, 'utf8').split('\n## Latest run')[0]!.trimEnd();
      writeFileSync(file, `${head}\n\n## Latest run\n\n${new Date(report.startMs).toISOString()}, ${minutes} min requested.\n\n${table}\n`);
    }
  }, minutes * 60_000 + 15 * 60_000);

  it('injects every kind of fault', () => {
    expect(new Set(report.faults.map((f) => f.kind))).toEqual(new Set(['etcd member killed', 'etcd paused', 'dockerd restarted', 'underlay loss', 'state dir full', 'agent killed']));
    // and the load ran throughout
    expect(report.churn.cniAdds).toBeGreaterThan(minutes * 30);
    expect(report.http.ok).toBeGreaterThan(minutes * 600);
    expect(report.dns.completed).toBeGreaterThan(minutes * 1000);
    expect(report.churn.switches).toBeGreaterThan(minutes * 2);
  });

  it('keeps every daemon running that the test did not kill', () => {
    expect(report.check.crashes).toEqual([]);
  });

  it('has no failed request, query, CNI call or command outside the fault windows', () => {
    expect(report.unattributed.map((f) => `${((f.atMs - report.startMs) / 1000).toFixed(1)} s ${f.what}: ${f.why}`)).toEqual([]);
  });

  it('refuses ADDs clearly while the state dir is full, and they work again after', () => {
    expect(report.diskFullAdds.length).toBeGreaterThan(0);
    for (const m of report.diskFullAdds) expect(m).toMatch(/no space left on device/);
  });

  it('leaves every acknowledged container with its address, exactly one, and the IPAM list equal to the live containers', () => {
    expect(report.check.liveContainers).toBeGreaterThan(4);
    expect(report.check.addressProblems).toEqual([]);
    expect(report.check.ipamMismatch).toEqual([]);
  });

  it('keeps the registry equal to what was acknowledged: Docker containers, registrations, the web service and its color', () => {
    expect(report.check.dockerMismatch).toEqual([]);
    expect(report.check.registrationMismatch).toEqual([]);
    expect(report.check.serviceProblems).toEqual([]);
  });

  it('leaves one wireguard-go per host, adopted across the agent kill, and no zombies', () => {
    expect(report.check.wireguardProblems).toEqual([]);
    expect(report.check.zombies).toEqual([]);
  });

  it(`keeps RSS within ${rssTolerance * 100}% of its level after warm-up and file descriptors flat`, () => {
    const measured = report.components.filter((c) => Number.isFinite(c.rssWarm) && Number.isFinite(c.rssEnd));
    // h1's agent, DNS and LB run the whole soak; h2's agent is measured when its restart left time to warm up.
    expect(measured.map((c) => c.name)).toEqual(expect.arrayContaining(['agent h1', 'dns', 'lb']));
    for (const c of measured) {
      expect(c.rssEnd, `${c.name} RSS`).toBeLessThanOrEqual(c.rssWarm * (1 + rssTolerance));
      expect(c.fdEnd, `${c.name} fds`).toBeLessThanOrEqual(c.fdWarm + fdSlack(c.fdWarm));
    }
  });
});
