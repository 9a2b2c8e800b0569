// Keep-alive connection pools to upstream endpoints, one undici Pool per origin, created on first
// use and closed gracefully (in-flight requests finish) when the registry no longer has the origin.
import { Pool } from 'undici';
import type { Logger } from 'pino';

export interface UpstreamTimeouts {
  /** TCP connect to an endpoint. */
  connectTimeoutMs: number;
  /** From sending the request to the upstream's response headers (504 when exceeded). */
  headersTimeoutMs: number;
  /** Between two body chunks from the upstream; 0 = none (long polls, server-sent events). */
  bodyTimeoutMs: number;
  /** Idle upstream connection lifetime, capped by the upstream's own Keep-Alive hint. */
  keepAliveTimeoutMs: number;
}

export const UPSTREAM_DEFAULTS: UpstreamTimeouts = {
  connectTimeoutMs: 5_000,
  headersTimeoutMs: 60_000,
  bodyTimeoutMs: 0,
  keepAliveTimeoutMs: 30_000,
};

export class UpstreamPools {
  private readonly pools = new Map<string, Pool>();
  /** Retired pools still finishing their in-flight requests. */
  private readonly draining = new Map<Pool, Promise<void>>();

  constructor(
    private readonly timeouts: UpstreamTimeouts = UPSTREAM_DEFAULTS,
    private readonly log?: Logger,
  ) {}

  get size(): number {
    return this.pools.size;
  }

  /** The pool for an origin ("http://addr:port"), created on first use. */
  get(origin: string): Pool {
    let pool = this.pools.get(origin);
    if (pool === undefined) {
      const t = this.timeouts;
      pool = new Pool(origin, {
        connect: { timeout: t.connectTimeoutMs },
        headersTimeout: t.headersTimeoutMs,
        bodyTimeout: t.bodyTimeoutMs,
        keepAliveTimeout: t.keepAliveTimeoutMs,
        keepAliveMaxTimeout: Math.max(t.keepAliveTimeoutMs, 1_000),
      });
      this.pools.set(origin, pool);
    }
    return pool;
  }

  /**
   * The origin left the registry: no new requests go to this pool; in-flight ones finish, for up
   * to `graceMs` (the endpoint's drain time), then they are cut.
   */
  retire(origin: string, graceMs = Infinity): void {
    const pool = this.pools.get(origin);
    if (pool === undefined) return;
    this.pools.delete(origin);
    let timer: NodeJS.Timeout | undefined;
    if (Number.isFinite(graceMs)) {
      timer = setTimeout(() => {
        this.log?.warn({ origin, graceMs }, 'requests to a removed endpoint outlived its drain time; cutting them');
        void pool.destroy().catch(() => undefined);
      }, graceMs);
      timer.unref();
    }
    const done = pool
      .close()
      .catch((err: Error) => this.log?.warn({ origin, err: err.message }, 'closing an upstream pool failed'))
      .finally(() => {
        clearTimeout(timer);
        this.draining.delete(pool);
      });
    this.draining.set(pool, done);
  }

  /** Close every pool; after `graceMs`, destroy what is still open. */
  async close(graceMs: number): Promise<void> {
    for (const origin of [...this.pools.keys()]) this.retire(origin);
    if (this.draining.size === 0) return;
    const all = Promise.all(this.draining.values());
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), graceMs)));
    const outcome = await Promise.race([all.then(() => 'done' as const), late]);
    clearTimeout(timer);
    if (outcome === 'late') {
      this.log?.warn({ graceMs }, 'upstream requests still running at shutdown; closing them');
      // The pools are closing already; destroying aborts what is left.
      await Promise.all([...this.draining.keys()].map((p) => p.destroy().catch(() => {})));
    }
  }
}
