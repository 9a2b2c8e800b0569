// TLS-ALPN-01 on a TLS server (real handshakes on loopback): while a challenge certificate is
// pending, an "acme-tls/1" client for its name gets it; every other client, for that name or
// another, gets the server's own handshake and answer, its ClientHello put back untouched.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type Server } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { selfSigned } from '../../test/support/edge.js';
import { until } from '../../test/support/until.js';
import { AlpnChallenges } from './alpn.js';

let dir: string;
let server: Server;
let alpn: AlpnChallenges;
let port = 0;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'edge-alpn-'));
  mkdirSync(join(dir, 'alpn'));
  await selfSigned(dir, ['site.test']);
  await selfSigned(dir, ['challenge.test']);
  const [cert, key] = [readFileSync(join(dir, 'site.test.crt')), readFileSync(join(dir, 'site.test.key'))];
  server = createServer({ cert, key, ALPNProtocols: ['http/1.1'] }, (s) => s.end('served\n'));
  alpn = new AlpnChallenges(join(dir, 'alpn'));
  alpn.intercept(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  port = (server.address() as AddressInfo).port;
});

afterAll(() => {
  alpn?.close();
  server?.close();
  rmSync(dir, { recursive: true, force: true });
});

function hello(servername: string, protocols: string[]): Promise<{ alpn: string | false; cn: string; body: string }> {
  return new Promise((resolve, reject) => {
    const c = connect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false, ALPNProtocols: protocols });
    let body = '';
    c.on('data', (b: Buffer) => (body += b));
    c.on('end', () => resolve({ alpn: c.alpnProtocol ?? false, cn: String(c.getPeerCertificate().subject?.CN ?? ''), body }));
    c.on('error', reject);
  });
}

describe('TLS-ALPN-01 interception', () => {
  it('with no challenge pending, connections go straight to the server', async () => {
    expect(await hello('challenge.test', ['http/1.1'])).toEqual({ alpn: 'http/1.1', cn: 'site.test', body: 'served\n' });
  });

  it('with one pending: acme-tls/1 for its name gets the challenge certificate; everything else is served as before', async () => {
    const pem = `${readFileSync(join(dir, 'challenge.test.crt'))}\n${readFileSync(join(dir, 'challenge.test.key'))}`;
    writeFileSync(join(dir, 'alpn', 'challenge.test.pem'), pem);
    const acme = await until('the challenge is picked up', async () => {
      const r = await hello('challenge.test', ['acme-tls/1']).catch(() => undefined);
      return r?.cn === 'challenge.test' ? r : undefined;
    });
    expect(acme.alpn).toBe('acme-tls/1');
    expect(await hello('challenge.test', ['http/1.1'])).toEqual({ alpn: 'http/1.1', cn: 'site.test', body: 'served\n' });
    expect(await hello('site.test', ['h2', 'http/1.1'])).toEqual({ alpn: 'http/1.1', cn: 'site.test', body: 'served\n' });
  });
});
