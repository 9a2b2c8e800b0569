// Who may use us as a recursive resolver: the host itself, the cluster's containers (addresses
// with an Allocation record, or inside the cluster CIDR) and what --dns-allow adds. Everyone else
// gets REFUSED for names outside the Corral domain: never an open resolver.
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { networkInterfaces } from 'node:os';

/** 127.0.0.0/8, ::1 and their v4-mapped forms. Cheap: runs on the hot path. */
export function isLoopback(address: string): boolean {
  if (address.charCodeAt(0) === 49 /* 1 */) return address.startsWith('127.');
  return address === '::1' || address.startsWith('::ffff:127.');
}

/** "10.42.0.0/16", "fd00::/8" or a single address. Throws with what is accepted. */
export function parseCidr(text: string, what: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } {
  const [address = '', bits] = text.trim().split('/');
  const family = isIPv4(address) ? 'ipv4' : isIPv6(address) ? 'ipv6' : null;
  const max = family === 'ipv4' ? 32 : 128;
  const prefix = bits === undefined ? max : Number(bits);
  if (!family || !Number.isInteger(prefix) || prefix < 0 || prefix > max) {
    throw new Error(`${what} "${text}" is not an address or CIDR (for example 10.42.0.0/16 or fd00::/8)`);
  }
  return { address, prefix, family };
}

export interface RecursionAclOptions {
  clusterCidr: string;
  /** Extra CIDRs (--dns-allow). */
  allow: string[];
  /** Is this address one of the cluster's allocations (checked live)? */
  isAllocated: (address: string) => boolean;
}

/** How long a verdict per address is kept before the host's addresses are looked at again. */
const VERDICT_MS = 30_000;

export class RecursionAcl {
  private readonly static = new BlockList();
  private host = new BlockList();
  private readonly verdicts = new Map<string, boolean>();
  private verdictsAt = 0;

  constructor(private readonly opts: RecursionAclOptions) {
    for (const c of [opts.clusterCidr, ...opts.allow]) {
      if (!c) continue;
      const { address, prefix, family } = parseCidr(c, '--dns-allow');
      this.static.addSubnet(address, prefix, family);
    }
  }

  /** Forget cached verdicts (allocations changed). */
  reset(): void {
    this.verdicts.clear();
  }

  allows(address: string, nowMs: number): boolean {
    if (isLoopback(address)) return true;
    if (nowMs - this.verdictsAt > VERDICT_MS) {
      this.verdicts.clear();
      this.host = hostAddresses();
      this.verdictsAt = nowMs;
    }
    let v = this.verdicts.get(address);
    if (v === undefined) {
      const plain = address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address;
      const family = isIPv4(plain) ? 'ipv4' : 'ipv6';
      v = this.opts.isAllocated(plain) || this.static.check(plain, family) || this.host.check(plain, family);
      if (this.verdicts.size > 10_000) this.verdicts.clear();
      this.verdicts.set(address, v);
    }
    return v;
  }
}

/** The addresses on this host's interfaces (its own processes may recurse). */
function hostAddresses(): BlockList {
  const list = new BlockList();
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) list.addAddress(a.address.split('%')[0]!, a.family === 'IPv4' ? 'ipv4' : 'ipv6');
  }
  return list;
}
