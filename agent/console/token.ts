// The console's action token: made once, at the agent's first start, into <state dir>/console.token
// (mode 0600, like the WireGuard keys), and read again by every later start and by `corral console`.
// Whoever can read that file may act on this host's services through the console; nobody else can.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const TOKEN_FILE = 'console.token';
const TOKEN = /^[0-9a-f]{64}$/;

export function tokenPath(stateDir: string): string {
  return join(stateDir, TOKEN_FILE);
}

/**
 * This host's token: the one in the file, or a new one written there (0600) when there is none.
 * A file other users may read is narrowed to 0600 (`warn` says so); one that holds no token is an
 * error naming the file, since replacing it would silently lock out whoever copied the old URL.
 */
export function loadOrCreateToken(stateDir: string, warn: (msg: string) => void = () => {}): string {
  const file = tokenPath(stateDir);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot read the console token ${file}: ${(err as Error).message}`);
    mkdirSync(stateDir, { recursive: true });
    const token = randomBytes(32).toString('hex');
    // 'wx': two agents starting on one state dir never overwrite each other's token.
    writeFileSync(file, token + '\n', { mode: 0o600, flag: 'wx' });
    return token;
  }
  const token = text.trim();
  if (!TOKEN.test(token)) throw new Error(`the console token ${file} is not 64 hex digits; delete it and restart the agent to make a new one`);
  if ((statSync(file).mode & 0o077) !== 0) {
    chmodSync(file, 0o600);
    warn(`${file} was readable by other users; made it 0600`);
  }
  return token;
}

/** Reads the token without making one (`corral console`): a clear error when the agent never wrote it. */
export function readToken(stateDir: string): string {
  const file = tokenPath(stateDir);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error(`no console token at ${file}: the agent writes it when it starts; is \`corral up\` or \`corral agent\` running with --state-dir ${stateDir}?`);
    }
    throw new Error(`cannot read the console token ${file}: ${(err as Error).message} (run as the agent's user, usually root)`);
  }
  const token = text.trim();
  if (!TOKEN.test(token)) throw new Error(`the console token ${file} is not 64 hex digits; delete it and restart the agent`);
  return token;
}

/** Constant-time comparison, so the answer's timing says nothing about how much of a guess was right. */
export function sameToken(given: string, token: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}
