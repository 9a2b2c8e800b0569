// The behaviour every Registry implementation promises, run against each (embedded.test.ts,
// etcd.test.ts). Revisions are compared relative to where the store started: etcd's start at 1.
import { expect, it } from 'vitest';
import type { KvBatch, Registry } from './registry.js';

export interface RegistryHarness {
  /** A new, empty store. */
  fresh(): Promise<Registry>;
  /** Another client of the same store (embedded: the same state dir after a restart). */
  reopen(old: Registry): Promise<Registry>;
  /** Makes the history before the current revision unavailable to watchers. */
  forgetHistory(r: Registry): Promise<Registry>;
}

export function registrySuite(h: RegistryHarness): void {
  it('makes one revision per transaction and drops no-op changes', async () => {
    const r = await h.fresh();
    const base = (await r.range('/')).revision;
    expect(await r.txn([{ put: '/a', value: '1' }, { put: '/b', value: '2' }])).toBe(base + 1);
    expect(await r.txn([{ put: '/a', value: '1' }])).toBe(base + 1);
    expect(await r.txn([{ delete: '/missing' }])).toBe(base + 1);
    expect(await r.txn([{ delete: '/a' }])).toBe(base + 2);
    const all = await r.range('/');
    expect(all.revision).toBe(base + 2);
    expect(all.kvs).toEqual([{ key: '/b', value: '2', modRevision: base + 1 }]);
    await r.close();
  });

  it('refuses a transaction whose compare fails and changes nothing', async () => {
    const r = await h.fresh();
    const rev = (await r.txn([{ put: '/s', value: 'x' }]))!;
    expect(await r.txn([{ put: '/s', value: 'y' }, { put: '/t', value: 'z' }], [{ key: '/s', modRevision: 0 }])).toBeNull();
    expect((await r.range('/')).kvs.map((k) => k.value)).toEqual(['x']);
    expect(await r.txn([{ put: '/s', value: 'y' }], [{ key: '/s', modRevision: rev }])).toBe(rev + 1);
    expect(await r.txn([{ put: '/u', value: '1' }], [{ key: '/never', modRevision: 0 }])).toBe(rev + 2);
    await r.close();
  });

  it('lets exactly one of two racing writers create a key guarded by "must not exist"', async () => {
    const a = await h.fresh();
    const results = await Promise.all(['h1', 'h2', 'h3'].map((n) => a.txn([{ put: '/corral/blocks/10.42.7.0-24', value: n }], [{ key: '/corral/blocks/10.42.7.0-24', modRevision: 0 }])));
    expect(results.filter((x) => x !== null)).toHaveLength(1);
    await a.close();
  });

  it('keeps its state for the next client', async () => {
    const r = await h.fresh();
    const base = (await r.range('/')).revision;
    await r.txn([{ put: '/corral/endpoints/e1', value: '{"id":"e1"}' }]);
    await r.txn([{ put: '/corral/services/default/web', value: '{}' }]);
    const again = await h.reopen(r);
    const all = await again.range('/corral/');
    expect(all.revision).toBe(base + 2);
    expect(all.kvs.map((k) => k.key)).toEqual(['/corral/endpoints/e1', '/corral/services/default/web']);
    expect(await again.txn([{ put: '/x', value: '1' }])).toBe(base + 3);
    await again.close();
  });

  it('delivers batches after the watch revision, filtered by prefix, in order', async () => {
    const r = await h.fresh();
    const base = (await r.range('/')).revision;
    await r.txn([{ put: '/corral/a', value: '1' }]);
    await r.txn([{ put: '/other', value: '1' }]);
    const seen: KvBatch[] = [];
    const stop = r.watch('/corral/', base, (b) => seen.push(b), () => seen.push({ revision: -1, events: [] }));
    await r.txn([{ put: '/corral/b', value: '2' }, { delete: '/corral/a' }]);
    await until(() => seen.length >= 2);
    expect(seen).toEqual([
      { revision: base + 1, events: [{ type: 'put', key: '/corral/a', value: '1' }] },
      { revision: base + 3, events: [{ type: 'put', key: '/corral/b', value: '2' }, { type: 'delete', key: '/corral/a' }] },
    ]);
    stop();
    await r.close();
  });

  it('asks a watcher to start over when the history it needs is gone', async () => {
    const first = await h.fresh();
    const base = (await first.range('/')).revision;
    await first.txn([{ put: '/corral/a', value: '1' }]);
    await first.txn([{ put: '/corral/a', value: '2' }]);
    const r = await h.forgetHistory(first);
    let reset = false;
    const stop = r.watch('/corral/', base, () => {}, () => (reset = true));
    await until(() => reset);
    stop();
    await r.close();
  });

  it('stores ephemeral puts like any other while their writer lives', async () => {
    const r = await h.fresh();
    const rev = await r.txn([{ put: '/corral/hosts/h1', value: '{}', ephemeral: true }]);
    expect(await r.txn([{ put: '/corral/hosts/h1', value: '{}', ephemeral: true }])).toBe(rev);
    expect((await r.range('/corral/hosts/')).kvs).toEqual([{ key: '/corral/hosts/h1', value: '{}', modRevision: rev }]);
    expect(r.health().connected).toBe(true);
    await r.close();
  });
}

export async function until(cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
