import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { blockKey, leaseBlock } from './blocks.js';
import { EmbeddedRegistry } from './registry/embedded.js';

describe('block leases', () => {
  const dirs: string[] = [];
  const registry = async () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-blocks-'));
    dirs.push(dir);
    const r = new EmbeddedRegistry(dir);
    await r.open();
    return r;
  };
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('gives a single host the first block, and the same block again after a restart', async () => {
    const r = await registry();
    expect(await leaseBlock(r, '10.42.0.0/16', 'h1')).toBe('10.42.0.0/24');
    expect(await leaseBlock(r, '10.42.0.0/16', 'h2')).toBe('10.42.1.0/24');
    expect(await leaseBlock(r, '10.42.0.0/16', 'h1')).toBe('10.42.0.0/24');
    await r.close();
  });

  it('gives 50 hosts joining at once 50 different blocks', async () => {
    const r = await registry();
    const blocks = await Promise.all(Array.from({ length: 50 }, (_, i) => leaseBlock(r, '10.42.0.0/16', `h${i}`)));
    expect(new Set(blocks).size).toBe(50);
    await r.close();
  });

  it('skips keys holding junk and blocks another lease overlaps, and says when the CIDR is full', async () => {
    const r = await registry();
    await r.txn([
      { put: blockKey('junk', '10.42.0.0/24'), value: 'null' },
      { put: '/corral/blocks/other/10.42.2.0_23', value: JSON.stringify({ block: '10.42.2.0/23', node: 'other', sinceMs: 1 }) },
    ]);
    expect(await leaseBlock(r, '10.42.0.0/22', 'h1')).toBe('10.42.1.0/24');
    await expect(leaseBlock(r, '10.42.0.0/22', 'h2')).rejects.toThrow(/no free \/24 block left for host h2/);
    await r.close();
  });

  it('keeps the older of two leases of one block under different hosts\' prefixes: the younger moves on and withdraws its lease', async () => {
    const r = await registry();
    // h2 wrote its lease of 10.42.0.0/24 after h1 did (a race, or a host claiming another's block).
    await r.txn([{ put: blockKey('h1', '10.42.0.0/24'), value: JSON.stringify({ block: '10.42.0.0/24', node: 'h1', sinceMs: 1 }) }]);
    await r.txn([{ put: blockKey('h2', '10.42.0.0/24'), value: JSON.stringify({ block: '10.42.0.0/24', node: 'h2', sinceMs: 2 }) }]);
    expect(await leaseBlock(r, '10.42.0.0/16', 'h2')).not.toBe('10.42.0.0/24');
    expect(await leaseBlock(r, '10.42.0.0/16', 'h1')).toBe('10.42.0.0/24');
    const left = (await r.range('/corral/blocks/')).kvs.map((kv) => kv.key);
    expect(left).not.toContain(blockKey('h2', '10.42.0.0/24'));
    expect(left.filter((k) => k.startsWith('/corral/blocks/h2/'))).toHaveLength(1);
    await r.close();
  });

  it('does not count a lease whose record names another host than its key', async () => {
    const r = await registry();
    await r.txn([{ put: blockKey('h2', '10.42.0.0/24'), value: JSON.stringify({ block: '10.42.0.0/24', node: 'h1', sinceMs: 1 }) }]);
    // h1 does not take it as its own (it is under h2's prefix); the key still marks the block taken.
    expect(await leaseBlock(r, '10.42.0.0/16', 'h1')).toBe('10.42.1.0/24');
    await r.close();
  });
});
