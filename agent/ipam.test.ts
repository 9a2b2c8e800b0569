// The IPAM journal on a full filesystem (a small tmpfs): refused allocations say why, and every
// acknowledged one survives a restart (replay), also after the disk filled up mid-line.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Ipam } from './ipam.js';

const BLOCK = '10.42.7.0/24';
const req = (i: number) => ({ containerId: `c${i}`, ifname: 'eth0', namespace: 'default', network: 'corral', netns: `/run/netns/c${i}`, name: '', hostIfname: `veth${i}`, masq: false });

describe('IPAM journal on a full filesystem', () => {
  let dir = '';
  afterEach(() => {
    if (!dir) return;
    execFileSync('umount', ['-l', join(dir, 'ipam')]); // lazily: a failed test may hold the journal open
    rmSync(dir, { recursive: true, force: true });
    dir = '';
  });

  it('refuses allocations with a clear error while full, and a restart keeps every acknowledged one', () => {
    dir = mkdtempSync(join(tmpdir(), 'corral-ipam-'));
    mkdirSync(join(dir, 'ipam'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', join(dir, 'ipam')]);
    const ipam = new Ipam(dir, BLOCK);
    ipam.open();
    for (let i = 0; i < 5; i++) ipam.allocate(req(i));
    try {
      writeFileSync(join(dir, 'ipam', 'filler'), Buffer.alloc(1 << 20));
    } catch {
      // ENOSPC: full, as wanted (the journal's last page still has room for a few lines)
    }
    const acknowledged = new Set(ipam.list().map((r) => r.containerId));
    const refused: string[] = [];
    for (let i = 5; i < 60; i++) {
      try {
        ipam.allocate(req(i));
        acknowledged.add(`c${i}`);
      } catch (err) {
        refused.push((err as Error).message);
      }
    }
    expect(refused.length).toBeGreaterThan(0);
    for (const m of refused) expect(m).toMatch(/no space left on device.*free space in the state dir/);
    // Space again: the next lines must not be glued to a torn one.
    rmSync(join(dir, 'ipam', 'filler'));
    for (let i = 60; i < 65; i++) {
      ipam.allocate(req(i));
      acknowledged.add(`c${i}`);
    }
    ipam.release('c0', 'eth0');
    acknowledged.delete('c0');
    ipam.close();
    const again = new Ipam(dir, BLOCK);
    again.open();
    expect(new Set(again.list().map((r) => r.containerId))).toEqual(acknowledged);
    expect(new Set(again.list().map((r) => r.address)).size).toBe(acknowledged.size);
    again.close();
  });
});
