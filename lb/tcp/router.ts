// One thread's TCP/TLS routing: a listening socket per routed port (SO_REUSEPORT, so every
// thread of the LB accepts on it, as for HTTP), and per connection: route (by port, or by the
// ClientHello's server name), pick an endpoint with the service's balancer, connect (once more to
// another endpoint when the connect fails: nothing has been sent yet), optionally send a PROXY v2
// header, then copy bytes both ways with backpressure and half-closes until either side is done.
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { LbOptions } from '../../api/options.js';
import { parseHostPort } from '../../api/options.js';
import type { WatchEvent } from '../../api/types.js';
import type { BalancerFactory, Peer } from '../balancer.js';
import { reusePortListeners } from '../listeners.js';
import { adoptAccepted } from '../reads.js';
import type { PassiveHealth } from '../outliers.js';
import { MAX_CLIENT_HELLO, readServerName } from './clienthello.js';
import { proxyV2Header } from './proxy-header.js';
import { HTTPS_PORT, TcpRouteTable, type PortRoutes, type TcpService } from './routes.js';

/** TCP keep-alive probes on both sides, so a vanished peer does not hold a connection forever. */
const KEEPALIVE_MS = 60_000;
/**
 * Bytes queued for one side before the other stops reading. Above a socket's 16 KiB high-water
 * mark (one 64 KiB read would pause it every time), low enough to bound memory per connection;
 * past the mark Node still emits 'drain' once the queue is empty.
 */
const MAX_BUFFERED = 256 * 1024;
/** Bytes in flight are copied into reusable chunks of this size, shared by the thread's connections. */
const CHUNK = 64 * 1024;
/** Chunks kept for reuse (16 MiB); more in flight are allocated and left to the GC. */
const POOL_MAX = 256;
const pool: Buffer[] = [];
/** What every TCP socket of this thread reads into, valid only inside its onread callback. */
const READ = Buffer.allocUnsafe(CHUNK);

/**
 * Sends the `n` bytes just read (in READ) on `dst`: copied into a pooled chunk that goes back to
 * the pool once written, so a gigabyte costs no allocation (malloc, brk and GC were about half
 * of the CPU per byte with a fresh buffer per read). Returns how many bytes `dst` has queued.
 */
function forward(dst: Socket, n: number): number {
  const chunk = pool.pop() ?? Buffer.allocUnsafeSlow(CHUNK);
  READ.copy(chunk, 0, 0, n);
  dst.write(n === CHUNK ? chunk : chunk.subarray(0, n), () => {
    if (pool.length < POOL_MAX) pool.push(chunk);
  });
  return dst.writableLength;
}

/** How long a client gets to take the last bytes of an endpoint that closed. */
const FLUSH_MS = 30_000;
/** Rejections of one kind are logged once per this period, with how many were not logged. */
const REJECT_LOG_MS = 10_000;

/** Options the TCP router reads (LbOptions plus where the LB's HTTP listener is). */
export type TcpRouterOptions = Pick<LbOptions, 'connectTimeoutMs' | 'clientHeadersTimeoutMs' | 'httpsListen'> & {
  /** --http-listen: TCP routes listen on its address, and never on its port. */
  httpListen?: string;
  /** True when this thread terminates HTTPS on --https-listen (SNI routes without a port share it). */
  terminatesHttps: boolean;
};

/** One proxied connection. */
class TcpConn {
  client!: Socket;
  upstream: Socket | undefined;
  peer: Peer | undefined;
  /** Client bytes read before the upstream was there (the ClientHello, or what came while connecting). */
  head: Buffer | undefined;
  /** The port's routes while its ClientHello is being read. */
  hello: PortRoutes | undefined;
  helloTimer: NodeJS.Timeout | undefined;
  /** Bytes flow both ways. */
  spliced = false;
  closed = false;
  constructor(readonly port: number) {}
}

export class TcpRouter {
  readonly table: TcpRouteTable;
  private readonly listeners = new Map<number, Server>();
  /** Ports that failed to bind, with the error (logged once per error). */
  private readonly bindErrors = new Map<number, string>();
  private readonly conns = new Set<TcpConn>();
  private readonly byOrigin = new Map<string, Set<TcpConn>>();
  private readonly host: string;
  private readonly reserved: Set<number>;
  private readonly httpsPort: number;
  private readonly rejected: Counter<'reason'>;
  private readonly accepted: Counter<'service'>;
  private readonly rejectLog = new Map<string, { at: number; suppressed: number }>();
  private closing = false;

  constructor(
    private readonly o: TcpRouterOptions,
    newBalancer: BalancerFactory,
    private readonly outliers: PassiveHealth,
    registry: Registry,
    private readonly log: Logger,
  ) {
    const http = o.httpListen ? parseHostPort(o.httpListen, '--http-listen') : { host: '', port: 0 };
    this.host = http.host;
    this.httpsPort = parseHostPort(o.httpsListen, '--https-listen').port;
    this.table = new TcpRouteTable(newBalancer, log, o.terminatesHttps ? HTTPS_PORT : this.httpsPort);
    this.reserved = new Set([http.port, ...(o.terminatesHttps ? [this.httpsPort] : [])].filter((p) => p > 0));
    this.rejected = new Counter({ name: 'corral_lb_tcp_rejected_total', help: 'TCP/TLS connections closed before reaching an endpoint, by reason', labelNames: ['reason'], registers: [registry] });
    this.accepted = new Counter({ name: 'corral_lb_tcp_connections_total', help: 'TCP/TLS connections forwarded to an endpoint, by service', labelNames: ['service'], registers: [registry] });
    const conns = this.conns;
    new Gauge({ name: 'corral_lb_tcp_open_connections', help: 'TCP/TLS connections open now', registers: [registry], collect() { this.set(conns.size); } });
  }

  get connections(): number {
    return this.conns.size;
  }

  apply(ev: WatchEvent): void {
    this.table.apply(ev);
    this.syncListeners();
  }

  /**
   * An upstream origin left the registry: its connections are cut after `afterMs` (its drain
   * time; a draining endpoint has had it already). A color switch does not come here: existing
   * connections to the old color stay until they close.
   */
  retire(origin: string, afterMs: number): void {
    const set = this.byOrigin.get(origin);
    if (!set || set.size === 0) return;
    const victims = [...set];
    setTimeout(() => {
      let n = 0;
      for (const c of victims) if (!c.closed) {
        n++;
        this.finish(c, true);
      }
      if (n > 0) this.log.info({ upstream: origin, connections: n }, 'TCP connections to an endpoint that left the registry closed after its drain time');
    }, afterMs).unref();
  }

  /** The TCP port a route key stands for. */
  private listenPort(key: number): number {
    return key === HTTPS_PORT ? this.httpsPort : key;
  }

  private syncListeners(): void {
    if (this.closing) return;
    const wanted = new Set<number>();
    for (const key of this.table.ports) {
      // SNI routes on the HTTPS port are served by the HTTPS listener when this LB terminates TLS there.
      if (key === HTTPS_PORT && this.o.terminatesHttps) continue;
      wanted.add(key);
    }
    for (const [key, server] of this.listeners) {
      if (wanted.has(key)) continue;
      this.listeners.delete(key);
      server.close(); // open connections stay; only accepting stops
    }
    for (const key of this.table.ports) if (!wanted.has(key)) this.bindErrors.delete(key);
    for (const key of wanted) if (!this.listeners.has(key)) this.listen(key);
  }

  private listen(key: number): void {
    const port = this.listenPort(key);
    const fail = (msg: string) => {
      if (this.bindErrors.get(key) === msg) return;
      this.bindErrors.set(key, msg);
      this.log.error({ port, err: msg }, 'cannot listen for a TCP route; its connections are not served (the next registry revision tries again)');
    };
    if (this.reserved.has(port)) return fail(`port ${port} is the LB's own HTTP or HTTPS port; choose another corral.tcp.port`);
    const server = createServer({ pauseOnConnect: true, allowHalfOpen: true }, (s) => this.accept(s, key));
    server.on('error', (err) => fail(err.message));
    this.listeners.set(key, server);
    const addr = this.host.includes(':') ? `[${this.host}]:${port}` : `${this.host}:${port}`;
    reusePortListeners(addr, 1, 'corral.tcp.port').then(
      ({ fds }) => {
        if (this.listeners.get(key) !== server || this.closing) {
          // Dropped while binding: let go of the descriptor through a server that closes at once.
          server.listen({ fd: fds[0]! }, () => server.close());
          return;
        }
        server.listen({ fd: fds[0]! }, () => {
          this.bindErrors.delete(key);
          this.log.info({ port, address: this.host || '*' }, 'listening for a TCP route');
        });
      },
      (err: Error & { unsupported?: boolean }) => {
        if (this.listeners.get(key) !== server) return;
        if (err.unsupported) {
          // No SO_REUSEPORT here (the LB runs one thread then): Node's own listen.
          server.listen(port, this.host || undefined);
          return;
        }
        this.listeners.delete(key);
        fail(err.message);
      },
    );
  }

  /**
   * SNI routes without a port share the HTTPS port of an LB that terminates TLS there: a hello
   * naming one of them is passed through, everything else goes to `server`'s own TLS (the bytes
   * read are put back first). Costs nothing while there is no such route.
   */
  shareHttps(server: Server): void {
    const tlsListeners = server.listeners('connection') as Array<(s: Socket) => void>;
    server.removeAllListeners('connection');
    const terminate = (raw: Socket) => {
      for (const l of tlsListeners) l.call(server, raw);
    };
    server.on('connection', (raw: Socket) => {
      const routes = this.table.port(HTTPS_PORT);
      if (!routes?.bySni || this.closing) return terminate(raw);
      this.peekHttps(raw, routes, terminate);
    });
  }

  private peekHttps(raw: Socket, routes: PortRoutes, terminate: (raw: Socket) => void): void {
    let data: Buffer | undefined;
    const done = () => {
      clearTimeout(timer);
      raw.off('data', onData);
      raw.off('error', onError);
      raw.off('close', done);
      raw.pause();
    };
    const handOver = () => {
      done();
      if (data) raw.unshift(data);
      terminate(raw);
    };
    // Too slow or too long a hello: the TLS server's own handshake rules deal with it.
    const timer = setTimeout(handOver, this.o.clientHeadersTimeoutMs);
    const onError = () => {
      done();
      raw.destroy();
    };
    const onData = (chunk: Buffer) => {
      data = data === undefined ? chunk : Buffer.concat([data, chunk]);
      const r = readServerName(data);
      if (r.kind === 'more' && data.length <= MAX_CLIENT_HELLO + 1024) return;
      const svc = r.kind === 'sni' ? routes.sni(r.name) : undefined;
      if (!svc || r.kind !== 'sni') return handOver();
      done();
      const c = new TcpConn(HTTPS_PORT);
      c.client = raw;
      c.head = data;
      this.conns.add(c);
      raw.on('data', (d: Buffer) => this.fromClient(c, d));
      raw.on('error', () => this.finish(c, true));
      raw.on('close', () => this.finish(c, true));
      raw.setNoDelay(true);
      raw.setKeepAlive(true, KEEPALIVE_MS);
      this.route(c, svc, r.name);
    };
    raw.on('data', onData);
    raw.on('error', onError);
    raw.once('close', done); // gone mid-hello: nothing left to wait for
  }

  /** A connection on a TCP route's port (accepted paused; it reads through onread from here). */
  private accept(accepted: Socket, key: number): void {
    const routes = this.table.port(key);
    const c = new TcpConn(key);
    const fromClient = (chunk: Buffer) => this.fromClient(c, chunk);
    const client = (c.client = adoptAccepted(accepted, fromClient, {
      buffer: READ,
      callback: (n: number) => {
        // Spliced: straight into a pooled chunk; before that, a copy of its own (hello, or held).
        if (c.spliced && c.upstream !== undefined) {
          if (forward(c.upstream, n) > MAX_BUFFERED) c.client.pause();
        } else fromClient(Buffer.from(READ.subarray(0, n)));
        return true;
      },
    }));
    this.conns.add(c);
    client.on('error', () => this.finish(c, true));
    client.on('close', () => this.finish(c, true));
    client.setNoDelay(true);
    client.setKeepAlive(true, KEEPALIVE_MS);
    if (!routes) return this.reject(c, 'no route', 'no route on this port any more');
    if (!routes.bySni) return this.route(c, routes.fallback, undefined);
    c.hello = routes;
    // Flowing (bytes still come through onread), so that a client closing mid-hello is seen.
    client.once('end', () => {
      if (c.hello) this.reject(c, 'cut hello', 'the client closed before its ClientHello was complete');
    });
    client.resume();
    c.helloTimer = setTimeout(() => this.reject(c, 'hello timeout', `no complete TLS ClientHello within ${this.o.clientHeadersTimeoutMs} ms`), this.o.clientHeadersTimeoutMs);
  }

  /** Client bytes: the ClientHello being read, or held until the endpoint is connected, or passed on. */
  private fromClient(c: TcpConn, chunk: Buffer): void {
    const up = c.upstream;
    if (up !== undefined && c.spliced) {
      up.write(chunk);
      if (up.writableLength > MAX_BUFFERED) c.client.pause();
      return;
    }
    c.head = c.head === undefined ? chunk : Buffer.concat([c.head, chunk]);
    if (c.hello === undefined) {
      // Connecting: hold what came and stop reading until the endpoint is there.
      c.client.pause();
      return;
    }
    this.readHello(c, c.hello, c.head);
  }

  /** Routes by the ClientHello's server name once it is complete (bounded in time and size). */
  private readHello(c: TcpConn, routes: PortRoutes, data: Buffer): void {
    const r = readServerName(data);
    if (r.kind === 'more') {
      if (data.length > MAX_CLIENT_HELLO + 1024) this.reject(c, 'bad hello', `more than ${MAX_CLIENT_HELLO} bytes without a complete ClientHello`);
      return;
    }
    clearTimeout(c.helloTimer);
    c.hello = undefined;
    c.client.pause();
    if (r.kind === 'error') {
      // Not TLS at all: the port's plain-TCP service takes it, if it has one.
      if (routes.fallback) return this.route(c, routes.fallback, undefined);
      return this.reject(c, 'bad hello', `malformed or non-TLS ClientHello: ${r.reason}`);
    }
    const svc = r.kind === 'sni' ? (routes.sni(r.name) ?? routes.fallback) : routes.fallback;
    if (!svc) return this.reject(c, 'unknown sni', r.kind === 'sni' ? `no TLS route for server name "${r.name}"` : 'ClientHello without a server name and no plain TCP route on the port');
    this.route(c, svc, r.kind === 'sni' ? r.name : undefined);
  }

  private route(c: TcpConn, svc: TcpService | undefined, sni: string | undefined, avoid?: Peer): void {
    if (c.closed) return;
    if (!svc) return this.reject(c, 'no route', 'no route on this port any more');
    const peer = svc.balancer.pick(avoid);
    if (!peer) return this.reject(c, 'no endpoint', `service ${svc.key} has no serving endpoint`, { service: svc.key });
    c.peer = peer;
    peer.state.active++;
    const ep = peer.endpoint;
    const client = c.client;
    const up = connect({
      host: ep.address, port: ep.port, allowHalfOpen: true, noDelay: true, keepAlive: true, keepAliveInitialDelay: KEEPALIVE_MS,
      onread: {
        buffer: READ,
        callback: (n: number) => {
          if (forward(client, n) > MAX_BUFFERED) up.pause();
          return true;
        },
      },
    });
    c.upstream = up;
    let connected = false;
    up.setTimeout(this.o.connectTimeoutMs);
    const failed = (why: string) => {
      if (connected || c.closed) return;
      c.upstream = undefined;
      up.destroy();
      peer.state.active--;
      c.peer = undefined;
      this.outliers.connectFailed(peer.state);
      // Nothing was sent: another endpoint (or the same one again when it is the only one) may take it.
      if (avoid === undefined) return this.route(c, svc, sni, peer);
      this.reject(c, 'connect failed', `cannot connect to ${ep.address}:${ep.port} of ${svc.key}: ${why}`, { service: svc.key });
    };
    up.once('timeout', () => failed(`no answer within ${this.o.connectTimeoutMs} ms`));
    up.once('error', (err) => failed(err.message));
    up.once('connect', () => {
      if (c.closed) {
        up.destroy();
        return;
      }
      connected = true;
      up.setTimeout(0);
      up.removeAllListeners('error');
      up.removeAllListeners('timeout');
      // A connection that opened clears the endpoint's run of connect failures.
      this.outliers.answered(peer.state, 0);
      let set = this.byOrigin.get(peer.origin);
      if (!set) this.byOrigin.set(peer.origin, (set = new Set()));
      set.add(c);
      this.accepted.inc({ service: svc.key });
      if (ep.proxyProtocol === 'v2') up.write(proxyV2Header(client.remoteAddress, client.remotePort, client.localAddress, client.localPort));
      if (c.head) up.write(c.head);
      c.head = undefined;
      c.spliced = true;
      // Each side pauses while the other cannot take more; half-closes are passed on.
      up.on('drain', () => client.resume());
      client.on('drain', () => up.resume());
      client.on('end', () => up.end());
      up.on('end', () => client.end());
      up.on('error', () => this.finish(c, true));
      // The endpoint closed: what it sent is flushed to the client, then the client is closed.
      up.on('close', () => this.finish(c, false));
      // Flowing, so that an end of stream is seen ('end') even though bytes arrive through onread.
      up.resume();
      client.resume();
    });
  }

  private finish(c: TcpConn, hard: boolean): void {
    if (c.closed) {
      if (hard) {
        c.client.destroy();
        c.upstream?.destroy();
      }
      return;
    }
    c.closed = true;
    clearTimeout(c.helloTimer);
    this.conns.delete(c);
    if (c.peer) {
      c.peer.state.active--;
      this.byOrigin.get(c.peer.origin)?.delete(c);
    }
    c.upstream?.destroy();
    if (hard) return void c.client.destroy();
    // What the endpoint sent is flushed first; a client that never reads it is cut after a while.
    const client = c.client;
    const cut = setTimeout(() => client.destroy(), FLUSH_MS).unref();
    client.end(() => {
      clearTimeout(cut);
      client.destroy();
    });
  }

  private reject(c: TcpConn, reason: string, detail: string, extra: object = {}): void {
    this.rejected.inc({ reason });
    const now = Date.now();
    const seen = this.rejectLog.get(reason);
    if (!seen || now - seen.at >= REJECT_LOG_MS) {
      this.log.warn({ client: c.client.remoteAddress, port: this.listenPort(c.port), reason: detail, notLogged: seen?.suppressed ?? 0, ...extra }, 'TCP connection closed before reaching an endpoint');
      this.rejectLog.set(reason, { at: now, suppressed: 0 });
    } else {
      seen.suppressed++;
    }
    this.finish(c, true);
  }

  async close(graceMs: number): Promise<void> {
    this.closing = true;
    for (const s of this.listeners.values()) s.close();
    this.listeners.clear();
    const deadline = Date.now() + graceMs;
    while (this.conns.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const c of [...this.conns]) this.finish(c, true);
  }
}
