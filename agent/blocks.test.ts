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
      { put: blockKey('10.42.0.0/24'), value: 'null' },
      { put: '/corral/blocks/10.42.2.0_23', value: JSON.stringify({ block: '10.42.2.0/23', node: 'other', sinceMs: 1 }) },
    ]);
    expect(await leaseBlock(r, '10.42.0.0/22', 'h1')).toBe('10.42.1.0/24');
    await expect(leaseBlock(r, '10.42.0.0/22', 'h2')).rejects.toThrow(/no free \/24 block left for host h2/);
    await r.close();
  });
});
