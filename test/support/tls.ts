// Certificates for etcd over TLS in tests, made with openssl in a temp dir: a CA, a server
// certificate for the given IP addresses, a client certificate, and a second, unrelated CA.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from './netns.js';

export interface TestPki {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A CA that signed none of these: an agent trusting it must refuse etcd. */
  otherCa: string;
  /** A client certificate (and key) signed by the CA with this CN: with etcd's auth on, etcd's user. */
  clientFor(cn: string): Promise<{ cert: string; key: string }>;
  remove(): void;
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

export async function makePki(serverIps: string[]): Promise<TestPki> {
  const dir = mkdtempSync(join(tmpdir(), 'corral-pki-'));
  const p = (f: string) => join(dir, f);
  try {
    for (const name of ['ca', 'other-ca']) {
      await run('openssl', ['req', '-x509', ...EC, '-keyout', p(`${name}.key`), '-out', p(`${name}.pem`), '-days', '1', '-subj', `/CN=corral-test-${name}`]);
    }
    await sign('server', `subjectAltName=${['127.0.0.1', ...serverIps].map((ip) => `IP:${ip}`).join(',')}\nextendedKeyUsage=serverAuth\n`);
    await sign('client', 'extendedKeyUsage=clientAuth\n');
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    dir, ca: p('ca.pem'), serverCert: p('server.pem'), serverKey: p('server.key'), clientCert: p('client.pem'), clientKey: p('client.key'), otherCa: p('other-ca.pem'),
    async clientFor(cn) {
      await sign(`user-${cn}`, 'extendedKeyUsage=clientAuth\n', cn);
      return { cert: p(`user-${cn}.pem`), key: p(`user-${cn}.key`) };
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };

  async function sign(name: string, ext: string, cn = `corral-test-${name}`): Promise<void> {
    writeFileSync(p(`${name}.ext`), ext);
    await run('openssl', ['req', ...EC, '-keyout', p(`${name}.key`), '-out', p(`${name}.csr`), '-subj', `/CN=${cn}`]);
    await run('openssl', ['x509', '-req', '-in', p(`${name}.csr`), '-CA', p('ca.pem'), '-CAkey', p('ca.key'), '-CAcreateserial', '-out', p(`${name}.pem`), '-days', '1', '-extfile', p(`${name}.ext`)]);
  }
}
