// Keeping etcd healthy for ever: etcd keeps every revision until compacted, and turns read-only at
// its space quota. One agent of the fleet, elected by an ephemeral key on its lease, compacts every
// interval to the revision it saw one interval earlier, so watchers keep a window of history to
// resume from (Kubernetes' apiserver does the same every 5 minutes). Every other agent only checks,
// once an interval, whether the post is free: one read per host per interval, no revision.
import type { Logger } from '../../api/log.js';

/** Where the compacting agent's name lives: outside /corral/, so no watch sees it. */
export const COMPACTOR_KEY = '/corral-compactor';

/** What compaction needs from the etcd registry. */
export interface Compactable {
  range(prefix: string): Promise<{ revision: number; kvs: Array<{ key: string; value: string }> }>;
  txn(ops: Array<{ put: string; value: string; ephemeral?: boolean }>, compares: Array<{ key: string; modRevision: number }>): Promise<number | null>;
  compact(revision: number): Promise<void>;
}

export class Compactor {
  private timer: NodeJS.Timeout | undefined;
  /** The revision seen at the previous tick: what the next compaction keeps history after. */
  private previous = 0;
  /** Compactions made by this agent (for tests and logs). */
  compactions = 0;

  constructor(private readonly registry: Compactable, private readonly node: string, private readonly everyMs: number, private readonly log: Logger) {}

  start(): void {
    // Spread the fleet's checks over the interval instead of all at once after a mass restart.
    const first = Math.floor(this.everyMs * (0.5 + Math.random() / 2));
    this.timer = setTimeout(() => this.tick(), first);
    this.timer.unref();
  }

  stop(): void {
    clearTimeout(this.timer);
  }

  private async tick(): Promise<void> {
    try {
      await this.round();
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, 'compaction round failed; trying again next interval');
    }
    this.timer = setTimeout(() => this.tick(), this.everyMs);
    this.timer.unref();
  }

  /** One interval: hold (or take) the post; if held, compact to the revision of one interval ago. */
  async round(): Promise<boolean> {
    const r = await this.registry.range(COMPACTOR_KEY);
    const holder = r.kvs.find((kv) => kv.key === COMPACTOR_KEY)?.value;
    if (holder !== this.node) {
      if (holder !== undefined) {
        this.previous = 0;
        return false;
      }
      if ((await this.registry.txn([{ put: COMPACTOR_KEY, value: this.node, ephemeral: true }], [{ key: COMPACTOR_KEY, modRevision: 0 }])) === null) return false;
      this.log.info({ everyS: this.everyMs / 1000 }, 'this agent compacts the registry\'s history');
    }
    const target = this.previous;
    this.previous = r.revision;
    if (target <= 0) return true;
    try {
      await this.registry.compact(target);
      this.compactions++;
      this.log.debug({ revision: target }, 'registry history compacted');
    } catch (err) {
      // Someone (an operator, etcd's own --auto-compaction) compacted past it already.
      if (!/compacted/.test((err as Error).message)) throw err;
    }
    return true;
  }
}
