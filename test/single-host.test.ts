// Corral on one host, end to end, as a user meets it: a real dockerd, labelled busybox httpd
// containers, `corral up` watching Docker, real `dig` and `curl`, and the `corral` CLI.
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

/** Runs a labelled busybox httpd that answers with its container name on port 8080. */
async function runWeb(name: string, labels: Record<string, string>): Promise<string> {
  const l = Object.entries(labels).flatMap(([k, v]) => ['-l', `${k}=${v}`]);
  await docker.exec(['run', '-d', '--name', name, ...l, TEST_IMAGE, 'sh', '-c', `mkdir -p /w && echo ${name} > /w/index.html && exec httpd -f -p 8080 -h /w`]);
  return docker.exec(['inspect', '-f', '{{.NetworkSettings.IPAddress}}', name]);
}

async function dig(name: string, type = 'A'): Promise<string[]> {
  const r = await docker.netns.exec('dig', ['+short', '+tries=1', '+time=2', '-p', String(up.dnsPort), '@127.0.0.1', name, type]);
  return r.stdout.trim().split('\n').filter(Boolean).sort();
}

async function get(host: string, path = '/'): Promise<{ status: number; body: string }> {
  const r = await docker.netns.exec('curl', ['-s', '-m', '5', '-H', `Host: ${host}`, '-w', '\n%{http_code}', `http://127.0.0.1:${up.httpPort}${path}`]);
  const lines = r.stdout.trimEnd().split('\n');
  const status = Number(lines.pop());
  return { status, body: lines.join('\n').trim() };
}

const until = <T>(what: string, fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 10_000): Promise<T> =>
  untilOk(what, fn, ok, { ms: timeoutMs, everyMs: 50, detail: () => `--- corral log ---\n${up.logs().slice(-4000)}` });

async function bodies(host: string, n: number): Promise<Set<string>> {
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) {
    const r = await get(host);
    expect(r.status).toBe(200);
    seen.add(r.body);
  }
  return seen;
}

beforeAll(async () => {
  docker = await startDockerd();
  stateDir = mkdtempSync(join(tmpdir(), 'corral-single-host-'));
  up = await startDaemon('up', { netns: docker.netns.name, dockerSocket: docker.socket, stateDir });
});

afterAll(async () => {
  await up?.stop();
  await docker?.stop();
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

describe('corral up with Docker labels', () => {
  let ip1: string;
  let ip2: string;

  it('answers DNS for two labelled containers and balances HTTP over both', async () => {
    const labels = { 'corral.service': 'web', 'corral.port': '8080', 'corral.http.host': 'web.test' };
    ip1 = await runWeb('web1', labels);
    ip2 = await runWeb('web2', labels);
    await until('both addresses in DNS', () => dig('web.default.corral.internal'), (a) => a.length === 2);
    expect(await dig('web.default.corral.internal')).toEqual([ip1, ip2].sort());
    await until('LB reaches both', () => bodies('web.test', 6), (s) => s.size === 2);
    expect(await bodies('web.test', 6)).toEqual(new Set(['web1', 'web2']));
  });

  it('removes a stopped container from DNS and the LB', async () => {
    await docker.exec(['stop', '-t', '1', 'web2']);
    await until('web2 gone from DNS', () => dig('web.default.corral.internal'), (a) => a.length === 1);
    expect(await dig('web.default.corral.internal')).toEqual([ip1]);
    expect(await bodies('web.test', 4)).toEqual(new Set(['web1']));
  });

  it('moves all new requests with `corral switch` between blue and green', async () => {
    for (const [name, color] of [['shop-b1', 'blue'], ['shop-b2', 'blue'], ['shop-g1', 'green'], ['shop-g2', 'green']] as const) {
      await runWeb(name, { 'corral.service': 'shop', 'corral.port': '8080', 'corral.http.host': 'shop.test', 'corral.color': color });
    }
    await until('four shop endpoints', async () => JSON.parse((await up.cli(['endpoints', 'shop', '--json'])).stdout).endpoints.length, (n) => n === 4);
    // The first color seen is active; pin blue explicitly, then switch.
    expect((await up.cli(['switch', 'shop', 'blue'])).code).toBe(0);
    await until('blue serves', () => bodies('shop.test', 6), (s) => [...s].every((b) => b.startsWith('shop-b')) && s.size === 2);
    expect((await dig('green.shop.default.corral.internal')).length).toBe(2);
    const sw = await up.cli(['switch', 'shop', 'green']);
    expect(sw.code, sw.stderr).toBe(0);
    await until('green serves', () => bodies('shop.test', 6), (s) => [...s].every((b) => b.startsWith('shop-g')));
    expect(await bodies('shop.test', 8)).toEqual(new Set(['shop-g1', 'shop-g2']));
    const greenIps = await dig('green.shop.default.corral.internal');
    expect(await dig('shop.default.corral.internal')).toEqual(greenIps);
    expect((await up.cli(['rollback', 'shop'])).code).toBe(0);
    await until('blue again', () => bodies('shop.test', 6), (s) => [...s].every((b) => b.startsWith('shop-b')));
  });

  it('routes to a backend that is not a container after `corral register`', async () => {
    // The agent's own status server inside the namespace is a real HTTP backend.
    const r = await up.cli(['register', 'legacy', `127.0.0.1:${up.adminPort}`, '--http-host', 'legacy.test']);
    expect(r.code, r.stderr).toBe(0);
    expect(await dig('legacy.default.corral.internal')).toEqual(['127.0.0.1']);
    const res = await until('legacy routed', () => get('legacy.test', '/healthz'), (x) => x.status === 200);
    expect(res.body).toBe('ok');
    // DNS and LB take the agent's events inside `corral up`, and acknowledge them as over the socket.
    const revision = Number(/at revision (\d+)/.exec(r.stdout)?.[1]);
    expect(revision).toBeGreaterThan(0);
    const status = await until('DNS and LB report the revision that carried it', async () => JSON.parse((await up.cli(['status', '--json'])).stdout), (s) =>
      ['dns', 'lb'].every((name) => s.components.some((c: { component: string; appliedRevision: number; connected: boolean }) => c.component === name && c.connected && c.appliedRevision >= revision)));
    expect(status.components.map((c: { component: string }) => c.component).sort()).toEqual(['dns', 'lb']);
  });

  it('warns once about a container with a bad label and changes nothing else', async () => {
    const before = JSON.parse((await up.cli(['status', '--json'])).stdout);
    await runWeb('badport', { 'corral.service': 'bad', 'corral.port': 'eighty' });
    await until('warning logged', async () => up.logs(), (l) => /badport/.test(l) && /corral\.port/.test(l));
    const warnings = up.logs().split('\n').filter((l) => l.includes('badport') && l.includes('corral.port'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/1 to 65535/);
    expect(await dig('bad.default.corral.internal')).toEqual([]);
    const after = JSON.parse((await up.cli(['status', '--json'])).stdout);
    expect(after.endpoints).toBe(before.endpoints);
    expect(await bodies('web.test', 2)).toEqual(new Set(['web1']));
  });

  it('keeps its registry when restarted, and re-syncs the running containers', async () => {
    expect(await up.stop('SIGTERM')).toBe(0);
    up = await startDaemon('up', { netns: docker.netns.name, dockerSocket: docker.socket, stateDir });
    const legacy = JSON.parse((await up.cli(['endpoints', 'legacy', '--json'])).stdout);
    expect(legacy.endpoints.map((e: { address: string }) => e.address)).toEqual(['127.0.0.1']);
    await until('web1 back in DNS', () => dig('web.default.corral.internal'), (a) => a.length === 1);
    expect(await dig('web.default.corral.internal')).toEqual([ip1]);
    const shop = JSON.parse((await up.cli(['services', '--json'])).stdout).services.find((s: { name: string }) => s.name === 'shop');
    expect(shop.active).toEqual({ blue: 100 });
  });
});
