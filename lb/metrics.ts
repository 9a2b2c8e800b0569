// The load balancer's Prometheus metrics. Label children are cached per service/endpoint object,
// so counting a request is a couple of map lookups, not a label hash per request.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Endpoint } from '../api/types.js';
import type { EjectionReason, OutlierObserver } from './outliers.js';
import type { RouteTarget } from './routes.js';

type CounterChild = ReturnType<Counter<string>['labels']>;
type HistogramChild = ReturnType<Histogram<string>['labels']>;

/** What the proxy reports per request; the metrics are one implementation, tests may use another. */
export interface ProxyObserver {
  /** A response was sent. `target`/`endpoint` are undefined for 404 and 503 answers. */
  response(target: RouteTarget | undefined, endpoint: Endpoint | undefined, code: number, upstreamSeconds: number): void;
}

export class LbMetrics implements ProxyObserver, OutlierObserver {
  readonly registry = new Registry();
  private readonly requests: Counter<'namespace' | 'service' | 'color' | 'code'>;
  private readonly upstream: Histogram<'namespace' | 'service'>;
  readonly appliedRevision: Gauge;
  private readonly ejections: Counter<'namespace' | 'service' | 'endpoint' | 'reason'>;
  private readonly ejectedNow: Gauge<'namespace' | 'service' | 'endpoint'>;
  private readonly byEndpoint = new WeakMap<Endpoint, Map<number, CounterChild>>();
  private readonly byTarget = new WeakMap<RouteTarget, { codes: Map<number, CounterChild>; seconds: HistogramChild }>();
  private readonly unrouted = new Map<number, CounterChild>();

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    this.requests = new Counter({
      name: 'corral_lb_requests_total',
      help: 'HTTP requests answered by the load balancer, by service, color and status code',
      labelNames: ['namespace', 'service', 'color', 'code'],
      registers: [this.registry],
    });
    this.upstream = new Histogram({
      name: 'corral_lb_upstream_seconds',
      help: 'Time from forwarding a request to the end of the upstream response',
      labelNames: ['namespace', 'service'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [this.registry],
    });
    this.appliedRevision = new Gauge({
      name: 'corral_lb_applied_revision',
      help: 'Registry revision the load balancer has applied to its routes and backends',
      registers: [this.registry],
    });
    this.ejections = new Counter({
      name: 'corral_lb_ejections_total',
      help: 'Endpoints this load balancer took out on its own (passive health), by reason: connect failures or 5xx in a row',
      labelNames: ['namespace', 'service', 'endpoint', 'reason'],
      registers: [this.registry],
    });
    this.ejectedNow = new Gauge({
      name: 'corral_lb_ejected',
      help: 'Whether this load balancer has an endpoint ejected now (1) until a probe passes',
      labelNames: ['namespace', 'service', 'endpoint'],
      registers: [this.registry],
    });
  }

  ejected(ep: Endpoint, reason: EjectionReason): void {
    const where = `${ep.address.includes(':') ? `[${ep.address}]` : ep.address}:${ep.port}`;
    this.ejections.labels(ep.namespace, ep.service, where, reason).inc();
    this.ejectedNow.labels(ep.namespace, ep.service, where).set(1);
  }

  returned(ep: Endpoint): void {
    const where = `${ep.address.includes(':') ? `[${ep.address}]` : ep.address}:${ep.port}`;
    this.ejectedNow.labels(ep.namespace, ep.service, where).set(0);
  }

  response(target: RouteTarget | undefined, endpoint: Endpoint | undefined, code: number, upstreamSeconds: number): void {
    if (target === undefined) {
      this.child(this.unrouted, code, '', '', '').inc();
      return;
    }
    let t = this.byTarget.get(target);
    if (t === undefined) {
      t = { codes: new Map(), seconds: this.upstream.labels(target.namespace, target.name) };
      this.byTarget.set(target, t);
    }
    if (endpoint === undefined) {
      this.child(t.codes, code, target.namespace, target.name, '').inc();
      return;
    }
    let codes = this.byEndpoint.get(endpoint);
    if (codes === undefined) this.byEndpoint.set(endpoint, (codes = new Map()));
    this.child(codes, code, target.namespace, target.name, endpoint.color).inc();
    t.seconds.observe(upstreamSeconds);
  }

  private child(cache: Map<number, CounterChild>, code: number, ns: string, service: string, color: string): CounterChild {
    let c = cache.get(code);
    if (c === undefined) cache.set(code, (c = this.requests.labels(ns, service, color, String(code))));
    return c;
  }
}
