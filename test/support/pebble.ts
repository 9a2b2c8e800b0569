// Debian's pebble (an ACME test CA) for the LB's ACME tests: its API on a private loopback port
// with a TLS certificate of a test CA made here, its validation pointed at the LB's test ports, and
// pebble-challtestsrv as its DNS (every name is 127.0.0.1, so the CA reaches the LB under test).
// Not used by the product.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { freePort } from './corral.js';
import { run, type Netns } from './netns.js';
import { until } from './until.js';

export interface Pebble {
  /** The ACME directory URL. */
  directory: string;
  /** PEM file of the CA that signed pebble's own HTTPS certificate (for --acme-ca). */
  apiCa: string;
  /** Pebble's issuing root (regenerated at each start), for curl --cacert. */
  rootPem(): Promise<string>;
  logs(): string;
  stop(): Promise<void>;
}

function started(cmd: string, args: string[], env: NodeJS.ProcessEnv, out: string[], netns?: Netns): ChildProcess {
  const o = { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] as ['ignore', 'pipe', 'pipe'] };
  const p = netns ? netns.spawn(cmd, args, o) : spawn(cmd, args, o);
  p.stdout!.on('data', (b: Buffer) => out.push(b.toString()));
  p.stderr!.on('data', (b: Buffer) => out.push(b.toString()));
  return p;
}

async function stopped(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
  p.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 3_000))]);
  if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
}

/**
 * Pebble validating HTTP-01 on httpPort and TLS-ALPN-01 on tlsPort of 127.0.0.1; inside `netns`
 * when given (its own ports are then fixed: nothing else listens there below 32768).
 */
export async function startPebble(o: { httpPort: number; tlsPort: number; validitySeconds?: number; netns?: Netns }): Promise<Pebble> {
  const dir = mkdtempSync(join(tmpdir(), 'edge-pebble-'));
  const ca = join(dir, 'ca.pem');
  // A CA for pebble's own HTTPS, and a certificate for 127.0.0.1 signed by it.
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=edge test pebble api CA', '-keyout', join(dir, 'ca.key'), '-out', ca]);
  await run('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'api.csr')]);
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  await run('openssl', ['x509', '-req', '-in', join(dir, 'api.csr'), '-CA', ca, '-CAkey', join(dir, 'ca.key'), '-CAcreateserial', '-days', '2', '-extfile', join(dir, 'ext.cnf'), '-out', join(dir, 'cert.pem')]);
  const [api, mgmt, dns, dnsMgmt] = o.netns ? [14000, 15000, 18053, 18055] : [await freePort(), await freePort(), await freePort(), await freePort()];
  writeFileSync(join(dir, 'pebble.json'), JSON.stringify({
    pebble: {
      listenAddress: `127.0.0.1:${api}`, managementListenAddress: `127.0.0.1:${mgmt}`,
      certificate: join(dir, 'cert.pem'), privateKey: join(dir, 'key.pem'),
      httpPort: o.httpPort, tlsPort: o.tlsPort, ocspResponderURL: '', externalAccountBindingRequired: false,
      ...(o.validitySeconds ? { certificateValidityPeriod: o.validitySeconds } : {}),
    },
  }));
  const out: string[] = [];
  const dnsSrv = started('pebble-challtestsrv', ['-dns01', `127.0.0.1:${dns}`, '-http01', '', '-https01', '', '-tlsalpn01', '', '-management', `127.0.0.1:${dnsMgmt}`, '-defaultIPv4', '127.0.0.1', '-defaultIPv6', ''], {}, out, o.netns);
  const pebble = started('pebble', ['-config', join(dir, 'pebble.json'), '-dnsserver', `127.0.0.1:${dns}`], { PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0' }, out, o.netns);
  const dispatcher = new Agent({ connect: { ca: await import('node:fs').then((fs) => fs.readFileSync(ca)) } });
  const directory = `https://127.0.0.1:${api}/dir`;
  // From the test process, or with curl inside the namespace.
  const get = async (url: string): Promise<{ status: number; body: string }> => {
    if (!o.netns) {
      const r = await request(url, { dispatcher });
      return { status: r.statusCode, body: await r.body.text() };
    }
    const r = await o.netns.exec('curl', ['-s', '--cacert', ca, '-w', '\n%{http_code}', url]);
    const i = r.stdout.lastIndexOf('\n');
    return { status: Number(r.stdout.slice(i + 1)), body: r.stdout.slice(0, i) };
  };
  try {
    await until('pebble answers its directory', async () => (await get(directory)).status === 200, { ms: 15_000 });
  } catch (err) {
    await Promise.all([stopped(pebble), stopped(dnsSrv)]);
    throw new Error(`${(err as Error).message}\n${out.join('')}`);
  }
  return {
    directory,
    apiCa: ca,
    rootPem: async () => (await get(`https://127.0.0.1:${mgmt}/roots/0`)).body,
    logs: () => out.join(''),
    async stop() {
      await Promise.all([stopped(pebble), stopped(dnsSrv)]);
      await dispatcher.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
