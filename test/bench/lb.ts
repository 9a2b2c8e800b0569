// HTTP load balancing: `wrk` through one `corral lb` process (fed by a real `corral agent`) versus
// HAProxy (nbthread 1, http-reuse always) and versus @fastify/http-proxy on the same Node, all in
// front of the same nginx backend. Then the same with 1,000 routes configured in corral.
// The targets compare like with like: `corral lb --lb-threads 1` against HAProxy nbthread 1. A
// second `corral lb` at its default --lb-threads (one per CPU) is reported beside it (no target).
// Each contender is measured twice, alternating, and keeps its better run (these machines are shared).
import { spawn, type ChildProcess } from 'node:child_process';
import { get as httpGet } from 'node:http';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentClient, unary } from '../../api/grpc.js';
import type { EndpointReply, RegisterRequest } from '../../api/types.js';
import { childEnv, freePort, startDaemon, type Daemon } from '../support/corral.js';
import { cpuSeconds } from '../support/proc.js';
import type { BenchSection } from './report.js';
import { ratioHigherBetter, ratioLowerBetter } from './report.js';

const SECONDS = 8;
const CONNECTIONS = 32;
const ROUTES = 1_000;

export interface WrkResult {
  rps: number;
  /** CPU time (user + system) the proxy process spent per request, in µs: robust to other load on the machine. */
  cpuUs: number;
  p50Ms: number;
  p99Ms: number;
  non2xx: number;
  socketErrors: number;
}

function ms(text: string): number {
  const m = /([\d.]+)(us|ms|s)/.exec(text);
  if (!m) return NaN;
  const n = Number(m[1]);
  return m[2] === 'us' ? n / 1000 : m[2] === 's' ? n * 1000 : n;
}


async function wrk(port: number, seconds = SECONDS, pid?: number, host = 'bench.test'): Promise<WrkResult> {
  const cpu0 = cpuSeconds(pid);
  const r = await runWrk(port, seconds, host);
  const cpu = cpuSeconds(pid) - cpu0;
  return { ...r, cpuUs: (cpu * 1e6) / (r.rps * seconds) };
}

function runWrk(port: number, seconds: number, host = 'bench.test'): Promise<Omit<WrkResult, 'cpuUs'>> {
  const args = ['-t1', `-c${CONNECTIONS}`, `-d${seconds}s`, '--latency', '-H', `Host: ${host}`, `http://127.0.0.1:${port}/`];
  return new Promise((resolve, reject) => {
    const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (out += d));
    child.once('error', reject);
    child.once('close', (code) => {
      if (code !== 0) return reject(new Error(`wrk exited ${code}: ${out}`));
      resolve(parseWrk(out));
    });
  });
}

/** wrk --latency's report: requests/s, p50, p99, non-2xx and socket errors. */
export function parseWrk(out: string): Omit<WrkResult, 'cpuUs'> {
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN),
    p50Ms: ms(/^\s+50%\s+(\S+)/m.exec(out)?.[1] ?? ''),
    p99Ms: ms(/^\s+99%\s+(\S+)/m.exec(out)?.[1] ?? ''),
    non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0),
    socketErrors: socket ? socket.slice(1).reduce((s, x) => s + Number(x), 0) : 0,
  };
}

function better(a: WrkResult, b: WrkResult): WrkResult {
  return a.rps >= b.rps ? a : b;
}

/** Starts a long-running child and waits until `ready(port)` answers. */
export async function startChild(cmd: string, args: string[], port: number, what: string, env: Record<string, string> = {}): Promise<ChildProcess> {
  const child = spawn(cmd, args, { env: { ...childEnv(), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (d: Buffer) => (log += d));
  child.stderr!.on('data', (d: Buffer) => (log += d));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}: ${log}`);
    const ok = await fetch(`http://127.0.0.1:${port}/`, { headers: { host: 'bench.test' } }).then((r) => r.status === 200, () => false);
    if (ok) return child;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${what} did not answer on ${port}: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(t);
}

export function nginxConf(dir: string, port: number): string {
  for (const d of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, d), { recursive: true });
  return `worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port} reuseport;
    location / { default_type text/plain; return 200 "hello from nginx\\n"; }
  }
}
`;
}

/** HAProxy, one thread, in front of nginx on `backend`; `bind` adds to the frontend's bind line (TLS). */
export function haproxyConf(port: number, backend: number, bind = ''): string {
  return `global
  nbthread 1
  maxconn 4000
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:${port}${bind}
  default_backend be
backend be
  http-reuse always
  server nginx 127.0.0.1:${backend}
`;
}

/** A plain node:http server answering itself: what one Node process can serve at all, proxy or not. */
const NODE_HELLO = `
import { createServer } from 'node:http';
createServer((req, res) => res.end('hello from nginx\\n')).listen(Number(process.env.PORT), '127.0.0.1');
`;

const FASTIFY = `
import Fastify from 'fastify';
import proxy from '@fastify/http-proxy';
const app = Fastify({ logger: false });
await app.register(proxy, { upstream: process.env.UPSTREAM });
await app.listen({ port: Number(process.env.PORT), host: '127.0.0.1' });
`;

const FASTIFY_DIR = join(process.cwd(), 'node_modules', '.corral-bench-lb');

/** Registers nginx on `port` as `service` with a route for host + path, over the agent's gRPC API. */
export function registerRoute(client: ReturnType<typeof agentClient>, port: number, service: string, host: string, path: string, edge?: Record<string, string>): Promise<EndpointReply> {
  return unary<RegisterRequest, EndpointReply>(client, 'Register', {
    service, namespace: 'default', address: '127.0.0.1', port, color: '', httpHosts: [host], httpPath: path,
    weight: 1, healthCheck: null, portName: '', edge,
  });
}

/** The middleware on the bench's second route: a request header and a response header set (lb/middleware). */
const MIDDLEWARE = { 'corral.http.request.set-header.X-Env': 'bench', 'corral.http.response.set-header.X-Served-By': 'corral' };
const MW_HOST = 'mw.bench.test';

export async function benchLb(): Promise<BenchSection> {
  const dir = mkdtempSync(join(tmpdir(), 'corral-bench-lb-'));
  let nginx: ChildProcess | undefined;
  let haproxy: ChildProcess | undefined;
  let fastify: ChildProcess | undefined;
  let hello: ChildProcess | undefined;
  let agent: Daemon | undefined;
  let lb: Daemon | undefined;
  let lb1: Daemon | undefined;
  try {
    const nginxPort = await freePort();
    writeFileSync(join(dir, 'nginx.conf'), nginxConf(dir, nginxPort));
    nginx = await startChild('nginx', ['-e', join(dir, 'error.log'), '-c', join(dir, 'nginx.conf')], nginxPort, 'nginx');

    const haproxyPort = await freePort();
    writeFileSync(join(dir, 'haproxy.cfg'), haproxyConf(haproxyPort, nginxPort));
    haproxy = await startChild('haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], haproxyPort, 'haproxy');

    const fastifyPort = await freePort();
    // Under node_modules so that its imports resolve to this repository's packages.
    mkdirSync(FASTIFY_DIR, { recursive: true });
    writeFileSync(join(FASTIFY_DIR, 'proxy.mjs'), FASTIFY);
    fastify = await startChild(process.execPath, [join(FASTIFY_DIR, 'proxy.mjs')], fastifyPort, '@fastify/http-proxy', { UPSTREAM: `http://127.0.0.1:${nginxPort}`, PORT: String(fastifyPort) });

    const helloPort = await freePort();
    writeFileSync(join(FASTIFY_DIR, 'hello.mjs'), NODE_HELLO);
    hello = await startChild(process.execPath, [join(FASTIFY_DIR, 'hello.mjs')], helloPort, 'node:http hello', { PORT: String(helloPort) });

    agent = await startDaemon('agent', { args: ['--log-level', 'warn'] });
    lb = await startDaemon('lb', { args: ['--agent-socket', agent.socket, '--log-level', 'warn'] });
    lb1 = await startDaemon('lb', { args: ['--agent-socket', agent.socket, '--log-level', 'warn', '--lb-threads', '1'] });
    const client = agentClient(agent.socket);
    const register = (service: string, host: string, path: string) => registerRoute(client, nginxPort, service, host, path);
    const lbPort = lb.httpPort;
    await register('bench', 'bench.test', '/');
    await registerRoute(client, nginxPort, 'benchmw', MW_HOST, '/', MIDDLEWARE);
    const lb1Port = lb1.httpPort;
    const statusOf = async (d: Daemon) => (await (await fetch(`http://127.0.0.1:${d.adminPort}/`)).json()) as { routes: number; threads: number; revision: number };
    const routesOf = async () => (await statusOf(lb1!)).routes;
    while ((await routesOf()) < 2 || (await statusOf(lb)).routes < 2) await new Promise((r) => setTimeout(r, 50));
    // The middleware route answers with its header (it is really on).
    const mwAnswer = await new Promise<{ status: number; servedBy: unknown }>((resolve, reject) => {
      httpGet({ host: '127.0.0.1', port: lb1Port, path: '/', headers: { host: MW_HOST } }, (res) => {
        res.resume();
        resolve({ status: res.statusCode ?? 0, servedBy: res.headers['x-served-by'] });
      }).on('error', reject);
    });
    if (mwAnswer.servedBy !== 'corral') throw new Error(`the middleware route answered without its header (status ${mwAnswer.status})`);
    const threads = (await statusOf(lb)).threads;
    const threads1 = (await statusOf(lb1)).threads;

    // Warm up every contender (JIT, connection pools), then two alternating rounds.
    for (const port of [haproxyPort, lbPort, lb1Port, fastifyPort]) await wrk(port, 2);
    await wrk(lb1Port, 2, undefined, MW_HOST);
    const hp = haproxy.pid;
    const cp = lb.child.pid;
    const c1p = lb1.child.pid;
    const fp = fastify.pid;
    let h = await wrk(haproxyPort, SECONDS, hp);
    let c = await wrk(lbPort, SECONDS, cp);
    let c1 = await wrk(lb1Port, SECONDS, c1p);
    let cm = await wrk(lb1Port, SECONDS, c1p, MW_HOST);
    let f = await wrk(fastifyPort, SECONDS, fp);
    h = better(h, await wrk(haproxyPort, SECONDS, hp));
    c = better(c, await wrk(lbPort, SECONDS, cp));
    c1 = better(c1, await wrk(lb1Port, SECONDS, c1p));
    cm = better(cm, await wrk(lb1Port, SECONDS, c1p, MW_HOST));
    f = better(f, await wrk(fastifyPort, SECONDS, fp));
    // Only the measured contender from here on: an idle default-threads LB would still follow the
    // 1,000 registrations.
    await lb.stop();
    await wrk(helloPort, 2);
    const ceiling = await wrk(helloPort, SECONDS, hello.pid);
    await stopChild(hello);

    // 1,000 routes: 999 more services, each with its own host and two path prefixes.
    try {
      for (let i = 1; i < ROUTES; i++) await register(`svc${i}`, `svc${i}.bench.test`, `/api/v${i % 7}`);
    } finally {
      client.close();
    }
    while ((await routesOf()) < ROUTES) await new Promise((r) => setTimeout(r, 100));
    await wrk(lb1Port, 2);
    let many = await wrk(lb1Port, SECONDS, c1p);
    many = better(many, await wrk(lb1Port, SECONDS, c1p));
    const routes = await routesOf();

    return {
      title: 'HTTP load balancer: requests through one proxy to nginx',
      anchor: 'HAProxy 2.6 (nbthread 1, http-reuse always); also @fastify/http-proxy on the same Node',
      conditions: `wrk -t1 -c${CONNECTIONS} -d${SECONDS}s with keep-alive, GET / with Host bench.test, answer 17 bytes from nginx (1 worker, return 200, never the bottleneck); all on 127.0.0.1, sharing the same cores; best of two alternating runs each after a 2 s warm-up; \`corral lb --lb-threads ${threads1}\` (one Node process, one thread, like HAProxy's nbthread 1; HTTP/1.1 path on raw sockets) fed by a real \`corral agent\` (endpoints registered over gRPC); a second \`corral lb\` at its default --lb-threads (${threads} on this ${availableParallelism()}-CPU machine: SO_REUSEPORT, one route table per thread) is reported beside it without a target`,
      rows: [
        { metric: 'requests/s vs HAProxy', ours: c1.rps, anchor: h.rps, unit: 'req/s', ratio: ratioHigherBetter(c1.rps, h.rps), target: '≥ 0.8×', pass: c1.rps >= 0.8 * h.rps },
        { metric: 'requests/s with a middleware on the route (request + response header set) vs HAProxy', ours: cm.rps, anchor: h.rps, unit: 'req/s', ratio: ratioHigherBetter(cm.rps, h.rps), target: '≥ 0.8×', pass: cm.rps >= 0.8 * h.rps },
        { metric: 'CPU per request with that middleware vs without', ours: cm.cpuUs, anchor: c1.cpuUs, unit: 'µs', ratio: ratioLowerBetter(cm.cpuUs, c1.cpuUs) },
        { metric: 'p99 latency vs HAProxy', ours: c1.p99Ms, anchor: h.p99Ms, unit: 'ms', ratio: ratioLowerBetter(c1.p99Ms, h.p99Ms), target: 'within 2× (≥ 0.5×)', pass: c1.p99Ms <= 2 * h.p99Ms },
        { metric: 'requests/s vs @fastify/http-proxy', ours: c1.rps, anchor: f.rps, unit: 'req/s', ratio: ratioHigherBetter(c1.rps, f.rps), target: '> 1×', pass: c1.rps > f.rps },
        { metric: 'p99 latency vs @fastify/http-proxy', ours: c1.p99Ms, anchor: f.p99Ms, unit: 'ms', ratio: ratioLowerBetter(c1.p99Ms, f.p99Ms) },
        { metric: 'CPU per request vs HAProxy (user + system)', ours: c1.cpuUs, anchor: h.cpuUs, unit: 'µs', ratio: ratioLowerBetter(c1.cpuUs, h.cpuUs) },
        { metric: 'CPU per request vs @fastify/http-proxy', ours: c1.cpuUs, anchor: f.cpuUs, unit: 'µs', ratio: ratioLowerBetter(c1.cpuUs, f.cpuUs) },
        { metric: `requests/s, corral lb --lb-threads ${threads} (default here) vs HAProxy (nbthread 1)`, ours: c.rps, anchor: h.rps, unit: 'req/s', ratio: ratioHigherBetter(c.rps, h.rps) },
        { metric: `p99 latency, corral lb --lb-threads ${threads} vs HAProxy`, ours: c.p99Ms, anchor: h.p99Ms, unit: 'ms', ratio: ratioLowerBetter(c.p99Ms, h.p99Ms) },
        { metric: `CPU per request, corral lb --lb-threads ${threads} vs HAProxy`, ours: c.cpuUs, anchor: h.cpuUs, unit: 'µs', ratio: ratioLowerBetter(c.cpuUs, h.cpuUs) },
        { metric: `requests/s with ${routes} routes vs 1 route`, ours: many.rps, anchor: c1.rps, unit: 'req/s', ratio: ratioHigherBetter(many.rps, c1.rps), target: '≥ 0.9×', pass: many.rps >= 0.9 * c1.rps },
      ],
      notes: [
        `p50: corral --lb-threads 1 ${c1.p50Ms.toFixed(2)} ms, corral (default threads) ${c.p50Ms.toFixed(2)} ms, HAProxy ${h.p50Ms.toFixed(2)} ms, fastify ${f.p50Ms.toFixed(2)} ms; with ${routes} routes corral p99 ${many.p99Ms.toFixed(2)} ms`,
        `the middleware route (${MW_HOST}, labels ${Object.entries(MIDDLEWARE).map(([k, v]) => `${k}=${v}`).join(', ')}) is served by the same --lb-threads 1 process as the plain one, in the same alternating rounds: p99 ${cm.p99Ms.toFixed(2)} ms, non-2xx/socket errors ${cm.non2xx}/${cm.socketErrors}`,
        `non-2xx / socket errors: corral --lb-threads 1 ${c1.non2xx}/${c1.socketErrors}, corral (default threads) ${c.non2xx}/${c.socketErrors}, HAProxy ${h.non2xx}/${h.socketErrors}, fastify ${f.non2xx}/${f.socketErrors}, corral with ${routes} routes ${many.non2xx}/${many.socketErrors}`,
        `ceiling of one Node thread: a node:http server answering by itself (no proxying, one thread) did ${ceiling.rps.toFixed(0)} req/s (${ratioHigherBetter(ceiling.rps, h.rps).toFixed(2)}× HAProxy) at ${ceiling.cpuUs.toFixed(0)} µs CPU per request; a Node proxy parses and writes twice per request`,
        `with ${routes} routes corral --lb-threads 1 used ${many.cpuUs.toFixed(0)} µs CPU per request (${c1.cpuUs.toFixed(0)} µs with 1 route)`,
        'wrk, the proxy under test and nginx share the same cores; a proxy that is not measured is idle',
        `threads serving requests: corral ${threads1} in the rows with targets, corral ${threads} (main + ${threads - 1} worker threads, its default --lb-threads here) in the default-threads rows, HAProxy 1 (nbthread 1), fastify 1; CPU per request counts every thread of a process`,
        `on this machine wrk, nginx and the proxy share ${availableParallelism()} cores, so a second proxy thread competes with them rather than adding a core: the default-threads rows measure that, not a many-core host`,
      ],
    };
  } finally {
    await lb?.stop();
    await lb1?.stop();
    await agent?.stop();
    await stopChild(fastify);
    await stopChild(hello);
    await stopChild(haproxy);
    await stopChild(nginx);
    rmSync(FASTIFY_DIR, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }
}
