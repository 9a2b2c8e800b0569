// DockerSource against a real, private dockerd (test/support/dockerd.ts).
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Endpoint } from '../../api/types.js';
import { startDockerd, TEST_IMAGE, type Dockerd } from '../../test/support/dockerd.js';
import { until } from '../../test/support/until.js';
import type { EndpointSink } from '../sink.js';
import { DockerSource } from './source.js';

const NODE = 'n1';

type Call =
  | { op: 'sync'; origin: string; ids: string[] }
  | { op: 'upsert'; id: string; endpoint: Endpoint }
  | { op: 'remove'; id: string; immediate: boolean }
  | { op: 'setHealth'; id: string; healthy: boolean; reason: string };

/** The EndpointSink seam, in memory: the registry's view of this node's Docker endpoints. */
class MemorySink implements EndpointSink {
  readonly endpoints = new Map<string, Endpoint>();
  readonly calls: Call[] = [];
  async sync(origin: string, endpoints: Endpoint[]): Promise<void> {
    this.calls.push({ op: 'sync', origin, ids: endpoints.map((e) => e.id) });
    for (const [id, ep] of this.endpoints) if (ep.origin === origin) this.endpoints.delete(id);
    for (const ep of endpoints) this.endpoints.set(ep.id, ep);
  }
  async upsert(endpoint: Endpoint): Promise<void> {
    this.calls.push({ op: 'upsert', id: endpoint.id, endpoint });
    this.endpoints.set(endpoint.id, endpoint);
  }
  async remove(id: string, opts?: { immediate?: boolean }): Promise<void> {
    this.calls.push({ op: 'remove', id, immediate: !!opts?.immediate });
    if (opts?.immediate) this.endpoints.delete(id);
    else {
      const ep = this.endpoints.get(id);
      if (ep) this.endpoints.set(id, { ...ep, draining: true });
    }
  }
  async setHealth(id: string, healthy: boolean, reason: string): Promise<void> {
    this.calls.push({ op: 'setHealth', id, healthy, reason });
    const ep = this.endpoints.get(id);
    if (ep) this.endpoints.set(id, { ...ep, healthy, healthReason: reason });
  }
  ofOp<K extends Call['op']>(op: K): Extract<Call, { op: K }>[] {
    return this.calls.filter((c): c is Extract<Call, { op: K }> => c.op === op);
  }
}

interface LogLine { level: number; msg: string; [k: string]: unknown }

function capture(): { log: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => { lines.push(JSON.parse(s) as LogLine); } });
  return { log, lines };
}
const warnings = (lines: LogLine[]): LogLine[] => lines.filter((l) => l.level === 40);

/** How these tests poll what the source told the sink. */
const SOON = { ms: 20_000, everyMs: 25 };
/** wget from inside dockerd's netns, retried briefly while httpd binds. */
function httpGet(url: string): Promise<string> {
  return until(`${url} answers`, async () => (await dockerd.netns.exec('wget', ['-qO-', '-T', '2', url])).stdout, { ms: 5_000, everyMs: 100 });
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let dockerd: Dockerd;
const sources: DockerSource[] = [];

beforeAll(async () => {
  dockerd = await startDockerd();
});
afterAll(async () => {
  for (const s of sources) s.stop();
  await dockerd?.stop();
});
afterEach(async () => {
  for (const s of sources.splice(0)) s.stop();
  const ids = await dockerd.exec(['ps', '-aq']);
  if (ids) await dockerd.exec(['rm', '-f', ...ids.split(/\s+/)]);
});

function source(socketPath = dockerd.socket): { src: DockerSource; sink: MemorySink; lines: LogLine[] } {
  const sink = new MemorySink();
  const { log, lines } = capture();
  const src = new DockerSource({ socketPath, node: NODE, sink, log, retryMinMs: 100, retryMaxMs: 1000 });
  sources.push(src);
  src.start();
  return { src, sink, lines };
}

/** `docker run -d` of the test image serving HTTP on 8080; resolves to the full container id. */
async function run(labels: Record<string, string>, opts: string[] = []): Promise<string> {
  const args = ['run', '-d', ...opts];
  for (const [k, v] of Object.entries(labels)) args.push('--label', `${k}=${v}`);
  return dockerd.exec([...args, TEST_IMAGE, 'httpd', '-f', '-p', '8080', '-h', '/www']);
}
const ipOf = (id: string): Promise<string> => dockerd.exec(['inspect', '-f', '{{.NetworkSettings.IPAddress}}', id]);
const epId = (containerId: string): string => `docker:${NODE}:${containerId}`;

describe('DockerSource', () => {
  it('syncs the running labelled containers when it starts', async () => {
    const web = await run({ 'corral.service': 'web', 'corral.port': '8080', 'corral.color': 'blue' }, ['--name', 'web-1']);
    await run({}, ['--name', 'plain']);
    const { src, sink, lines } = source();
    const sync = await until('first sync', () => sink.ofOp('sync')[0], SOON);
    expect(sync).toEqual({ op: 'sync', origin: 'docker', ids: [epId(web)] });
    expect(sink.endpoints.get(epId(web))).toMatchObject({
      service: 'web', namespace: 'default', address: await ipOf(web), port: 8080, color: 'blue', origin: 'docker',
      node: NODE, containerId: web, containerName: 'web-1', healthy: true, draining: false,
    });
    expect(src.connected).toBe(true);
    expect(src.lastError).toBeUndefined();
    expect(lines.map((l) => l.msg)).toContain('watching Docker containers');
    expect(warnings(lines)).toEqual([]);
  });

  it('registers a container started later at its address and drains, then removes, it on docker stop', async () => {
    const { src, sink } = source();
    await until('connected', () => src.connected, SOON);
    const id = await run({ 'corral.service': 'api', 'corral.port': '8080', 'corral.namespace': 'prod' });
    const up = await until('upsert', () => sink.ofOp('upsert').find((c) => c.id === epId(id)), SOON);
    const ip = await ipOf(id);
    expect(up.endpoint).toMatchObject({ service: 'api', namespace: 'prod', address: ip, port: 8080, healthy: true });
    // The registered address really serves.
    expect(await httpGet(`http://${ip}:8080/`)).toBe('ok\n');

    // A reload signal is not a stop.
    await dockerd.exec(['kill', '--signal', 'HUP', id]);
    await sleep(300);
    await src.idle();
    expect(sink.ofOp('remove')).toEqual([]);
    expect(sink.endpoints.get(epId(id))?.draining).toBe(false);

    await dockerd.exec(['stop', '-t', '1', id]);
    await until('removed', () => !sink.endpoints.has(epId(id)), SOON);
    const removes = sink.ofOp('remove').filter((c) => c.id === epId(id));
    // kill -> drain first; die -> gone at once.
    expect(removes).toEqual([
      { op: 'remove', id: epId(id), immediate: false },
      { op: 'remove', id: epId(id), immediate: true },
    ]);
  });

  it('logs one warning for a container with a wrong label and keeps registering the others', async () => {
    const { src, sink, lines } = source();
    await until('connected', () => src.connected, SOON);
    const bad = await run({ 'corral.service': 'web', 'corral.port': 'http' }, ['--name', 'bad-port']);
    const good = await run({ 'corral.service': 'web', 'corral.port': '8080' }, ['--name', 'good']);
    await until('good registered', () => sink.endpoints.get(epId(good)), SOON);
    // Restarting the bad container and a re-sync do not repeat the warning.
    await dockerd.exec(['restart', '-t', '0', bad]);
    const good2 = await run({ 'corral.service': 'web', 'corral.port': '8080' });
    await until('second good registered', () => sink.endpoints.get(epId(good2)), SOON);
    await src.idle();

    const warned = warnings(lines);
    expect(warned).toHaveLength(1);
    expect(warned[0]!.msg).toBe(`container "bad-port" (${bad.slice(0, 12)}) is not registered: label corral.port="http" is not valid: a port number from 1 to 65535`);
    expect(warned[0]).toMatchObject({ container: 'bad-port', label: 'corral.port', value: 'http', accepted: 'a port number from 1 to 65535' });
    expect(sink.endpoints.has(epId(bad))).toBe(false);
    expect(sink.calls.some((c) => 'id' in c && c.id === epId(bad))).toBe(false);
    expect(src.connected).toBe(true);
  });

  it('keeps a container with a Docker HEALTHCHECK unhealthy until Docker says healthy', async () => {
    const { src, sink } = source();
    await until('connected', () => src.connected, SOON);
    const id = await run({ 'corral.service': 'checked', 'corral.port': '8080' }, [
      '--health-cmd', 'test -f /tmp/ready', '--health-interval', '1s', '--health-retries', '1', '--health-timeout', '1s',
    ]);
    const up = await until('upsert', () => sink.ofOp('upsert').find((c) => c.id === epId(id)), SOON);
    expect(up.endpoint).toMatchObject({ healthy: false, healthReason: 'docker health: starting' });
    // Docker's check fails: still not healthy.
    await until('docker says unhealthy', () => sink.endpoints.get(epId(id))?.healthReason === 'docker health: unhealthy', SOON);
    expect(sink.endpoints.get(epId(id))!.healthy).toBe(false);

    await dockerd.exec(['exec', id, 'touch', '/tmp/ready']);
    await until('healthy', () => sink.endpoints.get(epId(id))?.healthy, SOON);
    expect(sink.ofOp('setHealth').filter((c) => c.id === epId(id)).at(-1)).toMatchObject({ healthy: true, reason: 'docker health: healthy' });
  });

  it('retries while Docker is away, says so once, and re-syncs when it is back', async () => {
    const id = await run({ 'corral.service': 'sticky', 'corral.port': '8080' }, ['--restart', 'always', '--stop-timeout', '1']);
    const { src, sink, lines } = source();
    await until('first sync', () => sink.ofOp('sync').length === 1 && src.connected, SOON);
    expect(sink.endpoints.has(epId(id))).toBe(true);

    await dockerd.stopDaemon();
    await until('disconnected', () => !src.connected, SOON);
    expect(src.lastError).toBeTruthy();
    await sleep(2500); // several retries (capped at 1s here)
    expect(src.connected).toBe(false);
    const lost = warnings(lines);
    expect(lost).toHaveLength(1);
    expect(lost[0]!.msg).toMatch(/^lost Docker; retrying/);

    await dockerd.startDaemon();
    await until('re-synced', () => src.connected && sink.ofOp('sync').length >= 2, { ...SOON, ms: 30_000 });
    await until('container back', () => sink.endpoints.get(epId(id)), SOON);
    expect(sink.endpoints.get(epId(id))).toMatchObject({ address: await ipOf(id), healthy: true, draining: false });
    expect(src.lastError).toBeUndefined();
    expect(lines.filter((l) => l.msg === 'connected to Docker again; containers re-synced')).toHaveLength(1);
    expect(warnings(lines)).toHaveLength(1);
  });

  it('reports a missing Docker socket as its status and keeps retrying', async () => {
    const { src, lines } = source(join(dockerd.dir, 'nope.sock'));
    await until('error', () => src.lastError, SOON);
    expect(src.connected).toBe(false);
    expect(src.lastError).toBe(`no Docker socket at ${join(dockerd.dir, 'nope.sock')}`);
    await sleep(500);
    expect(warnings(lines)).toHaveLength(1);
    expect(warnings(lines)[0]!.msg).toMatch(/^cannot reach Docker; retrying/);
  });
});
