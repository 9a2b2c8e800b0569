// The README's "A short tour", run as written: its commands are read from README.md (so the two
// cannot drift) and run in order against `corral up` with its default ports, inside a private
// network namespace with a private dockerd (test/support/dockerd.ts). The commands reach that
// dockerd and that agent through the environment (DOCKER_HOST, CORRAL_RUN_DIR), as a user with
// another engine would; `corral` is on PATH as `npm start` links it. What a comment in the tour
// promises ("hello from green ...", "both container addresses") is checked; read-only commands
// (dig, curl, corral endpoints|status) are asked again until it holds, as a user would look again.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CORRAL, childEnv } from './support/corral.js';
import { startDockerd, type Dockerd } from './support/dockerd.js';
import { until } from './support/until.js';

interface Step { command: string; comment: string }

/** The commands of the README's tour: the first sh block under "## A short tour", without comments. */
function tourSteps(readme: string): Step[] {
  const at = readme.indexOf('\n## A short tour');
  if (at < 0) throw new Error('README.md has no "## A short tour" section');
  const block = /```sh\n([\s\S]*?)```/.exec(readme.slice(at))?.[1];
  if (!block) throw new Error('README.md\'s tour has no ```sh block');
  return block.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#')).map((l) => {
    const m = /^(.*?)\s+#\s+(.*)$/.exec(l);
    return m ? { command: m[1]!, comment: m[2]! } : { command: l, comment: '' };
  });
}

const READ_ONLY = /^(dig|curl|corral (endpoints|status|hosts|services))\b/;
const ADDRESS = /^\d+\.\d+\.\d+\.\d+$/;

/** What a step's output must show, from its comment or what the command is; undefined: exit 0 is enough. */
function expectation(s: Step): ((out: string) => boolean) | undefined {
  const quoted = /"([^"]+?)(?:\s*\.\.\.)?"/.exec(s.comment)?.[1];
  if (quoted) return (out) => out.includes(quoted);
  if (/both container addresses/.test(s.comment)) return (out) => out.trim().split('\n').filter((l) => ADDRESS.test(l)).length === 2;
  if (/^dig .*green\./.test(s.command)) return (out) => out.trim().split('\n').filter((l) => ADDRESS.test(l)).length === 1;
  if (/^curl .*\/healthz/.test(s.command)) return (out) => out.trim() === 'ok';
  if (/^corral endpoints (\S+)/.test(s.command)) return (out) => /blue/.test(out) && out.trim().split('\n').length >= 3;
  if (/^corral status/.test(s.command)) return (out) => /revision/i.test(out);
  if (/^scripts\/tour-image\.sh/.test(s.command)) return (out) => out.includes('built corral-tour/httpd:1');
  return undefined;
}

let docker: Dockerd;
let up: ChildProcess | undefined;
let upLog = '';
const dir = mkdtempSync(join(tmpdir(), 'corral-metrics-tour-'));
const runDir = join(dir, 'run');
const bin = join(dir, 'bin');

function inNetns(command: string): Promise<{ code: number; out: string }> {
  return new Promise((res, rej) => {
    const child = spawn('nsenter', [`--net=${docker.netns.path}`, 'bash', '-c', command], {
      cwd: resolve('.'),
      env: childEnv({ DOCKER_HOST: `unix://${docker.socket}`, CORRAL_RUN_DIR: runDir, PATH: `${bin}:${process.env.PATH}` }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.once('error', rej);
    child.once('close', (code) => {
      clearTimeout(timer);
      res({ code: code ?? -1, out });
    });
  });
}

beforeAll(async () => {
  docker = await startDockerd();
  // `npm start` links `corral` onto PATH.
  mkdirSync(bin);
  symlinkSync(CORRAL, join(bin, 'corral'));
  // `npm start` runs `corral up` with its defaults (DNS :53, HTTP :80, admin 9190-9192, here in the
  // private netns); only what would touch the host is private: state, run dir, Docker, resolvers.
  up = spawn('nsenter', [`--net=${docker.netns.path}`, process.execPath, CORRAL, 'up',
    '--state-dir', join(dir, 'state'), '--run-dir', runDir, '--docker-socket', docker.socket, '--docker-plugin-socket', '',
    '--dns-upstream', '127.0.0.1:9', '--node-name', 'tour'], { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  up.stdout!.on('data', (d: Buffer) => (upLog += d));
  up.stderr!.on('data', (d: Buffer) => (upLog += d));
  await until('corral up ready on its default admin ports', async () => {
    if (up!.exitCode !== null) throw new Error(`corral up exited (${up!.exitCode}):\n${upLog}`);
    const r = await inNetns('for p in 9190 9191 9192; do curl -sf -o /dev/null http://127.0.0.1:$p/readyz || exit 1; done');
    return r.code === 0;
  }, { ms: 60_000, detail: () => upLog });
}, 180_000);

afterAll(async () => {
  if (up && up.exitCode === null) {
    const exited = new Promise((r) => up!.once('exit', r));
    up.kill('SIGTERM');
    await exited;
  }
  await docker?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('the README tour', () => {
  it('runs top to bottom as written, each step showing what its comment says', async () => {
    const steps = tourSteps(readFileSync('README.md', 'utf8'));
    expect(steps.length).toBeGreaterThan(10);
    for (const step of steps) {
      const expected = expectation(step);
      const label = `\`${step.command}\`${step.comment ? ` (# ${step.comment})` : ''}`;
      if (READ_ONLY.test(step.command)) {
        await until(label, async () => {
          const r = await inNetns(step.command);
          return r.code === 0 && (expected?.(r.out) ?? true);
        }, { ms: 30_000, detail: async () => `last output: ${(await inNetns(step.command)).out}\ncorral up log:\n${upLog.slice(-3000)}` });
      } else {
        const r = await inNetns(step.command);
        expect(r.code, `${label} failed:\n${r.out}`).toBe(0);
        if (expected) expect(expected(r.out), `${label} printed:\n${r.out}`).toBe(true);
      }
    }
    // `docker stop web1` left DNS: after the rollback, blue is served by web2 alone.
    await until('web1 gone from DNS', async () => {
      const r = await inNetns('dig +short web.default.corral.internal @127.0.0.1');
      return r.out.trim().split('\n').filter((l) => ADDRESS.test(l)).length === 1;
    });
  });
});
