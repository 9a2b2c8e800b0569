// The agent's Prometheus metrics. Events (a health check, a CNI call, a registry call) are counted
// where they happen; state (endpoints, IPAM, watch lag, the mesh) is read from the agent's parts
// at scrape time, so an idle agent does no metrics work between scrapes.
// Label cardinality: per-service series are bounded by the registry's services, per-peer series
// by the fleet's hosts; every other label has a fixed set of values.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { collectProcessMetrics } from '../api/admin.js';
import { activeColors, isServing } from '../api/traffic.js';
import type { ComponentStatus, Endpoint, PeerStatus } from '../api/types.js';
import type { Catalog } from './catalog.js';
import type { RegistryHealth } from './registry/registry.js';

/** What the agent shows its metrics at scrape time; parts it does not run (mesh, IPAM) are undefined. */
export interface AgentView {
  catalog: Catalog;
  components(): ComponentStatus[];
  registryHealth(): RegistryHealth;
  ipam(): { block: string; used: number; size: number } | undefined;
  mesh(): { peers: PeerStatus[]; appliedRevision: number; keyRotations: number } | undefined;
}

const CNI_VERBS = new Set(['ADD', 'DEL', 'CHECK', 'GC', 'STATUS', 'VERSION']);

export class AgentMetrics {
  readonly registry = new Registry();
  private readonly revision: Gauge;
  private readonly checks: Counter<'result'>;
  private readonly cniSeconds: Histogram<'verb' | 'result'>;
  private readonly registrySeconds: Histogram<'op'>;
  private readonly registryErrors: Counter<'op'>;

  constructor(view: AgentView) {
    const registers = [this.registry];
    collectProcessMetrics(this.registry);
    this.revision = new Gauge({ name: 'corral_agent_registry_revision', help: 'Latest registry revision the agent has applied', registers });
    const { catalog } = view;
    new Gauge({
      name: 'corral_agent_endpoints', help: 'Endpoints in the registry, by whether they serve (healthy and not draining)', labelNames: ['serving'], registers,
      collect() {
        let serving = 0;
        for (const ep of catalog.endpoints.values()) if (isServing(ep)) serving++;
        this.set({ serving: 'true' }, serving);
        this.set({ serving: 'false' }, catalog.endpoints.size - serving);
      },
    });
    // Both per-service gauges from one pass over the catalog per scrape (a pass less than 100 ms old is this scrape's).
    let perService = new Map<string, { namespace: string; service: string; total: number; serving: number }>();
    let talliedAt = -Infinity;
    const tallyServices = () => {
      if (performance.now() - talliedAt < 100) return;
      talliedAt = performance.now();
      const byService = new Map<string, Endpoint[]>();
      for (const ep of catalog.endpoints.values()) {
        const key = `${ep.namespace}/${ep.service}`;
        let list = byService.get(key);
        if (!list) byService.set(key, (list = []));
        list.push(ep);
      }
      for (const s of catalog.services.values()) if (!byService.has(`${s.namespace}/${s.name}`)) byService.set(`${s.namespace}/${s.name}`, []);
      perService = new Map();
      for (const [key, eps] of byService) {
        const [namespace, service] = [key.slice(0, key.indexOf('/')), key.slice(key.indexOf('/') + 1)];
        const colors = activeColors(catalog.services.get(key), eps);
        const serving = eps.filter((ep) => colors.has(ep.color) && isServing(ep)).length;
        perService.set(key, { namespace, service, total: eps.length, serving });
      }
    };
    new Gauge({
      name: 'corral_agent_service_endpoints', help: 'Endpoints registered per service (one series per service in the registry)', labelNames: ['namespace', 'service'], registers,
      collect() {
        tallyServices();
        this.reset();
        for (const s of perService.values()) this.set({ namespace: s.namespace, service: s.service }, s.total);
      },
    });
    new Gauge({
      name: 'corral_agent_service_serving_endpoints', help: 'Endpoints per service that receive traffic: healthy, not draining, of an active color', labelNames: ['namespace', 'service'], registers,
      collect() {
        tallyServices();
        this.reset();
        for (const s of perService.values()) this.set({ namespace: s.namespace, service: s.service }, s.serving);
      },
    });
    this.checks = new Counter({ name: 'corral_agent_health_checks_total', help: 'Active health checks of this host\'s endpoints, by result (pass, fail)', labelNames: ['result'], registers });
    this.checks.inc({ result: 'pass' }, 0);
    this.checks.inc({ result: 'fail' }, 0);
    new Gauge({
      name: 'corral_agent_ipam_addresses', help: 'Addresses of this host\'s block, by state (used, free); the gateway is not counted', labelNames: ['block', 'state'], registers,
      collect() {
        this.reset();
        const b = view.ipam();
        if (!b) return;
        this.set({ block: b.block, state: 'used' }, b.used);
        this.set({ block: b.block, state: 'free' }, b.size - b.used);
      },
    });
    this.cniSeconds = new Histogram({
      name: 'corral_agent_cni_operation_duration_seconds', help: 'CNI operations served by the agent, by verb and result (ok, error)', labelNames: ['verb', 'result'], registers,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    });
    this.registrySeconds = new Histogram({
      name: 'corral_agent_registry_call_duration_seconds', help: 'Calls to the registry (etcd or embedded), by operation (range, txn), failed ones included', labelNames: ['op'], registers,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    });
    this.registryErrors = new Counter({ name: 'corral_agent_registry_call_errors_total', help: 'Registry calls that failed, by operation (range, txn)', labelNames: ['op'], registers });
    for (const op of ['range', 'txn']) this.registryErrors.inc({ op }, 0);
    new Gauge({
      name: 'corral_agent_registry_connected', help: 'Whether the registry answers (0 once calls have kept failing for 2 s: `corral status` says STALE)', registers,
      collect() {
        this.set(view.registryHealth().connected ? 1 : 0);
      },
    });
    new Gauge({
      name: 'corral_agent_registry_unreachable_seconds', help: 'How long the registry has been unreachable (0 while it answers)', registers,
      collect() {
        const h = view.registryHealth();
        this.set(h.connected ? 0 : Math.max(0, (Date.now() - h.sinceMs) / 1000));
      },
    });
    new Gauge({
      name: 'corral_agent_watch_lag_revisions', help: 'Registry revisions a consumer of the agent\'s watch (dns, lb, mesh) has not applied yet', labelNames: ['consumer'], registers,
      collect() {
        this.reset();
        const current = catalog.revision;
        for (const c of view.components()) if (c.connected) this.set({ consumer: c.component }, Math.max(0, current - c.appliedRevision));
        const mesh = view.mesh();
        if (mesh) this.set({ consumer: 'mesh' }, Math.max(0, current - mesh.appliedRevision));
      },
    });
    new Gauge({
      name: 'corral_agent_mesh_peers', help: 'WireGuard peers this host has configured (other hosts of the mesh)', registers,
      collect() {
        this.set(view.mesh()?.peers.length ?? 0);
      },
    });
    new Gauge({
      name: 'corral_agent_mesh_peer_handshake_age_seconds',
      help: 'Seconds since the last WireGuard handshake with each peer, +Inf before the first; one series per other host (bounded by the fleet size)',
      labelNames: ['peer'], registers,
      collect() {
        this.reset();
        const now = Date.now();
        for (const p of view.mesh()?.peers ?? []) this.set({ peer: p.host }, p.lastHandshakeMs > 0 ? Math.max(0, (now - p.lastHandshakeMs) / 1000) : Infinity);
      },
    });
    new Counter({
      name: 'corral_agent_mesh_key_rotations_total', help: 'WireGuard key rotations this host completed (by command or on --key-rotation)', registers,
      collect() {
        this.reset();
        this.inc(view.mesh()?.keyRotations ?? 0);
      },
    });
  }

  applied(revision: number): void {
    this.revision.set(revision);
  }

  healthCheck(ok: boolean): void {
    this.checks.inc({ result: ok ? 'pass' : 'fail' });
  }

  cni(verb: string, ok: boolean, seconds: number): void {
    this.cniSeconds.observe({ verb: CNI_VERBS.has(verb) ? verb : 'other', result: ok ? 'ok' : 'error' }, seconds);
  }

  registryCall(op: 'range' | 'txn', ok: boolean, seconds: number): void {
    this.registrySeconds.observe({ op }, seconds);
    if (!ok) this.registryErrors.inc({ op });
  }
}
