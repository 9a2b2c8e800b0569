// The parts of `corral upgrade` that are rules, not I/O: the upgrade record read as untrusted
// input, the gate's arithmetic and verdict, and the clone's Docker configuration.
import type Docker from 'dockerode';
import { describe, expect, it } from 'vitest';
import { makeLogger } from '../../api/log.js';
import type { Upgrade } from '../../api/types.js';
import { Catalog } from '../catalog.js';
import { cloneSpec, Cloner } from './clone.js';
import { judge, p99Ms, window } from './gate.js';
import { Upgrades, upgradeKeys } from './upgrades.js';

const base: Upgrade = {
  namespace: 'default', name: 'web', id: 'm1-abc123', image: 'app:2', fromColor: 'blue', toColor: 'green', original: { blue: 100 },
  steps: [10, 50, 100], stepMs: 30_000, maxErrorRate: 0.01, maxP99Ms: 0, maxP99Ratio: 0, readyTimeoutMs: 120_000, driver: 'h1',
  phase: 'stepping', step: 0, startedMs: 1, stepStartedMs: 2, reason: '', gate: '', hosts: ['h1', 'h2'],
};

function upgradesWith(kvs: Array<{ key: string; value: string }>): Upgrades {
  const up = new Upgrades({ catalog: new Catalog(), commit: async () => 1, node: 'h1', dockerSocket: '', lbAdmin: '127.0.0.1:9', log: makeLogger('test', 'silent') });
  up.load({ revision: 5, kvs: kvs.map((kv) => ({ ...kv, modRevision: 3 })) });
  return up;
}

describe('the upgrade record, read as untrusted input', () => {
  it('uses a valid record and names what is wrong with a broken one, once per key', () => {
    const bad: Array<[string, unknown]> = [
      ['steps', { ...base, steps: [50, 10, 100] }],
      ['steps', { ...base, steps: [10, 50] }],
      ['phase', { ...base, phase: 'exploding' }],
      ['image', { ...base, image: 'app 2' }],
      ['maxErrorRate', { ...base, maxErrorRate: 7 }],
      ['step', { ...base, step: 3 }],
      ['hosts', { ...base, hosts: ['h1', 42] }],
      ['record', 'null'],
    ];
    const kvs = bad.map(([, v], i) => ({ key: upgradeKeys.upgrade('default', `bad${i}`), value: typeof v === 'string' ? v : JSON.stringify({ ...(v as object), name: `bad${i}` }) }));
    kvs.push({ key: upgradeKeys.upgrade('default', 'web'), value: JSON.stringify(base) });
    kvs.push({ key: upgradeKeys.upgrade('default', 'other'), value: JSON.stringify(base) }); // names another service than its key
    kvs.push({ key: upgradeKeys.upgrade('default', 'huge'), value: JSON.stringify({ ...base, name: 'huge', reason: 'x'.repeat(9000) }) });
    const up = upgradesWith(kvs);
    expect(up.list(() => true).map((u) => u.name)).toEqual(['web']);
    const problems = up.problemLines();
    expect(problems).toHaveLength(bad.length + 2);
    for (const [field] of bad.slice(0, -1)) expect(problems.some((p) => p.includes(`${field}:`))).toBe(true);
    expect(problems.find((p) => p.startsWith(upgradeKeys.upgrade('default', 'other')))).toMatch(/does not name this upgrade/);
    expect(problems.find((p) => p.startsWith(upgradeKeys.upgrade('default', 'huge')))).toMatch(/bytes, at most 8192/);
  });

  it('reads only upgrade records from the whole registry: endpoints, blocks and services are none of its business', () => {
    const up = upgradesWith([
      { key: '/corral/endpoints/h1/manual:default:web:10.42.0.5:80', value: '{"id":"x"}' },
      { key: '/corral/blocks/h1/10.42.0.0_24', value: '{"block":"10.42.0.0/24","node":"h1","sinceMs":1}' },
      { key: '/corral/services/default/web', value: 'null' },
      { key: upgradeKeys.upgrade('default', 'web'), value: JSON.stringify(base) },
    ]);
    expect(up.list(() => true).map((u) => u.name)).toEqual(['web']);
    expect(up.problemLines()).toEqual([]);
  });

  it('takes a host\'s report only under that host\'s key', () => {
    const report = { node: 'h2', namespace: 'default', name: 'web', id: base.id, phase: 'cloning', done: true, error: '', clones: [], step: -1, figures: [] };
    const up = upgradesWith([
      { key: upgradeKeys.report('h2', 'default', 'web'), value: JSON.stringify(report) },
      { key: upgradeKeys.report('h3', 'default', 'web'), value: JSON.stringify(report) },
      { key: upgradeKeys.report('h2', 'default', 'api'), value: JSON.stringify({ ...report, name: 'api', figures: [{ color: 'green', requests: -1, errors: 0, buckets: [] }] }) },
    ]);
    expect([...(up.reports.get('default/web')?.keys() ?? [])]).toEqual(['h2']);
    expect(up.problemLines()).toHaveLength(2);
  });
});

describe('mutated upgrade records and reports', () => {
  it('never stop the reader: 5,000 mutations, each used only if it passes its schema', () => {
    const report = { node: 'h1', namespace: 'default', name: 'web', id: base.id, phase: 'stepping', done: true, error: '', step: 0,
      clones: [{ oldId: 'ab12', oldName: 'web1-blue', cloneId: 'cd34', cloneName: 'web1-green' }], figures: [{ color: 'green', requests: 3, errors: 1, buckets: [3] }] };
    const junk: unknown[] = [null, -1, 1e308, '', 'x'.repeat(300), [], {}, [1, 'a'], { a: 1 }, true, 0.5, NaN];
    let seed = 7;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
    const mutate = (o: Record<string, unknown>): Record<string, unknown> => {
      const c = JSON.parse(JSON.stringify(o)) as Record<string, unknown>;
      const ks = Object.keys(c);
      for (let i = 0, n = 1 + rand(3); i < n; i++) {
        const k = ks[rand(ks.length)]!;
        if (rand(5) === 0) delete c[k];
        else c[k] = junk[rand(junk.length)];
      }
      return c;
    };
    const kvs: Array<{ key: string; value: string }> = [];
    for (let i = 0; i < 2_500; i++) {
      kvs.push({ key: upgradeKeys.upgrade('default', 'web'), value: JSON.stringify(mutate(base as unknown as Record<string, unknown>)) });
      kvs.push({ key: upgradeKeys.report('h1', 'default', 'web'), value: JSON.stringify(mutate(report)) });
    }
    for (let i = 0; i < kvs.length; i += 500) expect(() => upgradesWith(kvs.slice(i, i + 500))).not.toThrow();
    const up = upgradesWith([...kvs, { key: upgradeKeys.upgrade('default', 'web'), value: JSON.stringify(base) }]);
    expect(up.list(() => true)).toEqual([base]);
  });
});

describe('the gate', () => {
  const f = (color: string, requests: number, errors: number, buckets: number[]) => ({ color, requests, errors, buckets });

  it('takes a step\'s figures as the difference of cumulative counters', () => {
    expect(window([f('green', 10, 1, [5, 5])], [f('green', 30, 2, [15, 15]), f('blue', 7, 0, [7, 0])])).toEqual([f('green', 20, 1, [10, 10]), f('blue', 7, 0, [7, 0])]);
  });

  it('finds the p99 bucket bound', () => {
    expect(p99Ms(f('green', 100, 0, [99, 1]))).toBe(1);
    expect(p99Ms(f('green', 100, 0, [98, 0, 2]))).toBe(5);
    expect(p99Ms(f('green', 0, 0, []))).toBe(0);
  });

  it('passes a clean step and fails on the 5xx share, the p99 bound and the p99 ratio, in one line', () => {
    const ok = judge(base, 0, [f('green', 100, 1, [100]), f('blue', 900, 0, [900])], []);
    expect(ok.pass).toBe(true);
    expect(ok.figures).toBe('step 1/3 (green 10%): green 100 requests, 1 5xx (1.0%), p99 <= 1 ms; blue 900 requests, 0 5xx (0.0%), p99 <= 1 ms');
    const errors = judge(base, 0, [f('green', 100, 2, [100])], ['h2']);
    expect(errors).toMatchObject({ pass: false, newErrors: 2, reason: 'gate failed at step 1/3 (green 10%): green answered 2 of 100 requests with 5xx (2.0% > 1.0%)' });
    expect(errors.figures).toMatch(/no figures from h2$/);
    const slow = [f('green', 100, 0, [0, 0, 0, 0, 0, 0, 100]), f('blue', 100, 0, [0, 0, 100])];
    expect(judge({ ...base, maxP99Ms: 50 }, 0, slow, []).reason).toMatch(/green's p99 is over 50 ms \(bucket <= 100 ms\), above --max-p99 50 ms/);
    expect(judge({ ...base, maxP99Ratio: 2 }, 0, slow, []).reason).toMatch(/green's p99 \(<= 100 ms\) is more than 2x blue's \(<= 5 ms\)/);
    expect(judge(base, 1, [f('blue', 10, 10, [10])], []).pass).toBe(true); // the old color's errors are not the new one's
  });
});

describe('the clone\'s configuration', () => {
  const old = {
    Id: 'aaaa1111bbbb2222', Name: '/web1-blue', Image: 'sha256:old',
    Config: {
      Env: ['PATH=/bin', 'APP_SETTING=kept'], Cmd: ['httpd', '-f'], Entrypoint: null, WorkingDir: '/w', User: '', Healthcheck: undefined,
      Labels: { 'corral.service': 'web', 'corral.color': 'blue', 'org.image.vendor': 'old' }, ExposedPorts: { '8080/tcp': {} }, Tty: false, OpenStdin: false,
    },
    HostConfig: { NetworkMode: 'appnet', RestartPolicy: { Name: 'always', MaximumRetryCount: 0 }, Memory: 67108864, Binds: ['/data:/data'], PortBindings: { '8080/tcp': [{ HostPort: '8080' }] } },
    NetworkSettings: { Networks: { appnet: { Aliases: ['aaaa1111bbbb', 'web'], IPAMConfig: { IPv4Address: '10.1.0.5' } }, backnet: { Aliases: ['db-client'] } } },
  } as unknown as Docker.ContainerInspectInfo;
  const image = { Env: ['PATH=/bin'], Cmd: ['httpd', '-f'], WorkingDir: '/', Labels: { 'org.image.vendor': 'old' } };

  it('keeps what the container was given, leaves what its old image gave to the new image, and changes the color', () => {
    const { create, more } = cloneSpec(old, image, 'app:2', 'green', 'web1-green');
    expect(create).toMatchObject({ name: 'web1-green', Image: 'app:2', Env: ['APP_SETTING=kept'], Cmd: undefined, WorkingDir: '/w' });
    expect(create.Labels).toEqual({ 'corral.service': 'web', 'corral.color': 'green', 'corral-upgrade.clone-of': 'aaaa1111bbbb2222' });
    expect(create.HostConfig).toMatchObject({ NetworkMode: 'appnet', RestartPolicy: { Name: 'always' }, Memory: 67108864, Binds: ['/data:/data'] });
    expect(create.HostConfig?.PortBindings).toBeUndefined();
    expect(create.NetworkingConfig).toEqual({ EndpointsConfig: { appnet: { Aliases: ['web'], Links: undefined, DriverOpts: undefined } } });
    expect(more).toEqual([['backnet', { Aliases: ['db-client'], Links: undefined, DriverOpts: undefined }]]);
  });

  it('names the clone after its color', () => {
    expect(Cloner.cloneName('/web1-blue', 'blue', 'green')).toBe('web1-green');
    expect(Cloner.cloneName('/web1', 'default', 'v2')).toBe('web1-v2');
  });
});
