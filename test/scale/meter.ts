// What the fleet costs etcd, measured on etcd itself: one watch of the whole keyspace (prefix "/")
// counting revisions, writes and bytes of values per key prefix and per key, and each member's
// database size (the Status RPC's dbSize). Windows are differences of two readings.
import { Etcd3, type Watcher } from 'etcd3';

/** The key prefixes reported apart; anything else counts as "other". */
export const KINDS = {
  hosts: '/corral/hosts/',
  status: '/corral-status/',
  endpoints: '/corral/endpoints/',
  services: '/corral/services/',
  blocks: '/corral/blocks/',
} as const;
export type KindName = keyof typeof KINDS | 'other';

export interface KindCount {
  /** Distinct revisions that changed a key of this kind. */
  revisions: number;
  puts: number;
  deletes: number;
  /** Bytes of keys and values put (what etcd stores and every watcher receives). */
  bytes: number;
}

export interface KeyCount { writes: number; bytes: number; size: number }

export interface MeterReading {
  atMs: number;
  revision: number;
  kinds: Record<KindName, KindCount>;
  /** Per key of hosts and status: writes, bytes written, size of the last value. */
  keys: Map<string, KeyCount>;
}

function kindOf(key: string): KindName {
  for (const [k, p] of Object.entries(KINDS)) if (key.startsWith(p)) return k as KindName;
  return 'other';
}

function zero(): Record<KindName, KindCount> {
  const z = (): KindCount => ({ revisions: 0, puts: 0, deletes: 0, bytes: 0 });
  return { hosts: z(), status: z(), endpoints: z(), services: z(), blocks: z(), other: z() };
}

export class EtcdMeter {
  readonly client: Etcd3;
  private watcher: Watcher | undefined;
  private kinds = zero();
  private readonly lastRev = new Map<KindName, number>();
  private readonly keys = new Map<string, KeyCount>();
  revision = 0;

  constructor(private readonly endpoints: string[]) {
    this.client = new Etcd3({ hosts: endpoints.map((h) => `http://${h}`) });
  }

  async start(): Promise<void> {
    const r = await this.client.kv.range({ key: Buffer.from('/'), limit: 1, keys_only: true });
    this.revision = Number(r.header.revision);
    const w = await this.client.watch().prefix('/').startRevision(String(this.revision + 1)).create();
    this.watcher = w;
    w.on('data', (res) => {
      for (const e of res.events) {
        const key = e.kv.key.toString();
        const kind = kindOf(key);
        const rev = Number(e.kv.mod_revision);
        const c = this.kinds[kind];
        if (this.lastRev.get(kind) !== rev) {
          c.revisions++;
          this.lastRev.set(kind, rev);
        }
        if (rev > this.revision) this.revision = rev;
        if (e.type === 'Put') {
          const bytes = e.kv.key.length + e.kv.value.length;
          c.puts++;
          c.bytes += bytes;
          if (kind === 'hosts' || kind === 'status') {
            const k = this.keys.get(key) ?? { writes: 0, bytes: 0, size: 0 };
            k.writes++;
            k.bytes += bytes;
            k.size = e.kv.value.length;
            this.keys.set(key, k);
          }
        } else {
          c.deletes++;
        }
      }
    });
  }

  /** The counters now (copies). Call settle() first to count what etcd has already committed. */
  reading(): MeterReading {
    const kinds = zero();
    for (const k of Object.keys(kinds) as KindName[]) kinds[k] = { ...this.kinds[k] };
    const keys = new Map<string, KeyCount>();
    for (const [k, v] of this.keys) keys.set(k, { ...v });
    return { atMs: Date.now(), revision: this.revision, kinds, keys };
  }

  /** Waits until the watch has delivered etcd's current revision (bounded). */
  async settle(timeoutMs = 30_000): Promise<void> {
    const r = await this.client.kv.range({ key: Buffer.from('/'), limit: 1, keys_only: true });
    const want = Number(r.header.revision);
    const end = Date.now() + timeoutMs;
    while (this.revision < want && Date.now() < end) await new Promise((res) => setTimeout(res, 50));
  }

  /** Each member's database size in bytes (Status RPC), by endpoint. */
  async dbSizes(): Promise<number[]> {
    return Promise.all(this.endpoints.map(async (h) => {
      const c = new Etcd3({ hosts: [`http://${h}`] });
      try {
        return Number((await c.maintenance.status()).dbSize);
      } finally {
        c.close();
      }
    }));
  }

  /** Each member's Status: database size (file) and size in use, whether it leads; unreachable members give NaN. */
  async statuses(): Promise<Array<{ endpoint: string; dbSize: number; dbSizeInUse: number; leader: boolean }>> {
    return Promise.all(this.endpoints.map(async (h) => {
      const c = new Etcd3({ hosts: [`http://${h}`], defaultCallOptions: { deadline: Date.now() + 3000 } });
      try {
        const s = await c.maintenance.status();
        return { endpoint: h, dbSize: Number(s.dbSize), dbSizeInUse: Number(s.dbSizeInUse), leader: s.leader === s.header.member_id };
      } catch {
        return { endpoint: h, dbSize: NaN, dbSizeInUse: NaN, leader: false };
      } finally {
        c.close();
      }
    }));
  }

  /** The oldest revision etcd still holds (its compaction point + 1), found by reading at revisions in [from, now]. */
  async oldestRevision(from: number): Promise<number> {
    const r = await this.client.kv.range({ key: Buffer.from('/'), limit: 1, keys_only: true });
    let lo = Math.max(1, from);
    let hi = Number(r.header.revision);
    const readable = (rev: number) => this.client.kv.range({ key: Buffer.from('/corral-compactor'), revision: String(rev) }).then(() => true, (e: Error) => (/compacted/.test(e.message) ? false : Promise.reject(e)));
    if (await readable(lo)) return lo;
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (await readable(mid)) hi = mid;
      else lo = mid;
    }
    return hi;
  }

  /** Compacts etcd's history up to now (sizes stay: etcd reuses the freed pages, it does not shrink the file). */
  async compact(): Promise<void> {
    const r = await this.client.kv.range({ key: Buffer.from('/'), limit: 1, keys_only: true });
    await this.client.kv.compact({ revision: r.header.revision, physical: true });
  }

  async close(): Promise<void> {
    await this.watcher?.cancel().catch(() => {});
    this.client.close();
  }
}

/** What changed between two readings. */
export interface MeterWindow {
  seconds: number;
  revisions: number;
  kinds: Record<KindName, KindCount>;
  /** Per hosts/status key: writes and bytes within the window. */
  keys: Map<string, { writes: number; bytes: number }>;
}

export function windowOf(a: MeterReading, b: MeterReading): MeterWindow {
  const kinds = zero();
  for (const k of Object.keys(kinds) as KindName[]) {
    kinds[k] = {
      revisions: b.kinds[k].revisions - a.kinds[k].revisions,
      puts: b.kinds[k].puts - a.kinds[k].puts,
      deletes: b.kinds[k].deletes - a.kinds[k].deletes,
      bytes: b.kinds[k].bytes - a.kinds[k].bytes,
    };
  }
  const keys = new Map<string, { writes: number; bytes: number }>();
  for (const [k, v] of b.keys) {
    const o = a.keys.get(k) ?? { writes: 0, bytes: 0 };
    if (v.writes > o.writes) keys.set(k, { writes: v.writes - o.writes, bytes: v.bytes - o.bytes });
  }
  return { seconds: (b.atMs - a.atMs) / 1000, revisions: b.revision - a.revision, kinds, keys };
}
