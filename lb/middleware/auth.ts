// Basic auth against a password file in --lb-auth-dir: one `user:hash` line per user, where the
// hash is scrypt in the form `$scrypt$N=16384,r=8,p=1$<salt, base64>$<key, base64>` (README says
// how to make one). Labels only name the file, never a secret. A hash is checked on libuv's pool
// (scrypt is slow on purpose) and the result cached per Authorization value, so a keep-alive
// client pays for it once; the file is re-read when it changes.
import { scrypt, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** A verified Authorization value is trusted this long (or until the file changes). */
const GOOD_MS = 5 * 60_000;
/** A refused one is refused without another scrypt for this long. */
const BAD_MS = 2_000;
/** How often the file's mtime is looked at. */
const STAT_MS = 2_000;
const MAX_CACHE = 10_000;

interface Hash { N: number; r: number; p: number; salt: Buffer; key: Buffer }

/** Parses `$scrypt$N=…,r=…,p=…$salt$key`; throws with what is wrong. */
export function parseScrypt(text: string): Hash {
  const m = /^\$scrypt\$N=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(text);
  if (!m) throw new Error('not a $scrypt$N=…,r=…,p=…$salt$key hash');
  const [N, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (N < 2 || (N & (N - 1)) !== 0 || N > 1 << 20 || r < 1 || r > 32 || p < 1 || p > 16) throw new Error('scrypt parameters out of range (N a power of 2 up to 2^20, r 1-32, p 1-16)');
  return { N, r, p, salt: Buffer.from(m[4]!, 'base64'), key: Buffer.from(m[5]!, 'base64') };
}

/** What an operator puts in the file: `user:` + this. */
export function hashPassword(password: string, salt: Buffer, N = 16384, r = 8, p = 1): Promise<string> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, 32, { N, r, p, maxmem: 256 * N * r }, (err, key) => (err ? reject(err) : resolve(`$scrypt$N=${N},r=${r},p=${p}$${salt.toString('base64')}$${key.toString('base64')}`)));
  });
}

export class BasicAuth {
  private users = new Map<string, Hash>();
  private mtimeMs = -1;
  private checkedAt = -Infinity;
  private readonly cache = new Map<string, { ok: boolean; until: number }>();
  private readonly pending = new Map<string, Promise<void>>();
  /** The last problem with the file, logged once ('' none). */
  private problem = '';

  constructor(readonly realm: string, private readonly file: string, private readonly warn: (msg: string, file: string) => void) {
    this.load();
  }

  static in(dir: string, name: string, warn: (msg: string, file: string) => void): BasicAuth {
    return new BasicAuth(name, join(dir, name), warn);
  }

  /** true / false, or a promise to wait on before asking again (a hash being checked). */
  check(header: string | undefined): boolean | Promise<void> {
    const now = performance.now();
    if (now - this.checkedAt > STAT_MS) this.load();
    if (header === undefined || this.users.size === 0) return false;
    const hit = this.cache.get(header);
    if (hit !== undefined && hit.until > now) return hit.ok;
    const m = /^\s*basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
    if (!m) return false;
    const plain = Buffer.from(m[1]!, 'base64').toString('utf8');
    const colon = plain.indexOf(':');
    const hash = colon > 0 ? this.users.get(plain.slice(0, colon)) : undefined;
    if (hash === undefined) {
      this.remember(header, false);
      return false;
    }
    let p = this.pending.get(header);
    if (p === undefined) {
      p = new Promise<void>((resolve) => {
        scrypt(plain.slice(colon + 1), hash.salt, hash.key.length, { N: hash.N, r: hash.r, p: hash.p, maxmem: 256 * hash.N * hash.r }, (err, key) => {
          this.remember(header, !err && key.length === hash.key.length && timingSafeEqual(key, hash.key));
          this.pending.delete(header);
          resolve();
        });
      });
      this.pending.set(header, p);
    }
    return p;
  }

  private remember(header: string, ok: boolean): void {
    if (this.cache.size >= MAX_CACHE) this.cache.clear();
    this.cache.set(header, { ok, until: performance.now() + (ok ? GOOD_MS : BAD_MS) });
  }

  private load(): void {
    this.checkedAt = performance.now();
    let mtime: number;
    try {
      mtime = statSync(this.file).mtimeMs;
    } catch (err) {
      this.fail(`cannot read the basic-auth file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); every request to its routes gets 401`);
      return;
    }
    if (mtime === this.mtimeMs) return;
    const users = new Map<string, Hash>();
    const lines = readFileSync(this.file, 'utf8').split('\n');
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!.trim();
      if (line === '' || line.startsWith('#')) continue;
      const colon = line.indexOf(':');
      try {
        if (colon <= 0) throw new Error('not user:hash');
        users.set(line.slice(0, colon), parseScrypt(line.slice(colon + 1)));
      } catch (err) {
        this.fail(`line ${i + 1}: ${(err as Error).message}; that user cannot log in`);
      }
    }
    this.mtimeMs = mtime;
    this.users = users;
    this.cache.clear();
    if (users.size === 0) this.fail('no user in the basic-auth file; every request to its routes gets 401');
  }

  private fail(msg: string): void {
    if (msg === this.problem) return;
    this.problem = msg;
    this.warn(msg, this.file);
  }
}
