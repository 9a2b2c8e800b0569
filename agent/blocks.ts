// Leasing this host's block from the cluster CIDR, over the Registry seam with txn+compare, so
// two hosts racing for one block cannot both win (embedded or etcd alike). Key:
// /corral/blocks/<network>_<prefix> -> { block, node, sinceMs }.
import { IPv4CidrRange } from 'ip-num';
import { RecordRules } from '../api/records.js';
import type { Registry } from './registry/registry.js';

export const BLOCKS = '/corral/blocks/';

export interface BlockLease {
  block: string;
  node: string;
  sinceMs: number;
}

export function blockKey(block: string): string {
  return BLOCKS + block.replace('/', '_');
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
  for (let attempt = 0; attempt < 10; attempt++) {
    const r = await registry.range(BLOCKS);
    const taken = new Set<string>();
    /** Valid leases as [first, last] address numbers, to skip blocks another lease overlaps. */
    const held: Array<[number, number]> = [];
    for (const kv of r.kvs) {
      // Untrusted like every record: a key someone wrote is taken, whatever it holds.
      taken.add(kv.key);
      let lease: BlockLease;
      try {
        lease = rules.blockLease(JSON.parse(kv.value));
      } catch {
        continue;
      }
      if (lease.node === node && kv.key === blockKey(lease.block)) return lease.block;
      const l = IPv4CidrRange.fromCidr(lease.block);
      held.push([Number(l.getFirst().getValue()), Number(l.getLast().getValue())]);
    }
    // The first free block, in order (a single host gets the first: 10.42.0.0/24, gateway
    // 10.42.0.1). Hosts joining together race for the same one; a loser goes on to the next
    // free one in the same read rather than reading again, so a burst of N settles in N tries.
    let free = 0;
    for (let i = 0; i < count; i++) {
      const first = base + i * size;
      const block = `${intToIp(first)}/${prefixLen}`;
      const key = blockKey(block);
      if (taken.has(key) || held.some(([lo, hi]) => lo <= first + size - 1 && first <= hi)) continue;
      free++;
      const lease: BlockLease = { block, node, sinceMs: Date.now() };
      if ((await registry.txn([{ put: key, value: JSON.stringify(lease) }], [{ key, modRevision: 0 }])) !== null) return block;
    }
    if (free === 0) throw new Error(`cluster CIDR ${clusterCidr} has no free /${prefixLen} block left for host ${node}: widen --cluster-cidr or remove departed hosts' leases`);
  }
  throw new Error(`could not lease a block from ${clusterCidr}: other hosts kept taking the same one; try again`);
}

function intToIp(n: number): string {
  return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}
