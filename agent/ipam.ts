// IPAM of this host's block: allocations keyed by (container id, ifname), kept in an append-only
// journal under <state dir>/ipam/ that is fsync'd before an allocation is returned. Replay on
// start rebuilds the table (a torn last line is an unacknowledged write and is ignored), then
// compacts it. kill -9 at any instant can leave an address allocated that no runtime was told
// about (GC frees it), never an acknowledged one lost or one address held twice.
import { closeSync, existsSync, fstatSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { IPv4, IPv4CidrRange } from 'ip-num';

export interface IpamRecord {
  address: string;
  containerId: string;
  ifname: string;
  namespace: string;
  network: string;       // CNI network name, or "docker:<network id>"
  netns: string;         // namespace path given at ADD ("" for Docker until it says)
  name: string;          // pod/container name when the runtime says it
  hostIfname: string;
  masq: boolean;
  sinceMs: number;
}

type JournalLine = { op: 'block'; block: string } | ({ op: 'alloc' } & IpamRecord) | { op: 'free'; containerId: string; ifname: string }
  | { op: 'rekey'; containerId: string; ifname: string; rec: IpamRecord };

export class IpamExhausted extends Error {}

/** The network of an address Docker's IPAM asked for that no endpoint holds yet. */
export const PENDING_NETWORK = 'docker:pending';

export function attachmentKey(containerId: string, ifname: string): string {
  return `${containerId}/${ifname}`;
}

export class Ipam {
  readonly block: IPv4CidrRange;
  readonly gateway: string;
  private readonly first: bigint;   // first assignable (gateway + 1)
  private readonly last: bigint;    // last assignable (broadcast - 1)
  private readonly byKey = new Map<string, IpamRecord>();
  private readonly byAddress = new Map<string, IpamRecord>();
  private cursor: bigint;
  private fd = -1;
  private readonly file: string;

  /** o.dockerHalf: the upper half of the block is Docker's (agent/docker/defaults.ts); allocate below it. */
  constructor(stateDir: string, block: string, o: { dockerHalf?: boolean } = {}) {
    this.block = IPv4CidrRange.fromCidr(block);
    const base = this.block.getFirst().getValue();
    this.gateway = IPv4.fromNumber(base + 1n).toString();
    this.first = base + 2n;
    this.last = o.dockerHalf ? base + (this.block.getLast().getValue() - base + 1n) / 2n - 1n : this.block.getLast().getValue() - 1n;
    this.cursor = this.first;
    const dir = join(stateDir, 'ipam');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.file = join(dir, 'journal');
  }

  get blockCidr(): string {
    return this.block.toCidrString();
  }

  /** Replays the journal, then rewrites it compacted (temp file, fsync, rename). */
  open(): void {
    if (existsSync(this.file)) {
      const lines = readFileSync(this.file, 'utf8').split('\n');
      for (const line of lines) {
        if (!line) continue;
        let j: JournalLine;
        try {
          j = JSON.parse(line) as JournalLine;
        } catch {
          continue; // torn tail of a write that was never acknowledged
        }
        if (j.op === 'block' && j.block !== this.blockCidr) {
          throw new Error(`the IPAM journal ${this.file} belongs to block ${j.block}, but this host now has ${this.blockCidr}; move the journal away only after every container of the old block is gone`);
        }
        if (j.op === 'alloc') {
          const { op: _op, ...rec } = j;
          this.byKey.set(attachmentKey(rec.containerId, rec.ifname), rec);
          this.byAddress.set(rec.address, rec);
        } else if (j.op === 'rekey') {
          this.byKey.delete(attachmentKey(j.containerId, j.ifname));
          this.byKey.set(attachmentKey(j.rec.containerId, j.rec.ifname), j.rec);
          this.byAddress.set(j.rec.address, j.rec);
        } else if (j.op === 'free') {
          const rec = this.byKey.get(attachmentKey(j.containerId, j.ifname));
          if (rec) {
            this.byKey.delete(attachmentKey(j.containerId, j.ifname));
            this.byAddress.delete(rec.address);
          }
        }
      }
    }
    const tmp = `${this.file}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      const body = [{ op: 'block', block: this.blockCidr }, ...[...this.byKey.values()].map((r) => ({ op: 'alloc', ...r }))].map((x) => JSON.stringify(x) + '\n').join('');
      writeSync(fd, body);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.file);
    const dfd = openSync(join(this.file, '..'), 'r');
    fsyncSync(dfd);
    closeSync(dfd);
    this.fd = openSync(this.file, 'a', 0o600);
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  get(containerId: string, ifname: string): IpamRecord | undefined {
    return this.byKey.get(attachmentKey(containerId, ifname));
  }

  byAddr(address: string): IpamRecord | undefined {
    return this.byAddress.get(address);
  }

  list(): IpamRecord[] {
    return [...this.byKey.values()];
  }

  /** Addresses in use, and how many the block can hand out (without the network, gateway and broadcast addresses). */
  usage(): { used: number; size: number } {
    return { used: this.byAddress.size, size: Number(this.last - this.first + 1n) };
  }

  /**
   * The address of (containerId, ifname): the one it already holds, else the next free one
   * after the last handed out (so a freed address is not reused at once). Durable on return.
   */
  allocate(req: Omit<IpamRecord, 'address' | 'sinceMs'>): IpamRecord {
    const old = this.get(req.containerId, req.ifname);
    if (old) return old;
    const size = this.last - this.first + 1n;
    for (let i = 0n; i < size; i++) {
      const n = this.first + ((this.cursor - this.first + i) % size);
      const address = IPv4.fromNumber(n).toString();
      if (this.byAddress.has(address)) continue;
      const rec: IpamRecord = { ...req, address, sinceMs: Date.now() };
      // Synchronous write + fsync: the table and the journal change in one turn of the loop,
      // so two concurrent ADDs can never pick the same address.
      this.append({ op: 'alloc', ...rec });
      this.byKey.set(attachmentKey(rec.containerId, rec.ifname), rec);
      this.byAddress.set(address, rec);
      this.cursor = n + 1n > this.last ? this.first : n + 1n;
      return rec;
    }
    throw new IpamExhausted(`block ${this.blockCidr} has no free address (${size} in use): remove containers, run \`corral ipam gc\`, or give this host a larger block`);
  }

  /** Frees (containerId, ifname); returns what it held, or undefined when it held nothing. */
  release(containerId: string, ifname: string): IpamRecord | undefined {
    const rec = this.get(containerId, ifname);
    if (!rec) return undefined;
    this.append({ op: 'free', containerId, ifname });
    this.byKey.delete(attachmentKey(containerId, ifname));
    this.byAddress.delete(rec.address);
    return rec;
  }

  /**
   * Gives the address held by (containerId, ifname) to a new owner in one journal line, so a
   * crash leaves it with the old owner or the new one, never with none (Docker's IPAM hands an
   * address out before the endpoint that will hold it has an id).
   */
  rekey(containerId: string, ifname: string, next: Partial<Omit<IpamRecord, 'address'>> & { containerId: string; ifname: string }): IpamRecord {
    const old = this.get(containerId, ifname);
    if (!old) throw new Error(`no allocation for ${attachmentKey(containerId, ifname)}`);
    if (this.get(next.containerId, next.ifname)) throw new Error(`${attachmentKey(next.containerId, next.ifname)} already holds an address`);
    const rec: IpamRecord = { ...old, ...next, address: old.address };
    this.append({ op: 'rekey', containerId, ifname, rec });
    this.byKey.delete(attachmentKey(containerId, ifname));
    this.byKey.set(attachmentKey(rec.containerId, rec.ifname), rec);
    this.byAddress.set(rec.address, rec);
    return rec;
  }

  private append(line: JournalLine): void {
    if (this.fd < 0) throw new Error('IPAM journal is not open');
    const buf = Buffer.from(JSON.stringify(line) + '\n');
    const size = fstatSync(this.fd).size;
    try {
      // A full disk can take part of a line and return short: that torn line would swallow the
      // next one on replay, so a write is whole or undone, and only a whole one is acknowledged.
      const n = writeSync(this.fd, buf);
      if (n !== buf.length) throw Object.assign(new Error(`short write (${n} of ${buf.length} bytes)`), { code: 'ENOSPC' });
      fsyncSync(this.fd);
    } catch (err) {
      try {
        ftruncateSync(this.fd, size);
      } catch {
        // the next open() ignores a torn last line; nothing was acknowledged
      }
      const e = err as NodeJS.ErrnoException;
      throw new Error(`cannot record the IPAM change in ${this.file} (${e.code === 'ENOSPC' ? 'no space left on device' : e.message}): free space in the state dir, then retry`);
    }
  }
}
