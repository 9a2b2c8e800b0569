// ACME against Debian's pebble (a real ACME CA; its DNS is pebble-challtestsrv answering
// 127.0.0.1 for every name): the LB answers the CA's challenges itself and curl verifies what it
// serves against pebble's root. LBs run in this process (runLb) with real HTTP backends.
//   - HTTP-01 on the LB's HTTP port, two LB threads serving the certificate; renewal before expiry
//     (pebble issues 24 s certificates) while wrk keeps requesting over HTTPS: no failed request.
//   - Two LBs of two hosts sharing etcd: one orders (the lock), the other installs its result.
//   - TLS-ALPN-01 on the HTTPS port; then pebble stops: the renewal fails, the status says why
//     and when it tries again, and the old certificate is still served.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { promisify } from 'node:util';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeLogger } from '../../api/log.js';
import { defaultOptions, LB_DEFAULTS, type AcmeOptions } from '../../api/options.js';
import type { WatchEvent } from '../../api/types.js';
import { curl, memoryWatch, stablePort } from '../../test/support/edge.js';
import { startEtcd, type EtcdCluster } from '../../test/support/etcd.js';
import { startDaemon } from '../../test/support/corral.js';
import { Backend, backendEndpoint, startBackends } from '../../test/support/lb.js';
import { startPebble, type Pebble } from '../../test/support/pebble.js';
import { endpoint, snapshot } from '../../test/support/records.js';
import { EdgeRoutes } from '../middleware/edges.js';
import { RouteTable } from '../routes.js';
import { acmeHosts } from './hosts.js';
import { until } from '../../test/support/until.js';
import { sourceThreads } from '../../test/support/workers.js';
import { runLb, type RunningLb } from '../main.js';
import type { HostAcme } from './index.js';

const run = promisify(execFile);
const dirs: string[] = [];
const lbs: RunningLb[] = [];
const pebbles: Pebble[] = [];
let backend: Backend;
let etcd: EtcdCluster | undefined;

interface TestLb { lb: RunningLb; http: number; https: number; admin: number; dir: string; push(ev: WatchEvent): Promise<void> }

async function ports(): Promise<{ http: number; https: number; admin: number }> {
  return { http: await stablePort(), https: await stablePort(), admin: await stablePort() };
}

async function startLb(p: { http: number; https: number; admin: number }, acme: Partial<AcmeOptions> & { directory: string; ca: string }, events: WatchEvent[], extra: { node?: string; registry?: string; threads?: number } = {}): Promise<TestLb> {
  const dir = mkdtempSync(join(tmpdir(), 'edge-acme-'));
  dirs.push(dir);
  const watch = memoryWatch();
  for (const ev of events) await watch.push(ev);
  const lb = await runLb({
    ...defaultOptions(),
    stateDir: dir,
    nodeName: extra.node ?? 'edge-h1',
    registry: extra.registry ?? 'embedded',
    httpListen: `127.0.0.1:${p.http}`,
    adminListen: `127.0.0.1:${p.admin}`,
    lb: { ...LB_DEFAULTS, threads: extra.threads ?? 1, httpsListen: `127.0.0.1:${p.https}`, acme: { ...LB_DEFAULTS.acme, retryMs: 2_000, ...acme } },
  }, makeLogger('lb', 'silent'), { watch: watch.source, spawnWorker: sourceThreads().spawn });
  lbs.push(lb);
  return { lb, dir, ...p, push: watch.push };
}

async function acmeStatus(t: TestLb): Promise<HostAcme[]> {
  const res = await request(`http://127.0.0.1:${t.admin}/`);
  return ((await res.body.json()) as { acme: HostAcme[] }).acme;
}

async function metric(t: TestLb, name: string): Promise<number> {
  const text = await (await request(`http://127.0.0.1:${t.admin}/metrics`)).body.text();
  const m = new RegExp(`^${name.replace(/[{}"]/g, '\\$&')} (\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

/** The serial of the certificate the LB serves for host, verified against pebble's root. */
function servedSerial(port: number, host: string, root: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, servername: host, ca: root, ALPNProtocols: ['http/1.1'] }, () => {
      const serial = s.getPeerCertificate().serialNumber;
      s.end();
      resolve(serial);
    });
    s.on('error', reject);
  });
}

/** curl over HTTPS to host on the LB, verifying against pebble's root. */
function curlHttps(port: number, host: string, rootFile: string, path = '/') {
  return curl(['--cacert', rootFile, '--resolve', `${host}:${port}:127.0.0.1`, `https://${host}:${port}${path}`]);
}

function route(host: string, edge: Record<string, string> = { 'corral.http.tls': 'acme' }): WatchEvent {
  return snapshot(1, [backendEndpoint(backend, host.split('.')[0]!, { httpHosts: [host], edge })]);
}

beforeAll(async () => {
  [backend] = await startBackends(['b1']) as [Backend];
});

afterAll(async () => {
  await Promise.all(lbs.map((l) => l.close()));
  await Promise.all(pebbles.map((p) => p.stop()));
  await etcd?.stop();
  await backend?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function rootFile(p: Pebble): Promise<{ pem: string; file: string }> {
  const pem = await p.rootPem();
  const dir = mkdtempSync(join(tmpdir(), 'edge-root-'));
  dirs.push(dir);
  const file = join(dir, 'root.pem');
  await import('node:fs').then((fs) => fs.writeFileSync(file, pem));
  return { pem, file };
}

describe('which hosts get ACME certificates', () => {
  it('the labelled routes\' exact hosts; with --acme-all-hosts every route\'s; never a wildcard', () => {
    const table = new RouteTable();
    table.edges = new EdgeRoutes({ authDir: '/nonexistent', httpsPort: 443 });
    table.apply(snapshot(1, [
      endpoint({ service: 'a', port: 1, httpHosts: ['a.test', 'www.a.test'], edge: { 'corral.http.tls': 'acme' } }),
      endpoint({ service: 'b', port: 2, httpHosts: ['b.test'] }),
      endpoint({ service: 'c', port: 3, httpHosts: ['*.c.test'], edge: { 'corral.http.tls': 'acme' } }),
    ]));
    expect([...acmeHosts(table, false)].sort()).toEqual(['a.test', 'www.a.test']);
    expect([...acmeHosts(table, true)].sort()).toEqual(['a.test', 'b.test', 'www.a.test']);
  });
});

describe('ACME certificates from labels, with pebble', () => {
  it('HTTP-01: a labelled route gets a certificate curl verifies, on every thread; the account key is 0600; it is renewed before expiry under wrk without a failed request', async () => {
    const p = await ports();
    const pebble = await startPebble({ httpPort: p.http, tlsPort: p.https, validitySeconds: 24 });
    pebbles.push(pebble);
    const t = await startLb(p, { directory: pebble.directory, ca: pebble.apiCa, email: 'ops@web.test' }, [route('web.test')], { threads: 2 });
    const root = await rootFile(pebble);
    const first = await until('a certificate for web.test', async () => (await acmeStatus(t)).find((h) => h.host === 'web.test' && h.state === 'valid'), { ms: 30_000 });
    expect(statSync(join(t.dir, 'acme', 'account.key')).mode & 0o777).toBe(0o600);
    // Both threads serve it (new connections land on either).
    const serial = await until('served by the LB', async () => servedSerial(t.https, 'web.test', root.pem), { ms: 10_000 });
    for (let i = 0; i < 6; i++) {
      const r = await curlHttps(t.https, 'web.test', root.file);
      expect(r.status).toBe(200);
      expect(r.body).toBe('b1 default\n');
    }
    expect(await metric(t, 'corral_lb_acme_orders_total{result="ok"}')).toBe(1);
    // Renewal: due at a third of the lifetime before expiry; wrk keeps requesting across it.
    const wrk = run('wrk', ['-t1', '-c4', '-d14s', '-H', 'Host: web.test', `https://127.0.0.1:${t.https}/`], { timeout: 30_000 });
    const renewed = await until('the certificate renewed', async () => {
      const s = await servedSerial(t.https, 'web.test', root.pem).catch(() => undefined);
      return s !== undefined && s !== serial ? s : undefined;
    }, { ms: 25_000 });
    // Served before the first one expired (a verifying client never saw an expired certificate).
    expect(Date.now()).toBeLessThan(Date.parse(first.notAfter));
    const { stdout } = await wrk;
    const total = Number(/(\d+) requests in/.exec(stdout)?.[1]);
    expect(total).toBeGreaterThan(100);
    expect(stdout).not.toMatch(/Socket errors|Non-2xx/);
    expect(renewed).not.toBe(serial);
    expect((await curlHttps(t.https, 'web.test', root.file)).status).toBe(200);
  }, 80_000);

  it('two LBs of two hosts sharing etcd: one orders, the CA\'s check reaching the other LB is answered from the registry, and the other installs the same certificate without ordering', async () => {
    etcd = await startEtcd();
    const a = await ports();
    const b = await ports();
    // The CA checks HTTP-01 on LB a's port only, and b orders: the token reaches a through etcd.
    const pebble = await startPebble({ httpPort: a.http, tlsPort: a.https, validitySeconds: 3600 });
    pebbles.push(pebble);
    const root = await rootFile(pebble);
    const acme = { directory: pebble.directory, ca: pebble.apiCa };
    const la = await startLb(a, acme, [snapshot(1, [])], { node: 'edge-h1', registry: etcd.spec });
    const lb = await startLb(b, acme, [route('shared.test')], { node: 'edge-h2', registry: etcd.spec });
    await until('b has the certificate', async () => (await acmeStatus(lb))[0]?.state === 'valid', { ms: 30_000 });
    // Now a serves the route too: it installs b's certificate from etcd instead of ordering.
    await la.push(route('shared.test'));
    const sa = await until('a has it', async () => (await acmeStatus(la)).find((h) => h.state === 'valid'), { ms: 15_000 });
    expect(sa.orderedBy).toBe('edge-h2');
    expect(await metric(la, 'corral_lb_acme_orders_total{result="ok"}')).toBe(0);
    expect(await metric(lb, 'corral_lb_acme_orders_total{result="ok"}')).toBe(1);
    const served = await until('a serves it', () => servedSerial(la.https, 'shared.test', root.pem));
    expect(await until('b serves it', () => servedSerial(lb.https, 'shared.test', root.pem))).toBe(served);
    expect((await curlHttps(la.https, 'shared.test', root.file)).status).toBe(200);
  }, 60_000);

  it('two LBs that want a new host at the same moment order it once (the lock)', async () => {
    const a = await ports();
    const b = await ports();
    const pebble = await startPebble({ httpPort: a.http, tlsPort: a.https, validitySeconds: 3600 });
    pebbles.push(pebble);
    const acme = { directory: pebble.directory, ca: pebble.apiCa };
    const [la, lb] = await Promise.all([
      startLb(a, acme, [snapshot(1, [])], { node: 'edge-h1', registry: etcd!.spec }),
      startLb(b, acme, [snapshot(1, [])], { node: 'edge-h2', registry: etcd!.spec }),
    ]);
    await Promise.all([la.push(route('race.test')), lb.push(route('race.test'))]);
    await until('both have it', async () => (await acmeStatus(la))[0]?.state === 'valid' && (await acmeStatus(lb))[0]?.state === 'valid', { ms: 30_000 });
    expect((await metric(la, 'corral_lb_acme_orders_total{result="ok"}')) + (await metric(lb, 'corral_lb_acme_orders_total{result="ok"}'))).toBe(1);
  }, 60_000);

  it('TLS-ALPN-01 on the HTTPS port; with pebble gone the renewal fails, the status says why, and the old certificate is served', async () => {
    const p = await ports();
    const pebble = await startPebble({ httpPort: await stablePort(), tlsPort: p.https, validitySeconds: 3600 });
    pebbles.push(pebble);
    const root = await rootFile(pebble);
    // Renewal due 8 s after issuance.
    const t = await startLb(p, { directory: pebble.directory, ca: pebble.apiCa, challenge: 'tls-alpn-01', renewBeforeMs: 3_592_000 }, [route('alpn.test')]);
    await until('a certificate by TLS-ALPN-01', async () => (await acmeStatus(t))[0]?.state === 'valid', { ms: 30_000 });
    const serial = await until('served', () => servedSerial(t.https, 'alpn.test', root.pem));
    await pebble.stop();
    pebbles.splice(pebbles.indexOf(pebble), 1);
    const failed = await until('the renewal failed', async () => (await acmeStatus(t)).find((h) => h.state === 'failed'), { ms: 30_000 });
    expect(failed.lastError).toMatch(/^cannot reach the ACME directory https:.*ECONNREFUSED/);
    expect(Date.parse(failed.nextTryAt)).toBeGreaterThan(Date.now() - 1_000);
    expect(await metric(t, 'corral_lb_acme_failures{host="alpn.test"}')).toBeGreaterThan(0);
    expect(await servedSerial(t.https, 'alpn.test', root.pem)).toBe(serial);
    expect((await curlHttps(t.https, 'alpn.test', root.file)).status).toBe(200);
    // `corral status` of this host's agent says why.
    const agent = await startDaemon('agent', { stateDir: t.dir });
    try {
      const st = await agent.cli(['status']);
      expect(st.stdout).toMatch(/problems\s+ACME certificate for alpn\.test: \d+ failed order\(s\) in a row: cannot reach the ACME directory https:\/\/127\.0\.0\.1:\d+\/dir: ECONNREFUSED/);
      expect(st.stdout).toContain('the LB serves the previous one (valid until');
    } finally {
      await agent.stop();
    }
  }, 60_000);
});
