// `corral dns`: the agent's watch stream feeds the zone, the listeners answer from it (and
// forward the rest), the admin endpoint reports readiness and metrics.
import type { Server as HttpServer } from 'node:http';
import { availableParallelism } from 'node:os';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { startAdmin } from '../api/admin.js';
import type { Logger } from '../api/log.js';
import { ADMIN_DEFAULTS, parseHostPort, type DaemonOptions } from '../api/options.js';
import type { WatchEvent } from '../api/types.js';
import { AgentWatch } from '../api/watch.js';
import type { SpawnWorker } from '../api/workers.js';
import { RecursionAcl } from './access.js';
import { AnswerCache } from './answers.js';
import { batchSupport } from './batch.js';
import { Forwarder, parseUpstream, resolvConfUpstreams, type ForwarderOptions, type Upstream } from './forward.js';
import { GatewayListeners } from './gateways.js';
import { RateLimiter } from './ratelimit.js';
import { DnsServer, type BoundListener } from './server.js';
import { UdpWorkers } from './workers.js';
import { RCODE, TYPE_NAMES } from './wire.js';
import { Zone } from './zone.js';

export interface RunningDns {
  close(): Promise<void>;
  zone: Zone;
  /** Where DNS listens (the real ports when asked for port 0). */
  listeners: BoundListener[];
  adminPort: number;
  forwarder: Forwarder;
  server: DnsServer;
  limiter: RateLimiter;
  /** Applies one watch event (what the agent stream does; tests feed events here); resolves once every thread answers from it. */
  apply(ev: WatchEvent): Promise<void>;
}

const RCODE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(RCODE).map(([k, v]) => [v, k]));
RCODE_NAMES[16] = 'BADVERS';

export interface DnsTuning {
  forwarder?: ForwarderOptions;
  tcpIdleMs?: number;
  /** How worker threads are started (tests run them from the TypeScript source). */
  spawnWorker?: SpawnWorker;
}

export async function runDns(opts: DaemonOptions, log: Logger, tuning: DnsTuning = {}): Promise<RunningDns> {
  const zone = new Zone(opts.dnsDomain, opts.dnsTtl);
  const answers = new AnswerCache(zone);
  const metrics = new Registry();
  const upstreamSeconds = new Histogram({
    name: 'corral_dns_upstream_seconds',
    help: 'Time of one exchange with an upstream resolver',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [metrics],
  });
  const upstreams = chooseUpstreams(opts, log);
  const forwarder = new Forwarder(upstreams, { ...tuning.forwarder, onUpstream: (s) => upstreamSeconds.observe(s) });
  const acl = new RecursionAcl({ clusterCidr: opts.clusterCidr, allow: opts.dnsAllow, isAllocated: (a) => zone.namespaceOf(a) !== undefined });
  zone.onChange(() => acl.reset());
  // UDP threads: this one plus workers reading the same sockets (workers.ts). Each thread
  // allows its share of the per-client limit, since a client's datagrams spread over them.
  const threads = opts.dnsThreads > 0 ? opts.dnsThreads : Math.min(4, availableParallelism());
  const limiter = new RateLimiter(opts.dnsRateLimit / threads, Math.max(1, opts.dnsRateLimit / threads));
  // Batched UDP reads and sends (batch.ts) unless koffi or libc cannot give us the syscalls.
  const noBatch = batchSupport();
  const batch = noBatch === '';
  if (!batch) log.warn({ err: noBatch }, 'DNS cannot batch UDP (recvmmsg/sendmmsg through koffi unavailable); one datagram at a time through Node dgram');
  let workers: UdpWorkers | null = null;
  if (threads > 1) {
    const { onUpstream: _, ...forwarderTuning } = tuning.forwarder ?? {};
    workers = await UdpWorkers.start(threads - 1, { opts, upstreams, forwarder: forwarderTuning, threads, batch }, log, tuning.spawnWorker);
  }
  // "gateway:PORT" entries follow this node's block (gateways.ts); the rest are fixed addresses.
  const listen = opts.dnsListen.map((l) => ({ text: l, ...parseHostPort(l, '--dns-listen') }));
  const server = new DnsServer(zone, answers, forwarder, {
    listen: listen.filter((l) => l.host !== 'gateway').map((l) => l.text),
    udpPayload: opts.dnsUdpSize,
    tcpIdleMs: tuning.tcpIdleMs,
    acl,
    limiter,
    share: workers,
    batch,
    log,
  });
  const gateways = new GatewayListeners(opts.nodeName, listen.filter((l) => l.host === 'gateway').map((l) => l.port), server, log);

  // Counters live as plain numbers in each thread; a scrape sums them.
  const totals = async () => {
    const all = [{
      counts: [...server.counts.entries()], cacheHits: answers.hits + forwarder.hits, limited: limiter.limited, refused: server.refused, upstreamSeconds: [] as number[],
    }, ...(workers ? await workers.stats() : [])];
    for (const w of all) for (const s of w.upstreamSeconds) upstreamSeconds.observe(s);
    const counts = new Map<string, number>();
    for (const w of all) {
      for (const { qtype, rcode, count } of w.counts) {
        const k = `${TYPE_NAMES[qtype] ?? String(qtype)}\0${RCODE_NAMES[rcode] ?? String(rcode)}`;
        counts.set(k, (counts.get(k) ?? 0) + count);
      }
    }
    const sum = (f: (w: (typeof all)[number]) => number) => all.reduce((n, w) => n + f(w), 0);
    return { counts, cacheHits: sum((w) => w.cacheHits), limited: sum((w) => w.limited), refused: sum((w) => w.refused) };
  };
  // One scrape asks the workers once, whichever metric collects first.
  let scrape: Promise<Awaited<ReturnType<typeof totals>>> | null = null;
  const current = () => {
    scrape ??= totals().finally(() => setImmediate(() => (scrape = null)));
    return scrape;
  };

  new Counter({
    name: 'corral_dns_queries_total',
    help: 'DNS queries answered, by query type and response code',
    labelNames: ['qtype', 'rcode'] as const,
    registers: [metrics],
    async collect() {
      const t = await current();
      this.reset();
      for (const [k, count] of t.counts) {
        const [qtype, rcode] = k.split('\0') as [string, string];
        this.inc({ qtype, rcode }, count);
      }
    },
  });
  new Counter({
    name: 'corral_dns_cache_hits_total',
    help: 'Queries answered from a cache (pre-encoded authoritative answers and forwarded answers)',
    registers: [metrics],
    async collect() {
      const t = await current();
      this.reset();
      this.inc(t.cacheHits);
    },
  });
  new Counter({
    name: 'corral_dns_rate_limited_total',
    help: 'Queries dropped (UDP) or refused (TCP) because their client was over --dns-rate-limit',
    registers: [metrics],
    async collect() {
      const t = await current();
      this.reset();
      this.inc(t.limited);
    },
  });
  new Counter({
    name: 'corral_dns_recursion_refused_total',
    help: 'Queries for names outside the Corral domain refused because the client is outside the cluster and host',
    registers: [metrics],
    async collect() {
      const t = await current();
      this.reset();
      this.inc(t.refused);
    },
  });
  new Gauge({
    name: 'corral_dns_upstream_up',
    help: 'Whether an upstream resolver is in use (0 while it is skipped after repeated failures)',
    labelNames: ['upstream'] as const,
    registers: [metrics],
    collect() {
      this.reset();
      for (const u of forwarder.health()) this.set({ upstream: u.upstream }, u.up ? 1 : 0);
    },
  });
  new Gauge({
    name: 'corral_dns_applied_revision',
    help: 'Registry revision this DNS server answers from',
    registers: [metrics],
    collect() {
      this.set(zone.revision);
    },
  });

  const apply = (ev: WatchEvent): Promise<void> => {
    zone.apply(ev);
    const everyThread = workers ? workers.apply(ev) : Promise.resolve();
    gateways.apply(ev);
    return everyThread;
  };
  const ready = () => zone.synced && (workers?.ready ?? true);
  let listeners: BoundListener[] = [];
  let admin: HttpServer | undefined;
  let watch: AgentWatch | undefined;
  const close = async () => {
    watch?.close();
    await gateways.close();
    await workers?.close();
    forwarder.close();
    await server.close();
    if (admin) await new Promise<void>((r) => admin!.close(() => r()));
  };
  try {
    listeners = await server.listen();
    admin = await startAdmin(opts.adminListen || ADMIN_DEFAULTS.dns, {
      metrics,
      ready,
      status: () => ({
        component: 'dns',
        domain: zone.domain,
        ready: ready(),
        agentConnected: watch?.connected ?? false,
        zone: zone.stats(),
        listeners: server.bound(),
        gateway: gateways.status(),
        upstreams: forwarder.health(),
        threads,
        rateLimitPerClient: opts.dnsRateLimit,
        answerCacheNames: answers.size,
        forwardCacheEntries: forwarder.cacheSize,
      }),
    });
    watch = new AgentWatch(opts.agentSocket, 'dns', {
      onEvent: (ev) => {
        const first = !zone.synced;
        const applied = apply(ev);
        if (first && ev.snapshot) log.info(zone.stats(), 'DNS ready: first snapshot applied');
        // Acked to the agent only once every thread answers from it: `corral status` must not
        // claim a change is served while a worker thread still answers the old records.
        return applied;
      },
    }, log);
    watch.start();
  } catch (err) {
    await close().catch(() => {});
    throw err;
  }
  log.info({ listeners, domain: zone.domain, upstreams }, 'DNS listening');
  return { close, zone, listeners, adminPort: (admin.address() as AddressInfo).port, forwarder, server, limiter, apply };
}

/** --dns-upstream, else /etc/resolv.conf; never ourselves (that would loop). */
function chooseUpstreams(opts: DaemonOptions, log: Logger): Upstream[] {
  const all = opts.dnsUpstream.length > 0 ? opts.dnsUpstream.map(parseUpstream) : resolvConfUpstreams();
  const own = opts.dnsListen.map((l) => parseHostPort(l, '--dns-listen')).filter((l) => l.host !== 'gateway');
  const out = all.filter((u) => !own.some((l) => l.port === u.port && (l.host === u.host || l.host === '' || l.host === '0.0.0.0')));
  if (out.length === 0) log.warn('no upstream resolvers (set --dns-upstream or nameserver lines in /etc/resolv.conf): names outside the Corral domain get SERVFAIL');
  return out;
}
