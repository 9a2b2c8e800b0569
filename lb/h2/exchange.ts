// One h2 stream answered from an upstream's HTTP/1.1 keep-alive pool: the request head is written
// from the stream's header object (request.ts), the endpoint's response head is parsed once and
// handed to `stream.respond()`, the body follows as DATA. Routing, balancing, retries, passive
// health, timeouts, draining, metrics and the access log follow the HTTP/1.1 path (proxy.ts) rule
// for rule; what differs is only what an h2 client can be told (a reset instead of a cut connection).
//
// Listeners on the stream are module functions reaching the exchange through a symbol: no closure
// per stream.
import { constants, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import type { Peer } from '../balancer.js';
import { CHUNKED_ERROR, CHUNKED_MORE, ChunkedDecoder, chunkSizeLine, LAST_CHUNK, type ChunkSink } from '../http1/chunked.js';
import {
  BODY_CHUNKED, BODY_LENGTH, BODY_NONE, BODY_UNTIL_CLOSE, C_CLOSE, C_KEEP_ALIVE, C_OTHER, eqLower, F_CONNECTION, headEnd, isHopByHop,
  keepAliveTimeoutMs, parseResponseHead, ResponseHead, responseFraming,
} from '../http1/head.js';
import { connectionNamed } from '../http1/build.js';
import { CONNECTION_FAILURES, errText, hostPort, IDEMPOTENT, normalizedHost, type AccessInfo, type HttpProxy } from '../proxy.js';
import type { RouteTarget } from '../routes.js';
import type { UpstreamConnection, UpstreamError, UpstreamUser } from '../upstreams.js';
import { writeWhole } from '../writes.js';
import { authorityOf, forwardingTail, requestHead, type HeadContext } from './request.js';

/** Largest response head accepted from an endpoint (then 502), as in proxy.ts. */
const MAX_RESPONSE_HEAD = 64 * 1024;

// The request upload.
const U_NONE = 0; // no body, or all of it went up
const U_BODY = 1; // body arriving
const U_DROP = 2; // answered or failed early: what the client still uploads is dropped

// The response.
const RS_HEAD = 1; // waiting for the upstream's response head
const RS_BODY = 2; // body flowing to the client
const RS_DONE = 3;

const CRLF = '\r\n';

/** The exchange of a stream (listeners find it here). */
const EXCHANGE = Symbol('corral.h2.exchange');
type Carrier = ServerHttp2Stream & { [EXCHANGE]?: H2Exchange };

function onStreamClose(this: Carrier): void {
  this[EXCHANGE]?.clientClosed();
}
function onStreamData(this: Carrier, d: Buffer): void {
  this[EXCHANGE]?.uploadData(d);
}
function onStreamEnd(this: Carrier): void {
  this[EXCHANGE]?.uploadEnd();
}
function onStreamDrain(this: Carrier): void {
  this[EXCHANGE]?.clientDrain();
}
/** Our answer is out while the client is still uploading: ask it to stop, without error (RFC 9113 8.1). */
function onAnsweredEarly(this: ServerHttp2Stream): void {
  if (!this.closed && !this.destroyed && !this.readableEnded) this.close(constants.NGHTTP2_NO_ERROR);
}
function ignore(): void {
  // stream errors end in 'close', handled there
}

/** respond() options (copied by Node): the endpoint's Date (if any) is kept; none is invented. */
const RESPOND_END = { endStream: true, sendDate: false } as never;
const RESPOND_BODY = { endStream: false, sendDate: false } as never;

/** One parse target per thread (its field tables are large): heads are parsed and read synchronously. */
const RES = new ResponseHead();

/** Per h2 session: the client address, its streams in flight, and the forwarding tail last built for it. */
export class H2Client {
  tailHost = '';
  tail = '';
  /** Streams open now, and performance.now() when the last one started or ended (the idle timeout). */
  open = 0;
  lastActive = performance.now();
  constructor(readonly client: string) {}
}

/** What the h2 front gives every exchange. */
export interface H2Owner {
  readonly proxy: HttpProxy;
  /** Exchanges whose request body is still arriving (the request timeout watches them). */
  readonly uploading: Set<H2Exchange>;
}

export class H2Exchange implements UpstreamUser, ChunkSink, AccessInfo {
  readonly method: string;
  readonly hostRaw: string;
  readonly path: string;
  readonly client: string;
  private readonly isHead: boolean;
  private upload = U_NONE;
  /** The request body goes up chunked (h2 body without content-length). */
  private chunked = false;
  private bodySeen = 0;
  /** The client has not ended its side yet (an upload that may go on after our answer). */
  private clientUploading = false;
  /** performance.now() when the stream started (the request timeout counts from it). */
  readonly since: number;
  private reqHead = '';
  private replayable = false;
  private streamPaused = false;

  private target: RouteTarget | null = null;
  private peer: Peer | null = null;
  private upstream: UpstreamConnection | null = null;
  private counted = false;
  private retried = false;
  private start = 0;
  private code = 0;
  private resState = RS_HEAD;
  private resBuf: Buffer | null = null;
  private resKind = BODY_NONE;
  private resLeft = 0;
  private resDecoder: ChunkedDecoder | null = null;
  private upstreamReusable = false;
  private gotResponseBytes = false;
  private upstreamPaused = false;
  private drainListening = false;

  constructor(
    private readonly stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    private readonly owner: H2Owner,
    private readonly session: H2Client,
  ) {
    const method = headers[':method'] ?? '';
    this.method = method;
    this.isHead = method === 'HEAD';
    this.hostRaw = authorityOf(headers);
    this.path = headers[':path'] ?? '';
    this.client = session.client;
    this.since = performance.now();
    session.open++; // lastActive matters only once none is open (clientClosed)
    const s = stream as Carrier;
    s[EXCHANGE] = this;
    s.on('close', onStreamClose);
    s.on('error', ignore);
    const hasBody = !stream.endAfterHeaders;
    if (hasBody) {
      this.upload = U_BODY;
      this.clientUploading = true;
      this.chunked = headers['content-length'] === undefined;
      owner.uploading.add(this);
      s.on('data', onStreamData);
      s.on('end', onStreamEnd);
    }
    this.route(headers);
  }

  private route(headers: IncomingHttpHeaders): void {
    const proxy = this.owner.proxy;
    if (!proxy.routes.ready) return this.answer(503, 'not ready: no routes from the agent yet (is `corral agent` running?)\n');
    const url = this.path;
    const authority = this.hostRaw;
    // CONNECT (no :path) and anything that cannot be a request line: h2 would tunnel, we do not.
    if (url.charCodeAt(0) !== 47 /* / */ && !(url === '*' && this.method === 'OPTIONS')) {
      return this.answer(400, `bad request: cannot route request target "${url}"\n`);
    }
    if (authority === '') return this.answer(400, 'bad request: no :authority or Host\n');
    const host = normalizedHost(authority);
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const route = proxy.routes.lookup(host, path);
    if (route === undefined) return this.answer(404, `not found: no route for host "${host}" and path "${path}"\n`);
    this.target = route;
    const mw = route.middleware;
    let edge: HeadContext | null = null;
    if (mw !== null) {
      const auth = headers.authorization;
      const v = mw.request(this.client, 'https', authority, url, null, null, typeof auth === 'string' ? auth : undefined);
      if (v !== null) {
        if (v instanceof Promise) return this.holdFor(v, headers);
        return this.answer(v.code, v.text, v.headers);
      }
      const stripped = mw.rewrite(url);
      edge = {
        client: this.client, authority, chunked: this.chunked,
        path: stripped ?? undefined,
        drop: mw.dropRequest(null),
        extra: mw.requestTail + (mw.strip !== '' ? `x-forwarded-prefix: ${mw.strip}\r\n` : ''),
      };
    }
    const peer = route.balancer.pick();
    if (peer === undefined) {
      return this.answer(503, `service unavailable: service ${route.key} (host "${authority}") has no healthy endpoint in its active color\n`);
    }
    const maxBody = proxy.opts.maxBodyBytes;
    const length = headers['content-length'];
    if (maxBody > 0 && length !== undefined && Number(length) > maxBody) {
      return this.answer(413, `content too large: the request body (${length} bytes) is over ${maxBody} bytes\n`);
    }
    const expect = headers.expect;
    const continues = expect !== undefined && expect.toLowerCase() === '100-continue';
    if (expect !== undefined && !continues) {
      return this.answer(417, 'expectation failed: only "Expect: 100-continue" is understood\n');
    }
    this.peer = peer;
    this.reqHead = edge !== null ? requestHead(headers, edge) : this.head(headers, authority);
    this.replayable = this.upload === U_NONE && IDEMPOTENT.has(this.method);
    this.start = this.since;
    // As on HTTP/1.1: the LB itself says 100 once the request is going somewhere (the Expect field is not sent up).
    if (continues && this.upload === U_BODY) this.stream.additionalHeaders({ ':status': 100 });
    this.dispatch(false);
  }

  /** A middleware check still running (a password hash): the stream waits, then is routed again. */
  private holdFor(check: Promise<void>, headers: IncomingHttpHeaders): void {
    this.target = null;
    this.stream.pause();
    void check.then(() => {
      if (this.resState === RS_DONE || this.stream.destroyed || this.stream.closed) return;
      this.stream.resume();
      this.route(headers);
    });
  }

  /** The upstream head; the forwarding tail is cached per session for its last authority. */
  private head(headers: IncomingHttpHeaders, authority: string): string {
    const c: HeadContext = { client: this.client, authority, chunked: this.chunked };
    if (this.chunked) return requestHead(headers, c);
    const s = this.session;
    if (s.tailHost !== authority) {
      s.tail = forwardingTail(c, undefined, undefined);
      s.tailHost = authority;
    }
    return requestHead(headers, c, s.tail);
  }

  /** Send (or resend) the request to this.peer. */
  private dispatch(fresh: boolean): void {
    const peer = this.peer!;
    peer.state.active++;
    this.counted = true;
    this.gotResponseBytes = false;
    this.resBuf = null;
    this.resState = RS_HEAD;
    const conn = this.owner.proxy.pools.get(peer.origin).acquire(this, fresh);
    this.upstream = conn;
    // The headers timeout counts from the end of the request: the stream's start for one without a body.
    if (this.upload !== U_BODY) conn.waitingSince = this.retried ? performance.now() : this.since;
    writeWhole(conn.socket, this.reqHead);
  }

  // ---- the client's stream -----------------------------------------------------------------

  uploadData(d: Buffer): void {
    if (this.upload !== U_BODY || d.length === 0) return;
    const max = this.owner.proxy.opts.maxBodyBytes;
    this.bodySeen += d.length;
    if (max > 0 && this.bodySeen > max) {
      this.bodyTooLarge(max);
      return;
    }
    const up = this.upstream;
    if (up === null) return;
    const s = up.socket;
    let ok: boolean;
    if (this.chunked) {
      s.cork();
      s.write(chunkSizeLine(d.length), 'latin1');
      s.write(d);
      ok = s.write(CRLF, 'latin1');
      s.uncork();
    } else {
      ok = s.write(d);
    }
    if (!ok && !this.streamPaused) {
      this.streamPaused = true;
      this.stream.pause();
    }
  }

  uploadEnd(): void {
    this.clientUploading = false;
    if (this.upload !== U_BODY) return;
    this.upload = U_NONE;
    this.owner.uploading.delete(this);
    const up = this.upstream;
    if (up === null) return;
    if (this.chunked) up.socket.write(LAST_CHUNK, 'latin1');
    if (this.resState === RS_HEAD) up.waitingSince = performance.now();
  }

  /** The request did not arrive within --lb-request-timeout (from the front's sweep). */
  requestTimedOut(): void {
    this.owner.uploading.delete(this);
    if (this.upload !== U_BODY) return;
    this.stopUpload();
    this.detachUpstream();
    if (this.resState === RS_BODY) {
      this.resState = RS_DONE;
      this.reset(constants.NGHTTP2_CANCEL);
      return;
    }
    this.answer(408, 'request timeout: the request did not arrive in time\n');
  }

  /** A body over --lb-max-body: 413 while nothing of the response is out, else a reset. */
  private bodyTooLarge(max: number): void {
    this.stopUpload();
    this.detachUpstream();
    if (this.resState === RS_BODY) {
      this.resState = RS_DONE;
      this.owner.proxy.finish(this, this.target ?? undefined, this.peer ?? undefined, this.code, this.start);
      this.reset(constants.NGHTTP2_CANCEL);
      return;
    }
    this.answer(413, `content too large: the request body is over ${max} bytes\n`);
  }

  /** No more of the upload goes anywhere; the stream keeps being read so flow control does not stall the session. */
  private stopUpload(): void {
    if (this.upload === U_BODY) this.owner.uploading.delete(this);
    if (this.upload !== U_DROP && this.clientUploading) this.stream.on('finish', onAnsweredEarly);
    this.upload = U_DROP;
    if (this.streamPaused) {
      this.streamPaused = false;
      this.stream.resume();
    }
  }

  clientDrain(): void {
    if (this.upstreamPaused && this.upstream !== null) {
      this.upstreamPaused = false;
      this.upstream.socket.resume();
    }
  }

  /** The stream closed: after our answer (nothing to do), or the client reset it / went away. */
  clientClosed(): void {
    (this.stream as Carrier)[EXCHANGE] = undefined;
    const session = this.session;
    if (--session.open === 0) session.lastActive = performance.now();
    if (this.upload === U_BODY) this.owner.uploading.delete(this);
    this.upload = U_DROP;
    if (this.resState === RS_DONE) return;
    this.resState = RS_DONE;
    const dispatched = this.upstream !== null;
    this.detachUpstream();
    if (dispatched) this.owner.proxy.finish(this, this.target ?? undefined, this.peer ?? undefined, 499, this.start);
  }

  // ---- answers -----------------------------------------------------------------------------

  /** An answer of the load balancer itself (404, 503, 502, ...). */
  private answer(code: number, text: string, fields = ''): void {
    this.resState = RS_DONE;
    if (this.upload === U_BODY) this.stopUpload();
    this.owner.proxy.finish(this, this.target ?? undefined, code >= 502 && this.peer !== null ? this.peer : undefined, code, this.start);
    const stream = this.stream;
    if (stream.destroyed || stream.closed) return;
    try {
      const headers: OutgoingHttpHeaders = {
        ':status': code,
        'content-type': 'text/plain; charset=utf-8',
        'content-length': Buffer.byteLength(text),
      };
      // A middleware's own fields (www-authenticate, retry-after), as CRLF-ended lines.
      if (fields !== '') {
        for (const line of fields.split(CRLF)) {
          const colon = line.indexOf(':');
          if (colon > 0) headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
        }
      }
      stream.respond(headers, { endStream: this.isHead });
      if (!this.isHead) stream.end(text);
    } catch {
      this.reset(constants.NGHTTP2_INTERNAL_ERROR);
    }
  }

  private reset(code: number): void {
    const stream = this.stream;
    if (!stream.destroyed && !stream.closed) stream.close(code);
  }

  // ---- upstream side -----------------------------------------------------------------------

  waitsForBody(): boolean {
    return this.resState === RS_BODY && this.upload !== U_BODY && !this.upstreamPaused;
  }

  onUpstreamDrain(): void {
    if (this.streamPaused && this.upload === U_BODY) {
      this.streamPaused = false;
      this.stream.resume();
    }
  }

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
    this.owner.proxy.outliers?.answered(this.peer!.state, status);
    if (h.keepAlive >= 0) {
      const p = h.keepAlive * 5;
      up.hintMs = keepAliveTimeoutMs(buf, h.fields.pos[p + 2]!, h.fields.pos[p + 3]!);
    }
    const kind = responseFraming(h, this.isHead);
    this.resKind = kind;
    this.upstreamReusable = kind !== BODY_UNTIL_CLOSE && (h.version === 11 ? (h.connection & C_CLOSE) === 0 : (h.connection & C_KEEP_ALIVE) !== 0);
    const headers = responseHeaders(buf, h);
    const mw = this.target!.middleware;
    if (mw !== null) {
      for (const name of mw.responseRemoved) delete headers[name];
      for (const [name, value] of mw.responseFieldsHttps) headers[name] = value;
    }
    let bodyEnd = end;
    if (kind === BODY_LENGTH) {
      bodyEnd = end + Math.min(h.contentLength, buf.length - end);
      this.resLeft = h.contentLength - (bodyEnd - end);
    }
    const stream = this.stream;
    const done = kind === BODY_NONE;
    try {
      stream.respond(headers, done ? RESPOND_END : RESPOND_BODY);
    } catch (err) {
      // Fields h2 cannot carry (two content-type fields, say): the endpoint's answer is unusable.
      this.upstreamFailed({ code: 'BAD_RESPONSE', message: `response head not valid in HTTP/2 (${(err as Error).message})` }, true);
      return;
    }
    this.resState = RS_BODY;
    if (done) {
      this.responseComplete(end === buf.length);
      return;
    }
    if (kind === BODY_LENGTH) {
      if (this.resLeft === 0) {
        // The whole body came with the head: END_STREAM on its one DATA frame.
        stream.end(buf.subarray(end, bodyEnd));
        this.responseComplete(bodyEnd === buf.length);
        return;
      }
      if (bodyEnd > end) this.data(buf.subarray(end, bodyEnd));
      return;
    }
    if (kind === BODY_CHUNKED) (this.resDecoder ??= new ChunkedDecoder(this)).reset();
    if (end < buf.length) this.responseBody(buf, end);
  }

  /** Response body bytes chunk[from..]. */
  private responseBody(chunk: Buffer, from: number): void {
    switch (this.resKind) {
      case BODY_LENGTH: {
        const n = Math.min(this.resLeft, chunk.length - from);
        this.resLeft -= n;
        const piece = from === 0 && n === chunk.length ? chunk : chunk.subarray(from, from + n);
        if (this.resLeft === 0) {
          // The last piece goes with the end of the stream: one DATA frame with END_STREAM.
          if (piece.length > 0) this.stream.end(piece);
          else this.stream.end();
          this.responseComplete(from + n === chunk.length);
        } else {
          this.data(piece);
        }
        return;
      }
      case BODY_CHUNKED: {
        const r = this.resDecoder!.decode(chunk, from);
        if (r === CHUNKED_MORE || this.resState !== RS_BODY) return;
        if (r === CHUNKED_ERROR) {
          this.upstreamFailed({ code: 'BAD_RESPONSE', message: this.resDecoder!.reason }, true);
          return;
        }
        this.stream.end();
        this.responseComplete(r === chunk.length);
        return;
      }
      default: // BODY_UNTIL_CLOSE
        this.data(from === 0 ? chunk : chunk.subarray(from));
    }
  }

  /** ChunkSink: a decoded span of a chunked answer. */
  chunkData(buf: Buffer, start: number, end: number): void {
    this.data(buf.subarray(start, end));
  }

  private data(b: Buffer): void {
    if (b.length === 0 || this.resState !== RS_BODY) return;
    const stream = this.stream;
    if (stream.write(b) || this.upstreamPaused || this.upstream === null) return;
    // The client reads slower than the endpoint sends: stop reading the endpoint until it drains.
    this.upstreamPaused = true;
    this.upstream.socket.pause();
    if (!this.drainListening) {
      this.drainListening = true;
      stream.on('drain', onStreamDrain);
    }
  }

  onUpstreamEnd(): void {
    if (this.resState === RS_BODY && this.resKind === BODY_UNTIL_CLOSE) {
      this.stream.end();
      this.upstreamReusable = false;
      this.responseComplete(true);
    }
    // Otherwise the close that follows is reported through onUpstreamError.
  }

  /** The response ended on the upstream side. `clean`: nothing followed it. */
  private responseComplete(clean: boolean): void {
    const now = performance.now(); // one clock read for the pool and the metrics
    const up = this.upstream!;
    this.upstream = null;
    this.settle();
    if (this.upstreamPaused) {
      this.upstreamPaused = false;
      up.socket.resume();
    }
    // A request body still arriving: the endpoint answered early; the connection cannot be reused.
    const requestDone = this.upload === U_NONE;
    up.pool.release(up, this.upstreamReusable && clean && requestDone, now);
    if (!requestDone) this.stopUpload();
    this.resState = RS_DONE;
    this.owner.proxy.finish(this, this.target ?? undefined, this.peer ?? undefined, this.code, this.start, now);
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
    const proxy = this.owner.proxy;
    const log = proxy.log;
    if (this.resState === RS_BODY) {
      // Mid-body failure: the only honest signal left is a reset of the stream.
      log?.warn({ service: target.key, upstream: peer.origin, err: errText(err) }, 'upstream failed during the response body');
      this.resState = RS_DONE;
      this.stopUpload();
      proxy.finish(this, target, peer, this.code, this.start);
      this.reset(constants.NGHTTP2_INTERNAL_ERROR);
      return;
    }
    const outliers = proxy.outliers;
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
          this.owner.proxy.retrying(target);
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
}

/** Names endpoints send most, by length: matched in place, so most fields make no name string. */
const COMMON_NAMES: string[][] = [];
for (const name of [
  'date', 'etag', 'vary', 'server', 'expires', 'location', 'set-cookie', 'content-type', 'accept-ranges', 'cache-control',
  'last-modified', 'content-length', 'content-encoding', 'x-content-type-options', 'strict-transport-security',
]) (COMMON_NAMES[name.length] ??= []).push(name);

/** The lower-case name of the field at buf[s, e) (a validated token). */
function lowerName(buf: Buffer, s: number, e: number): string {
  const common = COMMON_NAMES[e - s];
  if (common !== undefined) for (const name of common) if (eqLower(buf, s, name)) return name;
  return buf.latin1Slice(s, e).toLowerCase();
}

/** The endpoint's response head as h2 headers: `:status` and the end-to-end fields, names lower-cased. */
function responseHeaders(buf: Buffer, h: ResponseHead): OutgoingHttpHeaders {
  const headers: OutgoingHttpHeaders = { ':status': h.status };
  const named = (h.connection & C_OTHER) !== 0 ? connectionNamed(buf, h.fields, F_CONNECTION) : null;
  const pos = h.fields.pos;
  const kinds = h.fields.kind;
  for (let i = 0; i < h.fields.count; i++) {
    if (isHopByHop(kinds[i]!)) continue;
    const p = i * 5;
    const name = lowerName(buf, pos[p]!, pos[p + 1]!);
    if (named !== null && named.has(name)) continue;
    const value = buf.latin1Slice(pos[p + 2]!, pos[p + 3]!);
    const had = headers[name];
    if (had === undefined) headers[name] = value;
    else if (Array.isArray(had)) had.push(value);
    else headers[name] = [String(had), value];
  }
  return headers;
}
