// `corral dns`: the agent's watch stream feeds the zone, the listeners answer from it (and
// forward the rest), the admin endpoint reports readiness and metrics.
import type { Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { startAdmin } from '../api/admin.js';
import type { Logger } from '../api/log.js';
import { ADMIN_DEFAULTS, parseHostPort, type DaemonOptions } from '../api/options.js';
import { AgentWatch } from '../api/watch.js';
import { AnswerCache } from './answers.js';
import { Forwarder, parseUpstream, resolvConfUpstreams, type ForwarderOptions, type Upstream } from './forward.js';
import { DnsServer, type BoundListener } from './server.js';
import { RCODE, TYPE_NAMES } from './wire.js';
import { Zone } from './zone.js';

export interface RunningDns {
  close(): Promise<void>;
  zone: Zone;
  /** Where DNS listens (the real ports when asked for port 0). */
  listeners: BoundListener[];
  adminPort: number;
  forwarder: Forwarder;
}

const RCODE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(RCODE).map(([k, v]) => [v, k]));
RCODE_NAMES[16] = 'BADVERS';

export async function runDns(opts: DaemonOptions, log: Logger, tuning: { forwarder?: ForwarderOptions } = {}): Promise<RunningDns> {
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
  const server = new DnsServer(zone, answers, forwarder, { listen: opts.dnsListen, log });

  new Counter({
    name: 'corral_dns_queries_total',
    help: 'DNS queries answered, by query type and response code',
    labelNames: ['qtype', 'rcode'] as const,
    registers: [metrics],
    collect() {
      // The hot path counts in plain integers; copy them out at scrape time.
      this.reset();
      for (const { qtype, rcode, count } of server.counts.entries()) {
        this.inc({ qtype: TYPE_NAMES[qtype] ?? String(qtype), rcode: RCODE_NAMES[rcode] ?? String(rcode) }, count);
      }
    },
  });
  new Counter({
    name: 'corral_dns_cache_hits_total',
    help: 'Queries answered from a cache (pre-encoded authoritative answers and forwarded answers)',
    registers: [metrics],
    collect() {
      this.reset();
      this.inc(answers.hits + forwarder.hits);
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

  let listeners: BoundListener[] = [];
  let admin: HttpServer | undefined;
  let watch: AgentWatch | undefined;
  const close = async () => {
    watch?.close();
    forwarder.close();
    await server.close();
    if (admin) await new Promise<void>((r) => admin!.close(() => r()));
  };
  try {
    listeners = await server.listen();
    admin = await startAdmin(opts.adminListen || ADMIN_DEFAULTS.dns, {
      metrics,
      ready: () => zone.synced,
      status: () => ({
        component: 'dns',
        domain: zone.domain,
        ready: zone.synced,
        agentConnected: watch?.connected ?? false,
        zone: zone.stats(),
        listeners,
        upstreams: upstreams.map((u) => `${u.host}:${u.port}`),
        answerCacheNames: answers.size,
        forwardCacheEntries: forwarder.cacheSize,
      }),
    });
    watch = new AgentWatch(opts.agentSocket, 'dns', {
      onEvent: (ev) => {
        const first = !zone.synced;
        zone.apply(ev);
        if (first && ev.snapshot) log.info(zone.stats(), 'DNS ready: first snapshot applied');
      },
    }, log);
    watch.start();
  } catch (err) {
    await close().catch(() => {});
    throw err;
  }
  log.info({ listeners, domain: zone.domain, upstreams }, 'DNS listening');
  return { close, zone, listeners, adminPort: (admin.address() as AddressInfo).port, forwarder };
}

/** --dns-upstream, else /etc/resolv.conf; never ourselves (that would loop). */
function chooseUpstreams(opts: DaemonOptions, log: Logger): Upstream[] {
  const all = opts.dnsUpstream.length > 0 ? opts.dnsUpstream.map(parseUpstream) : resolvConfUpstreams();
  const own = opts.dnsListen.map((l) => parseHostPort(l, '--dns-listen'));
  const out = all.filter((u) => !own.some((l) => l.port === u.port && (l.host === u.host || l.host === '' || l.host === '0.0.0.0')));
  if (out.length === 0) log.warn('no upstream resolvers (set --dns-upstream or nameserver lines in /etc/resolv.conf): names outside the Corral domain get SERVFAIL');
  return out;
}
