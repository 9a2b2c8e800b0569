// Leasing this host's block from the cluster CIDR, over the Registry seam with txn+compare, so
// two hosts racing for one block cannot both win (embedded or etcd alike). Key:
// /corral/blocks/<network>_<prefix> -> { block, node, sinceMs }.
import { IPv4CidrRange, IPv4Prefix } from 'ip-num';
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
  for (let attempt = 0; attempt < 10; attempt++) {
    const r = await registry.range(BLOCKS);
    const taken = new Set<string>();
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
    }
    let raced = false;
    for (const b of cidr.splitInto(IPv4Prefix.fromNumber(BigInt(prefixLen)))) {
      const block = b.toCidrString();
      const key = blockKey(block);
      if (taken.has(key)) continue;
      const lease: BlockLease = { block, node, sinceMs: Date.now() };
      if ((await registry.txn([{ put: key, value: JSON.stringify(lease) }], [{ key, modRevision: 0 }])) !== null) return block;
      raced = true; // another host took it between our read and our write: read again
      break;
    }
    if (!raced) throw new Error(`cluster CIDR ${clusterCidr} has no free /${prefixLen} block left for host ${node}: widen --cluster-cidr or remove departed hosts' leases`);
  }
  throw new Error(`could not lease a block from ${clusterCidr}: other hosts kept taking the same one; try again`);
}
