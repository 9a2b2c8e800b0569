// Keep-alive connections to upstream endpoints: one pool per origin ("http://addr:port"), created
// on first use, retired gracefully (in-flight requests finish, for up to the endpoint's drain
// time) when the registry no longer has the origin.
//
// A pool hands out raw net.Sockets wrapped in UpstreamConnection; the proxy speaks HTTP/1.1 on them
// itself (proxy.ts) and gives them back when a response has ended on a reusable connection. Idle
// connections are reused last-in first-out (the warmest first). Timeouts are checked by one
// periodic sweep over the pools instead of a timer per request: connect, response headers (504),
// idle (our own, capped by the endpoint's `Keep-Alive: timeout=` hint minus a second, so we do
// not reuse a connection the endpoint is about to close).
import { connect, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { onreadInto } from './reads.js';

export interface UpstreamTimeouts {
  /** TCP connect to an endpoint. */
  connectTimeoutMs: number;
  /** From sending the request to the upstream's response headers (504 when exceeded). */
  headersTimeoutMs: number;
  /** A response body that gets no byte from the upstream for this long is cut (the client's read pace aside); 0 = none. */
  bodyTimeoutMs: number;
  /** Idle upstream connection lifetime, capped by the upstream's own Keep-Alive hint. */
  keepAliveTimeoutMs: number;
}

export const UPSTREAM_DEFAULTS: UpstreamTimeouts = {
  connectTimeoutMs: 5_000,
  headersTimeoutMs: 60_000,
  bodyTimeoutMs: 60_000,
  keepAliveTimeoutMs: 30_000,
};

/** Why an upstream connection failed; `code` is what passive health and retries look at. */
export class UpstreamError extends Error {
  override name = 'UpstreamError';
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** The user of a busy connection (the proxy's client connection). */
export interface UpstreamUser {
  onUpstreamData(chunk: Buffer): void;
  /** The endpoint ended its side of the connection (FIN). */
  onUpstreamEnd(): void;
  /** The connection failed or was closed (after onUpstreamEnd too, when the user is still attached). */
  onUpstreamError(err: UpstreamError): void;
  onUpstreamDrain(): void;
  /** Receiving a response body after the whole request went up, and ready for more (not holding the upstream back for a slow client). */
  waitsForBody(): boolean;
}

/** Socket error codes that mean "this connection failed", for messages and passive health. */
function asUpstreamError(err: Error & { code?: string }): UpstreamError {
  return err instanceof UpstreamError ? err : new UpstreamError(err.code ?? 'ECONNRESET', err.message);
}

export class UpstreamConnection {
  readonly socket: Socket;
  user: UpstreamUser | null = null;
  /** Requests sent on this connection before the current one (0: a fresh connection). */
  served = 0;
  connected = false;
  /** performance.now() when the connect started. */
  readonly born: number;
  /** performance.now() of sending a request whose response head has not come: the headers timeout runs. 0 = not waiting. */
  waitingSince = 0;
  /** performance.now() after which an idle connection is closed. */
  idleUntil = 0;
  /** The endpoint's Keep-Alive timeout hint in ms, -1 none. */
  hintMs = -1;
  closed = false;
  /** Reads so far, and what the sweep saw last (-1: not watching): the body timeout without a clock read per read. */
  reads = 0;
  readsSeen = -1;
  quietSince = 0;

  constructor(
    readonly pool: UpstreamPool,
    host: string,
    port: number,
  ) {
    this.born = performance.now();
    // Reads through this thread's one buffer (reads.ts); what the proxy keeps is a copy.
    const s = connect({
      host, port, noDelay: true,
      onread: onreadInto((chunk) => {
        this.reads++;
        if (this.user !== null) this.user.onUpstreamData(chunk);
        else s.destroy(); // bytes on an idle connection: it is not in a state we can reuse
      }),
    });
    this.socket = s;
    // Listeners once per connection; they reach the request through `user`.
    s.on('connect', () => {
      this.connected = true;
    });
    s.on('end', () => {
      if (this.user !== null) this.user.onUpstreamEnd();
    });
    s.on('drain', () => this.user?.onUpstreamDrain());
    s.on('error', (err: Error) => this.fail(asUpstreamError(err)));
    s.on('close', () => this.fail(new UpstreamError(this.connected ? 'UPSTREAM_CLOSED' : 'ECONNRESET', this.connected ? 'the endpoint closed the connection' : 'the connection closed before it was established')));
  }

  /** Cut the connection; its user (if any) hears `err`. */
  destroy(err?: UpstreamError): void {
    if (err !== undefined) this.fail(err);
    this.socket.destroy();
  }

  private fail(err: UpstreamError): void {
    if (!this.closed) {
      this.closed = true;
      this.pool.forget(this);
    }
    const user = this.user;
    if (user !== null) {
      this.user = null;
      user.onUpstreamError(err);
    }
    if (!this.socket.destroyed) this.socket.destroy();
  }
}

export class UpstreamPool {
  private readonly idle: UpstreamConnection[] = [];
  /** Every connection, busy or idle. */
  readonly all = new Set<UpstreamConnection>();
  private readonly host: string;
  private readonly port: number;
  retired = false;
  private drained: (() => void) | undefined;

  constructor(
    readonly origin: string,
    private readonly pools: UpstreamPools,
  ) {
    const u = new URL(origin);
    this.host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
    this.port = Number(u.port) || 80;
  }

  /** A connection for one request: the most recently idle one, else a new one. `fresh`: always new. */
  acquire(user: UpstreamUser, fresh = false): UpstreamConnection {
    let conn: UpstreamConnection | undefined;
    if (!fresh) {
      while ((conn = this.idle.pop()) !== undefined && (conn.closed || conn.socket.destroyed));
    }
    if (conn === undefined) {
      conn = new UpstreamConnection(this, this.host, this.port);
      this.all.add(conn);
    }
    conn.user = user;
    return conn;
  }

  /** The response ended (at `now`, performance.now()): keep the connection for the next request, or close it. */
  release(conn: UpstreamConnection, reusable: boolean, now = performance.now()): void {
    conn.user = null;
    conn.waitingSince = 0;
    conn.served++;
    if (!reusable || this.retired || conn.closed) {
      conn.destroy();
      return;
    }
    const t = this.pools.timeouts.keepAliveTimeoutMs;
    // The endpoint's hint minus a second, like undici: never reuse one it is about to close.
    const idleMs = conn.hintMs >= 0 ? Math.min(t, conn.hintMs - 1_000) : t;
    if (idleMs <= 0) {
      conn.destroy();
      return;
    }
    conn.idleUntil = now + idleMs;
    this.idle.push(conn);
  }

  /** A connection closed: drop it from the pool. */
  forget(conn: UpstreamConnection): void {
    this.all.delete(conn);
    const i = this.idle.indexOf(conn);
    if (i >= 0) this.idle.splice(i, 1);
    if (this.all.size === 0 && this.drained !== undefined) this.drained();
  }

  get busy(): number {
    return this.all.size - this.idle.length;
  }

  /** Timeouts, from the sweep. */
  sweep(now: number): void {
    const t = this.pools.timeouts;
    for (const conn of this.all) {
      if (!conn.connected) {
        if (now - conn.born > t.connectTimeoutMs) conn.destroy(new UpstreamError('CONNECT_TIMEOUT', `connect timed out after ${t.connectTimeoutMs} ms`));
      } else if (conn.user !== null) {
        if (conn.waitingSince !== 0) {
          if (now - conn.waitingSince > t.headersTimeoutMs) conn.destroy(new UpstreamError('HEADERS_TIMEOUT', `no response headers within ${t.headersTimeoutMs} ms`));
        } else if (t.bodyTimeoutMs > 0 && conn.user.waitsForBody()) {
          if (conn.reads !== conn.readsSeen) {
            conn.readsSeen = conn.reads;
            conn.quietSince = now;
          } else if (now - conn.quietSince > t.bodyTimeoutMs) {
            conn.destroy(new UpstreamError('BODY_TIMEOUT', `the response body stalled: no byte for ${t.bodyTimeoutMs} ms`));
          }
        } else {
          conn.readsSeen = -1;
        }
      } else if (now > conn.idleUntil) {
        conn.destroy();
      }
    }
  }

  /** No new requests; idle connections close now, busy ones when their response ends. Resolves when none is left. */
  retire(): Promise<void> {
    this.retired = true;
    for (const conn of this.idle.splice(0)) conn.destroy();
    if (this.all.size === 0) return Promise.resolve();
    return new Promise<void>((resolve) => (this.drained = resolve));
  }

  /** Cut every connection (their requests fail). */
  destroyAll(why: string): void {
    for (const conn of [...this.all]) conn.destroy(new UpstreamError('UPSTREAM_CUT', why));
  }
}

export class UpstreamPools {
  private readonly pools = new Map<string, UpstreamPool>();
  /** Retired pools still finishing their in-flight requests. */
  private readonly draining = new Map<UpstreamPool, Promise<void>>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(
    readonly timeouts: UpstreamTimeouts = UPSTREAM_DEFAULTS,
    private readonly log?: Logger,
  ) {}

  get size(): number {
    return this.pools.size;
  }

  /** The pool for an origin ("http://addr:port"), created on first use. */
  get(origin: string): UpstreamPool {
    let pool = this.pools.get(origin);
    if (pool === undefined) {
      pool = new UpstreamPool(origin, this);
      this.pools.set(origin, pool);
      this.startSweep();
    }
    return pool;
  }

  private startSweep(): void {
    if (this.sweeper !== undefined) return;
    const t = this.timeouts;
    // Fine enough for the shortest timeout, never busier than 20 times a second.
    const every = Math.max(50, Math.min(1_000, Math.min(t.connectTimeoutMs, t.headersTimeoutMs, t.keepAliveTimeoutMs, t.bodyTimeoutMs || Infinity) / 4));
    this.sweeper = setInterval(() => {
      const now = performance.now();
      for (const pool of this.pools.values()) pool.sweep(now);
      for (const pool of this.draining.keys()) pool.sweep(now);
    }, every);
    this.sweeper.unref();
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
        pool.destroyAll(`the endpoint left the registry and its drain time (${graceMs} ms) is over`);
      }, graceMs);
      timer.unref();
    }
    const done = pool.retire().finally(() => {
      clearTimeout(timer);
      this.draining.delete(pool);
    });
    this.draining.set(pool, done);
  }

  /** Close every pool; after `graceMs`, destroy what is still open. */
  async close(graceMs: number): Promise<void> {
    for (const origin of [...this.pools.keys()]) this.retire(origin);
    if (this.draining.size > 0) {
      const all = Promise.all(this.draining.values());
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), graceMs)));
      const outcome = await Promise.race([all.then(() => 'done' as const), late]);
      clearTimeout(timer);
      if (outcome === 'late') {
        this.log?.warn({ graceMs }, 'upstream requests still running at shutdown; closing them');
        for (const pool of this.draining.keys()) pool.destroyAll('the load balancer is shutting down');
        await all;
      }
    }
    if (this.sweeper !== undefined) clearInterval(this.sweeper);
    this.sweeper = undefined;
  }
}
