// The web console at fleet size: an etcd holding 1,000 hosts (records, block leases, status
// reports) and 5,000 services (two endpoints each, on different hosts), a real `corral agent` on
// it, and Debian's headless Chromium opening the console. Measured: the first load (navigation
// start to the first render of the snapshot, the page's own performance.now()) against the
// anchor, the same rows served as one plain server-rendered HTML table (what a page without a
// virtualised list costs), each in a fresh browser context; and the agent's CPU while idle with
// an SSE client connected against the same agent with none, in alternating windows.
import { request as httpRequest, createServer, type IncomingMessage } from 'node:http';
import { randomBytes } from 'node:crypto';
import { loadavg } from 'node:os';
import type { AddressInfo } from 'node:net';
import { Etcd3 } from 'etcd3';
import puppeteer, { type Browser } from 'puppeteer-core';
import type { HostRow, ServiceRow } from '../../agent/console/view.js';
import { keys } from '../../agent/catalog.js';
import type { Host, HostStatus } from '../../api/types.js';
import { corral, startDaemon } from '../support/corral.js';
import { startEtcd } from '../support/etcd.js';
import { cpuSeconds } from '../support/proc.js';
import { endpoint, service } from '../support/records.js';
import { ratioLowerBetter, type BenchSection } from './report.js';

const HOSTS = Number(process.env.CONSOLE_BENCH_HOSTS ?? 1000);
const SERVICES = Number(process.env.CONSOLE_BENCH_SERVICES ?? 5000);
const NAMESPACES = 10;
const LOADS = 7;
const CPU_WINDOW_S = Number(process.env.CONSOLE_BENCH_CPU_WINDOW_S ?? 20);
const CPU_ROUNDS = 5;
const CLUSTER_CIDR = '10.64.0.0/14'; // 1,024 blocks: the fleet's 1,000 and the agent's own
const TARGET_LOAD_MS = 1000;

const name = (i: number) => `host-${String(i).padStart(4, '0')}`;
const blockOf = (i: number) => `10.${64 + (i >> 8)}.${i & 255}.0/24`;
const addressIn = (i: number, k: number) => `10.${64 + (i >> 8)}.${i & 255}.${10 + k}`;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** The fleet's records, written straight into etcd as the hosts' agents would have. */
async function fill(client: Etcd3): Promise<void> {
  const puts: Array<[string, string]> = [];
  const now = Date.now();
  for (let i = 0; i < HOSTS; i++) {
    const host: Host = { name: name(i), block: blockOf(i), underlay: `198.18.${i >> 8}.${i & 255}`, publicKey: randomBytes(32).toString('base64'), nextPublicKey: '', version: '0.1.0', wgPort: 51820, mtu: 1420, overlay: 'wireguard-go' };
    const status: HostStatus = { name: name(i), appliedRevision: 1, reportedMs: now, version: '0.1.0', peers: HOSTS - 1, handshaken: HOSTS - 1, stale: 0, worstPeer: name((i + 1) % HOSTS), worstHandshakeMs: now - 30_000 };
    puts.push([keys.block(name(i), blockOf(i)), JSON.stringify({ block: blockOf(i), node: name(i), sinceMs: now })]);
    puts.push([keys.host(name(i)), JSON.stringify(host)]);
    puts.push([keys.status(name(i)), JSON.stringify(status)]);
  }
  for (let s = 0; s < SERVICES; s++) {
    const ns = `ns${s % NAMESPACES}`;
    const svc = `svc-${String(s).padStart(4, '0')}`;
    puts.push([keys.service(ns, svc), JSON.stringify(service(svc, { blue: 100 }, ns))]);
    for (const [k, color] of [[0, 'blue'], [1, 'green']] as const) {
      const h = (s + k * 7) % HOSTS;
      const ep = endpoint({ service: svc, namespace: ns, address: addressIn(h, (s >> 10) * 2 + k), port: 8000 + (s % 1000), color, node: name(h), httpHosts: [`${svc}.${ns}.example`] });
      puts.push([keys.endpoint(ep.node, ep.id), JSON.stringify(ep)]);
    }
  }
  for (let i = 0; i < puts.length; i += 100) {
    const t = client.if('/corral-bench-none', 'Version', '==', 0);
    await t.then(...puts.slice(i, i + 100).map(([k, v]) => client.put(k).value(v))).commit();
  }
}

interface ViewSnapshot { revision: number; hosts: HostRow[]; services: ServiceRow[] }

/** The console's first snapshot, read as a page reads it (one event off the stream). */
function snapshotOf(port: number): Promise<{ bytes: number; snap: ViewSnapshot }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path: '/console/events' }, (res) => {
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        buf += d;
        const m = /event: snapshot\ndata: (.*)\n\n/.exec(buf);
        if (m) {
          req.destroy();
          resolve({ bytes: Buffer.byteLength(m[1]!), snap: JSON.parse(m[1]!) as ViewSnapshot });
        }
      });
    });
    req.on('error', reject);
    req.end();
  });
}

/** The anchor: every host and service as rows of one HTML table, rendered by a server. */
function plainTable(s: ViewSnapshot): string {
  const esc = (t: string) => t.replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
  const rows: string[] = ['<!doctype html><meta charset="utf-8"><title>plain</title><h1>Services</h1><table>'];
  for (const [ns, name, colors, serving, total, routes] of s.services) {
    rows.push(`<tr><td>${esc(ns)}</td><td>${esc(name)}</td><td>${colors.map(([c, share, n, ok]) => `${esc(c)} ${share}% ${ok}/${n}`).join(' ')}</td><td>${serving}/${total}</td><td>${esc(routes.join(', '))}</td></tr>`);
  }
  rows.push('</table><h1>Hosts</h1><table>');
  for (const h of s.hosts) rows.push(`<tr><td>${esc(h.name)}</td><td>${h.block}</td><td>${h.underlay}</td><td>${h.overlay}</td><td>${esc(h.version)}</td></tr>`);
  rows.push('</table>');
  return rows.join('\n');
}

/** One first load of the console in a fresh browser context: ms from navigation start to the snapshot rendered, and the milestones. */
async function loadOurs(browser: Browser, url: string): Promise<{ ms: number; marks: Record<string, number> }> {
  const ctx = await browser.createBrowserContext();
  try {
    const page = await ctx.newPage();
    await page.setViewport({ width: 1400, height: 900 });
    await page.goto(url);
    const ms = await page.waitForFunction(() => (window as unknown as { corralConsole?: { firstRenderMs: number } }).corralConsole?.firstRenderMs || false, { timeout: 30_000 }).then((h) => h.jsonValue() as Promise<number>);
    return { ms, marks: await page.evaluate(() => (window as unknown as { corralConsole: { marks: Record<string, number> } }).corralConsole.marks) };
  } finally {
    await ctx.close();
  }
}

/** An idle SSE client: reads and drops the stream. */
function sseClient(port: number): { close(): void; bytes(): number } {
  let n = 0;
  const req = httpRequest({ host: '127.0.0.1', port, path: '/console/events' }, (res) => res.on('data', (d: Buffer) => (n += d.length)));
  req.on('error', () => {});
  req.end();
  return { close: () => req.destroy(), bytes: () => n };
}

export async function benchConsole(): Promise<BenchSection> {
  const loadBefore = loadavg()[0]!;
  const etcd = await startEtcd();
  const client = new Etcd3({ hosts: `http://${etcd.endpoints[0]}` });
  const browser = await puppeteer.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox', '--headless=new', '--disable-gpu'] });
  let agent: Awaited<ReturnType<typeof startDaemon>> | undefined;
  let anchorServer: ReturnType<typeof createServer> | undefined;
  try {
    await fill(client);
    agent = await startDaemon('agent', { nodeName: 'bench-agent', args: ['--registry', etcd.spec, '--overlay', 'off', '--cluster-cidr', CLUSTER_CIDR, '--log-level', 'warn'] });
    const url = (await corral(['console', '--state-dir', agent.stateDir, '--admin-listen', `127.0.0.1:${agent.adminPort}`])).stdout.trim();
    // The first page opened on this agent, just after it started.
    const cold = await loadOurs(browser, url);
    const { bytes, snap } = await snapshotOf(agent.adminPort);
    if (snap.hosts.length < HOSTS || snap.services.length < SERVICES) throw new Error(`the agent serves ${snap.hosts.length} hosts and ${snap.services.length} services, not ${HOSTS} and ${SERVICES}`);
    const html = plainTable(snap);
    anchorServer = createServer((_req: IncomingMessage, res) => res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(html));
    await new Promise<void>((r) => anchorServer!.listen(0, '127.0.0.1', r));
    const anchorUrl = `http://127.0.0.1:${(anchorServer.address() as AddressInfo).port}/`;

    const ours: number[] = [];
    const anchor: number[] = [];
    const marks: Array<Record<string, number>> = [];
    for (let i = 0; i < LOADS; i++) {
      // A fresh context each time: no cache, nothing kept; the order alternates so drift hits both.
      for (const which of i % 2 ? ['anchor', 'ours'] : ['ours', 'anchor']) {
        if (which === 'ours') {
          const r = await loadOurs(browser, url);
          ours.push(r.ms);
          marks.push(r.marks);
        } else {
          const ctx = await browser.createBrowserContext();
          const page = await ctx.newPage();
          await page.setViewport({ width: 1400, height: 900 });
          await page.goto(anchorUrl, { waitUntil: 'load' });
          // The table's first paint, as the page's own clock says: load end, after layout of every row.
          anchor.push(await page.evaluate(() => new Promise<number>((r) => requestAnimationFrame(() => r(performance.now())))));
          await ctx.close();
        }
      }
    }
    // Scrolling and searching at that size: the time the page takes to show the rows for a query.
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => errors.push(m.text()));
    await page.setViewport({ width: 1400, height: 900 });
    await page.goto(url);
    await page.waitForFunction(() => (window as unknown as { corralConsole?: { firstRenderMs: number } }).corralConsole?.firstRenderMs || false, { timeout: 30_000 }).catch((err: Error) => {
      throw new Error(`${err.message}; the page said: ${errors.join('; ')}`);
    });
    const searchMs = await page.evaluate(() => new Promise<number>((resolve) => {
      const input = document.getElementById('search') as HTMLInputElement;
      const t0 = performance.now();
      input.value = 'svc-4999';
      input.dispatchEvent(new Event('input'));
      requestAnimationFrame(() => requestAnimationFrame(() => resolve(performance.now() - t0)));
    }));
    const found = await page.$eval('#rows', (el) => (el as HTMLElement).innerText);
    if (!found.includes('svc-4999')) throw new Error(`search for svc-4999 did not show it: ${found.slice(0, 200)}`);
    await page.close();

    // Idle CPU: windows without and with one SSE client, alternating.
    const pid = agent.child.pid!;
    const cpuWindow = async (withClient: boolean) => {
      const c = withClient ? sseClient(agent!.adminPort) : undefined;
      await new Promise((r) => setTimeout(r, 2000)); // the snapshot goes out before the window opens
      const t0 = cpuSeconds(pid);
      await new Promise((r) => setTimeout(r, CPU_WINDOW_S * 1000));
      const used = cpuSeconds(pid) - t0;
      c?.close();
      return (100 * used) / CPU_WINDOW_S;
    };
    const idle: number[] = [];
    const idleSse: number[] = [];
    for (let i = 0; i < CPU_ROUNDS; i++) {
      idle.push(await cpuWindow(false));
      idleSse.push(await cpuWindow(true));
    }
    const load = median(ours);
    const anchorLoad = median(anchor);
    const cpu = median(idleSse);
    const cpuAnchor = median(idle);
    return {
      title: `Web console: first load with ${HOSTS.toLocaleString('en')} hosts and ${SERVICES.toLocaleString('en')} services, idle CPU with an SSE client`,
      anchor: 'first load: the same services and hosts as one plain server-rendered HTML table in the same Chromium (load end, after the first layout); CPU: the same agent with no SSE client',
      conditions: `etcd 3.4 (one member) holding ${HOSTS} hosts (record, block lease, status report) and ${SERVICES} services with 2 endpoints each on different hosts (${SERVICES * 2} endpoints); one \`corral agent --overlay off\` on it; Debian's Chromium (headless=new) through puppeteer-core, 1400×900, a fresh browser context per load, ${LOADS} loads each, alternating; the snapshot event is ${(bytes / 1e6).toFixed(2)} MB of JSON. CPU: ${CPU_ROUNDS} alternating windows of ${CPU_WINDOW_S} s each, utime+stime of the agent process from /proc.`,
      rows: [
        { metric: 'first load, median (navigation start to the snapshot rendered)', ours: load, anchor: anchorLoad, unit: 'ms', ratio: ratioLowerBetter(load, anchorLoad), target: `< ${TARGET_LOAD_MS} ms`, pass: load < TARGET_LOAD_MS },
        { metric: 'first load of the first page opened after the agent started', ours: cold.ms, anchor: anchorLoad, unit: 'ms', ratio: ratioLowerBetter(cold.ms, anchorLoad), target: `< ${TARGET_LOAD_MS} ms`, pass: cold.ms < TARGET_LOAD_MS },
        { metric: 'first load, slowest of the runs', ours: Math.max(...ours), anchor: Math.max(...anchor), unit: 'ms', ratio: ratioLowerBetter(Math.max(...ours), Math.max(...anchor)) },
        { metric: 'agent CPU at idle, median of windows (anchor: no SSE client)', ours: cpu, anchor: cpuAnchor, unit: '% of a core', ratio: ratioLowerBetter(cpu, cpuAnchor), target: 'nothing measurable (within 0.5 points)', pass: cpu - cpuAnchor <= 0.5 },
      ],
      notes: [
        `search box: the rows for a query over the ${SERVICES} services shown ${searchMs.toFixed(0)} ms after typing (two frames)`,
        `first loads (ms), ours: ${ours.map((x) => x.toFixed(0)).join(', ')}; anchor: ${anchor.map((x) => x.toFixed(0)).join(', ')}`,
        `where the median first load's time went (ms since navigation start): ${Object.entries(marks[ours.indexOf(load)] ?? {}).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ')}`,
        `idle CPU windows (% of a core), without a client: ${idle.map((x) => x.toFixed(2)).join(', ')}; with one: ${idleSse.map((x) => x.toFixed(2)).join(', ')}`,
        'Idle, the stream carries a keep-alive comment every 25 s and an event only when something changed; while a page is open the agent looks at its own state every 2 s and follows the status reports with a registry watch (no periodic read).',
        `the machine's load average (1 min) was ${loadBefore.toFixed(1)} when the run began and ${loadavg()[0]!.toFixed(1)} at its end, on 2 cores shared with other work: the anchor's spread shows how much of each figure is the machine.`,
      ],
    };
  } finally {
    await browser.close().catch(() => {});
    await agent?.stop().catch(() => {});
    anchorServer?.close();
    client.close();
    await etcd.stop();
  }
}
