import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EmbeddedRegistry } from './embedded.js';
import type { KvBatch } from './registry.js';

describe('embedded registry', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'corral-reg-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('makes one revision per transaction and drops no-op changes', async () => {
    const r = new EmbeddedRegistry(dir);
    await r.open();
    expect(await r.txn([{ put: '/a', value: '1' }, { put: '/b', value: '2' }])).toBe(1);
    expect(await r.txn([{ put: '/a', value: '1' }])).toBe(1);
    expect(await r.txn([{ delete: '/missing' }])).toBe(1);
    expect(await r.txn([{ delete: '/a' }])).toBe(2);
    const all = await r.range('/');
    expect(all.revision).toBe(2);
    expect(all.kvs).toEqual([{ key: '/b', value: '2', modRevision: 1 }]);
  });

  it('refuses a transaction whose compare fails and changes nothing', async () => {
    const r = new EmbeddedRegistry(dir);
    await r.open();
    await r.txn([{ put: '/s', value: 'x' }]);
    expect(await r.txn([{ put: '/s', value: 'y' }, { put: '/t', value: 'z' }], [{ key: '/s', modRevision: 0 }])).toBeNull();
    expect((await r.range('/')).kvs.map((k) => k.value)).toEqual(['x']);
    expect(await r.txn([{ put: '/s', value: 'y' }], [{ key: '/s', modRevision: 1 }])).toBe(2);
  });

  it('keeps its state across a restart, in a file only root can read', async () => {
    const r = new EmbeddedRegistry(dir);
    await r.open();
    await r.txn([{ put: '/corral/endpoints/e1', value: '{"id":"e1"}' }]);
    await r.txn([{ put: '/corral/services/default/web', value: '{}' }]);
    await r.close();
    expect(statSync(join(dir, 'registry.json')).mode & 0o777).toBe(0o600);
    const again = new EmbeddedRegistry(dir);
    await again.open();
    const all = await again.range('/corral/');
    expect(all.revision).toBe(2);
    expect(all.kvs.map((k) => k.key)).toEqual(['/corral/endpoints/e1', '/corral/services/default/web']);
    expect(await again.txn([{ put: '/x', value: '1' }])).toBe(3);
  });

  it('says what to do when the state file is damaged', async () => {
    writeFileSync(join(dir, 'registry.json'), '{"format": "corral-registry/1", "revis');
    await expect(new EmbeddedRegistry(dir).open()).rejects.toThrow(/not valid JSON.*move it away/);
  });

  it('delivers batches after the watch revision, filtered by prefix, in order', async () => {
    const r = new EmbeddedRegistry(dir);
    await r.open();
    await r.txn([{ put: '/corral/a', value: '1' }]);
    await r.txn([{ put: '/other', value: '1' }]);
    const seen: KvBatch[] = [];
    r.watch('/corral/', 0, (b) => seen.push(b), () => seen.push({ revision: -1, events: [] }));
    await r.txn([{ put: '/corral/b', value: '2' }, { delete: '/corral/a' }]);
    expect(seen).toEqual([
      { revision: 1, events: [{ type: 'put', key: '/corral/a', value: '1' }] },
      { revision: 3, events: [{ type: 'put', key: '/corral/b', value: '2' }, { type: 'delete', key: '/corral/a' }] },
    ]);
    expect(JSON.parse(readFileSync(join(dir, 'registry.json'), 'utf8')).revision).toBe(3);
  });

  it('asks a watcher to start over when the history it needs is gone', async () => {
    const r = new EmbeddedRegistry(dir);
    await r.open();
    await r.txn([{ put: '/corral/a', value: '1' }]);
    await r.close();
    const again = new EmbeddedRegistry(dir); // history is not kept across restarts
    await again.open();
    let reset = false;
    again.watch('/corral/', 0, () => {}, () => (reset = true));
    await new Promise((res) => setTimeout(res, 10));
    expect(reset).toBe(true);
  });
});
