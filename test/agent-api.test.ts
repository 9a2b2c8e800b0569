// The agent API and CLI as a user drives them: a real `corral agent` process, the real
// `corral` executable for commands, and a real gRPC watch client.
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentClient, grpc } from '../api/grpc.js';
import { AgentWatch } from '../api/watch.js';
import type { WatchEvent } from '../api/types.js';
import { corral, startDaemon, type Daemon } from './support/corral.js';
import { startEtcd, type EtcdCluster } from './support/etcd.js';
import { until } from './support/until.js';

const json = (s: string) => JSON.parse(s);
/** The agent's own state, polled closely. */
const SOON = { ms: 5_000, everyMs: 20 };

for (const registry of ['embedded', 'etcd'] as const) describe(`corral agent API and CLI (${registry} registry)`, () => {
  let agent: Daemon;
  let etcd: EtcdCluster | undefined;
  beforeAll(async () => {
    if (registry === 'etcd') etcd = await startEtcd();
    agent = await startDaemon('agent', etcd ? { args: ['--registry', etcd.spec, '--overlay', 'off'] } : {});
  });
  afterAll(async () => {
    await agent?.stop();
    await etcd?.stop();
  });

  it('serves its API on a socket only root can use', () => {
    expect(statSync(agent.socket).mode & 0o777).toBe(0o600);
  });

  it('registers an endpoint that is not a container and lists it', async () => {
    const r = await agent.cli(['register', 'api', '127.0.0.1:18080', '--http-host', 'api.test', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const reg = json(r.stdout);
    expect(reg.endpoint).toMatchObject({ service: 'api', namespace: 'default', address: '127.0.0.1', port: 18080, color: 'default', healthy: true, origin: 'manual', httpHosts: ['api.test'] });
    const services = json((await agent.cli(['services', '--json'])).stdout);
    expect(services.services).toContainEqual(expect.objectContaining({ name: 'api', namespace: 'default', active: { default: 100 } }));
    const eps = await agent.cli(['endpoints', 'api']);
    expect(eps.code).toBe(0);
    expect(eps.stdout).toMatch(/127\.0\.0\.1:18080\s+default\s+1\s+healthy\s+manual/);
  });

  it('rejects bad input with exit 2 and one line that says what is accepted', async () => {
    const bad = await agent.cli(['register', 'Bad_Name!', '127.0.0.1:80']);
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim().split('\n')).toHaveLength(1);
    expect(bad.stderr).toMatch(/service="Bad_Name!" is not valid: a DNS label/);
    const port = await agent.cli(['register', 'web', '127.0.0.1:99999']);
    expect(port.code).toBe(2);
    expect(port.stderr).toMatch(/needs ADDR:PORT/);
    const usage = await agent.cli(['switch', 'web']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/usage: corral switch <service> <color>/);
    const unknown = await corral(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command "frobnicate"/);
  });

  it('fails with exit 1 and says what to do when the agent is not there', async () => {
    const r = await corral(['status', '--agent-socket', '/nonexistent/agent.sock']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot reach the agent at \/nonexistent\/agent.sock: is `corral up` or `corral agent` running/);
  });

  it('switches, weights and rolls back colors, each at one new revision', async () => {
    for (const [addr, color] of [['127.0.0.2:80', 'blue'], ['127.0.0.3:80', 'green']] as const) {
      expect((await agent.cli(['register', 'shop', addr, '--color', color, '-n', 'prod'])).code).toBe(0);
    }
    const before = json((await agent.cli(['status', '--json'])).stdout).revision;
    const sw = await agent.cli(['switch', 'shop', 'green', '-n', 'prod', '--json']);
    expect(sw.code, sw.stderr).toBe(0);
    expect(json(sw.stdout)).toMatchObject({ revision: before + 1, service: { active: { green: 100 }, previous: { blue: 100 } } });
    const w = json((await agent.cli(['weight', 'shop', 'blue=90', 'green=10', '-n', 'prod', '--json'])).stdout);
    expect(w).toMatchObject({ revision: before + 2, service: { active: { blue: 90, green: 10 } } });
    const rb = json((await agent.cli(['rollback', 'shop', '-n', 'prod', '--json'])).stdout);
    expect(rb).toMatchObject({ revision: before + 3, service: { active: { green: 100 } } });
    const missing = await agent.cli(['switch', 'shop', 'purple', '-n', 'prod']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no endpoint of color "purple" \(colors: blue, green\)/);
    const noSvc = await agent.cli(['switch', 'nosuch', 'blue']);
    expect(noSvc.code).toBe(1);
    expect(noSvc.stderr).toMatch(/no service nosuch in namespace default/);
  });

  it('streams a snapshot, then each change as a delta tagged with its revision', async () => {
    const events: WatchEvent[] = [];
    const w = new AgentWatch(agent.socket, 'test', { onEvent: (ev) => events.push(ev) });
    w.start();
    try {
      await until('the snapshot', () => events.length >= 1, SOON);
      expect(events[0]!.snapshot).toBe(true);
      expect(events[0]!.endpoints.map((e) => e.service)).toContain('api');
      const r = json((await agent.cli(['register', 'cache', '127.0.0.9:6379', '--json'])).stdout);
      await until('the delta', () => events.some((e) => e.revision === r.revision), SOON);
      const delta = events.find((e) => e.revision === r.revision)!;
      expect(delta.snapshot).toBe(false);
      expect(delta.endpoints.map((e) => e.address)).toEqual(['127.0.0.9']);
      expect(delta.services.map((s) => s.name)).toEqual(['cache']);
      // status shows what the watching component has applied
      await until('status shows the watcher applied it', async () => json((await agent.cli(['status', '--json'])).stdout).components.some((c: { component: string; appliedRevision: number }) => c.component === 'test' && c.appliedRevision >= r.revision), SOON);
    } finally {
      w.close();
    }
  });

  it('sends a watcher only the record kinds it asks for, and resumes a watch after its last revision without a snapshot', async () => {
    const client = agentClient(agent.socket);
    // The first events of a raw watch, until one at `until` arrives.
    const firstEvents = (req: object, atRevision: number) => new Promise<WatchEvent[]>((resolve, reject) => {
      const got: WatchEvent[] = [];
      const call = client.Watch(req) as grpc.ClientReadableStream<WatchEvent>;
      call.on('data', (ev: WatchEvent) => {
        got.push(ev);
        if (ev.revision >= atRevision) {
          call.cancel();
          resolve(got);
        }
      });
      call.on('error', (err: grpc.ServiceError) => err.code !== grpc.status.CANCELLED && reject(err));
    });
    try {
      const all = json((await agent.cli(['status', '--json'])).stdout).revision as number;
      const [full] = await firstEvents({ component: 'cli' }, 0);
      expect(full!.snapshot).toBe(true);
      expect(full!.hosts.map((h) => h.name)).toContain(json((await agent.cli(['status', '--json'])).stdout).node);
      const [lbView] = await firstEvents({ component: 'cli', kinds: ['endpoints', 'services'] }, 0);
      expect(lbView).toMatchObject({ snapshot: true, revision: all, hosts: [], allocations: [] });
      expect(lbView!.endpoints.length).toBeGreaterThan(0);

      const r1 = json((await agent.cli(['register', 'resume1', '127.0.0.21:80', '--json'])).stdout).revision as number;
      const r2 = json((await agent.cli(['register', 'resume2', '127.0.0.22:80', '--json'])).stdout).revision as number;
      const resumed = await firstEvents({ component: 'cli', kinds: ['endpoints', 'services'], fromRevision: r1 }, r2);
      expect(resumed).toHaveLength(1);
      expect(resumed[0]).toMatchObject({ snapshot: false, revision: r2 });
      expect(resumed[0]!.endpoints.map((e) => e.service)).toEqual(['resume2']);
      // Nothing changed since: one empty event at the current revision says "in sync".
      expect(await firstEvents({ component: 'cli', fromRevision: r2 }, r2)).toEqual([expect.objectContaining({ snapshot: false, revision: r2, endpoints: [], services: [] })]);
      // A revision the agent never had (another registry, or history gone): a snapshot.
      const [fresh] = await firstEvents({ component: 'cli', fromRevision: r2 + 1_000_000 }, 0);
      expect(fresh!.snapshot).toBe(true);
    } finally {
      client.close();
    }
  });

  it('drains a deregistered endpoint, then forgets it', async () => {
    await agent.cli(['register', 'tmp', '127.0.0.5:80']);
    const d = await agent.cli(['deregister', 'tmp', '127.0.0.5:80', '--json']);
    expect(d.code, d.stderr).toBe(0);
    expect(json(d.stdout).endpoint).toMatchObject({ draining: true });
    const again = await agent.cli(['deregister', 'nosuch', '127.0.0.5:80']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/no registered endpoint 127.0.0.5:80 of service nosuch/);
  });
});

describe('corral agent restarts', () => {
  it('keeps its registry across a clean stop and a kill -9', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'corral-restart-'));
    const first = await startDaemon('agent', { stateDir });
    try {
      const reg = json((await first.cli(['register', 'db', '127.0.0.7:5432', '--json'])).stdout);
      expect(await first.stop('SIGTERM')).toBe(0);
      const second = await startDaemon('agent', { stateDir });
      const eps = json((await second.cli(['endpoints', 'db', '--json'])).stdout);
      expect(eps.endpoints.map((e: { address: string }) => e.address)).toEqual(['127.0.0.7']);
      expect(eps.revision).toBeGreaterThanOrEqual(reg.revision);
      const reg2 = json((await second.cli(['register', 'db', '127.0.0.8:5432', '--json'])).stdout);
      await second.stop('SIGKILL'); // an acknowledged registration survives kill -9
      const third = await startDaemon('agent', { stateDir });
      const eps3 = json((await third.cli(['endpoints', 'db', '--json'])).stdout);
      expect(eps3.endpoints.map((e: { address: string }) => e.address).sort()).toEqual(['127.0.0.7', '127.0.0.8']);
      expect(eps3.revision).toBeGreaterThanOrEqual(reg2.revision);
      await third.stop();
    } finally {
      rmSync(stateDir, { recursive: true, force: true });
    }
  });
});
