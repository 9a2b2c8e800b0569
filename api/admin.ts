// The admin endpoint every daemon serves: /healthz (alive), /readyz (has state to serve),
// /metrics (Prometheus text from the daemon's own prom-client registry) and / (a status page).
//
// Read-only: GET and HEAD, no request body (405 with Allow, 413). The status page lists this
// host's topology (listeners, addresses, upstreams, hosts, certificates), so it answers loopback
// clients only, whatever address the endpoint listens on, and not a request a proxy forwarded (the
// LB itself can be pointed at an admin port: `corral register legacy 127.0.0.1:9190`); /metrics,
// /healthz and /readyz answer every client, so Prometheus on another host can scrape a dns or lb
// listening on all addresses.
import { createServer, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import { collectDefaultMetrics, type Registry as MetricsRegistry } from 'prom-client';
import { parseHostPort } from './options.js';

export interface AdminHandlers {
  /** A registry, or anything that renders Prometheus text like one (the LB merges its threads'). */
  metrics: Pick<MetricsRegistry, 'metrics' | 'contentType'>;
  ready(): boolean;
  /** The status page; may be asynchronous (the LB asks its worker threads). */
  status(): unknown;
  /** More JSON pages, loopback clients only like the status page (the LB's /gate). */
  pages?: Record<string, (query: URLSearchParams) => unknown>;
  /** More pages under a prefix, which answer for themselves (the agent's web console, agent/console/). */
  routes?: { prefix: string; handle(req: IncomingMessage, res: ServerResponse): void };
}

const PAGES = new Map([['/healthz', 'healthz'], ['/readyz', 'readyz'], ['/metrics', 'metrics'], ['/', 'status'], ['/status', 'status']]);
const ALLOW = 'GET, HEAD';

/** A loopback peer: 127.0.0.0/8 and ::1, also as IPv4-mapped IPv6 (a socket listening on `::`). */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return v4.startsWith('127.') || address === '::1';
}

/** A request a proxy passed on: its client is someone else, wherever the proxy runs. */
function forwarded(req: IncomingMessage): boolean {
  return req.headers['x-forwarded-for'] !== undefined || req.headers.forwarded !== undefined;
}

/** A request that carries content (Content-Length above 0, or any Transfer-Encoding). */
function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/** A plain-text answer; a request body is not read, so the connection closes after it. */
function answer(req: IncomingMessage, res: ServerResponse, code: number, text: string, headers: OutgoingHttpHeaders = {}): void {
  res.writeHead(code, { 'content-type': 'text/plain; charset=utf-8', ...(hasBody(req) ? { connection: 'close' } : {}), ...headers }).end(text);
}

function serve(h: AdminHandlers, req: IncomingMessage, res: ServerResponse): void {
  const path = (req.url ?? '/').split('?')[0]!;
  if (h.routes && (path === h.routes.prefix || path.startsWith(`${h.routes.prefix}/`))) return h.routes.handle(req, res);
  const extra = h.pages?.[path];
  const page = extra ? 'extra' : PAGES.get(path);
  if (page === undefined) return answer(req, res, 404, 'not found: try /healthz, /readyz, /metrics or /\n');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    return answer(req, res, 405, `method not allowed: ${path} answers GET and HEAD only\n`, { allow: ALLOW });
  }
  // 413, not 400: the request is well-formed, and what is refused is its content, over this endpoint's limit of none.
  if (hasBody(req)) return answer(req, res, 413, `content too large: ${path} takes no request body\n`);
  switch (page) {
    case 'healthz':
      return answer(req, res, 200, 'ok\n');
    case 'readyz': {
      const ok = h.ready();
      return answer(req, res, ok ? 200 : 503, ok ? 'ready\n' : 'not ready\n');
    }
    case 'metrics':
      h.metrics.metrics().then(
        (text) => res.writeHead(200, { 'content-type': h.metrics.contentType }).end(text),
        (err: Error) => answer(req, res, 500, `${err.message}\n`),
      );
      return;
    default:
      if (!isLoopback(req.socket.remoteAddress) || forwarded(req)) {
        return answer(req, res, 403, 'forbidden: the status page lists this host\'s topology and answers loopback clients only, not through a proxy (ask http://127.0.0.1:<port>/ on the host); /metrics, /healthz and /readyz answer any client\n');
      }
      Promise.resolve(extra ? extra(new URLSearchParams((req.url ?? '').split('?')[1] ?? '')) : h.status()).then(
        (status) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(status, null, 2) + '\n'),
        (err: Error) => answer(req, res, 500, `${err.message}\n`),
      );
  }
}

/**
 * Node's process metrics (CPU, memory, event loop, GC) into `registry`, without prom-client's
 * three gauges named `*_total` (active handles, requests, resources), which break Prometheus'
 * naming rules (`promtool check metrics` rejects them).
 */
export function collectProcessMetrics(registry: MetricsRegistry): void {
  collectDefaultMetrics({ register: registry });
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);
}

export async function startAdmin(listen: string, h: AdminHandlers): Promise<Server> {
  const { host, port } = parseHostPort(listen, '--admin-listen');
  const server = createServer((req, res) => serve(h, req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host || undefined, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}
