// The HTTP data path: route a request, pick an endpoint, stream it to the endpoint's keep-alive
// pool and stream the answer back. Nothing is buffered; both directions keep backpressure.
//
// Hot path notes: one Forward object per request is the only per-request allocation besides the
// header arrays; listeners on the response are shared functions that find their Forward through
// a symbol. Forward speaks undici's core handler protocol (onConnect/onHeaders/onData/...), which
// undici's clients call directly; the newer controller protocol is adapted by a wrapper that
// parses every response header into an object first.
import { STATUS_CODES, createServer, type IncomingMessage, type Server, type ServerOptions, type ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { Transform, type Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { LB_DEFAULTS, parseHostPort } from '../api/options.js';
import type { Endpoint } from '../api/types.js';
import type { Peer } from './balancer.js';
import type { ProxyObserver } from './metrics.js';
import type { PassiveHealth } from './outliers.js';
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

/** The client sent more body than --lb-max-body allows. */
class BodyTooLarge extends Error {
  override name = 'BodyTooLarge';
  readonly code = 'CORRAL_BODY_TOO_LARGE';
}

/** Errors that mean "no answer came from this connection": worth one retry elsewhere, and passive health counts them. */
const CONNECTION_FAILURES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ETIMEDOUT',
  'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT',
]);

/** Methods that may be replayed (RFC 9110 9.2.2), when they carry no body. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** One request in flight to an upstream (and, after a connection failure, its one retry). */
class Forward implements Dispatcher.DispatchHandler {
  private abortUpstream: ((err?: Error) => void) | null = null;
  private resumeUpstream: (() => void) | null = null;
  private code = 0;
  private gone = false;
  private drainListening = false;
  /** Counted in peer.state.active (least-request) until this attempt ends. */
  private counted = false;
  /** Response body bytes still expected (Content-Length), -1 when unknown. */
  private remaining = -1;
  /** The last body chunk went out with res.end(). */
  private ended = false;
  retried = false;
  done = false;

  constructor(
    private readonly proxy: Proxy,
    readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly target: RouteTarget,
    public peer: Peer,
    private readonly start: number,
    /** The dispatch options, kept for a retry; null when the request cannot be replayed (it has a body). */
    readonly replay: Dispatcher.DispatchOptions | null,
  ) {}

  /** Send (or resend) to this.peer. */
  dispatch(opts: Dispatcher.DispatchOptions): void {
    this.abortUpstream = null;
    this.resumeUpstream = null;
    this.peer.state.active++;
    this.counted = true;
    this.proxy.pools.get(this.peer.origin).dispatch(opts, this);
  }

  private settle(): void {
    if (this.counted) {
      this.counted = false;
      this.peer.state.active--;
    }
  }

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
    this.proxy.outliers?.answered(this.peer.state, statusCode);
    if (this.gone) return false;
    const headers = downstreamHeaders(rawHeaders);
    this.remaining = lastContentLength;
    if (statusText) this.res.writeHead(statusCode, statusText, headers);
    else this.res.writeHead(statusCode, headers);
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.gone) return false;
    const res = this.res;
    if (this.remaining === chunk.length) {
      // The whole (rest of the) body: headers, body and end in one write.
      this.ended = true;
      res.end(chunk);
      return true;
    }
    if (this.remaining > 0) this.remaining -= chunk.length;
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
    this.settle();
    if (!this.ended) this.res.end();
    this.proxy.finish(this.req, this.target, this.peer, this.code, this.start);
  }

  onError(err: Error): void {
    if (this.done) return;
    this.settle();
    const res = this.res;
    if (this.gone || err instanceof ClientGoneError) {
      this.done = true;
      this.proxy.finish(this.req, this.target, this.peer, 499, this.start);
      return;
    }
    const errCode = (err as { code?: string }).code ?? '';
    const connectionFailed = this.code === 0 && CONNECTION_FAILURES.has(errCode);
    if (connectionFailed) this.proxy.outliers?.connectFailed(this.peer.state);
    else if (errCode === 'UND_ERR_HEADERS_TIMEOUT') this.proxy.outliers?.answered(this.peer.state, 504);
    if (connectionFailed && this.replay !== null && !this.retried && !res.headersSent) {
      // An idempotent request without a body that got no answer: once more, on another endpoint.
      const next = this.target.balancer.pick(this.peer);
      if (next !== undefined) {
        this.retried = true;
        this.proxy.log?.debug({ service: this.target.key, upstream: this.peer.origin, retry: next.origin, err: errText(err) }, 'retrying on another endpoint');
        this.peer = next;
        this.dispatch(this.replay);
        return;
      }
    }
    this.done = true;
    if (res.headersSent) {
      // Mid-body failure: the only honest signal left is to cut the client connection.
      this.proxy.log?.warn({ service: this.target.key, upstream: this.peer.origin, err: errText(err) }, 'upstream failed during the response body');
      res.destroy(err);
      this.proxy.finish(this.req, this.target, this.peer, this.code, this.start);
      return;
    }
    const ep = this.peer.endpoint;
    if (err instanceof BodyTooLarge) {
      this.proxy.answer(res, 413, `content too large: the request body is over ${this.proxy.opts.maxBodyBytes} bytes\n`, true);
      this.proxy.finish(this.req, this.target, this.peer, 413, this.start);
      return;
    }
    const code = errCode === 'UND_ERR_HEADERS_TIMEOUT' ? 504 : 502;
    this.proxy.log?.warn({ service: this.target.key, upstream: this.peer.origin, code, err: errText(err), retried: this.retried }, 'upstream request failed');
    const what = code === 504 ? 'did not answer in time' : 'cannot be reached';
    this.proxy.answer(
      res,
      code,
      `${code === 504 ? 'gateway timeout' : 'bad gateway'}: endpoint ${hostPort(ep)} of service ${this.target.key} ${what} (${errText(err)})\n`,
      // undici has abandoned a half-read request body: this connection cannot carry another request.
      !this.req.complete,
    );
    this.proxy.finish(this.req, this.target, this.peer, code, this.start);
  }
}

/** One 'close' listener per client connection, not per request: it reaches the request in flight. */
function onSocketClose(this: TaggedSocket): void {
  this[kForward]?.clientGone();
}
type TaggedSocket = Socket & { [kForward]?: Forward };

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

/** Content-Length of the last response passed through downstreamHeaders (-1: none); a module variable, not an allocation. */
let lastContentLength = -1;

/** Response headers for the client: the upstream's, minus hop-by-hop ones. */
function downstreamHeaders(raw: Buffer[]): string[] {
  const out: string[] = [];
  let connection: string | undefined;
  lastContentLength = -1;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString('latin1');
    const lower = name.toLowerCase();
    if (isHopByHop(lower)) {
      if (lower === 'connection') connection = raw[i + 1]!.toString('latin1');
      continue;
    }
    const value = raw[i + 1]!.toString('latin1');
    if (lower.length === 14 && lower === 'content-length') lastContentLength = Number(value);
    out.push(name, value);
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

/**
 * Request headers for the upstream: hop-by-hop ones removed (an upgrade keeps Upgrade and
 * `Connection: upgrade`), X-Forwarded-For appended, X-Forwarded-Proto/-Host set, and a
 * `Forwarded` element (RFC 7239) appended to any the client sent.
 */
function upstreamHeaders(req: IncomingMessage, forwardedHost: string, upgrade = false): string[] {
  const raw = req.rawHeaders;
  const out: string[] = [];
  let connection: string | undefined;
  let xff: string | undefined;
  let forwarded: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (isHopByHop(lower)) {
      if (lower === 'connection') connection = connection === undefined ? raw[i + 1]! : `${connection}, ${raw[i + 1]!}`;
      else if (upgrade && lower === 'upgrade') out.push(name, raw[i + 1]!);
      continue;
    }
    if (lower.startsWith('x-forwarded-')) {
      if (lower === 'x-forwarded-for') xff = xff === undefined ? raw[i + 1]! : `${xff}, ${raw[i + 1]!}`;
      if (lower === 'x-forwarded-for' || lower === 'x-forwarded-proto' || lower === 'x-forwarded-host') continue;
    } else if (lower === 'forwarded') {
      forwarded = forwarded === undefined ? raw[i + 1]! : `${forwarded}, ${raw[i + 1]!}`;
      continue;
    }
    out.push(name, raw[i + 1]!);
  }
  if (connection !== undefined) dropConnectionNamed(out, connection);
  const socket = req.socket as Socket & { encrypted?: boolean };
  let client = socket.remoteAddress ?? '';
  if (client.startsWith('::ffff:')) client = client.slice(7); // IPv4 on a dual-stack socket
  const proto = socket.encrypted ? 'https' : 'http';
  // RFC 7239: IPv6 addresses are bracketed and quoted; the host is quoted (it may hold a colon).
  const element = `for=${client.includes(':') ? `"[${client}]"` : client};host="${forwardedHost.replace(/["\\]/g, '')}";proto=${proto}`;
  out.push(
    'x-forwarded-for', xff === undefined ? client : `${xff}, ${client}`,
    'x-forwarded-proto', proto,
    'x-forwarded-host', forwardedHost,
    'forwarded', forwarded === undefined ? element : `${forwarded}, ${element}`,
  );
  if (upgrade) out.push('connection', 'upgrade');
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

/** The request body: -1 none, -2 chunked (length unknown), else its Content-Length. */
function bodyLength(req: IncomingMessage): number {
  const raw = req.rawHeaders;
  let length = -1;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 14 && name.toLowerCase() === 'content-length') {
      const n = Number(raw[i + 1]!);
      if (n > 0) length = n; // the parser has already refused malformed or conflicting lengths
    } else if (name.length === 17 && name.toLowerCase() === 'transfer-encoding') {
      return -2;
    }
  }
  return length;
}

/** Passes a chunked request body through, failing once it exceeds the limit. Only used with --lb-max-body. */
function limitBody(req: IncomingMessage, max: number): Transform {
  let seen = 0;
  const t = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      seen += chunk.length;
      if (seen > max) cb(new BodyTooLarge(`request body over ${max} bytes`));
      else cb(null, chunk);
    },
  });
  req.on('error', (err) => t.destroy(err));
  req.pipe(t);
  return t;
}

/** Proxy knobs (a subset of LbOptions). */
export interface ProxyOptions {
  maxBodyBytes: number;
  maxHeaderBytes: number;
  clientHeadersTimeoutMs: number;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
  connectTimeoutMs: number;
  accessLog: boolean;
}

export const PROXY_DEFAULTS: ProxyOptions = {
  maxBodyBytes: LB_DEFAULTS.maxBodyBytes,
  maxHeaderBytes: LB_DEFAULTS.maxHeaderBytes,
  clientHeadersTimeoutMs: LB_DEFAULTS.clientHeadersTimeoutMs,
  requestTimeoutMs: LB_DEFAULTS.requestTimeoutMs,
  idleTimeoutMs: LB_DEFAULTS.idleTimeoutMs,
  connectTimeoutMs: LB_DEFAULTS.connectTimeoutMs,
  accessLog: LB_DEFAULTS.accessLog,
};


/** A whole response written on a raw socket (parse errors, upgrades), then the connection closed. */
function rawAnswer(socket: Duplex, code: number, text: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  // Flushed, then closed both ways: a smuggled remainder in the buffer is never parsed.
  socket.end(`HTTP/1.1 ${code} ${STATUS_CODES[code] ?? 'Error'}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`, () => socket.destroy());
}

export class Proxy {
  readonly server: Server;
  /** Servers this proxy serves on (HTTP, and HTTPS when certificates are configured). */
  private readonly servers: Server[] = [];
  readonly opts: ProxyOptions;
  private readonly access: Logger | undefined;

  constructor(
    private readonly routes: RouteTable,
    readonly pools: UpstreamPools,
    private readonly observer?: ProxyObserver,
    readonly log?: Logger,
    opts: Partial<ProxyOptions> = {},
    readonly outliers?: PassiveHealth,
  ) {
    this.opts = { ...PROXY_DEFAULTS, ...opts };
    this.access = this.opts.accessLog ? log?.child({ access: true }) : undefined;
    this.server = this.serve(createServer(this.serverOptions()));
  }

  /** Options for an http or https server: slow-client timeouts and header limits. */
  serverOptions(): ServerOptions {
    const o = this.opts;
    const requestTimeout = o.requestTimeoutMs;
    return {
      keepAlive: true,
      keepAliveTimeout: o.idleTimeoutMs,
      maxHeaderSize: o.maxHeaderBytes,
      headersTimeout: requestTimeout > 0 ? Math.min(o.clientHeadersTimeoutMs, requestTimeout) : o.clientHeadersTimeoutMs,
      requestTimeout,
      // How often Node checks those timeouts (its default, 30 s, would stretch every one of them).
      connectionsCheckingInterval: Math.max(250, Math.min(1_000, o.clientHeadersTimeoutMs / 2)),
    };
  }

  /** Serve requests, upgrades and client errors on `server` (created with serverOptions()). */
  serve<S extends Server>(server: S): S {
    server.keepAliveTimeout = this.opts.idleTimeoutMs;
    server.on('request', (req: IncomingMessage, res: ServerResponse) => this.handle(req, res));
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.upgrade(req, socket, head));
    server.on('clientError', (err: Error & { code?: string }, socket: Duplex) => this.clientError(err, socket));
    this.servers.push(server);
    return server;
  }

  /** Listen on "ADDR:PORT" (empty ADDR: all addresses); resolves with the bound port. */
  async listen(listen: string, server: Server = this.server, what = '--http-listen'): Promise<number> {
    const { host, port } = parseHostPort(listen, what);
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
    await Promise.all(this.servers.map(async (server) => {
      if (!server.listening) return;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)));
      await Promise.race([closed, late]);
      clearTimeout(timer);
      server.closeAllConnections();
      await closed;
    }));
    for (const s of this.upgraded) s.destroy();
    await this.pools.close(graceMs);
  }

  /** Malformed, smuggling-shaped, oversized or too slow requests: answered by status and closed. */
  clientError(err: Error & { code?: string }, socket: Duplex): void {
    const code = err.code === 'HPE_HEADER_OVERFLOW' ? 431
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408
      : err.code === 'ECONNRESET' || err.code === 'EPIPE' ? 0
      : 400;
    // A response already on its way on this connection (pipelining): no room for another; just close.
    const current = (socket as Duplex & { _httpMessage?: ServerResponse | null })._httpMessage;
    if (code === 0 || (current && current.headersSent)) {
      socket.destroy();
      return;
    }
    this.log?.debug({ err: err.code ?? err.message, remote: (socket as Socket).remoteAddress }, 'refused a malformed request');
    this.finish(undefined, undefined, undefined, code, 0);
    const text = code === 431 ? `request header fields too large (over ${this.opts.maxHeaderBytes} bytes)\n`
      : code === 408 ? 'request timeout: the request did not arrive in time\n'
      : `bad request: ${err.code === 'HPE_UNEXPECTED_CONTENT_LENGTH' ? 'both Content-Length and Transfer-Encoding' : (err as { reason?: string }).reason ?? err.code ?? 'malformed'}\n`;
    rawAnswer(socket, code, text);
  }

  handle(req: IncomingMessage, res: ServerResponse): void {
    const target = this.route(req, res);
    if (target === undefined) return;
    const peer = target.balancer.pick();
    if (peer === undefined) {
      this.answer(res, 503, `service unavailable: service ${target.key} (host "${this.hostOf(req)}") has no healthy endpoint in its active color\n`);
      this.finish(req, target, undefined, 503, 0);
      return;
    }
    const length = bodyLength(req);
    const max = this.opts.maxBodyBytes;
    if (max > 0 && length > max) {
      this.answer(res, 413, `content too large: the request body (${length} bytes) is over ${max} bytes\n`, true);
      this.finish(req, target, undefined, 413, 0);
      return;
    }
    const method = req.method!;
    const opts: Dispatcher.DispatchOptions = {
      path: this.pathOf(req),
      method: method as Dispatcher.HttpMethod,
      headers: upstreamHeaders(req, this.hostOf(req)),
      body: length === -1 ? null : max > 0 && length === -2 ? limitBody(req, max) : req,
    };
    const forward = new Forward(this, req, res, target, peer, performance.now(), length === -1 && IDEMPOTENT.has(method) ? opts : null);
    (res as TaggedResponse)[kForward] = forward;
    // HTTP/1.1 serves one request at a time per connection, so the connection's close is the
    // client going away from this request (a finished one ignores it).
    const socket = req.socket as TaggedSocket;
    if (socket[kForward] === undefined) socket.on('close', onSocketClose);
    socket[kForward] = forward;
    forward.dispatch(opts);
  }

  /** Sockets handed over to upgraded (WebSocket) connections, cut at shutdown. */
  private readonly upgraded = new Set<Duplex>();

  /** WebSocket (any Upgrade): route and pick as for a request, then splice the two connections. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const target = this.route(req, undefined, socket);
    if (target === undefined) return;
    const peer = target.balancer.pick();
    if (peer === undefined) {
      rawAnswer(socket, 503, `service unavailable: service ${target.key} has no healthy endpoint in its active color\n`);
      this.finish(req, target, undefined, 503, 0);
      return;
    }
    const ep = peer.endpoint;
    const start = performance.now();
    const upstream = connect({ host: ep.address, port: ep.port });
    upstream.setTimeout(this.opts.connectTimeoutMs);
    let connected = false;
    this.upgraded.add(socket);
    const fail = (err: Error) => {
      if (connected) {
        socket.destroy();
        return;
      }
      this.outliers?.connectFailed(peer.state);
      rawAnswer(socket, 502, `bad gateway: endpoint ${hostPort(ep)} of service ${target.key} cannot be reached (${errText(err)})\n`);
      this.finish(req, target, peer, 502, start);
    };
    upstream.on('timeout', () => upstream.destroy(Object.assign(new Error('connect timed out'), { code: 'UND_ERR_CONNECT_TIMEOUT' })));
    upstream.on('error', fail);
    upstream.once('connect', () => {
      connected = true;
      upstream.setTimeout(0);
      upstream.setNoDelay(true);
      (socket as Socket).setNoDelay?.(true);
      const headers = upstreamHeaders(req, this.hostOf(req), true);
      let text = `${req.method} ${this.pathOf(req)} HTTP/1.1\r\n`;
      for (let i = 0; i < headers.length; i += 2) text += `${headers[i]}: ${headers[i + 1]}\r\n`;
      upstream.write(text + '\r\n');
      if (head.length > 0) upstream.write(head);
      upstream.once('data', (chunk: Buffer) => {
        const code = Number(chunk.toString('latin1', 9, 12)) || 0;
        this.outliers?.answered(peer.state, code);
        this.finish(req, target, peer, code, start);
      });
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    socket.on('error', () => upstream.destroy());
    socket.on('close', () => {
      this.upgraded.delete(socket);
      upstream.destroy();
    });
    upstream.on('close', () => socket.destroy());
  }

  /** The route for a request, or undefined after answering it (404, 503 not ready, 400). */
  private route(req: IncomingMessage, res: ServerResponse | undefined, socket?: Duplex): RouteTarget | undefined {
    const answer = (code: number, text: string) => {
      if (res) this.answer(res, code, text);
      else rawAnswer(socket!, code, text);
      this.finish(req, undefined, undefined, code, 0);
    };
    if (!this.routes.ready) {
      answer(503, 'not ready: no routes from the agent yet (is `corral agent` running?)\n');
      return undefined;
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
        answer(400, `bad request: cannot route request target "${url}"\n`);
        return undefined;
      }
      hostHeader = parsed.host;
      url = parsed.pathname + parsed.search;
    }
    if (!hostHeader) {
      answer(400, 'bad request: no Host header\n');
      return undefined;
    }
    const r = req as RoutedRequest;
    r[kHost] = hostHeader;
    r[kPath] = url;
    const host = normalizedHost(hostHeader);
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const target = this.routes.lookup(host, path);
    if (target === undefined) {
      answer(404, `not found: no route for host "${host}" and path "${path}"\n`);
      return undefined;
    }
    return target;
  }

  private hostOf(req: IncomingMessage): string {
    return (req as RoutedRequest)[kHost]!;
  }

  private pathOf(req: IncomingMessage): string {
    return (req as RoutedRequest)[kPath]!;
  }

  /** A short plain-text answer from the load balancer itself. */
  answer(res: ServerResponse, code: number, text: string, closeConnection = false): void {
    if (res.headersSent || res.destroyed) return;
    const headers: Record<string, string | number> = { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) };
    if (closeConnection) headers['connection'] = 'close';
    res.writeHead(code, headers);
    res.end(text);
  }

  /** A response is done: metrics, and the access log line when enabled. */
  finish(req: IncomingMessage | undefined, target: RouteTarget | undefined, peer: Peer | undefined, code: number, start: number): void {
    const seconds = start === 0 ? 0 : (performance.now() - start) / 1000;
    this.observer?.response(target, peer?.endpoint, code, seconds);
    if (this.access !== undefined) {
      this.access.info({
        method: req?.method, host: req ? (req as RoutedRequest)[kHost] : undefined, path: req ? (req as RoutedRequest)[kPath] : undefined,
        status: code, service: target?.key, upstream: peer?.origin, ms: Math.round(seconds * 1e4) / 10,
        client: req?.socket.remoteAddress,
      }, 'request');
    }
  }
}

/** Host headers seen -> normalized: a handful of names carry nearly all traffic. */
const hostCache = new Map<string, string>();
function normalizedHost(raw: string): string {
  let host = hostCache.get(raw);
  if (host === undefined) {
    if (hostCache.size >= 4096) hostCache.clear();
    hostCache.set(raw, (host = normalizeHost(raw)));
  }
  return host;
}

const kHost = Symbol('corral.host');
const kPath = Symbol('corral.path');
type RoutedRequest = IncomingMessage & { [kHost]?: string; [kPath]?: string };
