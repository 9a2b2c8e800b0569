// This host's WireGuard key pair, in <state dir>/wireguard/ (directory 0700, private key 0600).
// Private keys never leave this module in text form except to the device; they are never logged.
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface KeyPair {
  privateKey: Buffer;  // 32 bytes
  publicKey: string;   // base64, the form WireGuard tools print
}

export function generateKeyPair(): KeyPair {
  const { privateKey } = generateKeyPairSync('x25519');
  const d = privateKey.export({ format: 'jwk' }).d!;
  return fromPrivate(Buffer.from(d, 'base64url'));
}

/** PKCS#8 DER prefix of an X25519 private key; the raw 32 bytes follow. */
const PKCS8_X25519 = Buffer.from('302e020100300506032b656e04220420', 'hex');

export function fromPrivate(priv: Buffer): KeyPair {
  const key = createPrivateKey({ key: Buffer.concat([PKCS8_X25519, priv]), format: 'der', type: 'pkcs8' });
  const x = createPublicKey(key).export({ format: 'jwk' }).x!;
  return { privateKey: priv, publicKey: Buffer.from(x, 'base64url').toString('base64') };
}

/** The key store: `current` is in use; `next` is published ahead of a rotation. */
export class KeyStore {
  private readonly dir: string;
  constructor(stateDir: string) {
    this.dir = join(stateDir, 'wireguard');
  }

  /** The current pair, created on first use. */
  current(): KeyPair {
    return this.read('private.key') ?? this.write('private.key', generateKeyPair());
  }

  /** The pair being rolled out, if a rotation is under way. */
  next(): KeyPair | undefined {
    return this.read('next.key');
  }

  startRotation(): KeyPair {
    return this.next() ?? this.write('next.key', generateKeyPair());
  }

  /** next becomes current (rename is atomic: a crash leaves one or the other). */
  finishRotation(): KeyPair {
    const n = this.next();
    if (!n) return this.current();
    renameSync(join(this.dir, 'next.key'), join(this.dir, 'private.key'));
    return n;
  }

  private read(name: string): KeyPair | undefined {
    let text: string;
    try {
      text = readFileSync(join(this.dir, name), 'utf8').trim();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    const raw = Buffer.from(text, 'base64');
    if (raw.length !== 32) throw new Error(`${join(this.dir, name)} is not a WireGuard private key (base64 of 32 bytes); move it away to make a new one`);
    return fromPrivate(raw);
  }

  private write(name: string, kp: KeyPair): KeyPair {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const tmp = join(this.dir, `${name}.tmp`);
    writeFileSync(tmp, kp.privateKey.toString('base64') + '\n', { mode: 0o600 });
    renameSync(tmp, join(this.dir, name));
    return kp;
  }
}
