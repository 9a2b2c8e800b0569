// `corral upgrade` of a service with containers on two hosts sharing an etcd: each host is a
// private dockerd in its own netns (bridges 10.77.0.0/24 and 10.76.0.0/24) running `corral up`
// against etcd, the two netns joined by a veth pair and routed, so h1's LB reaches h2's
// containers. The upgrade is asked of h1; each agent clones its own containers; wrk through h1's LB.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { makeAppImage, parseWrk } from './support/app-images.js';
import { startDaemon, type Daemon } from './support/corral.js';
import { startDockerd, type Dockerd } from './support/dockerd.js';
import { startEtcd, type EtcdCluster } from './support/etcd.js';
import { run } from './support/netns.js';
import { untilOk } from './support/until.js';

const LABELS = { 'corral.service': 'web', 'corral.port': '8080', 'corral.http.host': 'web.test', 'corral.health.path': '/health', 'corral.health.interval': '300ms', 'corral.drain': '1s', 'corral.color': 'blue' };
const LINK = { a: 'upgr-a0', b: 'upgr-b0', aAddr: '10.98.15.1', bAddr: '10.98.15.2' };

let a: Dockerd;
let b: Dockerd;
let etcd: EtcdCluster;
const ups: Daemon[] = [];
let work: string;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'corral-upgrade-2h-'));
  [a, b] = await Promise.all([startDockerd(), startDockerd({ bip: '10.76.0.1/24' })]);
  await run('ip', ['link', 'add', LINK.a, 'netns', a.netns.name, 'type', 'veth', 'peer', 'name', LINK.b, 'netns', b.netns.name]);
  for (const [d, dev, addr, other, net] of [[a, LINK.a, LINK.aAddr, LINK.bAddr, '10.76.0.0/24'], [b, LINK.b, LINK.bAddr, LINK.aAddr, '10.77.0.0/24']] as const) {
    await d.netns.exec('ip', ['addr', 'add', `${addr}/24`, 'dev', dev]);
    await d.netns.exec('ip', ['link', 'set', dev, 'up']);
    await d.netns.exec('ip', ['route', 'add', net, 'via', other]);
    await d.netns.exec('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  }
  etcd = await startEtcd({ hosts: [{ address: LINK.aAddr, netns: a.netns.name }] });
  ups.push(...await Promise.all([a, b].map(async (d, i) => {
    const [up] = await Promise.all([
      startDaemon('up', {
        netns: d.netns.name, dockerSocket: d.socket, nodeName: `h${i + 1}`, stateDir: join(work, `h${i + 1}`),
        args: ['--registry', etcd.spec, '--overlay', 'off', '--lb-threads', '1'],
      }),
      makeAppImage(d, 'corral-test/app:1', { version: '1' }),
      makeAppImage(d, 'corral-test/app:2', { version: '2' }),
    ]);
    const l = Object.entries(LABELS).flatMap(([k, v]) => ['-l', `${k}=${v}`]);
    await d.exec(['run', '-d', '--name', `web${i + 1}-blue`, ...l, 'corral-test/app:1']);
    return up;
  })));
}, 240_000);

afterAll(async () => {
  for (const u of ups) await u.stop();
  await etcd?.stop();
  await Promise.all([a?.stop(), b?.stop()]);
  if (work) rmSync(work, { recursive: true, force: true });
});

it('upgrades a service with containers on two hosts: each host clones its own, with no error through the LB', async () => {
  const [h1, h2] = ups as [Daemon, Daemon];
  const endpoints = async () => JSON.parse((await h1.cli(['endpoints', 'web', '--json'])).stdout) as { endpoints: Array<{ node: string; color: string; healthy: boolean }> };
  await untilOk('both hosts\' blue serve', endpoints, (e) => e.endpoints.filter((x) => x.healthy).map((x) => x.node).sort().join() === 'h1,h2', { ms: 30_000, everyMs: 200 });
  const load = a.netns.exec('wrk', ['-t1', '-c2', '-d9s', '--timeout', '5s', '-H', 'Host: web.test', `http://127.0.0.1:${h1.httpPort}/cgi-bin/app`], { timeoutMs: 60_000 });
  const r = await h1.cli(['upgrade', 'web', '--image', 'corral-test/app:2', '--steps', '50,100', '--step-time', '1500ms', '--ready-timeout', '30s']);
  const w = parseWrk((await load).stdout);
  expect(r.code, `${r.stdout}\n${r.stderr}\n--- h1 ---\n${h1.logs().slice(-3000)}\n--- h2 ---\n${h2.logs().slice(-3000)}`).toBe(0);
  console.log(`two hosts: ${w.requests} requests, ${w.non2xx} non-2xx, ${w.socketErrors} socket errors\n${r.stdout}`);
  expect(w.non2xx + w.socketErrors).toBe(0);
  expect(w.requests).toBeGreaterThan(20);
  const states = async (d: Dockerd) => (await d.exec(['ps', '-a', '--format', '{{.Names}} {{.State}}'])).split('\n').sort();
  expect(await states(a)).toEqual(['web1-blue exited', 'web1-green running']);
  expect(await states(b)).toEqual(['web2-blue exited', 'web2-green running']);
  const green = (await endpoints()).endpoints.filter((x) => x.color === 'green' && x.healthy).map((x) => x.node).sort();
  expect(green).toEqual(['h1', 'h2']);
  // Both hosts' LBs reported their figures for each step.
  expect(r.stdout).not.toMatch(/no figures from/);
}, 90_000);
