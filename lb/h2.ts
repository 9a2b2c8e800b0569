// HTTP/2 for HTTPS clients (ALPN "h2": what browsers pick, and what Traefik and HAProxy users get
// by default). Each h2 stream becomes one HTTP/1.1 exchange on an in-memory connection served by
// the same ClientConnection as every other request, so routing, balancing, retries, passive
// health, timeouts, draining, metrics and the access log are exactly the HTTP/1.1 ones; the answer
// is parsed back into h2 (status, end-to-end headers, body). Upstreams stay HTTP/1.1.
// Not here: h2 without TLS (h2c), extended CONNECT (WebSocket over h2: clients fall back to
// HTTP/1.1, which is the only protocol offered for it), server push, trailers.
import { constants, createServer as createH2cServer, type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { CHUNKED_ERROR, CHUNKED_MORE, ChunkedDecoder, chunkSizeLine, LAST_CHUNK, type ChunkSink } from './http1/chunked.js';
import {
  BODY_CHUNKED, BODY_LENGTH, BODY_NONE, BODY_UNTIL_CLOSE, headEnd, isHopByHop, parseResponseHead, ResponseHead, responseFraming,
} from './http1/head.js';

/** Streams one client connection may have open at once. */
export const MAX_STREAMS = 100;

/** Request headers that are not passed on as HTTP/1.1 fields (h2 forbids the connection-specific ones anyway). */
const DROP_REQUEST = new Set(['host', 'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'expect', 'http2-settings']);

/**
 * The HTTP/1.1 request for an h2 stream's headers; `chunked` when a body follows without a length.
 * Host is `:authority` when there is one, whatever a `host` field says (RFC 9113 8.3.1), so the
 * name routed and the name the endpoint sees are the same; without `:authority`, `host`.
 */
export function requestHead(headers: IncomingHttpHeaders, chunked: boolean): string {
  const authority = headers[':authority'] ?? headers.host ?? '';
  let head = `${headers[':method']} ${headers[':path']} HTTP/1.1\r\nhost: ${authority}\r\n`;
  for (const name in headers) {
    if (name.charCodeAt(0) === 58 /* : */ || DROP_REQUEST.has(name)) continue;
    const value = headers[name];
    if (value === undefined) continue;
    // RFC 9113 8.2.3: cookie crumbs are joined with "; " for HTTP/1.1.
    if (Array.isArray(value)) {
      if (name === 'cookie') head += `cookie: ${value.join('; ')}\r\n`;
      else for (const v of value) head += `${name}: ${v}\r\n`;
    } else {
      head += `${name}: ${value}\r\n`;
    }
  }
  // One exchange per in-memory connection: it closes after the answer.
  return `${head}${chunked ? 'transfer-encoding: chunked\r\n' : ''}connection: close\r\n\r\n`;
}

/**
 * The in-memory connection of one h2 stream: what ClientConnection reads is the HTTP/1.1 request,
 * what it writes is parsed back into the h2 response. Backpressure crosses both ways.
 */
class StreamSocket extends Duplex implements ChunkSink {
  readonly remoteAddress: string | undefined;
  private head: Buffer | null = null;
  private headDone = false;
  private bodyKind = BODY_NONE;
  private left = 0;
  private decoder: ChunkedDecoder | null = null;
  /** The h2 stream is over (answered, reset or gone): nothing more is written to it. */
  private over = false;
  private blocked = false;
  /** The exchange is over on the HTTP/1.1 side: what the client still uploads is dropped. */
  private eof = false;

  constructor(
    private readonly stream: ServerHttp2Stream,
    private readonly isHead: boolean,
  ) {
    super({ allowHalfOpen: true });
    this.remoteAddress = stream.session?.socket?.remoteAddress;
    stream.on('close', () => {
      this.over = true;
      // The client reset the stream or went away before the answer ended: the request is aborted.
      if (!this.writableFinished) this.destroy();
    });
    stream.on('error', () => undefined); // 'close' follows
  }

  /** ClientConnection's calls that a net.Socket has. */
  setNoDelay(): this {
    return this;
  }

  /** Request bytes for ClientConnection; pauses the h2 stream while it is not reading. */
  feed(chunk: Buffer | string): void {
    if (this.eof || this.destroyed) return;
    if (!this.push(chunk)) this.stream.pause();
  }

  override _read(): void {
    this.stream.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.blocked = false;
    this.response(chunk);
    if (this.blocked && !this.over) this.stream.once('drain', () => cb());
    else cb();
  }

  override _final(cb: (err?: Error | null) => void): void {
    // The answer ended (ClientConnection closes after each exchange).
    if (!this.over) {
      if (!this.headDone) this.stream.close(constants.NGHTTP2_INTERNAL_ERROR);
      else this.endStream();
    }
    cb();
    this.eof = true;
    this.push(null); // and the in-memory connection is done: ClientConnection lets it go
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.over) {
      this.over = true;
      // Cut mid-answer (an upstream failure in the body): the only honest signal is a reset.
      if (!this.stream.closed) this.stream.close(this.headDone ? constants.NGHTTP2_INTERNAL_ERROR : constants.NGHTTP2_REFUSED_STREAM);
    }
    cb(err);
  }

  private response(chunk: Buffer): void {
    if (this.over) return;
    if (!this.headDone) {
      const buf = this.head === null ? chunk : Buffer.concat([this.head, chunk]);
      const end = headEnd(buf, 0);
      if (end < 0) {
        this.head = buf;
        return;
      }
      this.head = null;
      if (!this.respond(buf, end)) return;
      if (end < buf.length) this.body(buf.subarray(end));
      return;
    }
    this.body(chunk);
  }

  /** The HTTP/1.1 response head → h2 headers; false when it could not be read. */
  private respond(buf: Buffer, end: number): boolean {
    const h = RES;
    if (parseResponseHead(buf, 0, end, h) !== 0 || h.status < 200) {
      // Our own HTTP/1.1 side wrote it: this does not happen short of a bug. Reset, do not guess.
      this.over = true;
      this.stream.close(constants.NGHTTP2_INTERNAL_ERROR);
      return false;
    }
    const headers: Record<string, string | string[] | number> = { ':status': h.status };
    const pos = h.fields.pos;
    for (let i = 0; i < h.fields.count; i++) {
      const kind = h.fields.kind[i]!;
      if (isHopByHop(kind)) continue;
      const p = i * 5;
      const name = buf.latin1Slice(pos[p]!, pos[p + 1]!).toLowerCase();
      const value = buf.latin1Slice(pos[p + 2]!, pos[p + 3]!);
      const had = headers[name];
      if (had === undefined) headers[name] = value;
      else if (Array.isArray(had)) had.push(value);
      else headers[name] = [String(had), value];
    }
    this.headDone = true;
    this.bodyKind = responseFraming(h, this.isHead);
    this.left = h.contentLength;
    const done = this.bodyKind === BODY_NONE;
    try {
      this.stream.respond(headers, { endStream: done });
    } catch {
      this.over = true; // the stream went away meanwhile
      return false;
    }
    if (done) this.over = true;
    if (this.bodyKind === BODY_CHUNKED) (this.decoder ??= new ChunkedDecoder(this)).reset();
    return true;
  }

  private body(chunk: Buffer): void {
    switch (this.bodyKind) {
      case BODY_LENGTH: {
        const n = Math.min(this.left, chunk.length);
        this.left -= n;
        const piece = n === chunk.length ? chunk : chunk.subarray(0, n);
        // The last piece goes with the end of the stream: one DATA frame with END_STREAM.
        if (this.left === 0) this.endStream(piece);
        else this.data(piece);
        return;
      }
      case BODY_CHUNKED: {
        const r = this.decoder!.decode(chunk, 0);
        if (r === CHUNKED_MORE) return;
        if (r === CHUNKED_ERROR) {
          this.over = true;
          this.stream.close(constants.NGHTTP2_INTERNAL_ERROR);
          return;
        }
        this.endStream();
        return;
      }
      case BODY_UNTIL_CLOSE:
        this.data(chunk);
        return;
      default:
    }
  }

  /** ChunkSink: a decoded span of a chunked answer. */
  chunkData(buf: Buffer, start: number, end: number): void {
    this.data(buf.subarray(start, end));
  }

  private data(b: Buffer): void {
    if (this.over || b.length === 0) return;
    if (!this.stream.write(b)) this.blocked = true;
  }

  private endStream(last?: Buffer): void {
    if (this.over) return;
    this.over = true;
    if (last !== undefined && last.length > 0) this.stream.end(last);
    else this.stream.end();
  }
}

/** HTTP/2 sessions on TLS connections that chose "h2"; every stream goes to `serve` as an in-memory HTTP/1.1 connection. */
export class H2Front {
  // Each stream holds an upstream request: at most 100 at once per connection (HAProxy's default;
  // Node's would be unlimited).
  private readonly server = createH2cServer({ settings: { maxConcurrentStreams: MAX_STREAMS } });
  private readonly sessions = new Set<ServerHttp2Session>();

  constructor(
    serve: (socket: Socket) => void,
    private readonly idleTimeoutMs: number,
  ) {
    this.server.on('session', (session: ServerHttp2Session) => {
      this.sessions.add(session);
      session.on('close', () => this.sessions.delete(session));
      session.on('error', () => undefined);
      // A session with no stream and no frame for the idle timeout closes (GOAWAY), like an idle keep-alive connection.
      session.setTimeout(this.idleTimeoutMs, () => session.close());
    });
    this.server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
      const method = headers[':method'];
      const length = headers['content-length'];
      const hasBody = !stream.endAfterHeaders;
      const chunked = hasBody && length === undefined;
      const socket = new StreamSocket(stream, method === 'HEAD');
      serve(socket as unknown as Socket);
      socket.feed(requestHead(headers, chunked));
      if (!hasBody) return;
      stream.on('data', (d: Buffer) => {
        if (!chunked) socket.feed(d);
        else if (d.length > 0) socket.feed(Buffer.concat([Buffer.from(chunkSizeLine(d.length), 'latin1'), d, CRLF]));
      });
      stream.on('end', () => {
        if (chunked) socket.feed(LAST_CHUNK);
      });
    });
  }

  /** A TLS connection whose client chose "h2". */
  take(tls: Socket): void {
    this.server.emit('connection', tls);
  }

  /** GOAWAY to every session: streams in flight finish, no new ones start. */
  close(): void {
    for (const s of this.sessions) s.close();
  }

  /** Cut what is left. */
  destroy(): void {
    for (const s of this.sessions) s.destroy();
  }
}

const CRLF = Buffer.from('\r\n', 'latin1');
/** One parse target per thread (its field tables are large): heads are parsed and read synchronously. */
const RES = new ResponseHead();
