import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EmbeddedRegistry } from './embedded.js';
import type { Registry } from './registry.js';
import { registrySuite } from './registry.suite.js';

describe('embedded registry', () => {
  const dirs: string[] = [];
  const dirOf = new Map<Registry, string>();
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const open = async (dir: string) => {
    const r = new EmbeddedRegistry(dir);
    await r.open();
    dirOf.set(r, dir);
    return r;
  };

  registrySuite({
    async fresh() {
      const dir = mkdtempSync(join(tmpdir(), 'corral-reg-'));
      dirs.push(dir);
      return open(dir);
    },
    async reopen(old) {
      await old.close();
      return open(dirOf.get(old)!);
    },
    // history is not kept across restarts
    async forgetHistory(old) {
      await old.close();
      return open(dirOf.get(old)!);
    },
  });

  it('keeps its state in a file only root can read', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-reg-'));
    dirs.push(dir);
    const r = await open(dir);
    await r.txn([{ put: '/corral/endpoints/e1', value: '{"id":"e1"}' }]);
    expect(statSync(join(dir, 'registry.json')).mode & 0o777).toBe(0o600);
  });

  it('says what to do when the state file is damaged', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-reg-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'registry.json'), '{"format": "corral-registry/1", "revis');
    await expect(new EmbeddedRegistry(dir).open()).rejects.toThrow(/not valid JSON.*move it away/);
  });
});
