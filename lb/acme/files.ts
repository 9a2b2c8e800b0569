// The LB's local ACME files, how the main thread (which orders and follows the registry) hands
// certificates and challenges to every LB thread: each thread reads them itself.
//   <state dir>/acme/account.key         the ACME account key (0600)
//   <state dir>/acme/certs/<host>.crt/.key  served by every thread (a CertificateStore watching it, tls.ts)
//   <state dir>/acme/challenges/<token>  HTTP-01 answers, read when the CA asks
//   <state dir>/acme/alpn/<host>.pem     TLS-ALPN-01 challenge certificates (alpn.ts watches it)
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface AcmeDirs { root: string; certs: string; challenges: string; alpn: string }

export function acmeDirs(root: string): AcmeDirs {
  return { root, certs: join(root, 'certs'), challenges: join(root, 'challenges'), alpn: join(root, 'alpn') };
}

/** Makes the directories (0700: keys live there). */
export function makeAcmeDirs(d: AcmeDirs): void {
  for (const p of [d.root, d.certs, d.challenges, d.alpn]) mkdirSync(p, { recursive: true, mode: 0o700 });
}

/** Writes a file whole or not at all (a reader never sees half of it), mode 0600. */
export function writeAtomic(path: string, data: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data, { mode: 0o600 });
  renameSync(tmp, path);
}

export function removeFile(path: string): void {
  rmSync(path, { force: true });
}

const TOKEN = /^[A-Za-z0-9_-]{1,256}$/;

/** The HTTP-01 answer for a token (any thread), or undefined. */
export function challengeReader(dir: string): (token: string) => string | undefined {
  return (token) => {
    if (!TOKEN.test(token)) return undefined;
    try {
      return readFileSync(join(dir, token), 'latin1');
    } catch {
      return undefined;
    }
  };
}
