// Blue/green with Docker labels, end to end: `corral up` watching a private dockerd, busybox httpd
// containers with health-check and deploy labels, real curl through the LB. Covers
// `corral.deploy=auto` (promotion, and a failure within the promotion window that keeps traffic)
// and draining on `docker stop` (no new requests, the in-flight one finishes).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from './support/corral.js';
import { startDockerd, TEST_IMAGE, type Dockerd } from './support/dockerd.js';
import { untilOk } from './support/until.js';

let docker: Dockerd;
let up: Daemon;
let stateDir: string;

// Promotion window: max(2 s, interval × (fall + 2)) = 4 s, room for a slow `docker exec` in the failure case.
const HEALTH = { 'corral.health.path': '/health', 'corral.health.interval': '1s', 'corral.health.rise': '2', 'corral.health.fall': '2' };

/** A labelled busybox httpd on :8080 answering "<name>" at /, "ok" at /health and slowly at /cgi-bin/slow. */
async function runWeb(name: string, labels: Record<string, string>): Promise<void> {
  const l = Object.entries(labels).flatMap(([k, v]) => ['-l', `${k}=${v}`]);
  const script = [
    'mkdir -p /w/cgi-bin',
    `echo ${name} > /w/index.html`,
    'echo ok > /w/health',
    `printf '#!/bin/sh\\nsleep 2\\nprintf "Content-Type: text/plain\\\\r\\\\n\\\\r\\\\nslow ${name}\\\\n"\\n' > /w/cgi-bin/slow`,
    'chmod +x /w/cgi-bin/slow',
    'exec httpd -f -p 8080 -h /w',
  ].join(' && ');
  await docker.exec(['run', '-d', '--name', name, ...l, TEST_IMAGE, 'sh', '-c', script]);
}

/**
 * Like runWeb, but its health check (a CGI at /cgi-bin/health) passes only the first `passes`
 * probes, then fails until /w/ok exists: the container fails on its own schedule, counted in
 * the agent's own probes, whatever the test's `docker exec` and CLI calls cost.
 */
async function runWebFailingAfter(name: string, passes: number, labels: Record<string, string>): Promise<void> {
  const l = Object.entries({ ...labels, 'corral.health.path': '/cgi-bin/health' }).flatMap(([k, v]) => ['-l', `${k}=${v}`]);
  const health = [
    '#!/bin/sh',
    'n=$(( $(cat /w/probes 2>/dev/null || echo 0) + 1 )); echo $n > /w/probes',
    `if [ $n -le ${passes} ] || [ -e /w/ok ]; then printf "Content-Type: text/plain\\\\r\\\\n\\\\r\\\\nok\\\\n"; else printf "Status: 503 Service Unavailable\\\\r\\\\nContent-Type: text/plain\\\\r\\\\n\\\\r\\\\nsick\\\\n"; fi`,
  ].join('\n');
  const script = [
    'mkdir -p /w/cgi-bin',
    `echo ${name} > /w/index.html`,
    `printf '${health}\n' > /w/cgi-bin/health`,
    'chmod +x /w/cgi-bin/health',
    'exec httpd -f -p 8080 -h /w',
  ].join(' && ');
  await docker.exec(['run', '-d', '--name', name, ...l, TEST_IMAGE, 'sh', '-c', script]);
}

async function get(host: string, path = '/', timeoutS = 5): Promise<{ status: number; body: string }> {
  const r = await docker.netns.exec('curl', ['-s', '-m', String(timeoutS), '-H', `Host: ${host}`, '-w', '\n%{http_code}', `http://127.0.0.1:${up.httpPort}${path}`]);
  const lines = r.stdout.trimEnd().split('\n');
  const status = Number(lines.pop());
  return { status, body: lines.join('\n').trim() };
}

const until = <T>(what: string, fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 15_000): Promise<T> =>
  untilOk(what, fn, ok, { ms: timeoutMs, everyMs: 50, detail: () => `--- corral log ---\n${up.logs().slice(-4000)}` });

async function service(name: string): Promise<{ active: Record<string, number>; previous: Record<string, number> } | undefined> {
  const r = await up.cli(['services', '--json']);
  if (r.code !== 0) throw new Error(`corral services failed (${r.code}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as { services: Array<{ name: string; active: Record<string, number>; previous: Record<string, number> }> }).services.find((s) => s.name === name);
}

interface ListedEndpoint { containerName: string; healthy: boolean; healthReason: string; draining: boolean; color: string }

async function endpoints(name: string): Promise<ListedEndpoint[]> {
  const r = await up.cli(['endpoints', name, '--json']);
  return r.code === 0 ? (JSON.parse(r.stdout) as { endpoints: ListedEndpoint[] }).endpoints : [];
}

async function bodies(host: string, n: number): Promise<Set<string>> {
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) {
    const r = await get(host);
    seen.add(`${r.status} ${r.body}`);
  }
  return seen;
}

beforeAll(async () => {
  docker = await startDockerd();
  stateDir = mkdtempSync(join(tmpdir(), 'corral-blue-green-'));
  up = await startDaemon('up', { netns: docker.netns.name, dockerSocket: docker.socket, stateDir });
});

afterAll(async () => {
  await up?.stop();
  await docker?.stop();
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

describe('corral.deploy=auto', () => {
  const labels = (color: string) => ({ 'corral.service': 'app', 'corral.port': '8080', 'corral.http.host': 'app.test', 'corral.color': color, 'corral.deploy': 'auto', ...HEALTH });

  it('promotes a new color once all its endpoints pass their health checks, at one revision that rollback undoes', async () => {
    await runWeb('app-v1', labels('v1'));
    await until('v1 serves', () => bodies('app.test', 2), (s) => s.size === 1 && s.has('200 app-v1'));
    expect((await service('app'))?.active).toEqual({ v1: 100 });
    await runWeb('app-v2a', labels('v2'));
    await runWeb('app-v2b', labels('v2'));
    await until('v2 promoted', () => service('app'), (s) => s?.active['v2'] === 100, 20_000);
    expect((await service('app'))?.previous).toEqual({ v1: 100 });
    await until('v2 serves', () => bodies('app.test', 4), (s) => [...s].every((b) => b.startsWith('200 app-v2')));
    expect((await up.cli(['rollback', 'app'])).code).toBe(0);
    await until('v1 again', () => bodies('app.test', 2), (s) => s.size === 1 && s.has('200 app-v1'));
  });

  it('keeps traffic where it is when an endpoint of the new color fails within the promotion window', async () => {
    // After the rollback above v1 is active and v2 has been seen; v3 is the new deployment. Its
    // check passes twice (rise 2: healthy, the 4 s window starts) and fails the next two probes
    // (fall 2: unhealthy 2 s into the window, 1 s interval).
    await runWebFailingAfter('app-v3', 2, labels('v3'));
    await until('the agent gives up on v3', async () => up.logs(), (log) => /not promoting color v3/.test(log), 30_000);
    expect((await endpoints('app')).find((e) => e.containerName === 'app-v3')).toMatchObject({ healthy: false, healthReason: expect.stringContaining('503') });
    // Past the end of the window: still v1.
    await new Promise((r) => setTimeout(r, 4_500));
    expect((await service('app'))?.active).toEqual({ v1: 100 });
    expect(await bodies('app.test', 3)).toEqual(new Set(['200 app-v1']));
    // It does not get promoted later when it recovers: a failed deployment needs a redeploy.
    await docker.exec(['exec', 'app-v3', 'touch', '/w/ok']);
    await until('v3 healthy again', () => endpoints('app'), (eps) => eps.some((e) => e.containerName === 'app-v3' && e.healthy));
    await new Promise((r) => setTimeout(r, 4_500));
    expect((await service('app'))?.active).toEqual({ v1: 100 });
  });
});

describe('draining on docker stop', () => {
  it('sends no new request to a stopping container and lets its in-flight request finish', async () => {
    const l = { 'corral.service': 'drain', 'corral.port': '8080', 'corral.http.host': 'drain.test', 'corral.drain': '10s' };
    await runWeb('drain-a', l);
    await runWeb('drain-b', l);
    await until('both serve', () => bodies('drain.test', 6), (s) => s.size === 2);
    // Slow requests in flight on both containers, then stop a: sh as PID 1 ignores SIGTERM, so
    // docker waits its -t before SIGKILL; meanwhile a's endpoint drains. Round robin is per LB
    // thread (--lb-threads, one per CPU): six concurrent requests put at least two on some thread
    // (up to five threads), and its consecutive picks alternate between the two containers.
    const slow = Array.from({ length: 6 }, () => get('drain.test', '/cgi-bin/slow', 10));
    await new Promise((r) => setTimeout(r, 300));
    const stopping = docker.exec(['stop', '-t', '4', 'drain-a']);
    await until('a draining', () => endpoints('drain'), (eps) => eps.some((e) => e.containerName === 'drain-a' && e.draining));
    expect(await bodies('drain.test', 6)).toEqual(new Set(['200 drain-b']));
    const done = await Promise.all(slow);
    expect(done.every((d) => d.status === 200)).toBe(true);
    expect(new Set(done.map((d) => d.body))).toEqual(new Set(['slow drain-a', 'slow drain-b']));
    await stopping;
    await until('a gone', () => endpoints('drain'), (eps) => !eps.some((e) => e.containerName === 'drain-a'));
  });
});
