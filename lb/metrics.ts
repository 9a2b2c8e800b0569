// The load balancer's Prometheus metrics. Counting a request is a couple of map lookups and a
// number increment: tallies are plain objects cached per service/endpoint record, and turned into
// Prometheus text only when /metrics is scraped (prom-client's label children hash their labels
// on every call, which costs ~3% of the proxy's CPU).
import { Gauge, Registry } from 'prom-client';
import { collectProcessMetrics } from '../api/admin.js';
import type { Endpoint } from '../api/types.js';
import type { EjectionReason, OutlierObserver } from './outliers.js';
import type { RouteTarget } from './routes.js';

/** What the proxy reports per request; the metrics are one implementation, tests may use another. */
export interface ProxyObserver {
  /** A response was sent. `target`/`endpoint` are undefined for 404 and 503 answers. */
  response(target: RouteTarget | undefined, endpoint: Endpoint | undefined, code: number, upstreamSeconds: number): void;
  /** A request that failed to connect was sent again, to another endpoint of `target`. */
  retried?(target: RouteTarget): void;
}

type Labels = Record<string, string>;

/** One counter value with its labels. */
class Tally {
  value = 0;
  constructor(readonly labels: Labels) {}
}

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** One histogram series: per-bucket counts (not cumulative until scraped), sum and count. */
class Seconds {
  readonly counts = new Float64Array(BUCKETS.length + 1);
  sum = 0;
  n = 0;
  constructor(readonly labels: Labels) {}
  observe(v: number): void {
    let i = 0;
    while (i < BUCKETS.length && v > BUCKETS[i]!) i++;
    this.counts[i]!++;
    this.sum += v;
    this.n++;
  }
}

/** A metric for prom-client's registry, produced from our own tallies at scrape time. */
interface Scraped {
  name: string;
  help: string;
  type: 'counter' | 'histogram';
  aggregator: 'sum';
  get(): { name: string; help: string; type: string; aggregator: 'sum'; values: Array<{ labels: Labels; value: number; metricName?: string }> };
}

function counterMetric(name: string, help: string, series: Map<string, Tally>): Scraped {
  const m: Scraped = {
    name, help, type: 'counter', aggregator: 'sum',
    get: () => ({ name, help, type: 'counter', aggregator: 'sum', values: [...series.values()].map((t) => ({ labels: t.labels, value: t.value })) }),
  };
  return m;
}

function histogramMetric(name: string, help: string, series: Map<string, Seconds>): Scraped {
  return {
    name, help, type: 'histogram', aggregator: 'sum',
    get: () => {
      const values: Array<{ labels: Labels; value: number; metricName?: string }> = [];
      for (const s of series.values()) {
        let acc = 0;
        for (let i = 0; i < BUCKETS.length; i++) {
          acc += s.counts[i]!;
          values.push({ metricName: `${name}_bucket`, labels: { ...s.labels, le: String(BUCKETS[i]) }, value: acc });
        }
        values.push({ metricName: `${name}_bucket`, labels: { ...s.labels, le: '+Inf' }, value: s.n });
        values.push({ metricName: `${name}_sum`, labels: s.labels, value: s.sum });
        values.push({ metricName: `${name}_count`, labels: s.labels, value: s.n });
      }
      return { name, help, type: 'histogram', aggregator: 'sum', values };
    },
  };
}

export class LbMetrics implements ProxyObserver, OutlierObserver {
  readonly registry = new Registry();
  readonly appliedRevision: Gauge;
  /** Responses sent by this thread (all codes), for the status page's per-thread counts. */
  answered = 0;
  /** Every requests_total series by its label values. */
  private readonly requests = new Map<string, Tally>();
  private readonly upstream = new Map<string, Seconds>();
  private readonly ejections = new Map<string, Tally>();
  private readonly ejectedNow: Gauge<'namespace' | 'service' | 'endpoint'>;
  /** Fast paths: the tallies of a record object (replaced each revision that touches it). */
  private readonly byEndpoint = new WeakMap<Endpoint, Map<number, Tally>>();
  private readonly byTarget = new WeakMap<RouteTarget, { codes: Map<number, Tally>; seconds: Seconds }>();
  private readonly unrouted = new Map<number, Tally>();
  private readonly retries = new Map<string, Tally>();
  private readonly handshakes = { ok: new Tally({ result: 'ok' }), failed: new Tally({ result: 'failed' }) };
  /** Client connections open now; set by the thread's stack (its proxy counts them). */
  openConnections: () => number = () => 0;

  /**
   * `processMetrics`: Node's default metrics (CPU, memory, event loop). Worker threads leave them
   * out: most describe the whole process, and the main thread already reports them once.
   */
  constructor(processMetrics = true) {
    if (processMetrics) collectProcessMetrics(this.registry);
    this.registry.registerMetric(counterMetric(
      'corral_lb_requests_total', 'HTTP requests answered by the load balancer, by service, color and status code', this.requests,
    ) as never);
    this.registry.registerMetric(histogramMetric(
      'corral_lb_upstream_seconds', 'Time from forwarding a request to the end of the upstream response', this.upstream,
    ) as never);
    this.appliedRevision = new Gauge({
      name: 'corral_lb_applied_revision',
      help: 'Registry revision the load balancer has applied to its routes and backends',
      registers: [this.registry],
      // Merging threads: the revision every thread has applied (what the agent is acked).
      aggregator: 'min',
    });
    this.registry.registerMetric(counterMetric(
      'corral_lb_ejections_total', 'Endpoints this load balancer took out on its own (passive health), by reason: connect failures or 5xx in a row', this.ejections,
    ) as never);
    this.ejectedNow = new Gauge({
      name: 'corral_lb_ejected',
      help: 'Whether this load balancer has an endpoint ejected now (1) until a probe passes',
      labelNames: ['namespace', 'service', 'endpoint'],
      registers: [this.registry],
      // Merging threads (each has its own passive health): 1 while any thread has it ejected.
      aggregator: 'max',
    });
    this.registry.registerMetric(counterMetric(
      'corral_lb_retries_total', 'Requests sent again to another endpoint after a connection failure, by service', this.retries,
    ) as never);
    this.registry.registerMetric(counterMetric(
      'corral_lb_tls_handshakes_total', 'TLS handshakes with clients, by result (ok, failed)', new Map(Object.entries(this.handshakes)),
    ) as never);
    const open = () => this.openConnections();
    new Gauge({
      name: 'corral_lb_connections',
      help: 'Client connections open now (HTTP/1.1, HTTPS, and HTTP/2 streams)',
      registers: [this.registry],
      aggregator: 'sum',
      collect() {
        this.set(open());
      },
    });
  }

  tlsHandshake(ok: boolean): void {
    (ok ? this.handshakes.ok : this.handshakes.failed).value++;
  }

  retried(target: RouteTarget): void {
    this.tally(this.retries, { namespace: target.namespace, service: target.name }).value++;
  }

  ejected(ep: Endpoint, reason: EjectionReason): void {
    const where = hostPort(ep);
    this.tally(this.ejections, { namespace: ep.namespace, service: ep.service, endpoint: where, reason }).value++;
    this.ejectedNow.labels(ep.namespace, ep.service, where).set(1);
  }

  returned(ep: Endpoint): void {
    this.ejectedNow.labels(ep.namespace, ep.service, hostPort(ep)).set(0);
  }

  response(target: RouteTarget | undefined, endpoint: Endpoint | undefined, code: number, upstreamSeconds: number): void {
    this.answered++;
    if (target === undefined) {
      this.child(this.unrouted, code, '', '', '').value++;
      return;
    }
    let t = this.byTarget.get(target);
    if (t === undefined) {
      const labels = { namespace: target.namespace, service: target.name };
      let seconds = this.upstream.get(`${target.namespace}\0${target.name}`);
      if (seconds === undefined) this.upstream.set(`${target.namespace}\0${target.name}`, (seconds = new Seconds(labels)));
      t = { codes: new Map(), seconds };
      this.byTarget.set(target, t);
    }
    if (endpoint === undefined) {
      this.child(t.codes, code, target.namespace, target.name, '').value++;
      return;
    }
    let codes = this.byEndpoint.get(endpoint);
    if (codes === undefined) this.byEndpoint.set(endpoint, (codes = new Map()));
    this.child(codes, code, target.namespace, target.name, endpoint.color).value++;
    t.seconds.observe(upstreamSeconds);
  }

  private child(cache: Map<number, Tally>, code: number, namespace: string, service: string, color: string): Tally {
    let c = cache.get(code);
    if (c === undefined) cache.set(code, (c = this.tally(this.requests, { namespace, service, color, code: String(code) })));
    return c;
  }

  private tally(series: Map<string, Tally>, labels: Labels): Tally {
    const key = Object.values(labels).join('\0');
    let t = series.get(key);
    if (t === undefined) series.set(key, (t = new Tally(labels)));
    return t;
  }
}

function hostPort(ep: Endpoint): string {
  return `${ep.address.includes(':') ? `[${ep.address}]` : ep.address}:${ep.port}`;
}
