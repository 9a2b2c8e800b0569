// Leasing this host's block from the cluster CIDR over the Registry seam (embedded or etcd alike).
// Key: /corral/blocks/<node>/<network>_<prefix> -> { block, node, sinceMs }: each host writes
// only under its own prefix, so two hosts racing for one block both write, and the older lease
// (lower revision) wins, as the catalog decides; the loser deletes its lease and takes another
// free block.
import { IPv4CidrRange } from 'ip-num';
import { RecordRules } from '../api/records.js';
import { BLOCK, keys } from './catalog.js';
import type { KeyValue, Registry } from './registry/registry.js';

export const BLOCKS = BLOCK;

export interface BlockLease {
  block: string;
  node: string;
  sinceMs: number;
}

export function blockKey(node: string, block: string): string {
  return keys.block(node, block);
}

interface Claim { key: string; node: string; block: string; first: number; last: number; modRevision: number }

/** Valid leases (the catalog serves only those whose key names their node and block), oldest first. */
function claims(kvs: KeyValue[], rules: RecordRules): Claim[] {
  const out: Claim[] = [];
  for (const kv of kvs) {
    let lease: BlockLease;
    try {
      lease = rules.blockLease(JSON.parse(kv.value));
    } catch {
      continue;
    }
    if (kv.key !== blockKey(lease.node, lease.block)) continue;
    const [first, last] = bounds(lease.block);
    out.push({ key: kv.key, node: lease.node, block: lease.block, first, last, modRevision: kv.modRevision });
  }
  return out.sort((a, b) => a.modRevision - b.modRevision || (a.key < b.key ? -1 : 1));
}

/** Does this claim win: is no valid lease that overlaps it older (the catalog's rule)? */
function wins(mine: Claim, all: Claim[]): boolean {
  for (const c of all) {
    if (c === mine) return true;
    if (c.first <= mine.last && mine.first <= c.last) return false;
  }
  return true;
}

/** The block this node holds, or the first free one, leased now. Throws when the CIDR is full. */
export async function leaseBlock(registry: Registry, clusterCidr: string, node: string, prefixLen = 24): Promise<string> {
  let cidr: IPv4CidrRange;
  try {
    cidr = IPv4CidrRange.fromCidr(clusterCidr);
  } catch {
    throw new Error(`--cluster-cidr "${clusterCidr}" is not an IPv4 CIDR such as 10.42.0.0/16`);
  }
  if (Number(cidr.getPrefix().getValue()) > prefixLen) throw new Error(`--cluster-cidr ${clusterCidr} is smaller than one /${prefixLen} block: use a /${prefixLen} or larger`);
  const rules = new RecordRules(clusterCidr);
  const base = Number(cidr.getFirst().getValue());
  const size = 2 ** (32 - prefixLen);
  const count = 2 ** (prefixLen - Number(cidr.getPrefix().getValue()));
  const own = `${BLOCK}${node}/`;
  for (let attempt = 0; attempt <= 20; attempt++) {
    const r = await registry.range(BLOCKS);
    const all = claims(r.kvs, rules);
    const mine = all.filter((c) => c.node === node);
    const held = mine.find((c) => wins(c, all));
    // Leases of this node that lost (a crash between writing and withdrawing one) go now.
    const lost = r.kvs.filter((kv) => kv.key.startsWith(own) && kv.key !== held?.key);
    if (lost.length) await registry.txn(lost.map((kv) => ({ delete: kv.key })));
    if (held) return held.block;
    if (attempt === 20) break;
    // Blocks taken, one mark per block: O(leases + blocks), not their product (5,000 hosts join).
    const taken = new Uint8Array(count);
    const mark = (first: number, last: number) => {
      for (let i = Math.max(0, Math.floor((first - base) / size)), end = Math.min(count - 1, Math.floor((last - base) / size)); i <= end; i++) taken[i] = 1;
    };
    for (const c of all) mark(c.first, c.last);
    // A key someone wrote names a taken block, whatever it holds (untrusted like every record).
    for (const kv of r.kvs) {
      const m = /\/(\d+\.\d+\.\d+\.\d+)_(\d+)$/.exec(kv.key);
      if (m && Number(m[2]) === prefixLen) {
        const first = ipToInt(m[1]!);
        if (first >= 0) mark(first, first + size - 1);
      }
    }
    // The first free block (a single host gets the first: 10.42.0.0/24, gateway 10.42.0.1).
    // Hosts joining together race for the same one and all but the oldest lose; a loser then
    // takes a free block at random, so a burst of N hosts settles in a few rounds, not N.
    const free: number[] = [];
    for (let i = 0; i < count && (attempt > 0 || free.length === 0); i++) if (!taken[i]) free.push(base + i * size);
    if (free.length > 0) {
      const block = `${intToIp(free[attempt === 0 ? 0 : Math.floor(Math.random() * free.length)]!)}/${prefixLen}`;
      const key = blockKey(node, block);
      const lease: BlockLease = { block, node, sinceMs: Date.now() };
      await registry.txn([{ put: key, value: JSON.stringify(lease) }], [{ key, modRevision: 0 }]);
    }
    if (free.length === 0) throw new Error(`cluster CIDR ${clusterCidr} has no free /${prefixLen} block left for host ${node}: widen --cluster-cidr or remove departed hosts' leases`);
  }
  throw new Error(`could not lease a block from ${clusterCidr}: other hosts kept taking the same one; try again`);
}

/** A valid lease's block (checked by RecordRules) as its first and last address. */
function bounds(block: string): [number, number] {
  const slash = block.indexOf('/');
  const first = ipToInt(block.slice(0, slash));
  return [first, first + 2 ** (32 - Number(block.slice(slash + 1))) - 1];
}

/** Dotted IPv4 to its number, or -1. */
function ipToInt(ip: string): number {
  const p = ip.split('.');
  if (p.length !== 4) return -1;
  let n = 0;
  for (const o of p) {
    const v = Number(o);
    if (!(v >= 0 && v <= 255) || o === '') return -1;
    n = n * 256 + v;
  }
  return n;
}

function intToIp(n: number): string {
  return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}
