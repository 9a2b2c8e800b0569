// What a host costs the registry does not grow with the fleet (issue 11), at reduced size: 100
// simulated hosts running the agent's own mesh code (fleet.ts) and 5,000 endpoints in 500
// services on one etcd, measured on etcd itself (meter.ts), plus one real `corral agent`.
// Counts, sizes and eventual convergence only: no wall-clock asserts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentWatch } from '../../api/watch.js';
import { STATUS_MIN_MS } from '../../agent/mesh.js';
import { keys } from '../../agent/catalog.js';
import { blockKey } from '../../agent/blocks.js';
import { startDaemon, type Daemon } from '../support/corral.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { eventually, Fleet } from './fleet.js';
import { EtcdMeter, windowOf } from './meter.js';

const HOSTS = 100;
const ENDPOINTS = 5000;
const SERVICES = 500;
/** Idle window: shorter than STATUS_MIN_MS, so no host may write its status twice in it. */
const IDLE_MS = 45_000;
const MAX_RECORD = 2048;

describe('fleet of 100 hosts on etcd (issue 11)', () => {
  let etcd: EtcdCluster;
  let meter: EtcdMeter;
  let fleet: Fleet;
  let agent: Daemon | undefined;
  /** Sizes of sim-0000's records with 10 hosts. */
  let at10: { host: number; status: number };

  const sizeOf = async (key: string) => (await fleet.client.get(key).string())?.length ?? 0;
  const detail = () => `(peers: ${fleet.running().map((h) => h.device.peerCount).join(',')}; fleet log: ${fleet.logged.last.slice(-3).join(' | ')})`;

  beforeAll(async () => {
    etcd = await startEtcd();
    meter = new EtcdMeter(etcd.endpoints);
    await meter.start();
    fleet = new Fleet({ endpoints: etcd.endpoints, leaseTtlS: 5 });
    await fleet.start();
  });

  afterAll(async () => {
    await agent?.stop();
    await fleet?.close();
    await meter?.close();
    await etcd?.stop();
  });

  it('a host\'s Host record and status report are no larger with 10 hosts than with 100 (≤ 2 KB)', async () => {
    const ten = Array.from({ length: 10 }, (_, i) => fleet.host(i));
    await fleet.join(ten);
    await eventually('10 hosts with 9 peers each', () => fleet.converged(), 60_000, detail);
    await meter.settle();
    at10 = { host: await sizeOf(keys.host('sim-0000')), status: await sizeOf(keys.status('sim-0000')) };
    expect(at10.host).toBeGreaterThan(0);
    expect(at10.status).toBeGreaterThan(0);
    // They leave (records gone after the 5 s lease) and come back in the burst below, same names, blocks and keys.
    await Promise.all(ten.map((h) => h.leave()));
    await eventually('the 10 Host records expired', async () => (await fleet.client.getAll().prefix('/corral/hosts/').keys()).length === 0, 30_000);
  });

  it('a burst of 100 hosts joining at once converges: every device ends with 99 peers', async () => {
    const burst = [...fleet.hosts, ...Array.from({ length: HOSTS - fleet.hosts.length }, (_, i) => fleet.host(10 + i))];
    expect(burst).toHaveLength(HOSTS);
    await fleet.join(burst);
    await eventually(`${HOSTS} hosts with ${HOSTS - 1} peers each`, () => fleet.converged(), 120_000, detail);
    await meter.settle();
    const host = await sizeOf(keys.host('sim-0000'));
    const status = await sizeOf(keys.status('sim-0000'));
    // The same host's record, byte for byte the same size; its report has the same fields, which
    // differ in digits and in worstPeer ('' until the first peer is set): a bounded difference.
    expect(host).toBe(at10.host);
    expect(Math.abs(status - at10.status)).toBeLessThanOrEqual(32);
    const report = JSON.parse((await fleet.client.get(keys.status('sim-0000')).string())!) as Record<string, unknown>;
    expect(Object.values(report).every((v) => typeof v === 'string' || typeof v === 'number')).toBe(true);
    for (const [key, k] of meter.reading().keys) expect(k.size, key).toBeLessThanOrEqual(MAX_RECORD);
  });

  it('a host joining a fleet of 100 sets all its peers in one device call', async () => {
    const h = fleet.host(HOSTS);
    await fleet.join([h]);
    await eventually(`${HOSTS + 1} hosts with ${HOSTS} peers each`, () => fleet.converged(), 60_000, detail);
    expect(h.device.peersPerCall).toEqual([HOSTS]);
  });

  it('idle: no Host record writes, at most one status write per host per minute, sizes ≤ 2 KB', async () => {
    await fleet.registerEndpoints(ENDPOINTS, SERVICES);
    // The fleet's catalog follows its own watch: the last writes may still be on their way.
    await eventually(`${ENDPOINTS} endpoints and ${SERVICES} services in the catalog`, () => fleet.catalog.endpoints.size === ENDPOINTS && fleet.catalog.services.size === SERVICES, 60_000);
    await meter.settle();
    const a = meter.reading();
    await new Promise((r) => setTimeout(r, IDLE_MS));
    await meter.settle();
    const w = windowOf(a, meter.reading());
    expect(IDLE_MS).toBeLessThan(STATUS_MIN_MS);
    expect(w.kinds.hosts.puts + w.kinds.hosts.deletes).toBe(0);
    expect(w.kinds.endpoints.puts + w.kinds.services.puts + w.kinds.blocks.puts).toBe(0);
    const perHost = fleet.running().map((h) => w.keys.get(keys.status(h.name))?.writes ?? 0);
    expect(Math.max(...perHost)).toBeLessThanOrEqual(1);
    for (const [key, k] of meter.reading().keys) expect(k.size, key).toBeLessThanOrEqual(MAX_RECORD);
  }, IDLE_MS + 120_000);

  it('a real agent\'s endpoints+services watch gets no Host event while 20 hosts join and leave, and a malformed or oversized Host record is reported once and ignored', async () => {
    // The agent's block is leased ahead, far from the simulated hosts' blocks.
    const agentBlock = '10.79.255.0/24';
    await fleet.client.put(blockKey('real-agent', agentBlock)).value(JSON.stringify({ block: agentBlock, node: 'real-agent', sinceMs: Date.now() }));
    agent = await startDaemon('agent', { nodeName: 'real-agent', args: ['--registry', `etcd://${etcd.endpoints.join(',')}`, '--overlay', 'off', '--cluster-cidr', fleet.clusterCidr, '--lease-ttl', '5'] });
    const seen = { events: 0, hostEvents: 0, endpoints: 0 };
    const watch = new AgentWatch(agent.socket, 'scale-test', {
      kinds: ['endpoints', 'services'],
      onEvent(ev) {
        seen.events++;
        seen.hostEvents += ev.hosts.length + ev.deletedHosts.length;
        seen.endpoints += ev.endpoints.length;
      },
    });
    watch.start();
    try {
      await eventually('the watch snapshot', () => seen.events > 0, 30_000);
      expect(seen.endpoints).toBe(ENDPOINTS);
      const broken = keys.host('broken-host');
      const oversized = keys.host('oversized-host');
      await fleet.client.put(broken).value('{"name":"broken-host","block":');
      await fleet.client.put(oversized).value(JSON.stringify({ name: 'oversized-host', block: '', underlay: '', publicKey: '', padding: 'x'.repeat(4096) }));

      const twenty = Array.from({ length: 20 }, (_, i) => fleet.host(HOSTS + 1 + i));
      const before = fleet.running().length;
      await fleet.join(twenty);
      await Promise.all(twenty.map((h) => h.register([{ id: `manual:default:svc-0:${h.block.replace('.0/24', '.2')}:8080`, service: 'svc-0', address: h.block.replace('.0/24', '.2'), withService: false }])));
      await eventually(`${before + 20} hosts with ${before + 19} peers each`, () => fleet.converged(), 120_000, detail);
      // The agent applies every block lease with the catalog's O(N²) check (see the report): wait for it.
      const agentEndpoints = async () => (JSON.parse((await agent!.cli(['status', '--json'])).stdout) as { endpoints: number }).endpoints;
      await eventually('the agent serves the 20 new endpoints', async () => (await agentEndpoints()) === ENDPOINTS + 20, 120_000);
      await eventually('the watch got the 20 new endpoints', () => seen.endpoints >= ENDPOINTS + 20, 30_000);
      await Promise.all(twenty.map((h) => h.leave()));
      await eventually(`back to ${before} hosts with ${before - 1} peers each`, () => fleet.converged(), 120_000, detail);
      await eventually('the 20 endpoints gone from the agent', async () => (await agentEndpoints()) === ENDPOINTS, 120_000);

      expect(seen.endpoints).toBeGreaterThanOrEqual(ENDPOINTS + 20);
      expect(seen.hostEvents).toBe(0);
      const st = JSON.parse((await agent.cli(['status', '--json'])).stdout) as { problems: string[] };
      for (const key of [broken, oversized]) {
        expect(st.problems.filter((p) => p.startsWith(`${key}:`)), key).toHaveLength(1);
        const warned = agent.logs().split('\n').filter((l) => l.includes(`"key":"${key}"`) && l.includes('not served'));
        expect(warned, key).toHaveLength(1);
        expect(fleet.problems.filter((p) => p.key === key), key).toHaveLength(1);
      }
    } finally {
      watch.close();
    }
  }, 300_000);

  it('endpoint churn costs the hosts nothing: no device call, no Host or block write; about one revision per change', async () => {
    await meter.settle();
    const a = meter.reading();
    const calls = () => fleet.running().reduce((n, h) => n + h.device.setPeersCalls, 0);
    const calls0 = calls();
    const churned0 = fleet.churned;
    const done0 = fleet.churned + fleet.churnErrors;
    fleet.startChurn(50);
    await eventually('200 endpoint changes written', () => fleet.churned + fleet.churnErrors - done0 >= 200, 60_000);
    fleet.stopChurn();
    await eventually('the last churn writes acknowledged', async () => {
      const n = fleet.churned + fleet.churnErrors;
      await new Promise((r) => setTimeout(r, 500));
      return fleet.churned + fleet.churnErrors === n;
    }, 30_000);
    await meter.settle();
    const w = windowOf(a, meter.reading());
    const changes = fleet.churned - churned0;
    expect(fleet.churnErrors).toBe(0);
    expect(calls()).toBe(calls0);
    expect(w.kinds.hosts.puts + w.kinds.hosts.deletes + w.kinds.blocks.puts + w.kinds.services.puts).toBe(0);
    // A health flip is one put; a re-registration (one in five) a delete and a put.
    expect(w.kinds.endpoints.revisions).toBeGreaterThanOrEqual(changes);
    expect(w.kinds.endpoints.revisions).toBeLessThanOrEqual(Math.ceil(changes * 1.2) + 2);
  }, 120_000);

  it('no simulated host logged an error', () => {
    // Events reach a mesh before its start() has a device: they must wait for its first sync, not fail.
    expect(fleet.logged.last.filter((l) => l.includes('"level":50'))).toEqual([]);
  });
});
