// `corral dns`: the agent's watch stream feeds the zone, the listeners answer from it (and
// forward the rest), the admin endpoint reports readiness and metrics.
import type { Server as HttpServer } from 'node:http';
import { availableParallelism } from 'node:os';
import type { AddressInfo } from 'node:net';
import { startAdmin } from '../api/admin.js';
import { compactEvent, DNS_FIELDS, Interner } from '../api/compact.js';
import type { Logger } from '../api/log.js';
import { ADMIN_DEFAULTS, parseHostPort, type DaemonOptions } from '../api/options.js';
import type { WatchEvent } from '../api/types.js';
import { socketWatch, type WatchSource, type WatchStream } from '../api/watch.js';
import { heapNow, mergedMetrics, type SpawnWorker } from '../api/workers.js';
import { RecursionAcl } from './access.js';
import { AnswerCache } from './answers.js';
import { batchSupport } from './batch.js';
import { Forwarder, parseUpstream, resolvConfUpstreams, type ForwarderOptions, type Upstream } from './forward.js';
import { GatewayListeners } from './gateways.js';
import { DnsMetrics } from './metrics.js';
import { RateLimiter } from './ratelimit.js';
import { DnsServer, type BoundListener } from './server.js';
import { UdpWorkers } from './workers.js';
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

export interface DnsTuning {
  forwarder?: ForwarderOptions;
  tcpIdleMs?: number;
  /** How worker threads are started (tests run them from the TypeScript source). */
  spawnWorker?: SpawnWorker;
  /** Where records come from (default: the agent's socket, --agent-socket). */
  watch?: WatchSource;
}

export async function runDns(opts: DaemonOptions, log: Logger, tuning: DnsTuning = {}): Promise<RunningDns> {
  const zone = new Zone(opts.dnsDomain, opts.dnsTtl);
  const answers = new AnswerCache(zone);
  const metrics = new DnsMetrics();
  const upstreams = chooseUpstreams(opts, log);
  const forwarder = new Forwarder(upstreams, { ...tuning.forwarder, onUpstream: (s) => metrics.upstreamSeconds.observe(s) });
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
  const { onUpstream: _, ...forwarderTuning } = tuning.forwarder ?? {};
  const workers = threads > 1 ? await UdpWorkers.start(threads - 1, { opts, upstreams, forwarder: forwarderTuning, threads, batch }, log, tuning.spawnWorker) : null;
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

  metrics.count({ server, answers, forwarder, limiter });
  metrics.mainThread(forwarder, zone);

  const apply = (ev: WatchEvent): Promise<void> => {
    zone.apply(ev);
    const everyThread = workers ? workers.apply(ev) : Promise.resolve();
    gateways.apply(ev);
    return everyThread;
  };
  const ready = () => zone.synced && (workers?.ready ?? true);
  let listeners: BoundListener[] = [];
  let admin: HttpServer | undefined;
  let watch: WatchStream | undefined;
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
      // Every thread's counters, merged at scrape time.
      metrics: workers ? mergedMetrics(metrics.registry, () => workers.metrics()) : metrics.registry,
      ready,
      status: async () => ({
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
        workerHeaps: (await workers?.heaps()) ?? [],
        // The main thread's (in `corral up` shared with the agent and the LB).
        mainHeap: heapNow(),
      }),
    });
    const ownCopies = tuning.watch === undefined;
    const intern = new Interner();
    watch = (tuning.watch ?? socketWatch(opts.agentSocket))('dns', {
      // Hosts: this node's record gives the block gateway to listen on; allocations: PTR and client namespaces.
      kinds: ['endpoints', 'services', 'hosts', 'allocations'],
      onEvent: (ev) => {
        const first = !zone.synced;
        // Records off the agent socket are fresh copies: kept compact (api/compact.ts). Inside
        // `corral up` they are the agent's own objects, shared, and not ours to change.
        const applied = apply(ownCopies ? compactEvent(ev, intern, DNS_FIELDS) : ev);
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
