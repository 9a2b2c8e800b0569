// The console token file: made once with mode 0600, read back unchanged, narrowed when others may
// read it, and a broken one named rather than replaced.
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadOrCreateToken, readToken, sameToken, tokenPath } from './token.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
const dir = () => {
  const d = mkdtempSync(join(tmpdir(), 'corral-console-token-'));
  dirs.push(d);
  return d;
};

describe('console token', () => {
  it('is made at first start with mode 0600 and read back unchanged after', () => {
    const d = dir();
    expect(() => readToken(d)).toThrow(/^no console token at .*console\.token: the agent writes it when it starts/);
    const t = loadOrCreateToken(d);
    expect(t).toMatch(/^[0-9a-f]{64}$/);
    expect(statSync(tokenPath(d)).mode & 0o777).toBe(0o600);
    expect(loadOrCreateToken(d)).toBe(t);
    expect(readToken(d)).toBe(t);
  });

  it('narrows a token file others may read to 0600, saying so', () => {
    const d = dir();
    const t = loadOrCreateToken(d);
    chmodSync(tokenPath(d), 0o644);
    const warnings: string[] = [];
    expect(loadOrCreateToken(d, (m) => warnings.push(m))).toBe(t);
    expect(statSync(tokenPath(d)).mode & 0o777).toBe(0o600);
    expect(warnings).toEqual([`${tokenPath(d)} was readable by other users; made it 0600`]);
  });

  it('names a broken token file instead of replacing it', () => {
    const d = dir();
    writeFileSync(tokenPath(d), 'not a token\n', { mode: 0o600 });
    expect(() => loadOrCreateToken(d)).toThrow(`the console token ${tokenPath(d)} is not 64 hex digits; delete it and restart the agent to make a new one`);
  });

  it('compares whole tokens only', () => {
    const t = 'a'.repeat(64);
    expect(sameToken(t, t)).toBe(true);
    expect(sameToken('a'.repeat(63), t)).toBe(false);
    expect(sameToken('b'.repeat(64), t)).toBe(false);
    expect(sameToken('', t)).toBe(false);
  });
});
