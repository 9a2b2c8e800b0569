// The HTTP data path: route a request, pick an endpoint, stream it to the endpoint's keep-alive
// pool and stream the answer back. Nothing is buffered; both directions keep backpressure.
//
// Hot path notes: one Forward object per request is the only per-request allocation besides the
// header arrays; listeners on the response are shared functions that find their Forward through
// a symbol. Forward speaks undici's core handler protocol (onConnect/onHeaders/onData/...), which
// undici's clients call directly; the newer controller protocol is adapted by a wrapper that
// parses every response header into an object first.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { parseHostPort } from '../api/options.js';
import type { Endpoint } from '../api/types.js';
import type { Peer } from './balancer.js';
import type { ProxyObserver } from './metrics.js';
import { normalizeHost, type RouteTable, type RouteTarget } from './routes.js';
import type { UpstreamPools } from './upstreams.js';

/** Hop-by-hop headers (RFC 9110 7.6.1) plus `expect`: Node has already answered 100-continue. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect']);

function isHopByHop(lower: string): boolean {
  return HOP_BY_HOP.has(lower) || lower.startsWith('proxy-');
}

const kForward = Symbol('corral.forward');
type TaggedResponse = ServerResponse & { [kForward]?: Forward };

class ClientGoneError extends Error {
  override name = 'ClientGoneError';
}

/** One request in flight to an upstream. */
class Forward implements Dispatcher.DispatchHandler {
  private abortUpstream: ((err?: Error) => void) | null = null;
  private resumeUpstream: (() => void) | null = null;
  private code = 0;
  private gone = false;
  private drainListening = false;
  done = false;

  constructor(
    private readonly proxy: Proxy,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly target: RouteTarget,
    private readonly peer: Peer,
    private readonly start: number,
  ) {}

  /** The client went away before the response ended: stop the upstream request too. */
  clientGone(): void {
    if (this.done) return;
    this.gone = true;
    this.abortUpstream?.(new ClientGoneError('the client closed the connection'));
  }

  clientDrained(): void {
    this.resumeUpstream?.();
  }

  onConnect(abort: (err?: Error) => void): void {
    this.abortUpstream = abort;
    if (this.gone) abort(new ClientGoneError('the client closed the connection'));
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true; // 1xx (103 Early Hints): wait for the final response
    this.resumeUpstream = resume;
    this.code = statusCode;
    if (this.gone) return false;
    const headers = downstreamHeaders(rawHeaders);
    if (statusText) this.res.writeHead(statusCode, statusText, headers);
    else this.res.writeHead(statusCode, headers);
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.gone) return false;
    const res = this.res;
    if (res.write(chunk)) return true;
    // `on`, not `once`: once allocates a wrapper per call; the listener stays for the response.
    if (!this.drainListening) {
      this.drainListening = true;
      res.on('drain', onResponseDrain);
    }
    return false;
  }

  onComplete(): void {
    this.done = true;
    this.res.end();
    this.proxy.observe(this.target, this.peer.endpoint, this.code, this.start);
  }

  onError(err: Error): void {
    if (this.done) return;
    this.done = true;
    const res = this.res;
    if (this.gone || err instanceof ClientGoneError) {
      this.proxy.observe(this.target, this.peer.endpoint, 499, this.start);
      return;
    }
    if (res.headersSent) {
      // Mid-body failure: the only honest signal left is to cut the client connection.
      this.proxy.log?.warn({ service: this.target.key, upstream: this.peer.origin, err: errText(err) }, 'upstream failed during the response body');
      res.destroy(err);
      this.proxy.observe(this.target, this.peer.endpoint, this.code, this.start);
      return;
    }
    const code = (err as { code?: string }).code === 'UND_ERR_HEADERS_TIMEOUT' ? 504 : 502;
    const ep = this.peer.endpoint;
    this.proxy.log?.warn({ service: this.target.key, upstream: this.peer.origin, code, err: errText(err) }, 'upstream request failed');
    const what = code === 504 ? 'did not answer in time' : 'cannot be reached';
    this.proxy.answer(
      res,
      code,
      `${code === 504 ? 'gateway timeout' : 'bad gateway'}: endpoint ${hostPort(ep)} of service ${this.target.key} ${what} (${errText(err)})\n`,
      // undici has abandoned a half-read request body: this connection cannot carry another request.
      !this.req.complete,
    );
    this.proxy.observe(this.target, ep, code, this.start);
  }
}

function onResponseClose(this: TaggedResponse): void {
  this[kForward]?.clientGone();
}

function onResponseDrain(this: TaggedResponse): void {
  this[kForward]?.clientDrained();
}

function errText(err: Error): string {
  const code = (err as { code?: string }).code;
  return code ? `${code}: ${err.message}` : err.message;
}

function hostPort(ep: Endpoint): string {
  return ep.address.includes(':') ? `[${ep.address}]:${ep.port}` : `${ep.address}:${ep.port}`;
}

/** Response headers for the client: the upstream's, minus hop-by-hop ones. */
function downstreamHeaders(raw: Buffer[]): string[] {
  const out: string[] = [];
  let connection: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString('latin1');
    const lower = name.toLowerCase();
    if (isHopByHop(lower)) {
      if (lower === 'connection') connection = raw[i + 1]!.toString('latin1');
      continue;
    }
    out.push(name, raw[i + 1]!.toString('latin1'));
  }
  if (connection !== undefined) dropConnectionNamed(out, connection);
  return out;
}

/** Remove the headers a Connection header names (they are hop-by-hop for this hop only). */
function dropConnectionNamed(headers: string[], connection: string): void {
  // Nearly every Connection header is just "keep-alive" or "close": nothing extra to drop.
  if (connection.length <= 10) {
    const v = connection.toLowerCase();
    if (v === 'keep-alive' || v === 'close') return;
  }
  const named = new Set<string>();
  for (const token of connection.split(',')) {
    const t = token.trim().toLowerCase();
    if (t !== '' && t !== 'close' && !HOP_BY_HOP.has(t)) named.add(t);
  }
  if (named.size === 0) return;
  let w = 0;
  for (let r = 0; r < headers.length; r += 2) {
    if (named.has(headers[r]!.toLowerCase())) continue;
    headers[w++] = headers[r]!;
    headers[w++] = headers[r + 1]!;
  }
  headers.length = w;
}

/** Request headers for the upstream: hop-by-hop ones removed, X-Forwarded-* set. */
function upstreamHeaders(req: IncomingMessage, forwardedHost: string): string[] {
  const raw = req.rawHeaders;
  const out: string[] = [];
  let connection: string | undefined;
  let xff: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (isHopByHop(lower)) {
      if (lower === 'connection') connection = connection === undefined ? raw[i + 1]! : `${connection}, ${raw[i + 1]!}`;
      continue;
    }
    if (lower.startsWith('x-forwarded-')) {
      if (lower === 'x-forwarded-for') xff = xff === undefined ? raw[i + 1]! : `${xff}, ${raw[i + 1]!}`;
      if (lower === 'x-forwarded-for' || lower === 'x-forwarded-proto' || lower === 'x-forwarded-host') continue;
    }
    out.push(name, raw[i + 1]!);
  }
  if (connection !== undefined) dropConnectionNamed(out, connection);
  const socket = req.socket as Socket & { encrypted?: boolean };
  let client = socket.remoteAddress ?? '';
  if (client.startsWith('::ffff:')) client = client.slice(7); // IPv4 on a dual-stack socket
  out.push(
    'x-forwarded-for', xff === undefined ? client : `${xff}, ${client}`,
    'x-forwarded-proto', socket.encrypted ? 'https' : 'http',
    'x-forwarded-host', forwardedHost,
  );
  return out;
}

/** The Host header (first one), without building req.headers. */
function rawHost(req: IncomingMessage): string | undefined {
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 4 && name.toLowerCase() === 'host') return raw[i + 1];
  }
  return undefined;
}

/** Does the request carry a body (Content-Length other than 0, or Transfer-Encoding)? */
function hasBody(req: IncomingMessage): boolean {
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 14 && name.toLowerCase() === 'content-length') {
      if (raw[i + 1]!.trim() !== '0') return true;
    } else if (name.length === 17 && name.toLowerCase() === 'transfer-encoding') {
      return true;
    }
  }
  return false;
}

export class Proxy {
  readonly server: Server;

  constructor(
    private readonly routes: RouteTable,
    private readonly pools: UpstreamPools,
    private readonly observer?: ProxyObserver,
    readonly log?: Logger,
  ) {
    this.server = createServer({ keepAlive: true }, (req, res) => this.handle(req, res));
  }

  /** Listen on "ADDR:PORT" (empty ADDR: all addresses); resolves with the bound port. */
  async listen(listen: string): Promise<number> {
    const { host, port } = parseHostPort(listen, '--http-listen');
    const server = this.server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host || undefined, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const addr = server.address();
    return typeof addr === 'object' && addr ? addr.port : port;
  }

  /** Stop accepting; let in-flight requests finish for up to `graceMs`, then cut what is left. */
  async close(graceMs = 10_000): Promise<void> {
    const server = this.server;
    if (server.listening) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)));
      await Promise.race([closed, late]);
      clearTimeout(timer);
      server.closeAllConnections();
      await closed;
    }
    await this.pools.close(graceMs);
  }

  handle(req: IncomingMessage, res: ServerResponse): void {
    const routes = this.routes;
    if (!routes.ready) {
      this.answer(res, 503, 'not ready: no routes from the agent yet (is `corral agent` running?)\n');
      this.observe(undefined, undefined, 503, 0);
      return;
    }
    let url = req.url ?? '/';
    let hostHeader = rawHost(req);
    if (url.charCodeAt(0) !== 47 /* / */) {
      // Absolute form ("GET http://host/path"): its authority replaces the Host header.
      let parsed: URL | undefined;
      try {
        parsed = url.startsWith('http://') || url.startsWith('https://') ? new URL(url) : undefined;
      } catch {
        parsed = undefined;
      }
      if (!parsed) {
        this.answer(res, 400, `bad request: cannot route request target "${url}"\n`);
        this.observe(undefined, undefined, 400, 0);
        return;
      }
      hostHeader = parsed.host;
      url = parsed.pathname + parsed.search;
    }
    if (!hostHeader) {
      this.answer(res, 400, 'bad request: no Host header\n');
      this.observe(undefined, undefined, 400, 0);
      return;
    }
    const host = normalizeHost(hostHeader);
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const target = routes.lookup(host, path);
    if (target === undefined) {
      this.answer(res, 404, `not found: no route for host "${host}" and path "${path}"\n`);
      this.observe(undefined, undefined, 404, 0);
      return;
    }
    const peer = target.balancer.pick();
    if (peer === undefined) {
      this.answer(res, 503, `service unavailable: service ${target.key} (host "${host}") has no healthy endpoint in its active color\n`);
      this.observe(target, undefined, 503, 0);
      return;
    }
    const forward = new Forward(this, req, res, target, peer, performance.now());
    (res as TaggedResponse)[kForward] = forward;
    res.on('close', onResponseClose);
    this.pools.get(peer.origin).dispatch(
      {
        path: url,
        method: req.method as Dispatcher.HttpMethod,
        headers: upstreamHeaders(req, hostHeader),
        body: hasBody(req) ? req : null,
      },
      forward,
    );
  }

  /** A short plain-text answer from the load balancer itself. */
  answer(res: ServerResponse, code: number, text: string, closeConnection = false): void {
    if (res.headersSent || res.destroyed) return;
    const headers: Record<string, string | number> = { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) };
    if (closeConnection) headers['connection'] = 'close';
    res.writeHead(code, headers);
    res.end(text);
  }

  observe(target: RouteTarget | undefined, endpoint: Endpoint | undefined, code: number, start: number): void {
    this.observer?.response(target, endpoint, code, start === 0 ? 0 : (performance.now() - start) / 1000);
  }
}
