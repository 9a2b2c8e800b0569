// More than one core for UDP inside one `corral dns` process (--dns-threads): each worker thread
// holds its own copy of the zone (fed the same watch events), answer cache and forwarder, and
// reads the same UDP sockets as the main thread through a dup(2) of each socket's descriptor.
// The kernel hands each datagram to whichever thread reads first. TCP, the agent watch, the
// admin endpoint and the gateway bookkeeping stay on the main thread.
import { setFlagsFromString } from 'node:v8';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { makeLogger, type Logger } from '../api/log.js';
import type { DaemonOptions } from '../api/options.js';
import type { WatchEvent } from '../api/types.js';
import { RecursionAcl } from './access.js';
import { AnswerCache } from './answers.js';
import { Forwarder, type ForwarderOptions, type Upstream } from './forward.js';
import { RateLimiter } from './ratelimit.js';
import { BatchedUdp, dup, probeBatch, udpFd } from './batch.js';
import { DnsServer, literalLookup, type UdpShare } from './server.js';
import { Zone } from './zone.js';

const KIND = 'corral-dns-udp-worker';

interface Setup {
  kind: typeof KIND;
  opts: DaemonOptions;
  upstreams: Upstream[];
  forwarder: Omit<ForwarderOptions, 'onUpstream'>;
  threads: number;
  /** recvmmsg/sendmmsg on IPv4 sockets (batch.ts); false when the main thread found them unavailable. */
  batch: boolean;
}

/** What a worker reports at scrape time (counters since it started; durations since the last report). */
export interface WorkerStats {
  counts: Array<{ qtype: number; rcode: number; count: number }>;
  cacheHits: number;
  limited: number;
  refused: number;
  upstreamSeconds: number[];
}

type ToWorker =
  | { t: 'event'; ev: WatchEvent }
  | { t: 'attach'; key: string; fd: number; ipv6: boolean }
  | { t: 'detach'; key: string; id: number }
  | { t: 'stop'; id: number }
  | { t: 'stats'; id: number };

type FromWorker =
  | { t: 'ready' }
  | { t: 'detached'; id: number }
  | { t: 'stats'; id: number; stats: WorkerStats };

/** The main thread's side: starts the workers and keeps them in step. */
export class UdpWorkers implements UdpShare {
  private readonly workers: Worker[] = [];
  private readonly waiting = new Map<number, (m: FromWorker) => void>();
  private nextId = 1;
  private warnedNoFd = false;

  private constructor(private readonly log: Logger) {}

  /** Starts `count` workers; resolves once each has its zone, or rejects when one cannot start. */
  static async start(count: number, setup: Omit<Setup, 'kind'>, log: Logger): Promise<UdpWorkers> {
    const w = new UdpWorkers(log);
    // Every query allocates a little (Node's Buffer and rinfo per datagram): a larger young
    // generation makes scavenges ~8x rarer, which is what p99 latency sees. Read by V8 when an
    // isolate is created, so it applies to the workers (not the already running main thread).
    setFlagsFromString('--min-semi-space-size=16');
    try {
      for (let i = 0; i < count; i++) {
        const worker = new Worker(new URL(import.meta.url), { workerData: { ...setup, kind: KIND } satisfies Setup });
        w.workers.push(worker);
        await new Promise<void>((resolve, reject) => {
          const onMessage = (m: FromWorker) => {
            if (m.t !== 'ready') return;
            worker.off('error', reject);
            resolve();
          };
          worker.on('message', onMessage);
          worker.once('error', reject);
        });
        worker.on('message', (m: FromWorker) => {
          if (m.t === 'ready') return;
          const done = w.waiting.get(m.id);
          if (done) {
            w.waiting.delete(m.id);
            done(m);
          }
        });
        worker.on('error', (err) => log.error({ err: err.message }, 'DNS worker thread failed'));
        worker.unref();
      }
    } catch (err) {
      await w.close();
      throw err;
    }
    return w;
  }

  get size(): number {
    return this.workers.length;
  }

  apply(ev: WatchEvent): void {
    for (const w of this.workers) w.postMessage({ t: 'event', ev } satisfies ToWorker);
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
    for (const w of this.workers) w.postMessage({ t: 'attach', key, fd: dup(fd), ipv6 } satisfies ToWorker);
  }

  async detach(key: string): Promise<void> {
    await Promise.all(this.workers.map((w) => this.ask(w, { t: 'detach', key, id: this.nextId++ })));
  }

  /** Each worker's counters, for /metrics. */
  async stats(): Promise<WorkerStats[]> {
    const replies = await Promise.all(this.workers.map((w) => this.ask(w, { t: 'stats', id: this.nextId++ })));
    return replies.flatMap((m) => (m && m.t === 'stats' ? [m.stats] : []));
  }

  async close(): Promise<void> {
    // Batched sockets have a poll in flight on the thread pool: stop them before the threads go.
    await Promise.all(this.workers.map((w) => this.ask(w, { t: 'stop', id: this.nextId++ })));
    await Promise.all(this.workers.map((w) => w.terminate().catch(() => 0)));
    this.workers.length = 0;
  }

  private ask(w: Worker, msg: Extract<ToWorker, { id: number }>): Promise<FromWorker | null> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(msg.id);
        this.log.warn({ msg: msg.t }, 'DNS worker thread did not answer within 2 s');
        resolve(null);
      }, 2000);
      this.waiting.set(msg.id, (m) => {
        clearTimeout(timer);
        resolve(m);
      });
      w.postMessage(msg);
    });
  }
}

/** A worker thread's life: the same server as the main thread, UDP only, on shared sockets. */
function runWorker(setup: Setup): void {
  const port = parentPort!;
  const { opts } = setup;
  const log = makeLogger('dns', opts.logLevel).child({ component: 'dns', thread: 'udp-worker' });
  const zone = new Zone(opts.dnsDomain, opts.dnsTtl);
  const answers = new AnswerCache(zone);
  let upstreamSeconds: number[] = [];
  const forwarder = new Forwarder(setup.upstreams, {
    ...setup.forwarder,
    onUpstream: (s) => {
      if (upstreamSeconds.length < 100_000) upstreamSeconds.push(s);
    },
  });
  const acl = new RecursionAcl({ clusterCidr: opts.clusterCidr, allow: opts.dnsAllow, isAllocated: (a) => zone.namespaceOf(a) !== undefined });
  zone.onChange(() => acl.reset());
  // A client's datagrams spread over the threads: each thread allows its share of the limit.
  const limiter = new RateLimiter(opts.dnsRateLimit / setup.threads, Math.max(1, opts.dnsRateLimit / setup.threads));
  const server = new DnsServer(zone, answers, forwarder, { listen: [], udpPayload: opts.dnsUdpSize, acl, limiter, log });
  const sockets = new Map<string, { close(): Promise<void> }>();
  let warnedBatch = false;
  const closeAll = () => {
    const all = [...sockets.values()];
    sockets.clear();
    return Promise.all(all.map((s) => s.close()));
  };

  port.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'event':
        zone.apply(m.ev);
        break;
      case 'attach': {
        if (setup.batch && !m.ipv6) {
          let why = probeBatch(m.fd);
          if (why === '') {
            try {
              const b = new BatchedUdp(m.fd, server, (err) => log.warn({ err }, 'DNS UDP batch error'));
              sockets.set(m.key, b);
              b.start();
              break;
            } catch (err) {
              why = (err as Error).message;
            }
          }
          if (!warnedBatch) log.warn({ err: why }, 'DNS worker thread cannot batch UDP (recvmmsg/sendmmsg unavailable); using Node dgram');
          warnedBatch = true;
        }
        const sock = createSocket({ type: m.ipv6 ? 'udp6' : 'udp4', lookup: literalLookup });
        sock.on('error', (err) => log.warn({ err: err.message }, 'DNS UDP socket error'));
        sock.on('message', (msg, rinfo) => server.onDatagram(sock, msg, rinfo));
        sock.bind({ fd: m.fd });
        sockets.set(m.key, { close: () => new Promise<void>((r) => sock.close(() => r())) });
        break;
      }
      case 'detach': {
        const sock = sockets.get(m.key);
        sockets.delete(m.key);
        void (sock ? sock.close() : Promise.resolve()).then(() => port.postMessage({ t: 'detached', id: m.id } satisfies FromWorker));
        break;
      }
      case 'stop':
        void closeAll().then(() => port.postMessage({ t: 'detached', id: m.id } satisfies FromWorker));
        break;
      case 'stats': {
        const stats: WorkerStats = {
          counts: [...server.counts.entries()], cacheHits: answers.hits + forwarder.hits, limited: limiter.limited, refused: server.refused, upstreamSeconds,
        };
        upstreamSeconds = [];
        port.postMessage({ t: 'stats', id: m.id, stats } satisfies FromWorker);
        break;
      }
    }
  });
  port.postMessage({ t: 'ready' } satisfies FromWorker);
}

if (!isMainThread && (workerData as Setup | null)?.kind === KIND) runWorker(workerData as Setup);
