// More than one core for UDP inside one `corral dns` process (--dns-threads): each worker thread
// holds its own copy of the zone (fed the same watch events), answer cache and forwarder, and
// reads the same UDP sockets as the main thread through a dup(2) of each socket's descriptor.
// The kernel hands each datagram to whichever thread reads first. TCP, the agent watch, the
// admin endpoint and the gateway bookkeeping stay on the main thread, which acks a revision to
// the agent only once every worker answers from it (api/workers.ts).
import { setFlagsFromString } from 'node:v8';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { DNS_FIELDS } from '../api/compact.js';
import { makeLogger, type Logger } from '../api/log.js';
import type { DaemonOptions } from '../api/options.js';
import type { WatchEvent } from '../api/types.js';
import { serveWorker, WorkerPool, type JsonMetrics, type SpawnWorker, type WorkerThread } from '../api/workers.js';
import { RecursionAcl } from './access.js';
import { AnswerCache } from './answers.js';
import { Forwarder, type ForwarderOptions, type Upstream } from './forward.js';
import { DnsMetrics } from './metrics.js';
import { RateLimiter } from './ratelimit.js';
import { BatchedUdp, dup, probeBatch, udpFd } from './batch.js';
import { DnsServer, literalLookup, type UdpShare } from './server.js';
import { Zone } from './zone.js';

const KIND = 'corral-dns-udp-worker';

interface Setup {
  opts: DaemonOptions;
  upstreams: Upstream[];
  forwarder: Omit<ForwarderOptions, 'onUpstream'>;
  threads: number;
  /** recvmmsg/sendmmsg on IPv4 sockets (batch.ts); false when the main thread found them unavailable. */
  batch: boolean;
}

/** What the main thread asks a worker. */
interface UdpThreadAnswers {
  /** Read this socket too (fd: the worker's own dup of it). */
  attach(m: { key: string; fd: number; ipv6: boolean }): void;
  /** Stop reading it; answered once the worker's copy is closed. */
  detach(key: string): Promise<void>;
  /** Its metrics registry as prom-client JSON, merged into /metrics by the main thread. */
  metrics(): Promise<JsonMetrics>;
}

/** The main thread's side: the pool of UDP threads, told about every socket the server binds. */
export class UdpWorkers implements UdpShare {
  private warnedNoFd = false;

  private constructor(private readonly pool: WorkerPool<Setup, UdpThreadAnswers>, private readonly log: Logger) {}

  /** Starts `count` workers; resolves once each has its zone, or rejects when one cannot start. */
  static async start(count: number, setup: Setup, log: Logger, spawn?: SpawnWorker): Promise<UdpWorkers> {
    // Every query allocates a little (Node's Buffer and rinfo per datagram): a larger young
    // generation makes scavenges ~8x rarer, which is what p99 latency sees. Read by V8 when an
    // isolate is created, so it applies to the workers (not the already running main thread).
    setFlagsFromString('--min-semi-space-size=16');
    const setups = Array.from({ length: count }, () => setup);
    let pool: WorkerPool<Setup, UdpThreadAnswers>;
    try {
      pool = await WorkerPool.start<Setup, UdpThreadAnswers>({ name: 'DNS', kind: KIND, script: new URL(import.meta.url), setups, log, spawn, fields: DNS_FIELDS });
    } finally {
      // Back to V8's default for isolates made later (`corral up`'s LB threads): 16 MB semi-spaces
      // are resident once used, ~32 MB a thread that does not answer UDP.
      setFlagsFromString('--min-semi-space-size=0');
    }
    return new UdpWorkers(pool, log);
  }

  get size(): number {
    return this.pool.size;
  }

  /** Each worker's V8 heap, for the status page. */
  heaps(): ReturnType<WorkerPool<Setup, UdpThreadAnswers>['heaps']> {
    return this.pool.heaps();
  }

  /** Resolves once every worker answers from this event. */
  apply(ev: WatchEvent): Promise<void> {
    return this.pool.apply(ev);
  }

  /** Every worker has applied a snapshot. */
  get ready(): boolean {
    return this.pool.ready;
  }

  attach(key: string, sock: UdpSocket, ipv6: boolean): void {
    let fd: number;
    try {
      fd = udpFd(sock);
    } catch (err) {
      // udpFd reads a Node internal: if a Node upgrade moves it, serve from this thread alone.
      if (!this.warnedNoFd) this.log.warn({ err: (err as Error).message }, 'DNS worker threads cannot share the UDP socket; answering on the main thread only');
      this.warnedNoFd = true;
      return;
    }
    void this.pool.askEach('attach', () => ({ key, fd: dup(fd), ipv6 }));
  }

  async detach(key: string): Promise<void> {
    await this.pool.ask('detach', key);
  }

  /** Each worker's metrics, for /metrics. */
  metrics(): Promise<JsonMetrics[]> {
    return this.pool.ask('metrics');
  }

  /** Batched sockets have a poll in flight on the thread pool: each worker stops them before it ends. */
  close(): Promise<void> {
    return this.pool.close();
  }
}

/** A worker thread's life: the same server as the main thread, UDP only, on shared sockets. */
function udpThread(setup: Setup): WorkerThread<UdpThreadAnswers> {
  const { opts } = setup;
  const log = makeLogger('dns', opts.logLevel).child({ component: 'dns', thread: 'udp-worker' });
  const zone = new Zone(opts.dnsDomain, opts.dnsTtl);
  const answers = new AnswerCache(zone);
  const metrics = new DnsMetrics();
  const forwarder = new Forwarder(setup.upstreams, { ...setup.forwarder, onUpstream: (s) => metrics.upstreamSeconds.observe(s) });
  const acl = new RecursionAcl({ clusterCidr: opts.clusterCidr, allow: opts.dnsAllow, isAllocated: (a) => zone.namespaceOf(a) !== undefined });
  zone.onChange(() => acl.reset());
  // A client's datagrams spread over the threads: each thread allows its share of the limit.
  const limiter = new RateLimiter(opts.dnsRateLimit / setup.threads, Math.max(1, opts.dnsRateLimit / setup.threads));
  const server = new DnsServer(zone, answers, forwarder, { listen: [], udpPayload: opts.dnsUdpSize, acl, limiter, log });
  metrics.count({ server, answers, forwarder, limiter });
  const sockets = new Map<string, { close(): Promise<void> }>();
  let warnedBatch = false;

  const attach = (key: string, fd: number, ipv6: boolean) => {
    if (setup.batch && !ipv6) {
      let why = probeBatch(fd);
      if (why === '') {
        try {
          const b = new BatchedUdp(fd, server, (err) => log.warn({ err }, 'DNS UDP batch error'));
          sockets.set(key, b);
          b.start();
          return;
        } catch (err) {
          why = (err as Error).message;
        }
      }
      if (!warnedBatch) log.warn({ err: why }, 'DNS worker thread cannot batch UDP (recvmmsg/sendmmsg unavailable); using Node dgram');
      warnedBatch = true;
    }
    const sock = createSocket({ type: ipv6 ? 'udp6' : 'udp4', lookup: literalLookup });
    sock.on('error', (err) => log.warn({ err: err.message }, 'DNS UDP socket error'));
    sock.on('message', (msg, rinfo) => server.onDatagram(sock, msg, rinfo));
    sock.bind({ fd });
    sockets.set(key, { close: () => new Promise<void>((r) => sock.close(() => r())) });
  };

  return {
    apply: (ev) => zone.apply(ev),
    answers: {
      attach: (m) => attach(m.key, m.fd, m.ipv6),
      detach: async (key) => {
        const sock = sockets.get(key);
        sockets.delete(key);
        await sock?.close();
      },
      metrics: () => metrics.registry.getMetricsAsJSON(),
    },
    stop: async () => {
      const all = [...sockets.values()];
      sockets.clear();
      await Promise.all(all.map((s) => s.close()));
    },
  };
}

serveWorker(KIND, udpThread);
