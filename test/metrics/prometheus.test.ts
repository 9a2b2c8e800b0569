// The metrics as an operator gets them: every admin endpoint of a real `corral up` passes
// `promtool check metrics`; a real Prometheus (Debian's) scrapes all three and answers queries
// for the series; the alert rules in deploy/prometheus pass `promtool check rules` and their unit
// tests; every query of the Grafana dashboard parses in that Prometheus and names families we export.
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corralCni } from '../support/cni.js';
import { startDaemon, type Daemon } from '../support/corral.js';
import { Netns, run } from '../support/netns.js';
import { until } from '../support/until.js';

const RULES_DIR = resolve('deploy/prometheus');
const PROMETHEUS_PORT = 9390;

let ns: Netns;
let up: Daemon;
let prometheus: ChildProcess | undefined;
let promDir: string;
let certDir: string;
let container: Netns | undefined;
let cniConf: Record<string, unknown>;
const HTTPS_PORT = 8443;
const texts = new Map<string, string>();

const parts = () => [['agent', up.adminPort], ['dns', up.adminPort + 1], ['lb', up.adminPort + 2]] as const;

async function get(url: string, headers: string[] = [], extra: string[] = []): Promise<string> {
  return (await ns.exec('curl', ['-sf', '-m', '5', ...extra, ...headers.flatMap((h) => ['-H', h]), url])).stdout;
}

async function promQuery(expr: string): Promise<{ status: string; error?: string; data: { result: Array<{ metric: Record<string, string>; value: [number, string] }> } }> {
  const r = await ns.exec('curl', ['-s', '-m', '5', '--data-urlencode', `query=${expr}`, `http://127.0.0.1:${PROMETHEUS_PORT}/api/v1/query`]);
  return JSON.parse(r.stdout);
}

/** Families a Prometheus text exposition declares (`# TYPE name kind`). */
function families(text: string): Map<string, string> {
  return new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
}

beforeAll(async () => {
  ns = await Netns.create('metrics');
  certDir = mkdtempSync(join(tmpdir(), 'corral-metrics-certs-'));
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=legacy.test',
    '-addext', 'subjectAltName=DNS:legacy.test', '-keyout', join(certDir, 'legacy.test.key'), '-out', join(certDir, 'legacy.test.crt')]);
  up = await startDaemon('up', { netns: ns.name, args: ['--lb-threads', '2', '--dns-threads', '2', '--tls-cert-dir', certDir, '--https-listen', `127.0.0.1:${HTTPS_PORT}`] });
  // A service with a health check (the agent's own admin endpoint, as in the README's tour).
  const reg = await up.cli(['register', 'legacy', `127.0.0.1:${up.adminPort}`, '--http-host', 'legacy.test', '--health-path', '/healthz', '--health-interval', '1s']);
  expect(reg.code, reg.stderr).toBe(0);
  await until('legacy serving in the LB', async () => (await get(`http://127.0.0.1:${up.httpPort}/healthz`, ['Host: legacy.test'])) === 'ok\n', { detail: () => up.logs() });
  for (let i = 0; i < 5; i++) await get(`http://127.0.0.1:${up.httpPort}/healthz`, ['Host: legacy.test']);
  await ns.exec('curl', ['-s', '-m', '5', '-H', 'Host: nowhere.test', `http://127.0.0.1:${up.httpPort}/`]);
  // A TLS handshake that completes and one that cannot (plain HTTP to the HTTPS port).
  expect(await get(`https://legacy.test:${HTTPS_PORT}/healthz`, [], ['-k', '--resolve', `legacy.test:${HTTPS_PORT}:127.0.0.1`])).toBe('ok\n');
  await ns.exec('curl', ['-s', '-m', '5', `http://127.0.0.1:${HTTPS_PORT}/`]).catch(() => undefined);
  // A service with one endpoint nobody listens on: a request sent there is retried on the other.
  for (const addr of [`127.0.0.1:${up.adminPort}`, '127.0.0.1:1']) {
    const r = await up.cli(['register', 'flaky', addr, '--http-host', 'flaky.test']);
    expect(r.code, r.stderr).toBe(0);
  }
  await until('flaky routed in the LB', async () => (await get(`http://127.0.0.1:${up.httpPort}/healthz`, ['Host: flaky.test'])) === 'ok\n');
  for (let i = 0; i < 6; i++) expect(await get(`http://127.0.0.1:${up.httpPort}/healthz`, ['Host: flaky.test'])).toBe('ok\n');
  await ns.exec('dig', ['+short', '+tries=1', '-p', String(up.dnsPort), '@127.0.0.1', 'legacy.default.corral.internal']);
  await ns.exec('dig', ['+short', '+tries=1', '-p', String(up.dnsPort), '@127.0.0.1', 'missing.default.corral.internal']);
  // A container attached through the CNI plugin (ADD), and a CHECK of one the agent never saw (an error).
  container = await Netns.create('metrics-c');
  cniConf = { cniVersion: '1.1.0', name: 'metrics-net', type: 'corral', agentSocket: up.socket };
  const add = await corralCni('ADD', { containerId: 'metrics-c1', netns: container.path, ifname: 'eth0' }, cniConf);
  expect(add.code, add.stdout).toBe(0);
  expect((await corralCni('CHECK', { containerId: 'metrics-nobody', netns: container.path, ifname: 'eth0' }, cniConf)).code).not.toBe(0);
  for (const [name, port] of parts()) texts.set(name, await get(`http://127.0.0.1:${port}/metrics`));
}, 120_000);

afterAll(async () => {
  if (prometheus && prometheus.exitCode === null) {
    const exited = new Promise((r) => prometheus!.once('exit', r));
    prometheus.kill('SIGTERM');
    await exited;
  }
  if (promDir) rmSync(promDir, { recursive: true, force: true });
  if (certDir) rmSync(certDir, { recursive: true, force: true });
  if (container && up) await corralCni('DEL', { containerId: 'metrics-c1', netns: container.path, ifname: 'eth0' }, cniConf);
  await container?.delete();
  await up?.stop();
  await ns?.delete();
});

describe('metrics endpoints', () => {
  it('pass promtool check metrics on the agent, DNS and LB admin endpoints', async () => {
    for (const [name, text] of texts) {
      const r = await run('promtool', ['check', 'metrics'], { input: text }).catch((err: Error) => ({ stdout: '', stderr: err.message }));
      expect(`${r.stdout}${r.stderr}`.trim(), `promtool on ${name}'s /metrics`).toBe('');
    }
  });

  it('export the families an operator needs, named by Prometheus conventions', () => {
    const agent = families(texts.get('agent')!);
    const dns = families(texts.get('dns')!);
    const lb = families(texts.get('lb')!);
    expect(Object.fromEntries([...agent].filter(([n]) => n.startsWith('corral_')))).toMatchObject({
      corral_agent_health_checks_total: 'counter',
      corral_agent_service_endpoints: 'gauge',
      corral_agent_service_serving_endpoints: 'gauge',
      corral_agent_ipam_addresses: 'gauge',
      corral_agent_cni_operation_duration_seconds: 'histogram',
      corral_agent_registry_call_duration_seconds: 'histogram',
      corral_agent_registry_call_errors_total: 'counter',
      corral_agent_registry_connected: 'gauge',
      corral_agent_watch_lag_revisions: 'gauge',
      corral_agent_mesh_peers: 'gauge',
      corral_agent_mesh_peer_handshake_age_seconds: 'gauge',
      corral_agent_mesh_key_rotations_total: 'counter',
    });
    expect(Object.fromEntries([...dns].filter(([n]) => n.startsWith('corral_')))).toMatchObject({
      corral_dns_queries_total: 'counter',
      corral_dns_answer_seconds: 'histogram',
      corral_dns_cache_hits_total: 'counter',
      corral_dns_cache_entries: 'gauge',
      corral_dns_upstream_seconds: 'histogram',
      corral_dns_upstream_queries_total: 'counter',
      corral_dns_upstream_errors_total: 'counter',
      corral_dns_upstream_up: 'gauge',
    });
    expect(Object.fromEntries([...lb].filter(([n]) => n.startsWith('corral_')))).toMatchObject({
      corral_lb_requests_total: 'counter',
      corral_lb_upstream_seconds: 'histogram',
      corral_lb_connections: 'gauge',
      corral_lb_retries_total: 'counter',
      corral_lb_ejections_total: 'counter',
      corral_lb_tls_handshakes_total: 'counter',
    });
    for (const [name, kind] of [...agent, ...dns, ...lb]) {
      // Counters end in _total, nothing else does; durations are in seconds.
      expect(name.endsWith('_total'), `${name} (${kind})`).toBe(kind === 'counter');
      expect(name, name).not.toMatch(/_(ms|milliseconds|microseconds)\b/);
    }
    // Series from what the test did: a health check passed, 5+1 LB answers (a 404 for an unknown host), both DNS answers.
    expect(texts.get('agent')).toMatch(/^corral_agent_health_checks_total\{result="pass"\} [1-9]/m);
    expect(texts.get('agent')).toMatch(/^corral_agent_service_serving_endpoints\{namespace="default",service="legacy"\} 1$/m);
    expect(texts.get('agent')).toMatch(/^corral_agent_service_endpoints\{namespace="default",service="flaky"\} 2$/m);
    expect(texts.get('agent')).toMatch(/^corral_agent_ipam_addresses\{block="10\.42\.\d+\.0\/24",state="used"\} 1$/m);
    expect(texts.get('agent')).toMatch(/^corral_agent_ipam_addresses\{block="10\.42\.\d+\.0\/24",state="free"\} 252$/m);
    expect(texts.get('agent')).toMatch(/^corral_agent_cni_operation_duration_seconds_count\{verb="ADD",result="ok"\} 1$/m);
    expect(texts.get('agent')).toMatch(/^corral_agent_cni_operation_duration_seconds_count\{verb="CHECK",result="error"\} 1$/m);
    expect(texts.get('agent')).toMatch(/^corral_agent_registry_call_duration_seconds_count\{op="txn"\} [1-9]/m);
    expect(texts.get('lb')).toMatch(/^corral_lb_requests_total\{namespace="default",service="legacy",color="default",code="200"\} (\d+)$/m);
    expect(Number(/^corral_lb_requests_total\{namespace="default",service="legacy",color="default",code="200"\} (\d+)$/m.exec(texts.get('lb')!)![1])).toBeGreaterThanOrEqual(6);
    expect(texts.get('lb')).toMatch(/^corral_lb_requests_total\{namespace="",service="",color="",code="404"\} 1$/m);
    expect(texts.get('lb')).toMatch(/^corral_lb_tls_handshakes_total\{result="ok"\} [1-9]/m);
    expect(texts.get('lb')).toMatch(/^corral_lb_tls_handshakes_total\{result="failed"\} [1-9]/m);
    expect(texts.get('lb')).toMatch(/^corral_lb_retries_total\{namespace="default",service="flaky"\} [1-9]/m);
    expect(texts.get('lb')).toMatch(/^corral_lb_connections \d+$/m);
    expect(texts.get('dns')).toMatch(/^corral_dns_queries_total\{qtype="A",rcode="NOERROR"\} [1-9]/m);
    expect(texts.get('dns')).toMatch(/^corral_dns_queries_total\{qtype="A",rcode="NXDOMAIN"\} [1-9]/m);
    expect(texts.get('dns')).toMatch(/^corral_dns_answer_seconds_count [2-9]/m);
  });
});

describe('deploy/prometheus', () => {
  it('alert rules pass promtool check rules and their unit tests', async () => {
    const check = await run('promtool', ['check', 'rules', join(RULES_DIR, 'alerts.yml')]);
    expect(check.stdout).toContain('SUCCESS: 5 rules found');
    const test = await run('promtool', ['test', 'rules', join(RULES_DIR, 'alerts.test.yml')]);
    expect(test.stdout).toContain('SUCCESS');
  });

  it('a real Prometheus scrapes all three admin endpoints and answers for their series', async () => {
    promDir = mkdtempSync(join(tmpdir(), 'corral-metrics-prom-'));
    const targets = (port: number) => `["127.0.0.1:${port}"]`;
    writeFileSync(join(promDir, 'prometheus.yml'), [
      'global: { scrape_interval: 1s, evaluation_interval: 1s }',
      `rule_files: ["${join(RULES_DIR, 'alerts.yml')}"]`,
      'scrape_configs:',
      `  - { job_name: corral-agent, static_configs: [{ targets: ${targets(up.adminPort)} }] }`,
      `  - { job_name: corral-dns, static_configs: [{ targets: ${targets(up.adminPort + 1)} }] }`,
      `  - { job_name: corral-lb, static_configs: [{ targets: ${targets(up.adminPort + 2)} }] }`,
      '',
    ].join('\n'));
    let log = '';
    prometheus = ns.spawn('prometheus', [
      `--config.file=${join(promDir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(promDir, 'data')}`,
      `--web.listen-address=127.0.0.1:${PROMETHEUS_PORT}`, '--web.console.templates=/dev/null', '--web.console.libraries=/dev/null',
    ]);
    prometheus.stdout!.on('data', (d: Buffer) => (log += d));
    prometheus.stderr!.on('data', (d: Buffer) => (log += d));
    const health = await until('every target up', async () => {
      const t = JSON.parse(await get(`http://127.0.0.1:${PROMETHEUS_PORT}/api/v1/targets`)) as { data: { activeTargets: Array<{ labels: { job: string }; health: string; lastError: string }> } };
      const active = t.data.activeTargets;
      return active.length === 3 && active.every((a) => a.health === 'up') && active;
    }, { ms: 30_000, detail: () => log });
    expect(health.map((a) => a.labels.job).sort()).toEqual(['corral-agent', 'corral-dns', 'corral-lb']);

    const serving = await until('the serving endpoints of legacy in Prometheus', async () => {
      const r = await promQuery('corral_agent_service_serving_endpoints{service="legacy"}');
      return r.data.result.length > 0 && r.data.result;
    }, { ms: 20_000, detail: () => log });
    expect(serving).toEqual([expect.objectContaining({ metric: expect.objectContaining({ job: 'corral-agent', namespace: 'default', service: 'legacy' }), value: [expect.any(Number), '1'] })]);
    const requests = await promQuery('sum by (color) (corral_lb_requests_total{job="corral-lb",service="legacy",code="200"})');
    expect(Number(requests.data.result[0]?.value[1])).toBeGreaterThanOrEqual(6);
    const queries = await promQuery('sum(corral_dns_queries_total{job="corral-dns",rcode="NXDOMAIN"})');
    expect(Number(queries.data.result[0]?.value[1])).toBeGreaterThanOrEqual(1);

    // The alert rules load in it and evaluate without errors.
    const rules = await until('the alert rules evaluated', async () => {
      const r = JSON.parse(await get(`http://127.0.0.1:${PROMETHEUS_PORT}/api/v1/rules`)) as { data: { groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string }> }> } };
      const all = r.data.groups.flatMap((g) => g.rules);
      return all.length === 5 && all.every((x) => x.health !== 'unknown') && all;
    }, { ms: 20_000 });
    for (const rule of rules) expect(rule.health, `${rule.name}: ${rule.lastError ?? ''}`).toBe('ok');
    // With everything healthy, nothing fires.
    expect((await promQuery('ALERTS{alertstate="firing"}')).data.result).toEqual([]);
  });

  it('every Grafana dashboard query parses in Prometheus and names metric families we export', async () => {
    const dash = JSON.parse(readFileSync(join(RULES_DIR, 'grafana-dashboard.json'), 'utf8')) as { panels: Array<{ type: string; title: string; targets?: Array<{ expr: string }> }> };
    const exported = new Set([...texts.values()].flatMap((t) => [...families(t).keys()]));
    const graphs = dash.panels.filter((p) => p.type !== 'row');
    expect(graphs.length).toBeGreaterThan(20);
    for (const panel of graphs) {
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
      for (const { expr } of panel.targets!) {
        // Series names in the expression: identifiers followed by `{`, or histogram suffixes of a family.
        const named = [...expr.matchAll(/\b((?:corral|process|nodejs)_[a-z0-9_]+)/g)].map((m) => m[1]!);
        expect(named.length, `${panel.title}: ${expr}`).toBeGreaterThan(0);
        for (const name of named) {
          const family = exported.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
          expect(exported.has(family), `${panel.title}: ${name} is not a family any admin endpoint exports`).toBe(true);
        }
        const r = await promQuery(expr.replaceAll('$__rate_interval', '1m').replaceAll('$instance', '.*'));
        expect(r.status, `${panel.title}: ${expr}: ${r.error ?? ''}`).toBe('success');
      }
    }
  });
});
