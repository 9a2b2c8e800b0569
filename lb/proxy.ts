// The HTTP data path on raw sockets: parse a request head, route it, pick an endpoint, write one
// head to a pooled keep-alive upstream connection, parse the response head, write one head (with
// the body, when it came along) to the client. Bodies stream both ways with backpressure.
//
// Why not node:http + undici: a node:http server that only answers uses more CPU per request
// than this whole path (test/bench/lb.ts). This path does two reads and two writes per request
// and allocates two head buffers and a few strings; see README.md, Performance.
//
// One ClientConnection per client socket holds all state of its (one) request in flight — HTTP/1.1
// answers in order, so a pipelined request waits in the buffer until the response before it ends.
// No per-request objects or closures; timeouts are one periodic sweep over the connections.
import { STATUS_CODES } from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { Server as TlsServer, type TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { LB_DEFAULTS, parseHostPort } from '../api/options.js';
import type { Endpoint } from '../api/types.js';
import type { Peer } from './balancer.js';
import { buildRequestHead, buildResponseHead, connectionNamed, joinedValues } from './http1/build.js';
import { CHUNKED_ERROR, CHUNKED_MORE, ChunkedDecoder, LAST_CHUNK, chunkSizeLine, type ChunkSink } from './http1/chunked.js';
import {
  BODY_CHUNKED as B_CHUNKED, BODY_LENGTH as B_LENGTH, BODY_NONE as B_NONE, BODY_UNTIL_CLOSE as B_CLOSE,
  C_CLOSE, C_KEEP_ALIVE, C_OTHER, C_UPGRADE, F_CONNECTION, F_FORWARDED, F_XFF, RequestHead, ResponseHead,
  hasBareLfEnd, headEnd, keepAliveTimeoutMs, parseRequestHead, parseResponseHead, responseFraming,
} from './http1/head.js';
import type { ProxyObserver } from './metrics.js';
import type { PassiveHealth } from './outliers.js';
import { H2Front } from './h2.js';
import { adoptAccepted } from './reads.js';
import { normalizeHost, type RouteTable, type RouteTarget } from './routes.js';
import type { UpstreamConnection, UpstreamError, UpstreamPools, UpstreamUser } from './upstreams.js';
import { writeWhole } from './writes.js';

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

/** Where ACME HTTP-01 challenges are asked (RFC 8555 8.3). */
const ACME_CHALLENGE_PATH = '/.well-known/acme-challenge/';

/** Largest response head accepted from an endpoint (then 502). */
const MAX_RESPONSE_HEAD = 64 * 1024;
/** How long a connection closed after an error answer keeps reading (and dropping) what the client still sends, so its answer is not lost to a reset. */
const LINGER_MS = 2_000;

/** Errors that mean "no answer came from this connection": worth one retry elsewhere, and passive health counts them. */
export const CONNECTION_FAILURES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ETIMEDOUT',
  'UPSTREAM_CLOSED', 'CONNECT_TIMEOUT',
]);

/** Methods that may be replayed (RFC 9110 9.2.2), when they carry no body. */
export const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

// What the connection is reading.
const R_HEAD = 0; // the next request head
const R_BODY = 1; // the current request's body
const R_DONE = 2; // the current request is read; its response is not finished (pipelined bytes wait)
const R_CLOSED = 3; // nothing more is parsed (closing, or spliced after an upgrade)
const R_HOLD = 4; // a middleware check is running; the head waits in the buffer

// Where the response is.
const RS_NONE = 0; // no request in flight
const RS_HEAD = 1; // waiting for the upstream's response head
const RS_BODY = 2; // response body flowing to the client
const RS_DONE = 3;

const CONTINUE = 'HTTP/1.1 100 Continue\r\n\r\n';
const CRLF = '\r\n';

/** Parse scratch: one parse at a time (everything after a parse is synchronous until the heads are built). */
const REQ = new RequestHead();
const RES = new ResponseHead();

export function hostPort(ep: Endpoint): string {
  return ep.address.includes(':') ? `[${ep.address}]:${ep.port}` : `${ep.address}:${ep.port}`;
}

export function errText(err: { code?: string; message: string }): string {
  return err.code ? `${err.code}: ${err.message}` : err.message;
}

/** Host headers seen -> normalized: a handful of names carry nearly all traffic. */
const hostCache = new Map<string, string>();
export function normalizedHost(raw: string): string {
  let host = hostCache.get(raw);
  if (host === undefined) {
    if (hostCache.size >= 4096) hostCache.clear();
    hostCache.set(raw, (host = normalizeHost(raw)));
  }
  return host;
}

/** The method as a string, without slicing for the common ones. */
function methodOf(buf: Buffer, start: number, end: number): string {
  const n = end - start;
  if (n === 3 && buf[start] === 71 && buf[start + 1] === 69 && buf[start + 2] === 84) return 'GET';
  if (n === 4 && buf[start] === 80 && buf[start + 1] === 79 && buf[start + 2] === 83 && buf[start + 3] === 84) return 'POST';
  if (n === 4 && buf[start] === 72 && buf[start + 1] === 69 && buf[start + 2] === 65 && buf[start + 3] === 68) return 'HEAD';
  return buf.latin1Slice(start, end);
}

/** What the access log says about a request (a client connection, or an h2 stream). */
export interface AccessInfo {
  readonly method: string;
  readonly hostRaw: string;
  readonly path: string;
  readonly client: string;
}

/** One client connection (plain or TLS) and the request it has in flight. */
class ClientConnection implements UpstreamUser, ChunkSink {
  /** Bytes received and not parsed yet (a partial head, a pipelined request, body bytes). */
  private buf: Buffer | null = null;
  reading = R_HEAD;
  private driving = false;
  /** Bytes of this.buf already searched for the end of a head. */
  private scanned = 0;
  /** performance.now() when the current head started arriving (or the connection was accepted); 0: idle. */
  headSince: number;
  idleSince = 0;
  lingerUntil = 0;
  readonly client: string;
  readonly proto: 'http' | 'https';

  // The request.
  method = '';
  hostRaw = '';
  path = '';
  private isHead = false;
  private version = 11;
  private keepAlive = true;
  private bodyKind = B_NONE;
  private bodyLeft = 0;
  private bodySeen = 0;
  private reqDecoder: ChunkedDecoder | null = null;
  /** The request head for the upstream. */
  private reqHead: Buffer | null = null;
  private replayable = false;

  // The exchange with the upstream.
  private target: RouteTarget | null = null;
  private peer: Peer | null = null;
  private upstream: UpstreamConnection | null = null;
  private counted = false;
  private retried = false;
  private start = 0;
  private code = 0;
  resState = RS_NONE;
  private resBuf: Buffer | null = null;
  private resKind = B_NONE;
  private resLeft = 0;
  private resDecoder: ChunkedDecoder | null = null;
  /** Re-chunk the response body for the client (an HTTP/1.1 client, a chunked or close-delimited body). */
  private downChunked = false;
  private upstreamReusable = false;
  /** Close the client connection when this response ends. */
  private closeAfter = false;
  private gotResponseBytes = false;
  private pausedForUpstream = false;
  private pausedForPipeline = false;
  private upstreamPaused = false;

  /** The forwarding fields for the last Host seen (nearly every request on a connection has the same). */
  private tailHost = '';
  private tail = '';
  /** A route middleware's lines joined to the last tail each way (built once, not per request). */
  private mwReqOf: object | null = null;
  private mwReqBase = '';
  private mwReq = '';
  private mwResOf: object | null = null;
  private mwResBase = '';
  private mwRes = '';

  /** Sinks for the two chunked decoders: request bodies go upstream, response bodies to the client. */
  private readonly responseSink: ChunkSink = { chunkData: (b, s, e) => this.responseChunk(b, s, e) };

  /** Where the client's bytes go: the HTTP parser, or after an upgrade the spliced upstream. */
  private sink: (chunk: Buffer) => void = (chunk) => this.onData(chunk);
  /** Bytes after an upgrade that came before its upstream connected. */
  private held: Buffer[] | null = null;

  /**
   * `socket` reads through onread (plain sockets: `adoptAccepted`, whose callback calls onBytes)
   * or, when `dataEvents`, through 'data' events (TLS).
   */
  constructor(
    readonly socket: Socket,
    private readonly proxy: HttpProxy,
    encrypted: boolean,
    dataEvents: boolean,
  ) {
    this.headSince = performance.now();
    let client = socket.remoteAddress ?? '';
    if (client.startsWith('::ffff:')) client = client.slice(7); // IPv4 on a dual-stack socket
    this.client = client;
    this.proto = encrypted ? 'https' : 'http';
    socket.setNoDelay(true);
    if (dataEvents) socket.on('data', (chunk: Buffer) => this.sink(chunk));
    socket.on('drain', () => this.onClientDrain());
    socket.on('end', () => this.onClientEnd());
    socket.on('error', () => undefined); // 'close' follows
    socket.on('close', () => this.onClientClose());
  }

  // ---- client side -------------------------------------------------------------------------

  /** Bytes from the client (a copy this connection may keep). */
  onBytes(chunk: Buffer): void {
    this.sink(chunk);
  }

  private onData(chunk: Buffer): void {
    if (this.reading === R_CLOSED) return; // closing: drop, so the answer already sent is not lost to a reset
    if (this.reading === R_BODY && this.buf === null) {
      this.readBody(chunk);
      if (this.buf !== null) this.drive();
      return;
    }
    this.buf = this.buf === null ? chunk : this.append(this.buf, chunk);
    this.drive();
  }

  /** A growing buffer for a head that arrives in pieces: amortized copies, not one concat per piece (a client sending a byte at a time). */
  private acc: Buffer | null = null;
  private append(buf: Buffer, chunk: Buffer): Buffer {
    const need = buf.length + chunk.length;
    let acc = this.acc;
    if (acc === null || buf.buffer !== acc.buffer || buf.byteOffset !== acc.byteOffset || acc.length < need) {
      acc = Buffer.allocUnsafe(Math.max(need, 2 * buf.length, 1024));
      buf.copy(acc, 0);
      this.acc = acc;
    }
    chunk.copy(acc, buf.length);
    return acc.subarray(0, need);
  }

  /** Parse and act on what is buffered, as far as the state allows. */
  private drive(): void {
    if (this.driving) return;
    this.driving = true;
    try {
      while (this.buf !== null) {
        if (this.reading === R_HEAD) {
          if (!this.readHead(this.buf)) break;
        } else if (this.reading === R_BODY) {
          const b = this.buf;
          this.buf = null;
          this.readBody(b);
        } else {
          break;
        }
      }
      // A pipelining client waits for its answers; do not read its next requests without bound.
      if (this.reading === R_DONE && this.buf !== null && this.buf.length > this.proxy.opts.maxHeaderBytes && !this.pausedForPipeline) {
        this.pausedForPipeline = true;
        this.socket.pause();
      }
    } finally {
      this.driving = false;
    }
  }

  /** One request head from buf; false when it is not complete yet (or the connection is closing). */
  private readHead(buf: Buffer): boolean {
    const now = performance.now();
    if (this.headSince === 0) this.headSince = now;
    let from = 0;
    // RFC 9112 2.2: empty lines before a request line are ignored.
    while (from + 1 < buf.length && buf[from] === 13 && buf[from + 1] === 10) from += 2;
    const max = this.proxy.opts.maxHeaderBytes;
    // Search only what was not searched before (minus a partial CRLFCRLF).
    const end = headEnd(buf, Math.max(from, this.scanned - 3));
    if (end < 0) {
      if (buf.length - from > max) this.refuse(431, `request header fields too large (over ${max} bytes)\n`);
      else if (hasBareLfEnd(buf, Math.max(from, this.scanned - 1))) this.refuse(400, 'bad request: bare LF in the header block\n');
      else if (from > 0) {
        this.buf = from === buf.length ? null : buf.subarray(from);
        this.scanned = 0;
      } else {
        this.scanned = buf.length;
      }
      return false;
    }
    this.scanned = 0;
    if (end - from > max) {
      this.refuse(431, `request header fields too large (over ${max} bytes)\n`);
      return false;
    }
    const code = parseRequestHead(buf, from, end, REQ);
    if (code !== 0) {
      this.refuse(code, code === 431 ? `request header fields too large (${REQ.reason})\n` : `bad request: ${REQ.reason}\n`);
      return false;
    }
    this.buf = end === buf.length ? null : buf.subarray(end);
    this.startRequest(buf, from, end, now);
    return true;
  }

  /** A malformed, oversized or too slow request: answer, close, parse nothing after it. */
  refuse(code: number, text: string): void {
    this.proxy.log?.debug({ code, reason: text.trim(), remote: this.client }, 'refused a malformed request');
    this.proxy.finish(undefined, undefined, undefined, code, 0);
    this.detachUpstream();
    if (this.resState === RS_BODY) {
      // Part of a response is out already: no room for another answer on this connection.
      this.socket.destroy();
      return;
    }
    this.writeAnswer(code, text, true);
    this.closeGracefully();
  }

  private startRequest(buf: Buffer, from: number, end: number, now: number): void {
    const h = REQ;
    const proxy = this.proxy;
    this.method = methodOf(buf, from, h.methodEnd);
    this.isHead = this.method === 'HEAD';
    this.version = h.version;
    this.keepAlive = !proxy.closing && (h.version === 11 ? (h.connection & C_CLOSE) === 0 : (h.connection & C_KEEP_ALIVE) !== 0);
    this.closeAfter = !this.keepAlive;
    if (h.chunked) {
      this.bodyKind = B_CHUNKED;
      (this.reqDecoder ??= new ChunkedDecoder(this)).reset();
    } else {
      this.bodyKind = h.contentLength > 0 ? B_LENGTH : B_NONE;
      this.bodyLeft = h.contentLength;
    }
    this.bodySeen = 0;
    this.reading = this.bodyKind === B_NONE ? R_DONE : R_BODY;
    this.resState = RS_HEAD; // an answer is owed from here on
    this.code = 0;
    this.retried = false;
    this.start = 0;
    this.target = null;
    this.peer = null;

    // Route: Host (or the authority of an absolute-form target) and the path before '?'.
    if (!proxy.routes.ready) return this.answer(503, 'not ready: no routes from the agent yet (is `corral agent` running?)\n');
    let target: string | null = null;
    let url = buf.latin1Slice(h.targetStart, h.targetEnd);
    let hostHeader = h.host >= 0 ? buf.latin1Slice(h.fields.pos[h.host * 5 + 2]!, h.fields.pos[h.host * 5 + 3]!) : '';
    if (url.charCodeAt(0) !== 47 /* / */) {
      // Absolute form ("GET http://host/path"): its authority replaces the Host header (RFC 9112
      // 3.2.2), for routing and upstream alike: the endpoint never sees a name that was not routed.
      let parsed: URL | undefined;
      try {
        parsed = url.startsWith('http://') || url.startsWith('https://') ? new URL(url) : undefined;
      } catch {
        parsed = undefined;
      }
      if (!parsed || parsed.host === '') return this.answer(400, `bad request: cannot route request target "${url}"\n`);
      hostHeader = parsed.host;
      url = parsed.pathname + parsed.search;
      target = url;
    }
    this.hostRaw = hostHeader;
    this.path = url;
    if (hostHeader === '') return this.answer(400, 'bad request: no Host header\n');
    const host = normalizedHost(hostHeader);
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    // ACME HTTP-01 (lb/acme/): answered by the LB itself, whatever the route.
    if (proxy.acmeChallenge !== undefined && path.startsWith(ACME_CHALLENGE_PATH)) {
      const keyAuth = proxy.acmeChallenge(path.slice(ACME_CHALLENGE_PATH.length));
      return keyAuth === undefined ? this.answer(404, 'not found: no such ACME challenge\n') : this.answer(200, keyAuth);
    }
    const route = proxy.routes.lookup(host, path);
    if (route === undefined) return this.answer(404, `not found: no route for host "${host}" and path "${path}"\n`);
    this.target = route;
    const mw = route.middleware;
    if (mw !== null) {
      const v = mw.request(this.client, this.proto, hostHeader, url, buf, h.fields);
      if (v !== null) {
        if (v instanceof Promise) return this.holdFor(v, buf, from);
        this.closeAfter ||= v.code >= 400 && this.bodyKind !== B_NONE;
        return this.answer(v.code, v.text, v.headers);
      }
      const stripped = mw.rewrite(url);
      if (stripped !== null) target = stripped;
    }

    if (h.upgrade && (h.connection & C_UPGRADE) !== 0) {
      proxy.upgrade(this, route, buf, from, h, target);
      return;
    }
    const peer = route.balancer.pick();
    if (peer === undefined) {
      return this.answer(503, `service unavailable: service ${route.key} (host "${hostHeader}") has no healthy endpoint in its active color\n`);
    }
    const maxBody = proxy.opts.maxBodyBytes;
    if (maxBody > 0 && h.contentLength > maxBody) {
      this.closeAfter = true;
      return this.answer(413, `content too large: the request body (${h.contentLength} bytes) is over ${maxBody} bytes\n`);
    }
    if (h.expect === 2) {
      this.closeAfter = true;
      return this.answer(417, 'expectation failed: only "Expect: 100-continue" is understood\n');
    }
    this.peer = peer;
    let named = (h.connection & C_OTHER) !== 0 ? connectionNamed(buf, h.fields, F_CONNECTION) : null;
    let tail = this.tailFor(buf, h, hostHeader, target !== null, false);
    if (mw !== null) {
      named = mw.dropRequest(named);
      if (this.mwReqOf !== mw || this.mwReqBase !== tail) {
        this.mwReqOf = mw;
        this.mwReqBase = tail;
        this.mwReq = mw.requestTail + (mw.strip !== '' ? `x-forwarded-prefix: ${mw.strip}\r\n` : '') + tail;
      }
      tail = this.mwReq;
    }
    this.reqHead = buildRequestHead(buf, from, h, target, tail, false, named);
    this.replayable = this.bodyKind === B_NONE && IDEMPOTENT.has(this.method);
    // Node's server answered 100-continue by itself; so do we, once the request is going somewhere.
    if (h.expect === 1 && this.bodyKind !== B_NONE && h.version === 11) this.socket.write(CONTINUE);
    this.start = now;
    this.dispatch(false);
  }

  /**
   * The proxy's own fields for the upstream head and the final CRLF: Host when `setHost` (an
   * absolute-form target: buildRequestHead drops the client's), X-Forwarded-For appended,
   * X-Forwarded-Proto/-Host set, a Forwarded element (RFC 7239) appended, Connection. Cached per
   * connection for the common case (no forwarding fields from the client, same Host).
   */
  tailFor(buf: Buffer, h: RequestHead, hostHeader: string, setHost: boolean, upgrade: boolean): string {
    const chunked = this.bodyKind === B_CHUNKED;
    const simple = !h.forwarding && !setHost && !upgrade && !chunked;
    if (simple && hostHeader === this.tailHost) return this.tail;
    const client = this.client;
    // RFC 7239: IPv6 addresses are bracketed and quoted; the host is quoted (it may hold a colon).
    let forwarded = `for=${client.includes(':') ? `"[${client}]"` : client};host="${hostHeader.replace(/["\\]/g, '')}";proto=${this.proto}`;
    let xff = client;
    if (h.forwarding) {
      const priorXff = joinedValues(buf, h.fields, F_XFF);
      if (priorXff !== undefined) xff = `${priorXff}, ${client}`;
      const priorForwarded = joinedValues(buf, h.fields, F_FORWARDED);
      if (priorForwarded !== undefined) forwarded = `${priorForwarded}, ${forwarded}`;
    }
    let tail = `${setHost ? `host: ${hostHeader}\r\n` : ''}x-forwarded-for: ${xff}\r\nx-forwarded-proto: ${this.proto}\r\nx-forwarded-host: ${hostHeader}\r\nforwarded: ${forwarded}\r\n`;
    tail += upgrade ? 'connection: upgrade\r\n\r\n' : chunked ? 'connection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n' : 'connection: keep-alive\r\n\r\n';
    if (simple) {
      this.tailHost = hostHeader;
      this.tail = tail;
    }
    return tail;
  }

  /**
   * A middleware check still running (a password hash): the head goes back into the buffer, reading
   * stops, and once the check is done the head is parsed again and the check answers at once.
   */
  private holdFor(check: Promise<void>, buf: Buffer, from: number): void {
    this.buf = buf.subarray(from);
    this.reading = R_HOLD;
    this.resState = RS_NONE;
    this.target = null;
    this.socket.pause();
    void check.then(() => {
      if (this.reading !== R_HOLD || this.socket.destroyed) return;
      this.reading = R_HEAD;
      if (!this.pausedForUpstream && !this.pausedForPipeline) this.socket.resume();
      this.drive();
    });
  }

  /** Send (or resend) the request to this.peer. */
  private dispatch(fresh: boolean): void {
    const peer = this.peer!;
    peer.state.active++;
    this.counted = true;
    this.gotResponseBytes = false;
    this.resBuf = null;
    this.resState = RS_HEAD;
    const conn = this.proxy.pools.get(peer.origin).acquire(this, fresh);
    this.upstream = conn;
    // The headers timeout counts from the end of the request: for one without a body, when its head was read.
    if (this.reading === R_DONE) conn.waitingSince = this.retried ? performance.now() : this.start;
    writeWhole(conn.socket, this.reqHead!);
  }

  /** Body bytes of the current request, from chunk. What follows the body goes back to this.buf. */
  private readBody(chunk: Buffer): void {
    if (this.bodyKind === B_LENGTH) {
      const n = Math.min(this.bodyLeft, chunk.length);
      this.bodyLeft -= n;
      if (n < chunk.length) this.buf = chunk.subarray(n);
      this.forwardBody(n === chunk.length ? chunk : chunk.subarray(0, n));
      if (this.bodyLeft === 0) this.requestRead();
      return;
    }
    const r = this.reqDecoder!.decode(chunk, 0);
    if (this.reading !== R_BODY) return; // the body was refused on the way (413)
    if (r === CHUNKED_MORE) return;
    if (r === CHUNKED_ERROR) {
      this.refuse(400, `bad request: ${this.reqDecoder!.reason}\n`);
      return;
    }
    if (r < chunk.length) this.buf = chunk.subarray(r);
    this.upstream?.socket.write(LAST_CHUNK);
    this.requestRead();
  }

  /** A decoded span of a chunked request body: re-chunked for the upstream. */
  chunkData(buf: Buffer, start: number, end: number): void {
    const max = this.proxy.opts.maxBodyBytes;
    this.bodySeen += end - start;
    if (max > 0 && this.bodySeen > max) {
      this.bodyTooLarge(max);
      return;
    }
    const up = this.upstream;
    if (up === null || this.reading !== R_BODY) return;
    const s = up.socket;
    s.cork();
    s.write(chunkSizeLine(end - start));
    s.write(buf.subarray(start, end));
    const ok = s.write(CRLF);
    s.uncork();
    if (!ok) this.pauseForUpstream();
  }

  private forwardBody(piece: Buffer): void {
    const up = this.upstream;
    if (up === null || piece.length === 0) return;
    if (!up.socket.write(piece)) this.pauseForUpstream();
  }

  private pauseForUpstream(): void {
    if (this.pausedForUpstream) return;
    this.pausedForUpstream = true;
    this.socket.pause();
  }

  /** A chunked body passed --lb-max-body: 413 while nothing of the response is out, else cut. */
  private bodyTooLarge(max: number): void {
    this.reading = R_CLOSED;
    if (this.resState === RS_BODY) {
      this.detachUpstream();
      this.socket.destroy();
      return;
    }
    this.detachUpstream();
    this.writeAnswer(413, `content too large: the request body is over ${max} bytes\n`, true);
    this.proxy.finish(this, this.target ?? undefined, this.peer ?? undefined, 413, this.start);
    this.resState = RS_DONE;
    this.closeGracefully();
  }

  /** The whole request has been read (and forwarded). */
  private requestRead(): void {
    this.reading = R_DONE;
    if (this.upstream !== null && this.resState === RS_HEAD) this.upstream.waitingSince = performance.now();
  }

  private onClientDrain(): void {
    if (this.upstreamPaused && this.upstream !== null) {
      this.upstreamPaused = false;
      this.upstream.socket.resume();
    }
  }

  waitsForBody(): boolean {
    // Not while the request body is still going up (an endpoint may answer only once it has it;
    // --lb-request-timeout bounds that part), nor while a slow client holds the upstream back.
    return this.resState === RS_BODY && this.reading !== R_BODY && !this.upstreamPaused;
  }

  onUpstreamDrain(): void {
    if (this.pausedForUpstream) {
      this.pausedForUpstream = false;
      if (!this.pausedForPipeline) this.socket.resume();
    }
  }

  private onClientEnd(): void {
    // The client shut its side: like Node's server (httpAllowHalfOpen off), that is the client
    // going away; a request in flight is aborted (onClientClose).
    this.socket.destroy();
  }

  private onClientClose(): void {
    this.proxy.connections.delete(this);
    this.reading = R_CLOSED;
    if (this.resState === RS_HEAD || this.resState === RS_BODY) {
      // The client went away before its response ended: stop the upstream request too.
      const dispatched = this.upstream !== null;
      this.detachUpstream();
      this.resState = RS_DONE;
      if (dispatched) this.proxy.finish(this, this.target ?? undefined, this.peer ?? undefined, 499, this.start);
    }
  }

  /** Forget the upstream connection of the current request and cut it (its request is abandoned). */
  private detachUpstream(): void {
    this.settle();
    const up = this.upstream;
    if (up === null) return;
    this.upstream = null;
    up.user = null;
    up.destroy();
  }

  private settle(): void {
    if (this.counted) {
      this.counted = false;
      this.peer!.state.active--;
    }
  }

  // ---- answers -----------------------------------------------------------------------------

  /** An answer of the load balancer itself (404, 503, 502, ...). */
  private answer(code: number, text: string, headers = ''): void {
    // A request body not read yet cannot be skipped safely: close after the answer.
    const close = this.closeAfter || this.reading === R_BODY || this.proxy.closing;
    this.writeAnswer(code, text, close, headers);
    this.proxy.finish(this, this.target ?? undefined, code >= 502 && this.peer !== null ? this.peer : undefined, code, this.start);
    this.responseEnded(close);
  }

  private writeAnswer(code: number, text: string, close: boolean, headers = ''): void {
    if (this.socket.destroyed || !this.socket.writable) return;
    const body = this.isHead ? '' : text;
    this.socket.write(`HTTP/1.1 ${code} ${STATUS_CODES[code] ?? 'Error'}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(text)}\r\n${headers}${close ? 'connection: close\r\n' : ''}\r\n${body}`);
  }

  /** The response to the current request is complete on the client side. */
  private responseEnded(close: boolean, now = performance.now()): void {
    this.resState = RS_NONE;
    this.target = null;
    this.peer = null;
    this.reqHead = null;
    if (close || this.reading === R_BODY || this.reading === R_CLOSED) {
      this.closeGracefully();
      return;
    }
    this.reading = R_HEAD;
    this.headSince = 0;
    this.idleSince = now;
    if (this.pausedForPipeline) {
      this.pausedForPipeline = false;
      if (!this.pausedForUpstream) this.socket.resume();
    }
    if (this.buf !== null) this.drive();
  }

  /** End our side, keep dropping what the client still sends for a moment, then close. */
  closeGracefully(): void {
    this.reading = R_CLOSED;
    this.buf = null;
    this.acc = null;
    this.lingerUntil = performance.now() + LINGER_MS;
    if (this.pausedForUpstream || this.pausedForPipeline) this.socket.resume();
    if (!this.socket.destroyed) this.socket.end();
  }

  // ---- upstream side -----------------------------------------------------------------------

  onUpstreamData(chunk: Buffer): void {
    this.gotResponseBytes = true;
    if (this.resState === RS_BODY) {
      this.responseBody(chunk, 0);
      return;
    }
    if (this.resState !== RS_HEAD) {
      this.upstream?.destroy(); // bytes after the response ended: the connection is not reusable
      return;
    }
    const buf = this.resBuf === null ? chunk : Buffer.concat([this.resBuf, chunk]);
    const end = headEnd(buf, 0);
    if (end < 0) {
      if (buf.length > MAX_RESPONSE_HEAD) this.upstreamFailed({ code: 'BAD_RESPONSE', message: `response head over ${MAX_RESPONSE_HEAD} bytes` }, true);
      else this.resBuf = buf;
      return;
    }
    this.resBuf = null;
    const h = RES;
    if (parseResponseHead(buf, 0, end, h) !== 0) {
      this.upstreamFailed({ code: 'BAD_RESPONSE', message: h.reason }, true);
      return;
    }
    const status = h.status;
    if (status < 200) {
      // 1xx (100 Continue, 103 Early Hints): dropped; the final response follows.
      if (status === 101) {
        this.upstreamFailed({ code: 'BAD_RESPONSE', message: '101 Switching Protocols to a request without Upgrade' }, true);
        return;
      }
      if (end < buf.length) this.onUpstreamData(buf.subarray(end));
      return;
    }
    const up = this.upstream!;
    up.waitingSince = 0;
    this.code = status;
    this.proxy.outliers?.answered(this.peer!.state, status);
    if (h.keepAlive >= 0) {
      const p = h.keepAlive * 5;
      up.hintMs = keepAliveTimeoutMs(buf, h.fields.pos[p + 2]!, h.fields.pos[p + 3]!);
    }
    const kind = responseFraming(h, this.isHead);
    this.resKind = kind;
    this.upstreamReusable = kind !== B_CLOSE && (h.version === 11 ? (h.connection & C_CLOSE) === 0 : (h.connection & C_KEEP_ALIVE) !== 0);
    if (this.proxy.closing) this.closeAfter = true;
    let tail: string;
    let dropLength = false;
    this.downChunked = false;
    if (kind === B_CHUNKED || kind === B_CLOSE) {
      dropLength = true;
      if (this.version === 11) {
        this.downChunked = true;
        tail = this.closeAfter ? 'transfer-encoding: chunked\r\nconnection: close\r\n\r\n' : 'transfer-encoding: chunked\r\n\r\n';
      } else {
        // An HTTP/1.0 client knows no chunks: the body is the raw bytes, ended by our close.
        this.closeAfter = true;
        tail = 'connection: close\r\n\r\n';
      }
    } else {
      tail = this.closeAfter ? 'connection: close\r\n\r\n' : this.version === 10 ? 'connection: keep-alive\r\n\r\n' : CRLF;
    }
    let named = (h.connection & C_OTHER) !== 0 ? connectionNamed(buf, h.fields, F_CONNECTION) : null;
    const mw = this.target?.middleware ?? null;
    if (mw !== null) {
      named = mw.dropResponse(named);
      if (this.mwResOf !== mw || this.mwResBase !== tail) {
        this.mwResOf = mw;
        this.mwResBase = tail;
        this.mwRes = mw.responseTail(this.proto) + tail;
      }
      tail = this.mwRes;
    }
    let bodyEnd = end;
    if (kind === B_LENGTH) {
      bodyEnd = end + Math.min(h.contentLength, buf.length - end);
      this.resLeft = h.contentLength - (bodyEnd - end);
    }
    this.resState = RS_BODY;
    const head = buildResponseHead(buf, h, dropLength, tail, named, end, bodyEnd);
    // The head (with the body when it came along) in one write; the Writable's backpressure
    // covers the body writes after it.
    if (!writeWhole(this.socket, head)) this.clientFull();
    if (kind === B_NONE || (kind === B_LENGTH && this.resLeft === 0)) {
      this.responseComplete(bodyEnd === buf.length);
      return;
    }
    if (kind === B_CHUNKED) (this.resDecoder ??= new ChunkedDecoder(this.responseSink)).reset();
    if (bodyEnd < buf.length) this.responseBody(buf, bodyEnd);
  }

  /** Response body bytes chunk[from..]. */
  private responseBody(chunk: Buffer, from: number): void {
    switch (this.resKind) {
      case B_LENGTH: {
        const n = Math.min(this.resLeft, chunk.length - from);
        this.resLeft -= n;
        this.writeDown(from === 0 && n === chunk.length ? chunk : chunk.subarray(from, from + n));
        if (this.resLeft === 0) this.responseComplete(from + n === chunk.length);
        return;
      }
      case B_CHUNKED: {
        const r = this.resDecoder!.decode(chunk, from);
        if (r === CHUNKED_MORE || this.resState !== RS_BODY) return;
        if (r === CHUNKED_ERROR) {
          this.upstreamFailed({ code: 'BAD_RESPONSE', message: this.resDecoder!.reason }, true);
          return;
        }
        if (this.downChunked) this.writeDown(LAST_CHUNK);
        this.responseComplete(r === chunk.length);
        return;
      }
      default: // B_CLOSE
        if (this.downChunked) this.responseChunk(chunk, from, chunk.length);
        else this.writeDown(from === 0 ? chunk : chunk.subarray(from));
    }
  }

  /** A decoded span of a chunked (or close-delimited) response body. */
  private responseChunk(buf: Buffer, start: number, end: number): void {
    if (!this.downChunked) {
      this.writeDown(buf.subarray(start, end));
      return;
    }
    const s = this.socket;
    s.cork();
    s.write(chunkSizeLine(end - start));
    s.write(buf.subarray(start, end));
    this.writeDown(CRLF);
    s.uncork();
  }

  private writeDown(data: Buffer | string): void {
    if (!this.socket.write(data)) this.clientFull();
  }

  /** The client reads slower than the endpoint sends: stop reading the endpoint until it drains. */
  private clientFull(): void {
    if (this.upstreamPaused || this.upstream === null || this.socket.writableLength === 0) return;
    this.upstreamPaused = true;
    this.upstream.socket.pause();
  }

  onUpstreamEnd(): void {
    if (this.resState === RS_BODY && this.resKind === B_CLOSE) {
      if (this.downChunked) this.writeDown(LAST_CHUNK);
      this.upstreamReusable = false;
      this.responseComplete(true);
    }
    // Otherwise the close that follows is reported through onUpstreamError.
  }

  /** The response ended on the upstream side. `clean`: nothing followed it in the last chunk. */
  private responseComplete(clean: boolean): void {
    const now = performance.now(); // one clock read for the pool, the metrics and the idle time
    const up = this.upstream!;
    this.upstream = null;
    this.settle();
    if (this.upstreamPaused) {
      this.upstreamPaused = false;
      up.socket.resume();
    }
    // A request body still arriving cannot be finished on this connection: not reusable, and the client connection closes.
    const requestDone = this.reading === R_DONE;
    up.pool.release(up, this.upstreamReusable && clean && requestDone, now);
    this.resState = RS_DONE;
    this.proxy.finish(this, this.target ?? undefined, this.peer ?? undefined, this.code, this.start, now);
    this.responseEnded(this.closeAfter || !requestDone, now);
  }

  onUpstreamError(err: UpstreamError): void {
    this.upstreamFailed(err, false);
  }

  /** The upstream connection failed (or answered nonsense) during the current request. */
  private upstreamFailed(err: { code: string; message: string }, destroy: boolean): void {
    const up = this.upstream;
    if (up === null) return;
    this.upstream = null;
    up.user = null;
    if (destroy) up.destroy();
    this.settle();
    const peer = this.peer!;
    const target = this.target!;
    const log = this.proxy.log;
    if (this.resState === RS_BODY) {
      // Mid-body failure: the only honest signal left is to cut the client connection.
      log?.warn({ service: target.key, upstream: peer.origin, err: errText(err) }, 'upstream failed during the response body');
      this.resState = RS_DONE;
      this.proxy.finish(this, target, peer, this.code, this.start);
      this.reading = R_CLOSED;
      this.socket.destroy();
      return;
    }
    const outliers = this.proxy.outliers;
    const connectionFailed = !this.gotResponseBytes && CONNECTION_FAILURES.has(err.code);
    if (connectionFailed) {
      // A reused keep-alive connection closed without a byte is the endpoint's idle timeout racing
      // our reuse, not a sign of a bad endpoint: retried, not counted.
      const stale = up.served > 0 && err.code === 'UPSTREAM_CLOSED';
      if (!stale) outliers?.connectFailed(peer.state);
      if (this.replayable && !this.retried) {
        const next = target.balancer.pick(peer);
        if (next !== undefined) {
          this.retried = true;
          this.proxy.retrying(target);
          log?.debug({ service: target.key, upstream: peer.origin, retry: next.origin, err: errText(err) }, 'retrying on another endpoint');
          this.peer = next;
          this.dispatch(next.origin === peer.origin);
          return;
        }
      }
    } else if (err.code === 'HEADERS_TIMEOUT') {
      outliers?.answered(peer.state, 504);
    }
    const code = err.code === 'HEADERS_TIMEOUT' ? 504 : 502;
    log?.warn({ service: target.key, upstream: peer.origin, code, err: errText(err), retried: this.retried }, 'upstream request failed');
    const what = code === 504 ? 'did not answer in time' : 'cannot be reached';
    this.answer(code, `${code === 504 ? 'gateway timeout' : 'bad gateway'}: endpoint ${hostPort(peer.endpoint)} of service ${target.key} ${what} (${errText(err)})\n`);
  }

  /** The periodic sweep: client timeouts. */
  sweep(now: number): void {
    const o = this.proxy.opts;
    switch (this.reading) {
      case R_CLOSED:
        if (this.lingerUntil !== 0 && now > this.lingerUntil) this.socket.destroy();
        return;
      case R_HEAD:
        if (this.headSince !== 0) {
          const limit = o.requestTimeoutMs > 0 ? Math.min(o.clientHeadersTimeoutMs, o.requestTimeoutMs) : o.clientHeadersTimeoutMs;
          if (now - this.headSince > limit) this.refuse(408, 'request timeout: the request did not arrive in time\n');
        } else if (now - this.idleSince > o.idleTimeoutMs) {
          this.socket.destroy(); // idle keep-alive: closed quietly
        }
        return;
      case R_BODY:
        if (o.requestTimeoutMs > 0 && now - this.headSince > o.requestTimeoutMs) {
          this.refuse(408, 'request timeout: the request did not arrive in time\n');
        }
        return;
      default:
    }
  }

  /** Hand the socket over to an upgraded (spliced) connection: no more HTTP parsing here. */
  takeOver(): Buffer | null {
    const rest = this.buf;
    this.buf = null;
    this.reading = R_CLOSED;
    this.lingerUntil = 0;
    this.resState = RS_DONE;
    const held: Buffer[] = [];
    this.held = held;
    this.sink = (chunk) => held.push(chunk);
    this.socket.removeAllListeners('drain');
    this.socket.removeAllListeners('end');
    this.socket.removeAllListeners('close');
    this.proxy.connections.delete(this);
    return rest;
  }

  /**
   * After takeOver: the client's bytes go to `upstream` (what came meanwhile first), with
   * backpressure, and the client's end of stream ends it.
   */
  spliceInto(upstream: Socket): void {
    const socket = this.socket;
    const forward = (chunk: Buffer) => {
      if (!upstream.write(chunk)) socket.pause();
    };
    for (const chunk of this.held ?? []) forward(chunk);
    this.held = null;
    this.sink = forward;
    upstream.on('drain', () => socket.resume());
    socket.on('end', () => upstream.end());
  }

  /** Idle between requests (closing the server closes these at once). */
  get idle(): boolean {
    return this.reading === R_HEAD && this.buf === null && this.resState === RS_NONE;
  }
}

/** A whole answer written on a raw socket (upgrades), then the connection closed. */
function rawAnswer(socket: Socket, code: number, text: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  socket.end(`HTTP/1.1 ${code} ${STATUS_CODES[code] ?? 'Error'}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`);
  setTimeout(() => socket.destroy(), LINGER_MS).unref();
}

export class HttpProxy {
  readonly server: Server;
  /** Servers this proxy serves on (HTTP, and HTTPS when certificates are configured). */
  private readonly servers: Server[] = [];
  readonly opts: ProxyOptions;
  readonly connections = new Set<ClientConnection>();
  closing = false;
  private readonly access: Logger | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  /** Sockets handed over to upgraded (WebSocket) connections, cut at shutdown. */
  private readonly upgraded = new Set<Socket>();
  /** ACME HTTP-01: the key authorization for a token (lb/acme/), when the LB orders certificates. */
  acmeChallenge: ((token: string) => string | undefined) | undefined;
  /** HTTP/2 sessions of TLS clients that chose "h2" (made with the first TLS server). */
  private h2: H2Front | undefined;

  constructor(
    readonly routes: RouteTable,
    readonly pools: UpstreamPools,
    private readonly observer?: ProxyObserver,
    readonly log?: Logger,
    opts: Partial<ProxyOptions> = {},
    readonly outliers?: PassiveHealth,
  ) {
    this.opts = { ...PROXY_DEFAULTS, ...opts };
    this.access = this.opts.accessLog ? log?.child({ access: true }) : undefined;
    // Accepted sockets wait unread until accept() moves them to onread reads.
    this.server = this.serve(createServer({ pauseOnConnect: true }));
  }

  /** Open client connections: HTTP/1.1 ones and h2 sessions. */
  get clientConnections(): number {
    return this.connections.size + (this.h2?.sessionCount ?? 0);
  }

  /** Serve on `server`: a net.Server (HTTP), or a tls.Server (HTTPS; create it with SNICallback from tls.ts). */
  serve<S extends Server>(server: S): S {
    if (server instanceof TlsServer) {
      this.h2 ??= new H2Front(this);
      server.on('secureConnection', (socket: TLSSocket) => {
        if (socket.alpnProtocol === 'h2' && !this.closing) this.h2!.take(socket);
        else this.accept(socket, true);
      });
    }
    else server.on('connection', (socket: Socket) => this.accept(socket, false));
    this.servers.push(server);
    this.startSweep();
    return server;
  }

  private accept(socket: Socket, encrypted: boolean): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    if (encrypted) {
      this.connections.add(new ClientConnection(socket, this, true, true));
      return;
    }
    let conn: ClientConnection | undefined;
    const adopted = adoptAccepted(socket, (chunk) => conn!.onBytes(chunk));
    conn = new ClientConnection(adopted, this, false, false);
    this.connections.add(conn);
  }

  private startSweep(): void {
    if (this.sweeper !== undefined) return;
    const o = this.opts;
    // How often client timeouts are checked (each may run late by up to this much).
    const every = Math.max(100, Math.min(1_000, o.clientHeadersTimeoutMs / 4, o.idleTimeoutMs / 4));
    this.sweeper = setInterval(() => {
      const now = performance.now();
      for (const c of this.connections) c.sweep(now);
    }, every);
    this.sweeper.unref();
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
    this.closing = true;
    this.h2?.close();
    const closed = Promise.all(this.servers.map((server) => new Promise<void>((resolve) => (server.listening ? server.close(() => resolve()) : resolve()))));
    for (const c of this.connections) if (c.idle) c.socket.destroy();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)));
    await Promise.race([closed, late]);
    clearTimeout(timer);
    for (const c of this.connections) c.socket.destroy();
    for (const s of this.upgraded) s.destroy();
    this.h2?.destroy();
    await closed;
    if (this.sweeper !== undefined) clearInterval(this.sweeper);
    this.sweeper = undefined;
    await this.pools.close(graceMs);
  }

  /** WebSocket (any Upgrade): routed and picked as a request, then the two connections are spliced. */
  upgrade(conn: ClientConnection, target: RouteTarget, buf: Buffer, from: number, h: RequestHead, absolute: string | null): void {
    const socket = conn.socket;
    const peer = target.balancer.pick();
    const rest = conn.takeOver();
    this.upgraded.add(socket);
    socket.on('error', () => undefined);
    if (peer === undefined) {
      rawAnswer(socket, 503, `service unavailable: service ${target.key} has no healthy endpoint in its active color\n`);
      this.finish(conn, target, undefined, 503, 0);
      socket.on('close', () => this.upgraded.delete(socket));
      return;
    }
    const named = (h.connection & C_OTHER) !== 0 ? connectionNamed(buf, h.fields, F_CONNECTION) : null;
    const head = buildRequestHead(buf, from, h, absolute, conn.tailFor(buf, h, conn.hostRaw, absolute !== null, true), true, named);
    const ep = peer.endpoint;
    const start = performance.now();
    const upstream = connect({ host: ep.address, port: ep.port });
    upstream.setTimeout(this.opts.connectTimeoutMs);
    let connected = false;
    const fail = (err: Error & { code?: string }) => {
      if (connected) {
        socket.destroy();
        return;
      }
      this.outliers?.connectFailed(peer.state);
      rawAnswer(socket, 502, `bad gateway: endpoint ${hostPort(ep)} of service ${target.key} cannot be reached (${errText(err)})\n`);
      this.finish(conn, target, peer, 502, start);
    };
    upstream.on('timeout', () => upstream.destroy(Object.assign(new Error('connect timed out'), { code: 'CONNECT_TIMEOUT' })));
    upstream.on('error', fail);
    upstream.once('connect', () => {
      connected = true;
      upstream.setTimeout(0);
      upstream.setNoDelay(true);
      upstream.write(head);
      if (rest !== null) upstream.write(rest);
      upstream.once('data', (chunk: Buffer) => {
        const code = Number(chunk.toString('latin1', 9, 12)) || 0;
        this.outliers?.answered(peer.state, code);
        this.finish(conn, target, peer, code, start);
      });
      upstream.pipe(socket);
      conn.spliceInto(upstream);
    });
    socket.on('close', () => {
      this.upgraded.delete(socket);
      upstream.destroy();
    });
    upstream.on('close', () => socket.destroy());
  }

  /** A request is sent again to another endpoint (metrics). */
  retrying(target: RouteTarget): void {
    this.observer?.retried?.(target);
  }

  /** A response is done: metrics, and the access log line when enabled. */
  finish(conn: AccessInfo | undefined, target: RouteTarget | undefined, peer: Peer | undefined, code: number, start: number, now?: number): void {
    const seconds = start === 0 ? 0 : ((now ?? performance.now()) - start) / 1000;
    this.observer?.response(target, peer?.endpoint, code, seconds);
    if (this.access !== undefined) {
      this.access.info({
        method: conn?.method, host: conn?.hostRaw, path: conn?.path,
        status: code, service: target?.key, upstream: peer?.origin, ms: Math.round(seconds * 1e4) / 10,
        client: conn?.client,
      }, 'request');
    }
  }
}
