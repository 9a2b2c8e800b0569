// Per-client query rate limit: a token bucket per source address, so one container that floods
// cannot starve the rest. Over the limit a UDP query is dropped, not answered (see README).
import { isLoopback } from './access.js';

interface Bucket {
  tokens: number;
  at: number;
}

/** Bound on tracked addresses: a spoofed flood of sources resets the table instead of growing it. */
const MAX_CLIENTS = 100_000;

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  /** Queries refused or dropped because their client was over the limit. */
  limited = 0;

  /** rate: queries per second per client (0 = no limit); burst: bucket size. */
  constructor(readonly rate: number, readonly burst = Math.max(1, rate)) {}

  /** May this client send one more query now? Loopback (the host itself) is not limited. */
  allow(address: string, nowMs: number): boolean {
    if (this.rate <= 0 || isLoopback(address)) return true;
    let b = this.buckets.get(address);
    if (b === undefined) {
      if (this.buckets.size >= MAX_CLIENTS) this.buckets.clear();
      this.buckets.set(address, (b = { tokens: this.burst, at: nowMs }));
    } else {
      const refill = ((nowMs - b.at) * this.rate) / 1000;
      b.tokens = Math.min(this.burst, b.tokens + refill);
      b.at = nowMs;
    }
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return true;
    }
    this.limited++;
    return false;
  }
}
