// DNS's Prometheus metrics. Every thread counts in plain numbers on its hot path (QueryCounts,
// cache hits, rate-limited and refused queries) and has a registry of its own that reads them at
// scrape time; the main thread's /metrics merges every thread's registry (api/workers.ts
// mergedMetrics: counters and histograms add up). Upstream health and the applied revision are
// the main thread's alone.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { collectProcessMetrics } from '../api/admin.js';
import type { AnswerCache } from './answers.js';
import type { Forwarder } from './forward.js';
import type { RateLimiter } from './ratelimit.js';
import { ANSWER_BUCKETS, type DnsServer } from './server.js';
import { RCODE, TYPE_NAMES } from './wire.js';
import type { Zone } from './zone.js';

const ANSWER_HELP = 'Time from a query\'s arrival to its answer being ready (forwarded ones include the upstream\'s time)';

const RCODE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(RCODE).map(([k, v]) => [v, k]));
RCODE_NAMES[16] = 'BADVERS';

/** What one thread counts with. */
export interface CountingParts {
  server: DnsServer;
  answers: AnswerCache;
  forwarder: Forwarder;
  limiter: RateLimiter;
}

export class DnsMetrics {
  readonly registry = new Registry();
  /** Observed by the thread's Forwarder (onUpstream), which exists before count() is called. */
  readonly upstreamSeconds = new Histogram({
    name: 'corral_dns_upstream_seconds',
    help: 'Time of one exchange with an upstream resolver',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });

  /** The thread's counters, read from its parts at scrape time. */
  count(p: CountingParts): void {
    const registers = [this.registry];
    new Counter({
      name: 'corral_dns_queries_total',
      help: 'DNS queries answered, by query type and response code',
      labelNames: ['qtype', 'rcode'] as const,
      registers,
      collect() {
        this.reset();
        for (const { qtype, rcode, count } of p.server.counts.entries()) {
          this.inc({ qtype: TYPE_NAMES[qtype] ?? String(qtype), rcode: RCODE_NAMES[rcode] ?? String(rcode) }, count);
        }
      },
    });
    const total = (name: string, help: string, read: () => number) => new Counter({
      name, help, registers,
      collect() {
        this.reset();
        this.inc(read());
      },
    });
    const times = p.server.answerTimes;
    this.registry.registerMetric({
      name: 'corral_dns_answer_seconds',
      help: ANSWER_HELP,
      type: 'histogram',
      aggregator: 'sum',
      get: () => {
        const values: Array<{ labels: Record<string, string>; value: number; metricName: string }> = [];
        let acc = 0;
        for (let i = 0; i < ANSWER_BUCKETS.length; i++) {
          acc += times.counts[i]!;
          values.push({ metricName: 'corral_dns_answer_seconds_bucket', labels: { le: String(ANSWER_BUCKETS[i]) }, value: acc });
        }
        values.push({ metricName: 'corral_dns_answer_seconds_bucket', labels: { le: '+Inf' }, value: times.n });
        values.push({ metricName: 'corral_dns_answer_seconds_sum', labels: {}, value: times.sumMs / 1000 });
        values.push({ metricName: 'corral_dns_answer_seconds_count', labels: {}, value: times.n });
        return { name: 'corral_dns_answer_seconds', help: ANSWER_HELP, type: 'histogram', aggregator: 'sum', values };
      },
    } as never);
    total('corral_dns_cache_hits_total', 'Queries answered from a cache (pre-encoded authoritative answers and forwarded answers)', () => p.answers.hits + p.forwarder.hits);
    total('corral_dns_upstream_queries_total', 'Queries sent to upstream resolvers (cache misses for names outside the Corral domain, and their retries)', () => p.forwarder.upstreamQueries);
    total('corral_dns_upstream_errors_total', 'Upstream exchanges that failed (timeout, socket error, unreadable reply)', () => p.forwarder.upstreamErrors);
    new Gauge({
      name: 'corral_dns_cache_entries', help: 'Answers held in the forwarding cache (name and type)', registers, aggregator: 'sum',
      collect() {
        this.set(p.forwarder.cacheSize);
      },
    });
    total('corral_dns_rate_limited_total', 'Queries dropped (UDP) or refused (TCP) because their client was over --dns-rate-limit', () => p.limiter.limited);
    total('corral_dns_recursion_refused_total', 'Queries for names outside the Corral domain refused because the client is outside the cluster and host', () => p.server.refused);
  }

  /** The main thread's: Node's process metrics, its forwarder's upstream health and the revision it answers from. */
  mainThread(forwarder: Forwarder, zone: Zone): void {
    collectProcessMetrics(this.registry);
    new Gauge({
      name: 'corral_dns_upstream_up',
      help: 'Whether an upstream resolver is in use (0 while it is skipped after repeated failures)',
      labelNames: ['upstream'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const u of forwarder.health()) this.set({ upstream: u.upstream }, u.up ? 1 : 0);
      },
    });
    new Gauge({
      name: 'corral_dns_applied_revision',
      help: 'Registry revision this DNS server answers from',
      registers: [this.registry],
      collect() {
        this.set(zone.revision);
      },
    });
  }
}
