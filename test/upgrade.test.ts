// `corral upgrade` end to end: `corral up` watching a private dockerd, labelled busybox httpd
// containers, `wrk` through the LB while the service is cloned onto a new image and traffic moves
// in canary steps gated by the LB's own figures. Images are made here: v1 and v2 answer their
// version, "broken" answers 500, "sick" never passes its health check.
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from './support/corral.js';
import { makeAppImage, parseWrk, type WrkResult } from './support/app-images.js';
import { startDockerd, type Dockerd } from './support/dockerd.js';
import { untilOk } from './support/until.js';

let docker: Dockerd;
let up: Daemon;
let stateDir: string;
let runDir: string;
let work: string;

const HOST = 'web.test';
/** Fast checks and steps: the gate's windows are the steps, the clones' health needs rise 2. */
const LABELS = { 'corral.service': 'web', 'corral.port': '8080', 'corral.http.host': HOST, 'corral.health.path': '/health', 'corral.health.interval': '300ms', 'corral.drain': '1s' };

async function runWeb(name: string, color: string, image: string): Promise<void> {
  const l = Object.entries({ ...LABELS, 'corral.color': color }).flatMap(([k, v]) => ['-l', `${k}=${v}`]);
  await docker.exec(['run', '-d', '--name', name, ...l, '-e', 'APP_SETTING=kept', '--restart', 'on-failure:3', '--memory', '64m', image]);
}

async function get(path = '/cgi-bin/app'): Promise<{ status: number; body: string }> {
  const r = await docker.netns.exec('curl', ['-s', '-m', '5', '-H', `Host: ${HOST}`, '-w', '\n%{http_code}', `http://127.0.0.1:${up.httpPort}${path}`]);
  const lines = r.stdout.trimEnd().split('\n');
  const status = Number(lines.pop());
  return { status, body: lines.join('\n').trim() };
}

const until = <T>(what: string, fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 30_000): Promise<T> =>
  untilOk(what, fn, ok, { ms: timeoutMs, everyMs: 100, detail: () => `--- corral log ---\n${up.logs().slice(-6000)}` });

/** wrk through the LB for `seconds`, 4 connections. */
async function wrk(seconds: number): Promise<WrkResult> {
  const r = await docker.netns.exec('wrk', ['-t1', '-c4', `-d${seconds}s`, '--timeout', '5s', '-H', `Host: ${HOST}`, `http://127.0.0.1:${up.httpPort}/cgi-bin/app`], { timeoutMs: (seconds + 30) * 1000 });
  return parseWrk(r.stdout);
}

interface UpgradeView { phase: string; reason: string; gate: string; fromColor: string; toColor: string; step: number }

async function services(): Promise<{ active: Record<string, number>; upgrade: UpgradeView | undefined }> {
  const r = await up.cli(['services', '--json']);
  if (r.code !== 0) throw new Error(`corral services failed (${r.code}): ${r.stderr}`);
  const j = JSON.parse(r.stdout) as { services: Array<{ name: string; active: Record<string, number> }>; upgrades: Array<UpgradeView & { name: string }> };
  return { active: j.services.find((s) => s.name === 'web')?.active ?? {}, upgrade: j.upgrades.find((u) => u.name === 'web') };
}

async function containers(): Promise<Map<string, string>> {
  const out = await docker.exec(['ps', '-a', '--format', '{{.Names}} {{.State}}']);
  return new Map(out.split('\n').filter(Boolean).map((l) => l.split(' ') as [string, string]));
}

/** The LB's own per-color figures for web (its admin /gate). */
async function gateFigures(): Promise<Array<{ color: string; requests: number; errors: number }>> {
  const r = await docker.netns.exec('curl', ['-s', '-m', '5', `http://127.0.0.1:${up.adminPort + 2}/gate?service=default/web`]);
  return JSON.parse(r.stdout) as Array<{ color: string; requests: number; errors: number }>;
}

const upgradeArgs = (image: string, extra: string[] = []) => ['upgrade', 'web', '--image', image, '--steps', '20,60,100', '--step-time', '1500ms', '--ready-timeout', '20s', ...extra];

async function startUp(): Promise<void> {
  up = await startDaemon('up', { netns: docker.netns.name, dockerSocket: docker.socket, stateDir, runDir, args: ['--lb-threads', '1'] });
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'corral-upgrade-'));
  stateDir = join(work, 'state');
  runDir = join(work, 'run');
  mkdirSync(stateDir);
  docker = await startDockerd();
  await Promise.all([
    startUp(),
    makeAppImage(docker, 'corral-test/app:1', { version: '1' }),
    makeAppImage(docker, 'corral-test/app:2', { version: '2' }),
    makeAppImage(docker, 'corral-test/app:broken', { version: '3', broken: true }),
    makeAppImage(docker, 'corral-test/app:sick', { version: '4', sick: true }),
    makeAppImage(docker, 'corral-test/app:crashing', { version: '5', exitAfterS: 3 }),
  ]);
  await runWeb('web1-blue', 'blue', 'corral-test/app:1');
  await runWeb('web2-blue', 'blue', 'corral-test/app:1');
  await until('blue serves', () => get(), (r) => r.status === 200 && r.body === 'v1');
}, 180_000);

afterAll(async () => {
  await up?.stop();
  await docker?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('corral upgrade', () => {
  it('refuses an image that is not on the host, before anything starts', async () => {
    const r = await up.cli(upgradeArgs('corral-test/app:missing'));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/image corral-test\/app:missing is not on host test-node; pull or load it there first/);
    expect([...(await containers()).keys()].sort()).toEqual(['web1-blue', 'web2-blue']);
    expect((await services()).active).toEqual({ blue: 100 });
  });

  it('clones blue onto the new image and moves every request to green with no error under wrk', async () => {
    const load = wrk(10);
    const t0 = Date.now();
    const r = await up.cli(upgradeArgs('corral-test/app:2'));
    console.log(`good upgrade took ${Date.now() - t0} ms`);
    const w = await load;
    expect(r.code, `${r.stdout}\n${r.stderr}\n${up.logs().slice(-3000)}`).toBe(0);
    // Progress on the terminal: every step, and the gate's figures.
    expect(r.stdout).toMatch(/step 1\/3, green 20% blue 80%/);
    expect(r.stdout).toMatch(/step 3\/3, green 100% blue 0%/);
    expect(r.stdout).toMatch(/completed/);
    console.log(`good upgrade under wrk: ${w.requests} requests, ${w.non2xx} non-2xx, ${w.socketErrors} socket errors`);
    expect(w.requests).toBeGreaterThan(50);
    expect(w.non2xx).toBe(0);
    expect(w.socketErrors).toBe(0);
    expect((await services()).active).toEqual({ green: 100 });
    expect(await get()).toEqual({ status: 200, body: 'v2' });
    // The clones kept the old containers' configuration; the old ones are stopped, not removed.
    const c = await containers();
    expect(c.get('web1-blue')).toBe('exited');
    expect(c.get('web1-green')).toBe('running');
    const inspect = JSON.parse(await docker.exec(['inspect', 'web1-green'])) as Array<{ Config: { Env: string[]; Labels: Record<string, string>; Image: string }; HostConfig: { RestartPolicy: { Name: string }; Memory: number } }>;
    expect(inspect[0]!.Config.Image).toBe('corral-test/app:2');
    expect(inspect[0]!.Config.Env).toContain('APP_SETTING=kept');
    expect(inspect[0]!.Config.Labels['corral.color']).toBe('green');
    expect(inspect[0]!.Config.Labels['corral.health.path']).toBe('/health');
    expect(inspect[0]!.HostConfig.RestartPolicy.Name).toBe('on-failure');
    expect(inspect[0]!.HostConfig.Memory).toBe(64 * 1024 * 1024);
  }, 60_000);

  it('--finish removes the old containers', async () => {
    const r = await up.cli(['upgrade', 'web', '--finish']);
    expect(r.code, r.stderr).toBe(0);
    const c = await containers();
    expect(c.has('web1-blue')).toBe(false);
    expect(c.has('web2-blue')).toBe(false);
    expect(c.get('web1-green')).toBe('running');
  }, 30_000);

  it('rolls back at the first step an image whose containers answer 500, in one revision', async () => {
    const before = (await gateFigures()).find((f) => f.color === 'blue');
    const load = wrk(6);
    const r = await up.cli(upgradeArgs('corral-test/app:broken', ['--json']));
    const w = await load;
    expect(r.code).toBe(1);
    const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { upgrade: UpgradeView });
    const last = events.at(-1)!.upgrade;
    expect(last.phase).toBe('rolled-back');
    expect(last.reason).toMatch(/^gate failed at step 1\/3 \(blue 20%\): blue answered \d+ of \d+ requests with 5xx/);
    expect(events.some((e) => e.upgrade.phase === 'stepping' && e.upgrade.step > 0)).toBe(false);
    const blue = (await gateFigures()).find((f) => f.color === 'blue')!;
    const errors = blue.errors - (before?.errors ?? 0);
    console.log(`500 image: rolled back at step 1: wrk saw ${w.non2xx} non-2xx of ${w.requests}; the LB counted ${errors} 5xx from blue; ${last.reason}`);
    expect(errors).toBeGreaterThan(0);
    expect(w.non2xx).toBeLessThan(w.requests * 0.5);
    expect((await services()).active).toEqual({ green: 100 });
    expect(await get()).toEqual({ status: 200, body: 'v2' });
    const c = await containers();
    expect(c.get('web1-blue')).toBe('exited'); // clones stopped for inspection
    expect(c.get('web1-green')).toBe('running');
  }, 60_000);

  it('never sends traffic to clones that never get healthy', async () => {
    for (const n of ['web1-blue', 'web2-blue']) await docker.exec(['rm', '-f', n]);
    const before = (await gateFigures()).find((f) => f.color === 'blue')?.requests ?? 0;
    const load = wrk(4);
    const r = await up.cli(['upgrade', 'web', '--image', 'corral-test/app:sick', '--color', 'blue', '--step-time', '1s', '--ready-timeout', '3s']);
    const w = await load;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/the clones were not healthy within 3 s .*they got no traffic/);
    expect(w.non2xx + w.socketErrors).toBe(0);
    expect((await gateFigures()).find((f) => f.color === 'blue')?.requests ?? 0).toBe(before);
    const s = await services();
    expect(s.active).toEqual({ green: 100 });
    expect(s.upgrade?.phase).toBe('rolled-back');
  }, 40_000);

  it('rolls back when a clone stops under traffic', async () => {
    for (const n of ['web1-blue', 'web2-blue']) await docker.exec(['rm', '-f', n]);
    const r = await up.cli(['upgrade', 'web', '--image', 'corral-test/app:crashing', '--color', 'blue', '--steps', '50,100', '--step-time', '4s']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/a clone failed at step 1\/2 \(blue 50%\): [0-9a-f]{12}: not running/);
    expect((await services()).active).toEqual({ green: 100 });
    expect(await get()).toEqual({ status: 200, body: 'v2' });
  }, 40_000);

  it('--rollback after a completed upgrade starts the old containers and switches back', async () => {
    for (const n of ['web1-blue', 'web2-blue']) await docker.exec(['rm', '-f', n]);
    let t0 = Date.now();
    const ok = await up.cli(['upgrade', 'web', '--image', 'corral-test/app:1', '--steps', '100', '--step-time', '500ms']);
    console.log(`one-step upgrade took ${Date.now() - t0} ms`);
    expect(ok.code, ok.stderr).toBe(0);
    expect(await get()).toEqual({ status: 200, body: 'v1' });
    t0 = Date.now();
    const r = await up.cli(['upgrade', 'web', '--rollback']);
    console.log(`--rollback took ${Date.now() - t0} ms`);
    expect(r.code, r.stderr).toBe(0);
    expect((await services()).active).toEqual({ green: 100 });
    expect(await get()).toEqual({ status: 200, body: 'v2' });
    const c = await containers();
    expect(c.get('web1-green')).toBe('running');
    expect(c.get('web1-blue')).toBe('exited');
  }, 40_000);

  it('ends completed or rolled back, never half, when the agent is killed (kill -9) mid-upgrade; two at once are refused', async () => {
    // After the rollback above: green active (v2), blue's clones stopped. Free their names.
    for (const n of ['web1-blue', 'web2-blue']) await docker.exec(['rm', '-f', n]);
    const r = await up.cli(['upgrade', 'web', '--image', 'corral-test/app:1', '--steps', '50,100', '--step-time', '1500ms', '--detach']);
    expect(r.code, r.stderr).toBe(0);
    const second = await up.cli(['upgrade', 'web', '--image', 'corral-test/app:1']);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/an upgrade of web in namespace default is under way/);
    await until('stepping', () => services(), (s) => s.upgrade?.phase === 'stepping', 30_000);
    const status = await up.cli(['status']);
    expect(status.stdout).toMatch(/upgrades\s+web\.default: green -> blue \(corral-test\/app:1\): step \d\/2/);
    await up.stop('SIGKILL');
    await startUp();
    const end = await until('the upgrade ends', () => services(), (s) => s.upgrade?.phase === 'completed' || s.upgrade?.phase === 'rolled-back', 40_000);
    const c = await containers();
    console.log(`kill -9 mid-upgrade: ended ${end.upgrade!.phase} ${end.upgrade!.reason}`);
    if (end.upgrade!.phase === 'completed') {
      expect(end.active).toEqual({ blue: 100 });
      expect([c.get('web1-green'), c.get('web2-green'), c.get('web1-blue'), c.get('web2-blue')]).toEqual(['exited', 'exited', 'running', 'running']);
      await until('v1 serves', () => get(), (x) => x.status === 200 && x.body === 'v1');
    } else {
      expect(end.active).toEqual({ green: 100 });
      expect([c.get('web1-green'), c.get('web2-green'), c.get('web1-blue'), c.get('web2-blue')]).toEqual(['running', 'running', 'exited', 'exited']);
      await until('v2 serves', () => get(), (x) => x.status === 200 && x.body === 'v2');
    }
  }, 90_000);
});
