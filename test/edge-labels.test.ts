// The edge labels end to end, as a user meets them: a real dockerd, a busybox httpd container
// labelled corral.http.tls=acme + corral.http.redirect=https + corral.http.hsts, `corral up`
// watching Docker with --acme-directory pointing at Debian's pebble (all inside the dockerd's
// network namespace), and curl: the container's host gets a certificate curl verifies against
// pebble's root, plain HTTP is redirected, HTTPS carries HSTS; a container with a bad edge label
// is not registered and the log names the label, while the good one keeps serving.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from './support/corral.js';
import { startDockerd, TEST_IMAGE, type Dockerd } from './support/dockerd.js';
import { startPebble, type Pebble } from './support/pebble.js';
import { until } from './support/until.js';

// Inside the dockerd's namespace: nothing else listens on these.
const HTTP = 18080;
const HTTPS = 18443;

let docker: Dockerd;
let pebble: Pebble;
let up: Daemon;
let dir: string;
let root: string;

async function runWeb(name: string, labels: Record<string, string>): Promise<void> {
  const l = Object.entries(labels).flatMap(([k, v]) => ['-l', `${k}=${v}`]);
  await docker.exec(['run', '-d', '--name', name, ...l, TEST_IMAGE, 'sh', '-c', `mkdir -p /w && echo ${name} > /w/index.html && exec httpd -f -p 8080 -h /w`]);
}

/** curl inside the namespace: status, headers (lower-case) and body. */
async function curl(args: string[]): Promise<{ status: number; headers: Record<string, string>; body: string; err: string }> {
  const r = await docker.netns.exec('curl', ['-s', '-m', '5', '-D', '-', ...args]).catch((e: Error) => ({ stdout: '', stderr: e.message }));
  const end = r.stdout.indexOf('\r\n\r\n');
  const [line, ...lines] = (end < 0 ? '' : r.stdout.slice(0, end)).split('\r\n');
  const headers: Record<string, string> = {};
  for (const h of lines) {
    const c = h.indexOf(':');
    if (c > 0) headers[h.slice(0, c).toLowerCase()] = h.slice(c + 1).trim();
  }
  return { status: Number(line?.split(' ')[1] ?? 0), headers, body: end < 0 ? '' : r.stdout.slice(end + 4).trim(), err: r.stderr };
}

beforeAll(async () => {
  docker = await startDockerd();
  dir = mkdtempSync(join(tmpdir(), 'edge-labels-'));
  pebble = await startPebble({ httpPort: HTTP, tlsPort: HTTPS, netns: docker.netns });
  root = join(dir, 'pebble-root.pem');
  writeFileSync(root, await pebble.rootPem());
  up = await startDaemon('up', {
    netns: docker.netns.name, dockerSocket: docker.socket,
    args: ['--http-listen', `127.0.0.1:${HTTP}`, '--https-listen', `127.0.0.1:${HTTPS}`, '--lb-threads', '2',
      '--acme-directory', pebble.directory, '--acme-ca', pebble.apiCa, '--acme-email', 'ops@web.test'],
  });
}, 120_000);

afterAll(async () => {
  await up?.stop();
  await pebble?.stop();
  await docker?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('edge labels on a container, through corral up', () => {
  it('a container labelled corral.http.tls=acme gets a certificate curl verifies; HTTP redirects to HTTPS, which carries HSTS', async () => {
    await runWeb('web1', {
      'corral.service': 'web', 'corral.port': '8080', 'corral.http.host': 'web.test',
      'corral.http.tls': 'acme', 'corral.http.redirect': 'https', 'corral.http.hsts': '300',
    });
    const https = ['--cacert', root, '--resolve', `web.test:${HTTPS}:127.0.0.1`, `https://web.test:${HTTPS}/`];
    const ok = await until('HTTPS verified against pebble\'s root', async () => {
      const r = await curl(https);
      return r.status === 200 ? r : undefined;
    }, { ms: 60_000 }).catch((err: Error) => {
      throw new Error(`${err.message}\n--- corral up ---\n${up.logs().slice(-3000)}\n--- pebble ---\n${pebble.logs().slice(-2000)}`);
    });
    expect(ok.body).toBe('web1');
    expect(ok.headers['strict-transport-security']).toBe('max-age=300');
    const plain = await curl(['-H', 'Host: web.test', `http://127.0.0.1:${HTTP}/x?y=1`]);
    expect(plain.status).toBe(308);
    expect(plain.headers.location).toBe(`https://web.test:${HTTPS}/x?y=1`);
    const st = await up.cli(['status']);
    expect(st.stdout).not.toContain('ACME certificate for');
  });

  it('a container with a bad edge label is not registered and the log names the label; the good one keeps serving', async () => {
    await runWeb('web2', { 'corral.service': 'web', 'corral.port': '8080', 'corral.http.host': 'web.test', 'corral.http.rate-limit': 'lots' });
    await until('the warning', () => up.logs().includes('label corral.http.rate-limit=\\"lots\\" is not valid') || up.logs().includes('label corral.http.rate-limit="lots" is not valid'), { ms: 15_000 });
    for (let i = 0; i < 4; i++) {
      const r = await curl(['--cacert', root, '--resolve', `web.test:${HTTPS}:127.0.0.1`, `https://web.test:${HTTPS}/`]);
      expect(r.body).toBe('web1');
    }
  });
});
