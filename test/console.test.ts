// The web console in a real browser: Debian's headless Chromium, driven by puppeteer-core, opens
// the URL `corral console` prints on host h1 of a two-host etcd test bed (the browser runs in h1's
// network namespace, where the agent's admin listener is on loopback). It shows a service the test
// registered and host h2 with its handshake age, follows a CLI switch live, and its buttons
// (switch, weight, rollback, drain) move real traffic through `corral lb` (checked with curl);
// actions without the token or from another origin are refused; a stopped etcd shows as a stale
// registry. Screenshots are kept under test/artifacts/ (not committed).
import type { ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCluster, type Cluster, type TestHost } from './support/cluster.js';
import { corral, startDaemon, type Daemon } from './support/corral.js';
import { until } from './support/until.js';

const ARTIFACTS = 'test/artifacts';
/** The backends: busybox httpd on h1's loopback, each answering its color. */
const BLUE = 18081;
const GREEN = 18082;
/** A page of another origin, on h1's loopback too. */
const OTHER_SITE = 18090;

describe('web console', () => {
  let c: Cluster;
  let h1: TestHost;
  let lb: Daemon;
  let browser: Browser;
  let page: Page;
  let url: string;
  let token: string;
  let dir: string;
  const httpds: ChildProcess[] = [];

  /** curl inside h1's namespace: status, body. */
  const curl = async (args: string[]) => {
    const r = await h1.ns.exec('curl', ['-sS', '-m', '5', '-w', '\n%{http_code}', ...args]);
    const cut = r.stdout.lastIndexOf('\n');
    return { status: Number(r.stdout.slice(cut + 1)), body: r.stdout.slice(0, cut) };
  };
  const throughLb = async () => (await curl(['-H', 'Host: web.test', `http://127.0.0.1:${lb.httpPort}/`])).body.trim();
  const admin = () => `http://127.0.0.1:${h1.agent!.adminPort}`;
  /** Clicks what the selector names, again if the page redrew it between finding and clicking. */
  const click = (selector: string) => until(`a click on ${selector}`, async () => {
    await page.click(selector);
    return true;
  }, { ms: 10_000, everyMs: 100 });
  /** The text of the web service's row in the services table. */
  const webRow = () => page.$eval('.row[data-key="default/web"]', (el) => (el as HTMLElement).innerText.replace(/\s+/g, ' ')).catch(() => '');

  beforeAll(async () => {
    c = await startCluster({ hosts: 2 });
    h1 = c.hosts[0]!;
    dir = mkdtempSync(join(tmpdir(), 'corral-console-'));
    for (const [color, port] of [['blue', BLUE], ['green', GREEN]] as const) {
      mkdirSync(join(dir, color));
      writeFileSync(join(dir, color, 'index.html'), `${color}\n`);
      httpds.push(h1.ns.spawn('busybox', ['httpd', '-f', '-p', `127.0.0.1:${port}`, '-h', join(dir, color)]));
      const r = await h1.agent!.cli(['register', 'web', `127.0.0.1:${port}`, '--color', color, '--http-host', 'web.test']);
      expect(r.code, r.stderr).toBe(0);
    }
    lb = await startDaemon('lb', { netns: h1.ns.name, args: ['--agent-socket', h1.agent!.socket] });
    await until('the LB serves web.test from blue', async () => (await throughLb()) === 'blue', { ms: 15_000 });
    // The browser runs in h1's namespace, where the console listens; DevTools over a pipe, not a port.
    const wrapper = join(dir, 'chromium');
    writeFileSync(wrapper, `#!/bin/sh\nexec nsenter --net=${h1.ns.path} /usr/bin/chromium "$@"\n`);
    chmodSync(wrapper, 0o755);
    browser = await puppeteer.launch({ executablePath: wrapper, pipe: true, headless: true, args: ['--no-sandbox', '--headless=new', '--disable-gpu'] });
    page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 800 });
  });

  afterAll(async () => {
    await browser?.close().catch(() => {});
    await lb?.stop().catch(() => {});
    for (const p of httpds) p.kill('SIGKILL');
    await c?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('writes a 0600 token at first start, and `corral console` prints the URL that carries it', async () => {
    const file = join(h1.stateDir, 'console.token');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const r = await corral(['console', '--state-dir', h1.stateDir, '--admin-listen', `127.0.0.1:${h1.agent!.adminPort}`]);
    expect(r.code, r.stderr).toBe(0);
    const m = /^http:\/\/127\.0\.0\.1:(\d+)\/console\/#token=([0-9a-f]{64})\n$/.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    url = r.stdout.trim();
    token = m![2]!;
    const missing = await corral(['console', '--state-dir', join(dir, 'nowhere')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^corral: no console token at .*console\.token: the agent writes it when it starts/);
  });

  it('shows the registered service with its colors, and host h2 with its handshake age', async () => {
    await page.goto(url);
    await page.waitForSelector('.row[data-key="default/web"]', { timeout: 15_000 });
    expect(await webRow()).toMatch(/default web blue 100% 1\/1 green 0% 1\/1 1\/2 web\.test\//);
    // The token left the address bar; the page keeps it for its actions.
    expect(page.url()).toBe(`${admin()}/console/`);
    expect(await page.$eval('#token-state', (el) => el.textContent)).toBe('actions enabled');
    await click('#tab-hosts');
    await page.waitForSelector('.row[data-host="h2"]', { timeout: 15_000 });
    // wireguard-go handshakes on its first keepalive; the agent reads its peers every 5 s.
    const handshake = await until('h2\'s handshake age in the console', async () => {
      const text = await page.$eval('.row[data-host="h2"] .handshake', (el) => (el as HTMLElement).innerText);
      return /^\d+ s ago$/.test(text) && text;
    }, { ms: 40_000, everyMs: 500 });
    expect(handshake).toMatch(/^\d+ s ago$/);
    const h2 = await page.$eval('.row[data-host="h2"]', (el) => (el as HTMLElement).innerText.replace(/\s+/g, ' '));
    expect(h2).toContain(c.hosts[1]!.address);
    expect(h2).toContain('wireguard-go');
    // h2's own status report (read from the registry by h1's agent): its peers, handshaken of all.
    await until('h2\'s status report in the console', async () => /^\d+\/1/.test(await page.$eval('.row[data-host="h2"] .peers', (el) => (el as HTMLElement).innerText)), { ms: 20_000, everyMs: 500 });
    await click('.row[data-host="h1"]');
    await page.waitForSelector('#detail tr[data-peer="h2"]');
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'console-hosts.png') });
    await click('#tab-services');
  });

  it('follows a switch made with the CLI within a second, through Server-Sent Events', async () => {
    await page.waitForSelector('.row[data-key="default/web"]');
    const r = await h1.agent!.cli(['switch', 'web', 'green', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const switched = Date.now();
    await page.waitForFunction(() => /green 100%/.test((document.querySelector('.row[data-key="default/web"]') as HTMLElement | null)?.innerText ?? ''), { timeout: 10_000, polling: 'mutation' });
    const ms = Date.now() - switched;
    expect(ms, `the page showed the switch ${ms} ms after the CLI returned`).toBeLessThan(1000);
    expect(Number(await page.evaluate(() => document.documentElement.dataset.revision))).toBeGreaterThanOrEqual(JSON.parse(r.stdout).revision);
    await until('the LB serves green', async () => (await throughLb()) === 'green', { ms: 10_000 });
  });

  it('moves traffic with its buttons: switch, rollback, weight, drain', async () => {
    const rowShows = (re: string) => page.waitForFunction((src) => new RegExp(src).test((document.querySelector('.row[data-key="default/web"]') as HTMLElement | null)?.innerText ?? ''), { timeout: 10_000 }, re);
    const only = (color: string) => async () => {
      for (let i = 0; i < 4; i++) if ((await throughLb()) !== color) return false;
      return true;
    };
    await click('.row[data-key="default/web"]');
    await page.waitForSelector('#detail button[data-action="switch"][data-color="blue"]:not([disabled])');
    await click('#detail button[data-action="switch"][data-color="blue"]');
    await rowShows('blue\\s+100%');
    await until('the LB serves only blue after the switch button', only('blue'), { ms: 10_000 });
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'console.png') });

    // rollback: back to green, the colors before the switch
    await page.waitForSelector('#detail button[data-action="rollback"]:not([disabled])');
    await click('#detail button[data-action="rollback"]');
    await rowShows('green\\s+100%');
    await until('the LB serves only green after rollback', only('green'), { ms: 10_000 });

    // weight: 50/50 sends requests to both colors
    for (const color of ['blue', 'green']) {
      const input = `#detail input[data-weight="${color}"]`;
      await page.click(input, { count: 3 });
      await page.type(input, '50');
    }
    await click('#detail button[data-action="weight"]');
    await rowShows('blue\\s+50%');
    const seen = await until('the LB serves both colors', async () => {
      const got = new Set<string>();
      for (let i = 0; i < 8; i++) got.add(await throughLb());
      return got.size === 2 && got;
    }, { ms: 10_000 });
    expect([...seen].sort()).toEqual(['blue', 'green']);

    // drain the blue endpoint: it gets no new request, and green takes them all
    const blueId = `manual:default:web:127.0.0.1:${BLUE}`;
    await click(`#detail tr[data-endpoint="${blueId}"] button[data-action="drain"]`);
    await until('the LB stops sending to the drained endpoint', only('green'), { ms: 10_000 });
    const row = await until('the drained endpoint shown as draining, or gone after its drain time', async () => {
      const text = await page.$eval('#detail', (el) => (el as HTMLElement).innerText);
      return !text.includes(`127.0.0.1:${BLUE}`) || /draining/.test(text) ? text : false;
    }, { ms: 15_000 });
    expect(row).toContain(`127.0.0.1:${GREEN}`);
    for (let i = 0; i < 4; i++) expect(await throughLb()).toBe('green');
  });

  it('refuses an action without the token, with a wrong one, and from another origin', async () => {
    const post = (headers: string[]) => curl(['-X', 'POST', ...headers.flatMap((h) => ['-H', h]), '-H', 'content-type: application/json', '-d', '{"service":"web","color":"green"}', `${admin()}/console/actions/switch`]);
    const none = await post([]);
    expect(none.status).toBe(401);
    expect(none.body).toMatch(/^unauthorized: console actions need the token/);
    expect((await post([`authorization: Bearer ${'0'.repeat(64)}`])).status).toBe(401);
    const foreign = await post([`authorization: Bearer ${token}`, 'origin: http://evil.example']);
    expect(foreign.status).toBe(403);
    expect(foreign.body).toMatch(/another origin/);
    // Nor can a page of another origin read the live feed, or reach the console by a name that is not loopback (DNS rebinding).
    expect((await curl(['-H', 'origin: http://evil.example', `${admin()}/console/events`])).status).toBe(403);
    expect((await curl(['-H', 'host: evil.example', `${admin()}/console/`])).status).toBe(403);
    // The browser itself, on a page of another origin (127.0.0.2 is loopback too, so nothing but the origin differs): a
    // form-like POST (no preflight) carries no token and is refused; one with the token never leaves the CORS preflight.
    const other = await browser.newPage();
    httpds.push(h1.ns.spawn('busybox', ['httpd', '-f', '-p', `127.0.0.2:${OTHER_SITE}`, '-h', join(dir, 'blue')]));
    await until('another site on 127.0.0.2', async () => (await curl([`http://127.0.0.2:${OTHER_SITE}/`])).status === 200, { ms: 10_000 });
    await other.goto(`http://127.0.0.2:${OTHER_SITE}/`);
    const tries = await other.evaluate(async (target, tok) => {
      const body = '{"service":"web","color":"green"}';
      const simple = await fetch(target, { method: 'POST', mode: 'no-cors', body }).then((r) => r.type, (e: Error) => e.message);
      const withToken = await fetch(target, { method: 'POST', headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/json' }, body }).then((r) => String(r.status), (e: Error) => `refused: ${e.message}`);
      return { simple, withToken };
    }, `${admin()}/console/actions/switch`, token);
    await other.close();
    expect(tries.withToken).toMatch(/^refused: /);
    expect(tries.simple).toBe('opaque');
    // None of them changed anything: green still has the half the weight button gave it.
    expect(await webRow()).toMatch(/green\s+50%/);
    // With the token, from the console's own origin, the same action works.
    const ok = await post([`authorization: Bearer ${token}`, `origin: ${admin()}`]);
    expect(ok.status, ok.body).toBe(200);
    expect(JSON.parse(ok.body).service.active).toEqual({ green: 100 });
    await page.waitForFunction(() => /green\s+100%/.test((document.querySelector('.row[data-key="default/web"]') as HTMLElement | null)?.innerText ?? ''), { timeout: 10_000 });
  });

  it('says the registry is stale while etcd is unreachable, and stops saying it when it is back', async () => {
    const etcd = c.etcd.members[0]!;
    await etcd.stop('SIGKILL');
    try {
      await page.waitForFunction(() => !(document.getElementById('stale') as HTMLElement).hidden, { timeout: 30_000 });
      expect(await page.$eval('#stale', (el) => el.textContent)).toMatch(/^STALE: registry unreachable since \d{4}-\d\d-\d\dT.*this host serves the last state it saw$/);
      await page.screenshot({ path: join(ARTIFACTS, 'console-stale.png') });
    } finally {
      await etcd.start();
    }
    await page.waitForFunction(() => (document.getElementById('stale') as HTMLElement).hidden, { timeout: 30_000 });
  });
});
