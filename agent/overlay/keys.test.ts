import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { fromPrivate, KeyStore } from './keys.js';

describe('WireGuard keys', () => {
  const dirs: string[] = [];
  afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

  it('derives the public key WireGuard derives (RFC 7748 test vector)', () => {
    const priv = Buffer.from('77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a', 'hex');
    expect(Buffer.from(fromPrivate(priv).publicKey, 'base64').toString('hex')).toBe('8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a');
  });

  it('keeps the private key 0600 in a 0700 directory and the same pair across restarts', () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-keys-'));
    dirs.push(dir);
    const a = new KeyStore(dir).current();
    expect(statSync(join(dir, 'wireguard')).mode & 0o777).toBe(0o700);
    expect(statSync(join(dir, 'wireguard', 'private.key')).mode & 0o777).toBe(0o600);
    expect(new KeyStore(dir).current().publicKey).toBe(a.publicKey);
    expect(readFileSync(join(dir, 'wireguard', 'private.key'), 'utf8').trim()).toBe(a.privateKey.toString('base64'));
  });

  it('makes the next key current only when a rotation finishes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-keys-'));
    dirs.push(dir);
    const ks = new KeyStore(dir);
    const a = ks.current();
    const n = ks.startRotation();
    expect(ks.startRotation().publicKey).toBe(n.publicKey);
    expect(ks.current().publicKey).toBe(a.publicKey);
    expect(ks.finishRotation().publicKey).toBe(n.publicKey);
    expect(ks.current().publicKey).toBe(n.publicKey);
    expect(ks.next()).toBeUndefined();
  });
});
