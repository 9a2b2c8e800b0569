// The agent's metrics as Prometheus text, from a real catalog: per-service serving endpoints
// follow the traffic rule (active colors, health, draining), watch lag is per consumer, the mesh
// gauges say +Inf for a peer never handshaken, and the whole exposition passes promtool's lint.
import { describe, expect, it } from 'vitest';
import { run } from '../test/support/netns.js';
import { endpoint, service } from '../test/support/records.js';
import { Catalog, keys } from './catalog.js';
import { AgentMetrics } from './metrics.js';

function catalog(): Catalog {
  const c = new Catalog();
  const eps = [
    endpoint({ service: 'web', address: '10.42.0.5', color: 'blue', node: 'h1' }),
    endpoint({ service: 'web', address: '10.42.0.6', color: 'blue', node: 'h1' }),
    endpoint({ service: 'web', address: '10.42.0.7', color: 'blue', node: 'h1', draining: true }),
    endpoint({ service: 'web', address: '10.42.0.8', color: 'green', node: 'h1' }),
    endpoint({ service: 'api', namespace: 'prod', address: '10.42.0.9', node: 'h1', healthy: false }),
  ];
  c.load({
    revision: 7,
    kvs: [
      ...eps.map((ep) => ({ key: keys.endpoint(ep.node, ep.id), value: JSON.stringify(ep), modRevision: 3 })),
      { key: keys.service('default', 'web'), value: JSON.stringify(service('web', { blue: 100 })), modRevision: 4 },
    ],
  });
  return c;
}

describe('agent metrics', () => {
  it('report services, IPAM, the registry, watch lag and the mesh as an operator reads them', async () => {
    const now = Date.now();
    const m = new AgentMetrics({
      catalog: catalog(),
      components: () => [
        { component: 'dns', appliedRevision: 5, connected: true },
        { component: 'lb', appliedRevision: 7, connected: true },
        { component: 'old', appliedRevision: 1, connected: false },
      ],
      registryHealth: () => ({ connected: false, error: 'etcd unreachable', sinceMs: now - 30_000 }),
      ipam: () => ({ block: '10.42.0.0/24', used: 3, size: 253 }),
      mesh: () => ({
        peers: [
          { host: 'h2', endpoint: '10.99.0.2:51820', lastHandshakeMs: now - 42_000, rxBytes: 0, txBytes: 0, publicKey: 'k2' },
          { host: 'h3', endpoint: '10.99.0.3:51820', lastHandshakeMs: 0, rxBytes: 0, txBytes: 0, publicKey: 'k3' },
        ],
        appliedRevision: 6,
        keyRotations: 2,
      }),
    });
    m.healthCheck(true);
    m.healthCheck(true);
    m.healthCheck(false);
    m.cni('ADD', true, 0.03);
    m.cni('DEL', false, 0.2);
    m.cni('BOGUS', false, 0.001);
    m.registryCall('txn', false, 0.5);
    m.applied(7);
    const text = await m.registry.metrics();
    const value = (series: string) => {
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      return line === undefined ? undefined : Number(line.slice(series.length + 1));
    };
    // Blue is active: two of its three endpoints serve (one drains); green gets no traffic.
    expect(value('corral_agent_service_serving_endpoints{namespace="default",service="web"}')).toBe(2);
    expect(value('corral_agent_service_endpoints{namespace="default",service="web"}')).toBe(4);
    expect(value('corral_agent_service_serving_endpoints{namespace="prod",service="api"}')).toBe(0);
    expect(value('corral_agent_endpoints{serving="true"}')).toBe(3);
    expect(value('corral_agent_health_checks_total{result="pass"}')).toBe(2);
    expect(value('corral_agent_health_checks_total{result="fail"}')).toBe(1);
    expect(value('corral_agent_ipam_addresses{block="10.42.0.0/24",state="free"}')).toBe(250);
    expect(value('corral_agent_cni_operation_duration_seconds_count{verb="ADD",result="ok"}')).toBe(1);
    expect(value('corral_agent_cni_operation_duration_seconds_count{verb="DEL",result="error"}')).toBe(1);
    expect(value('corral_agent_cni_operation_duration_seconds_count{verb="other",result="error"}')).toBe(1);
    expect(value('corral_agent_registry_call_errors_total{op="txn"}')).toBe(1);
    expect(value('corral_agent_registry_connected')).toBe(0);
    expect(value('corral_agent_registry_unreachable_seconds')).toBeGreaterThanOrEqual(30);
    expect(value('corral_agent_watch_lag_revisions{consumer="dns"}')).toBe(2);
    expect(value('corral_agent_watch_lag_revisions{consumer="lb"}')).toBe(0);
    expect(value('corral_agent_watch_lag_revisions{consumer="mesh"}')).toBe(1);
    expect(text).not.toContain('consumer="old"');
    expect(value('corral_agent_mesh_peers')).toBe(2);
    expect(value('corral_agent_mesh_peer_handshake_age_seconds{peer="h2"}')).toBeGreaterThanOrEqual(42);
    expect(text).toMatch(/^corral_agent_mesh_peer_handshake_age_seconds\{peer="h3"\} \+Inf$/m);
    expect(value('corral_agent_mesh_key_rotations_total')).toBe(2);
    expect(value('corral_agent_registry_revision')).toBe(7);
    const lint = await run('promtool', ['check', 'metrics'], { input: text }).catch((err: Error) => ({ stdout: err.message, stderr: '' }));
    expect(`${lint.stdout}${lint.stderr}`.trim()).toBe('');
  });
});
