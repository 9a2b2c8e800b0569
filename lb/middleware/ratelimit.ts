// Per-client rate limits, one count per LB process whatever its thread count: every LB thread
// reads and updates the same table in shared memory. Each (route, client) pair is one slot holding
// its theoretical arrival time (GCRA, the token bucket as one number), changed by compare-and-swap.
// A client is its address as the LB sees it (X-Forwarded-For is not trusted). The table is made
// once per process, on the main thread, and reaches the worker threads as environment data.
import { getEnvironmentData, isMainThread, setEnvironmentData } from 'node:worker_threads';
import type { RateLimit } from './labels.js';

/** Slots: (route, client) pairs limited at once. Past it, idle pairs' slots are reused first. */
const SLOTS = 1 << 16;
/** Slots tried from a pair's hash before one is taken over. */
const PROBES = 8;
const TABLE_KEY = 'corral.lb.ratelimit';

interface Table { keys: Int32Array; tats: BigInt64Array }

function table(): Table {
  let sab = getEnvironmentData(TABLE_KEY) as SharedArrayBuffer | undefined;
  if (sab === undefined) {
    sab = new SharedArrayBuffer(SLOTS * 12);
    // Workers started from now on get the same memory (environment data is cloned; a SharedArrayBuffer is shared).
    if (isMainThread) setEnvironmentData(TABLE_KEY, sab);
  }
  return { keys: new Int32Array(sab, SLOTS * 8, SLOTS), tats: new BigInt64Array(sab, 0, SLOTS) };
}

// Made when the module loads, before the LB starts its threads.
const shared = table();

/** Microseconds since the epoch: the same clock in every thread (timeOrigin is per thread). */
function nowUs(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000));
}

/** FNV-1a of the pair, never 0 (0 marks a free slot). */
function hash(route: string, client: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < route.length; i++) h = Math.imul(h ^ route.charCodeAt(i), 0x01000193);
  h = Math.imul(h ^ 0, 0x01000193);
  for (let i = 0; i < client.length; i++) h = Math.imul(h ^ client.charCodeAt(i), 0x01000193);
  return h === 0 ? 1 : h;
}

export class RateLimiter {
  /** Microseconds between two requests at the steady rate. */
  private readonly interval: bigint;
  /** How far ahead of now a client's arrival time may run: burst − 1 intervals. */
  private readonly tolerance: bigint;

  /** `route` names the route in every thread alike (namespace/service and the limit), so its clients' counts survive route rebuilds. */
  constructor(limit: RateLimit, private readonly route: string, private readonly t: Table = shared) {
    this.interval = BigInt(Math.max(1, Math.round(1e6 / limit.perSecond)));
    this.tolerance = this.interval * BigInt(limit.burst - 1);
  }

  /** Takes a request for `client`: 0 when allowed, else the seconds until one is. */
  take(client: string): number {
    const now = nowUs();
    const i = this.slot(hash(this.route, client), now);
    const tats = this.t.tats;
    for (;;) {
      const tat = Atomics.load(tats, i);
      const from = tat > now ? tat : now;
      if (from - now > this.tolerance) return Number(from - this.tolerance - now) / 1e6;
      if (Atomics.compareExchange(tats, i, tat, from + this.interval) === tat) return 0;
    }
  }

  /** The pair's slot: its own, a free one, or the idlest of the probed ones (reset when idle). */
  private slot(h: number, now: bigint): number {
    const { keys, tats } = this.t;
    const mask = SLOTS - 1;
    let idlest = h & mask;
    for (let p = 0; p < PROBES; p++) {
      const i = (h + p) & mask;
      const k = Atomics.load(keys, i);
      if (k === h) return i;
      if (k === 0) {
        const was = Atomics.compareExchange(keys, i, 0, h);
        if (was === 0 || was === h) return i;
      }
      if (Atomics.load(tats, i) < Atomics.load(tats, idlest)) idlest = i;
    }
    // Every probed slot is another pair's: take over the idlest. One whose time has passed is a
    // full bucket, so starting it again loses nothing; a busy table shares it (stricter, never looser).
    if (Atomics.load(tats, idlest) <= now) {
      Atomics.store(keys, idlest, h);
      Atomics.store(tats, idlest, 0n);
    }
    return idlest;
  }

  close(): void {
    // Nothing per route: slots of idle pairs are reused.
  }
}
