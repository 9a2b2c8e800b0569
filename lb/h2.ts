// HTTP/2 for HTTPS clients (ALPN "h2": what browsers pick, and what Traefik and HAProxy users get
// by default). Node's http2 (nghttp2) speaks h2 to the client; each stream is answered from the
// upstream's HTTP/1.1 keep-alive pool directly (h2/exchange.ts): its header object is written up
// as one HTTP/1.1 head, the endpoint's response head is parsed once into `stream.respond()`. No
// HTTP/1.1 text is made for the client side and parsed back. Routing, balancing, retries,
// passive health, timeouts, draining, metrics and the access log follow the HTTP/1.1 path's rules.
// Not here: h2 without TLS (h2c), extended CONNECT (WebSocket over h2: clients fall back to
// HTTP/1.1, which is the only protocol offered for it), server push, trailers.
import { createServer as createH2cServer, type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import { H2Client, H2Exchange, type H2Owner } from './h2/exchange.js';
import type { HttpProxy } from './proxy.js';

export { requestHead } from './h2/request.js';

/** Streams one client connection may have open at once. */
export const MAX_STREAMS = 100;

/** The client of each session (its address, read once). */
const CLIENT = Symbol('corral.h2.client');
type Tagged = ServerHttp2Session & { [CLIENT]?: H2Client };

/** HTTP/2 sessions on TLS connections that chose "h2"; every stream is one H2Exchange. */
export class H2Front implements H2Owner {
  // Each stream holds an upstream request: at most 100 at once per connection (HAProxy's default;
  // Node's would be unlimited).
  private readonly server = createH2cServer({ settings: { maxConcurrentStreams: MAX_STREAMS } });
  private readonly sessions = new Set<ServerHttp2Session>();
  readonly uploading = new Set<H2Exchange>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(readonly proxy: HttpProxy) {
    const idleMs = proxy.opts.idleTimeoutMs;
    this.server.on('session', (session: ServerHttp2Session) => {
      let client = session.socket?.remoteAddress ?? '';
      if (client.startsWith('::ffff:')) client = client.slice(7); // IPv4 on a dual-stack socket
      (session as Tagged)[CLIENT] = new H2Client(client);
      this.sessions.add(session);
      session.on('close', () => this.sessions.delete(session));
      session.on('error', () => undefined);
    });
    this.server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
      const client = (stream.session as Tagged | undefined)?.[CLIENT];
      if (client === undefined) return; // the session is gone already
      new H2Exchange(stream, headers, this, client); // eslint-disable-line no-new
    });
    // One sweep for the timeouts instead of a timer per session (Node's session timer is
    // refreshed on every frame): a session with no stream for the idle timeout gets a GOAWAY, like
    // an idle keep-alive connection; request bodies that do not arrive within
    // --lb-request-timeout get a 408 (or a reset once the answer has begun).
    const timeout = proxy.opts.requestTimeoutMs;
    const every = Math.max(100, Math.min(1_000, idleMs / 4, timeout > 0 ? timeout / 4 : Infinity));
    this.sweeper = setInterval(() => {
      const now = performance.now();
      for (const s of this.sessions) {
        const c = (s as Tagged)[CLIENT]!;
        if (c.open === 0 && now - c.lastActive > idleMs && !s.closed) s.close();
      }
      if (timeout > 0) for (const ex of this.uploading) if (now - ex.since > timeout) ex.requestTimedOut();
    }, every);
    this.sweeper.unref();
  }

  /** Open h2 client connections. */
  get sessionCount(): number {
    return this.sessions.size;
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
    if (this.sweeper !== undefined) clearInterval(this.sweeper);
    this.sweeper = undefined;
  }
}
