// Per-client token buckets for one route on one LB thread: `burst` requests at once, refilled at
// `perSecond`. A client is its address as the LB sees it (X-Forwarded-For is not trusted).
import type { RateLimit } from './labels.js';

/** Buckets idle this long are full again and are dropped by the sweep. */
const SWEEP_MS = 60_000;
/** At most this many clients tracked per route and thread; past it, the oldest half is dropped. */
const MAX_CLIENTS = 100_000;

interface Bucket {
  tokens: number;
  at: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly perMs: number;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly limit: RateLimit) {
    this.perMs = limit.perSecond / 1000;
    this.timer = setInterval(() => this.sweep(), SWEEP_MS);
    this.timer.unref();
  }

  /** Takes a token for `client`: 0 when allowed, else the seconds until the next token. */
  take(client: string): number {
    const now = performance.now();
    let b = this.buckets.get(client);
    if (b === undefined) {
      if (this.buckets.size >= MAX_CLIENTS) this.trim();
      b = { tokens: this.limit.burst, at: now };
      this.buckets.set(client, b);
    } else {
      b.tokens = Math.min(this.limit.burst, b.tokens + (now - b.at) * this.perMs);
      b.at = now;
    }
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return (1 - b.tokens) / this.perMs / 1000;
  }

  get clients(): number {
    return this.buckets.size;
  }

  private sweep(): void {
    const now = performance.now();
    const full = this.limit.burst / this.perMs;
    for (const [k, b] of this.buckets) if (now - b.at > Math.max(full, SWEEP_MS)) this.buckets.delete(k);
  }

  private trim(): void {
    let n = this.buckets.size >> 1;
    for (const k of this.buckets.keys()) {
      if (n-- <= 0) break;
      this.buckets.delete(k);
    }
  }

  close(): void {
    clearInterval(this.timer);
  }
}
