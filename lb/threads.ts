// More than one core for HTTP inside one `corral lb` process (--lb-threads): the main thread and
// each worker thread run a whole serving stack of their own (route table, balancers, passive
// health, upstream pools, proxy), each accepting on its own listening socket bound to the same
// port with SO_REUSEPORT, so the kernel spreads new connections over the threads and nothing is
// shared on the hot path. The agent watch and the admin endpoint stay on the main thread, which
// forwards every watch event to the workers and acks a revision only once all have applied it.
import { lookup } from 'node:dns/promises';
import { isIP, type Server } from 'node:net';
import { constants as osConstants } from 'node:os';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import { makeLogger, type Logger } from '../api/log.js';
import { parseHostPort, type LbOptions } from '../api/options.js';
import type { WatchEvent } from '../api/types.js';
import { balancerFor } from './balancer.js';
import { LbMetrics } from './metrics.js';
import { OUTLIER_DEFAULTS, PassiveHealth } from './outliers.js';
import { Proxy } from './proxy.js';
import { RouteTable } from './routes.js';
import { CertificateStore } from './tls.js';
import { UpstreamPools } from './upstreams.js';
import { libc } from '../api/libc.js';

/** Slack on top of a drained endpoint's drain time, for the LB seeing the revision a little late. */
const DRAIN_SLACK_MS = 1_000;

/** What one thread reports for the status page. */
export interface ThreadStats {
  thread: number;
  requests: number;
  connections: number;
  revision: number;
  ready: boolean;
  upstreamPools: number;
  ejected: number;
}

type JsonMetrics = Array<MetricObjectWithValues<MetricValue<string>>>;

/** One thread's serving stack: everything a request touches lives here, one per thread. */
export class LbThread {
  readonly metrics: LbMetrics;
  readonly pools: UpstreamPools;
  readonly outliers: PassiveHealth;
  readonly routes: RouteTable;
  readonly proxy: Proxy;
  readonly certs: CertificateStore | undefined;

  constructor(readonly thread: number, o: LbOptions, log: Logger, processMetrics: boolean) {
    this.metrics = new LbMetrics(processMetrics);
    const pools = (this.pools = new UpstreamPools({
      connectTimeoutMs: o.connectTimeoutMs,
      headersTimeoutMs: o.headersTimeoutMs,
      // An upstream silent mid-response for the idle timeout is cut, like HAProxy's `timeout server`.
      bodyTimeoutMs: o.idleTimeoutMs,
      keepAliveTimeoutMs: o.idleTimeoutMs,
    }, log));
    const outliers = (this.outliers = new PassiveHealth(OUTLIER_DEFAULTS, this.metrics, log));
    this.routes = new RouteTable(log, (origin, last) => {
      outliers.drop(origin);
      // A drained endpoint has had its drain time already; one removed at once gets it now.
      pools.retire(origin, last.draining ? DRAIN_SLACK_MS : Math.max(last.drainMs, DRAIN_SLACK_MS));
    }, balancerFor(o.balance, outliers.stateOf));
    this.proxy = new Proxy(this.routes, pools, this.metrics, log, o, outliers);
    this.certs = o.tlsCertDir ? CertificateStore.load(o.tlsCertDir) : undefined;
  }

  /**
   * The HTTPS server, with --tls-cert-dir; the directory is watched (each thread reloads its own
   * store, the main thread logs). Without a pair yet, handshakes fail until one is written there
   * (certificates issued after the LB started, as ACME clients do).
   */
  https(log: Logger): TlsServer | undefined {
    const certs = this.certs;
    if (!certs) return undefined;
    // HTTP/2 for the clients that offer it (h2.ts), HTTP/1.1 for the rest and for WebSocket.
    // The server's own certificate is the fallback one: clients without SNI get it.
    const server = this.proxy.serve(createTlsServer({ SNICallback: certs.sniCallback, ALPNProtocols: ['h2', 'http/1.1'], ...certs.defaultPair() }));
    certs.watch((r) => {
      if (r.ok) server.setSecureContext(certs.defaultPair());
      if (this.thread !== 0) return;
      if (r.ok) log.info({ dir: certs.dir, certificates: r.names }, 'TLS certificates reloaded');
      else log.error({ err: r.error }, 'TLS certificates not reloaded; the previous ones stay in use');
    });
    return server;
  }

  apply(ev: WatchEvent): void {
    this.routes.apply(ev);
    this.metrics.appliedRevision.set(ev.revision);
  }

  stats(): ThreadStats {
    return {
      thread: this.thread,
      requests: this.metrics.answered,
      connections: this.proxy.connections.size,
      revision: this.routes.revision,
      ready: this.routes.ready,
      upstreamPools: this.pools.size,
      ejected: this.outliers.ejectedCount,
    };
  }

  async close(graceMs: number): Promise<void> {
    this.outliers.close();
    this.certs?.close();
    await this.proxy.close(graceMs);
  }
}

// ---- Listening sockets shared by port (SO_REUSEPORT), made with koffi ----

const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const SO_REUSEPORT = 15;
const IPPROTO_IPV6 = 41;
const IPV6_V6ONLY = 26;
/** Node's default backlog for server.listen. */
const BACKLOG = 511;

interface SockSys {
  socket(domain: number, type: number, protocol: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, len: number): number;
  bind(fd: number, addr: Buffer, len: number): number;
  listen(fd: number, backlog: number): number;
  getsockname(fd: number, addr: Buffer, len: Buffer): number;
  close(fd: number): number;
  errno(): number;
}

let sockSys: SockSys | null | undefined;
let sockSysError = '';

function sockSyscalls(): SockSys | null {
  if (sockSys !== undefined) return sockSys;
  try {
    // The constants above are Linux's (the same on x64 and arm64).
    if (process.platform !== 'linux') throw new Error(`SO_REUSEPORT sockets are built for Linux, not ${process.platform}`);
    const c = libc();
    const f = (decl: string) => c.func<unknown>(decl);
    sockSys = {
      socket: f('int socket(int domain, int type, int protocol)'),
      setsockopt: f('int setsockopt(int fd, int level, int name, void *value, uint32_t len)'),
      bind: f('int bind(int fd, void *addr, uint32_t len)'),
      listen: f('int listen(int fd, int backlog)'),
      getsockname: f('int getsockname(int fd, void *addr, void *len)'),
      close: f('int close(int fd)'),
      errno: c.errno,
    } as SockSys;
  } catch (err) {
    sockSysError = (err as Error).message;
    sockSys = null;
  }
  return sockSys;
}

function errnoName(e: number): string {
  return Object.entries(osConstants.errno).find(([, v]) => v === e)?.[0] ?? `errno ${e}`;
}

function sockaddr(family: number, address: string, port: number): Buffer {
  if (family === AF_INET) {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(port, 2);
    address.split('.').forEach((x, i) => (b[4 + i] = Number(x)));
    return b;
  }
  const b = Buffer.alloc(28);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(port, 2);
  ipv6Bytes(address).copy(b, 8);
  return b;
}

function ipv6Bytes(address: string): Buffer {
  let text = address.split('%')[0]!;
  const out = Buffer.alloc(16);
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two groups.
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) text = text.slice(0, v4.index) + `${((+v4[1]! << 8) | +v4[2]!).toString(16)}:${((+v4[3]! << 8) | +v4[4]!).toString(16)}`;
  const [head, tail] = text.includes('::') ? text.split('::') as [string, string] : [text, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/** Listening sockets, one per thread, all on one port. */
export interface SharedListeners {
  fds: number[];
  port: number;
}

/**
 * `count` listening TCP sockets on "ADDR:PORT" with SO_REUSEPORT (empty ADDR: all addresses,
 * IPv6 and IPv4 when the host has IPv6, like Node's listen). Port 0 picks one port for all.
 * Throws with the reason; the caller serves on one thread instead when koffi is missing.
 */
export async function reusePortListeners(listen: string, count: number, what: string): Promise<SharedListeners> {
  const sys = sockSyscalls();
  if (!sys) throw Object.assign(new Error(`cannot make SO_REUSEPORT sockets: ${sockSysError}`), { unsupported: true });
  const { host, port } = parseHostPort(listen, what);
  let candidates: Array<{ family: number; address: string }>;
  if (host === '') candidates = [{ family: AF_INET6, address: '::' }, { family: AF_INET, address: '0.0.0.0' }];
  else if (isIP(host)) candidates = [{ family: isIP(host) === 6 ? AF_INET6 : AF_INET, address: host }];
  else {
    const a = await lookup(host);
    candidates = [{ family: a.family === 6 ? AF_INET6 : AF_INET, address: a.address }];
  }
  const fds: number[] = [];
  const fail = (msg: string, extra: object = {}): never => {
    for (const fd of fds) sys.close(fd);
    throw Object.assign(new Error(msg), extra);
  };
  const one = Buffer.alloc(4);
  one.writeInt32LE(1);
  const zero = Buffer.alloc(4);
  let family = 0;
  let address = '';
  for (const c of candidates) {
    const fd = sys.socket(c.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
      sys.close(fd);
      ({ family, address } = c);
      break;
    }
  }
  if (family === 0) fail(`${what} ${listen}: socket() failed (${errnoName(sys.errno())})`);
  let bound = port;
  for (let i = 0; i < count; i++) {
    const fd = sys.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) fail(`${what} ${listen}: socket() failed (${errnoName(sys.errno())})`);
    fds.push(fd);
    if (sys.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, one, 4) < 0) fail(`${what}: SO_REUSEADDR failed (${errnoName(sys.errno())})`);
    if (sys.setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, one, 4) < 0) fail(`${what}: SO_REUSEPORT failed (${errnoName(sys.errno())})`, { unsupported: true });
    // All addresses means IPv4 too, as Node's own listen does on "::".
    if (family === AF_INET6 && address === '::' && sys.setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, zero, 4) < 0) fail(`${what}: IPV6_V6ONLY failed (${errnoName(sys.errno())})`);
    const sa = sockaddr(family, address, bound);
    if (sys.bind(fd, sa, sa.length) < 0) {
      const e = errnoName(sys.errno());
      fail(`listen ${e} ${address}:${bound} (${what} ${listen})`, { code: e });
    }
    if (sys.listen(fd, BACKLOG) < 0) fail(`${what}: listen() failed (${errnoName(sys.errno())})`);
    if (i === 0) {
      const out = Buffer.alloc(28);
      const len = Buffer.alloc(4);
      len.writeUInt32LE(out.length);
      if (sys.getsockname(fd, out, len) < 0) fail(`${what}: getsockname() failed (${errnoName(sys.errno())})`);
      bound = out.readUInt16BE(2);
    }
  }
  return { fds, port: bound };
}

/** Closes descriptors no server has taken over (a start that failed half-way). */
export function closeFds(fds: number[]): void {
  const sys = sockSyscalls();
  for (const fd of fds) sys?.close(fd);
}

/** Serve `server` on an already listening descriptor; the server owns (and closes) it from here. */
export function listenFd(server: Server, fd: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ fd }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

// ---- The worker threads ----

const KIND = 'corral-lb-worker';

interface Setup {
  kind: typeof KIND;
  thread: number;
  opts: LbOptions;
  logLevel: string;
  httpFd: number;
  httpsFd: number; // -1: no HTTPS
}

type ToWorker =
  | { t: 'event'; seq: number; ev: WatchEvent }
  | { t: 'stats'; id: number }
  | { t: 'metrics'; id: number }
  | { t: 'stop'; id: number; graceMs: number };

type FromWorker =
  | { t: 'ready' }
  | { t: 'applied'; seq: number }
  | { t: 'stats'; id: number; stats: ThreadStats }
  | { t: 'metrics'; id: number; metrics: JsonMetrics }
  | { t: 'stopped'; id: number };

interface WorkerState {
  worker: Worker;
  thread: number;
  /** Sequence number of the last watch event it applied. */
  applied: number;
  alive: boolean;
}

/** The main thread's side: starts the workers, feeds them the watch, asks them for numbers. */
export class LbWorkers {
  private readonly workers: WorkerState[] = [];
  private readonly asking = new Map<number, (m: FromWorker | null) => void>();
  private readonly waiting: Array<{ seq: number; resolve: () => void }> = [];
  private nextId = 1;
  private seq = 0;
  /** Sequence number of the first snapshot, once one has been sent. */
  private snapshotSeq = 0;

  private constructor(private readonly log: Logger) {}

  /**
   * Starts one worker per descriptor pair (threads 1..n); resolves once each listens, or
   * rejects when one cannot start (descriptors not yet taken over are closed).
   */
  static async start(opts: LbOptions, logLevel: string, http: number[], https: number[], log: Logger): Promise<LbWorkers> {
    const w = new LbWorkers(log);
    let i = 0;
    try {
      for (; i < http.length; i++) {
        const setup: Setup = { kind: KIND, thread: i + 1, opts, logLevel, httpFd: http[i]!, httpsFd: https[i] ?? -1 };
        const worker = new Worker(new URL(import.meta.url), { workerData: setup });
        const state: WorkerState = { worker, thread: i + 1, applied: 0, alive: true };
        w.workers.push(state);
        await new Promise<void>((resolve, reject) => {
          const onMessage = (m: FromWorker) => {
            if (m.t !== 'ready') return;
            worker.off('message', onMessage);
            worker.off('error', reject);
            worker.off('exit', onExit);
            resolve();
          };
          const onExit = (code: number) => reject(new Error(`LB worker thread ${i + 1} exited (${code}) while starting`));
          worker.on('message', onMessage);
          worker.once('error', reject);
          worker.once('exit', onExit);
        });
        worker.on('message', (m: FromWorker) => w.onMessage(state, m));
        worker.on('error', (err) => log.error({ err: err.message, thread: state.thread }, 'LB worker thread failed; the other threads keep serving'));
        worker.once('exit', () => {
          state.alive = false;
          w.settle();
        });
      }
    } catch (err) {
      closeFds([...http.slice(i + 1), ...https.slice(i + 1)]);
      await Promise.all(w.workers.map((s) => s.worker.terminate().catch(() => 0)));
      throw err;
    }
    return w;
  }

  get size(): number {
    return this.workers.length;
  }

  /** Sends an event to every worker; resolves when every live worker has applied it. */
  apply(ev: WatchEvent): Promise<void> {
    const seq = ++this.seq;
    if (ev.snapshot && this.snapshotSeq === 0) this.snapshotSeq = seq;
    for (const s of this.workers) if (s.alive) s.worker.postMessage({ t: 'event', seq, ev } satisfies ToWorker);
    return new Promise<void>((resolve) => {
      this.waiting.push({ seq, resolve });
      this.settle();
    });
  }

  /** Every live worker has applied a snapshot. */
  get ready(): boolean {
    return this.snapshotSeq > 0 && this.workers.every((s) => !s.alive || s.applied >= this.snapshotSeq);
  }

  async stats(): Promise<ThreadStats[]> {
    const replies = await Promise.all(this.live().map((s) => this.ask(s, { t: 'stats', id: this.nextId++ }, 2_000)));
    return replies.flatMap((m) => (m?.t === 'stats' ? [m.stats] : []));
  }

  /** Each worker's registry as prom-client JSON, for AggregatorRegistry.aggregate. */
  async metrics(): Promise<JsonMetrics[]> {
    const replies = await Promise.all(this.live().map((s) => this.ask(s, { t: 'metrics', id: this.nextId++ }, 2_000)));
    return replies.flatMap((m) => (m?.t === 'metrics' ? [m.metrics] : []));
  }

  /** Each worker stops accepting and finishes its requests (up to `graceMs`), then exits. */
  async close(graceMs: number): Promise<void> {
    await Promise.all(this.live().map((s) => this.ask(s, { t: 'stop', id: this.nextId++, graceMs }, graceMs + 5_000)));
    await Promise.all(this.workers.map((s) => s.worker.terminate().catch(() => 0)));
    for (const w of this.waiting.splice(0)) w.resolve();
  }

  private live(): WorkerState[] {
    return this.workers.filter((s) => s.alive);
  }

  private onMessage(s: WorkerState, m: FromWorker): void {
    if (m.t === 'applied') {
      s.applied = m.seq;
      this.settle();
      return;
    }
    if (m.t === 'ready') return;
    const done = this.asking.get(m.id);
    if (done) {
      this.asking.delete(m.id);
      done(m);
    }
  }

  /** Resolves the waits that every live worker has caught up with (events apply in order). */
  private settle(): void {
    const low = Math.min(...this.workers.map((s) => (s.alive ? s.applied : Infinity)));
    while (this.waiting.length > 0 && this.waiting[0]!.seq <= low) this.waiting.shift()!.resolve();
  }

  private ask(s: WorkerState, msg: Extract<ToWorker, { id: number }>, timeoutMs: number): Promise<FromWorker | null> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.asking.delete(msg.id);
        this.log.warn({ msg: msg.t, thread: s.thread }, `LB worker thread did not answer within ${timeoutMs} ms`);
        resolve(null);
      }, timeoutMs);
      const onExit = () => done(null);
      const done = (m: FromWorker | null) => {
        clearTimeout(timer);
        s.worker.off('exit', onExit);
        this.asking.delete(msg.id);
        resolve(m);
      };
      s.worker.once('exit', onExit);
      this.asking.set(msg.id, done);
      s.worker.postMessage(msg);
    });
  }
}

/** A worker thread's life: its own stack on its own listening sockets, fed by the main thread. */
async function runWorker(setup: Setup): Promise<void> {
  const port = parentPort!;
  const log = makeLogger('lb', setup.logLevel).child({ component: 'lb', thread: setup.thread });
  const t = new LbThread(setup.thread, setup.opts, log, false);
  await listenFd(t.proxy.server, setup.httpFd);
  if (setup.httpsFd >= 0) {
    const https = t.https(log);
    if (https) await listenFd(https, setup.httpsFd);
  }
  // Tests only: a worker that applies events late shows whether acks wait for every thread.
  const lag = Number(process.env.CORRAL_TEST_LB_WORKER_LAG_MS) || 0;
  let queue = Promise.resolve();
  const apply = (seq: number, ev: WatchEvent) => {
    t.apply(ev);
    port.postMessage({ t: 'applied', seq } satisfies FromWorker);
  };
  port.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'event':
        if (lag === 0) apply(m.seq, m.ev);
        else queue = queue.then(() => new Promise((r) => setTimeout(r, lag))).then(() => apply(m.seq, m.ev));
        break;
      case 'stats':
        port.postMessage({ t: 'stats', id: m.id, stats: t.stats() } satisfies FromWorker);
        break;
      case 'metrics':
        void t.metrics.registry.getMetricsAsJSON().then((metrics) => port.postMessage({ t: 'metrics', id: m.id, metrics } satisfies FromWorker));
        break;
      case 'stop':
        void t.close(m.graceMs).then(() => {
          port.postMessage({ t: 'stopped', id: m.id } satisfies FromWorker);
          // Nothing is left to serve: let the thread's event loop end.
          port.close();
        });
        break;
    }
  });
  port.postMessage({ t: 'ready' } satisfies FromWorker);
}

if (!isMainThread && (workerData as Setup | null)?.kind === KIND) void runWorker(workerData as Setup);
