// From `docker run` to Corral serving the new container: its name resolving in Corral's DNS
// and its Host route answering 200 through Corral's LB. Anchor: the same container answering
// on its own address (what Docker alone gives), measured in the same runs. Median of 10.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { childEnv, startDaemon } from '../support/corral.js';
import { startDockerd, TEST_IMAGE } from '../support/dockerd.js';
import type { BenchSection } from './report.js';
import { ratioLowerBetter } from './report.js';

const RUNS = 10;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

export async function benchDockerToServing(): Promise<BenchSection> {
  const docker = await startDockerd();
  const stateDir = mkdtempSync(join(tmpdir(), 'corral-bench-state-'));
  const up = await startDaemon('up', { netns: docker.netns.name, dockerSocket: docker.socket, stateDir, args: ['--log-level', 'warn'] });
  const probe = spawn('nsenter', [`--net=${docker.netns.path}`, process.execPath, '--import', 'tsx', 'test/bench/probe.ts', String(up.dnsPort), String(up.httpPort)], {
    env: childEnv(), stdio: ['pipe', 'pipe', 'inherit'],
  });
  const replies = createInterface({ input: probe.stdout! })[Symbol.asyncIterator]();
  const dns: number[] = [];
  const lb: number[] = [];
  const direct: number[] = [];
  try {
    // A fixed address per container: the direct probe needs no `docker inspect` round trip.
    await docker.exec(['network', 'create', '--subnet', '10.78.0.0/24', 'benchnet']);
    for (let i = 0; i < RUNS; i++) {
      const name = `bench${i}`;
      const ip = `10.78.0.${10 + i}`;
      const t0 = Date.now();
      probe.stdin!.write(JSON.stringify({ t0, name: `${name}.default.corral.internal`, host: `${name}.test` }) + '\n');
      await docker.exec(['run', '-d', '--name', name, '--network', 'benchnet', '--ip', ip, '-l', `corral.service=${name}`, '-l', 'corral.port=8080', '-l', `corral.http.host=${name}.test`,
        TEST_IMAGE, 'sh', '-c', 'mkdir -p /w && echo ok > /w/index.html && exec httpd -f -p 8080 -h /w']);
      // `docker run -d` has returned: the container is started and its address exists.
      probe.stdin!.write(JSON.stringify({ ip }) + '\n');
      const r = JSON.parse((await replies.next()).value as string) as { dns: number; lb: number; direct: number };
      if ([r.dns, r.lb, r.direct].some(Number.isNaN)) throw new Error(`run ${i}: not serving within 20 s: ${JSON.stringify(r)}\n${up.logs().slice(-3000)}`);
      dns.push(r.dns);
      lb.push(r.lb);
      direct.push(r.direct);
    }
  } finally {
    probe.kill();
    await up.stop();
    await docker.stop();
    rmSync(stateDir, { recursive: true, force: true });
  }
  const anchor = median(direct);
  return {
    title: 'docker run → serving (single host)',
    anchor: 'the same container answering HTTP on its own address, polled from the moment `docker run -d` returns (Docker alone), in the same runs',
    conditions: `${RUNS} runs; private dockerd 20.10 (vfs) in a test netns, containers at fixed addresses on a user-defined bridge; \`corral up\` with the embedded registry watching its events; a probe polls every 2 ms; times from just before \`docker run -d\``,
    rows: [
      { metric: 'name resolves in Corral DNS (median)', ours: median(dns), anchor, unit: 'ms', ratio: ratioLowerBetter(median(dns), anchor) },
      { metric: 'Host route answers 200 through Corral LB (median)', ours: median(lb), anchor, unit: 'ms', ratio: ratioLowerBetter(median(lb), anchor) },
    ],
    notes: [`per run (ms): dns ${dns.join(', ')}; lb ${lb.join(', ')}; direct ${direct.join(', ')}`],
  };
}
