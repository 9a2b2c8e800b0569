// UDP and TCP listeners: one parsed Query reused per datagram, authoritative answers straight
// from the encoded-answer cache, everything else from the forwarder (its cache first).
// TCP carries RFC 7766 framing: a 2-byte length, several pipelined queries, an idle timeout.
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { createServer, isIPv6, type Server as TcpServer, type Socket as TcpSocket } from 'node:net';
import type { Logger } from 'pino';
import { parseHostPort } from '../api/options.js';
import type { RecursionAcl } from './access.js';
import { batchDgram, type BatchedUdp, type UdpAnswerer, type UdpSender } from './batch.js';
import type { AnswerCache } from './answers.js';
import { nowSec, type Forwarder } from './forward.js';
import type { RateLimiter } from './ratelimit.js';
import {
  assembleReply, CLASS_IN, DEFAULT_UDP_PAYLOAD, errorReply, parseQuery, PARSE_DROP, PARSE_FORMERR, Query, RCODE, type Answer,
} from './wire.js';
import type { Zone } from './zone.js';

export interface DnsServerOptions {
  listen: string[];
  /** Largest UDP reply we send (our EDNS0 payload size), 512..4096. */
  udpPayload?: number;
  tcpIdleMs?: number;
  /** Who may have names outside our domain resolved (null: everyone, for tests of forwarding only). */
  acl?: RecursionAcl | null;
  /** Per-client rate limit (null: none). */
  limiter?: RateLimiter | null;
  /** Read IPv4 UDP sockets with recvmmsg and answer with sendmmsg (batch.ts) instead of Node dgram. */
  batch?: boolean;
  /** Worker threads that read the same UDP sockets (workers.ts). */
  share?: UdpShare | null;
  log?: Logger;
}

/** Others reading our UDP sockets: told when one is bound and before one is closed. */
export interface UdpShare {
  attach(key: string, sock: UdpSocket, ipv6: boolean): void;
  detach(key: string): Promise<void>;
}

/** Queries answered, by (qtype, rcode): plain integers on the hot path, read at scrape time. */
export class QueryCounts {
  // qtype < 256 and rcode < 32 (every type we see in practice) in a flat array; the rest in a Map.
  private readonly common = new Float64Array(256 * 32);
  private readonly rare = new Map<number, number>();

  record(qtype: number, rcode: number): void {
    if (qtype < 256) this.common[(qtype << 5) | (rcode & 31)]!++;
    else {
      const k = qtype * 32 + (rcode & 31);
      this.rare.set(k, (this.rare.get(k) ?? 0) + 1);
    }
  }

  *entries(): Generator<{ qtype: number; rcode: number; count: number }> {
    for (let k = 0; k < this.common.length; k++) if (this.common[k]! > 0) yield { qtype: k >> 5, rcode: k & 31, count: this.common[k]! };
    for (const [k, count] of this.rare) yield { qtype: Math.floor(k / 32), rcode: k % 32, count };
  }
}

/** Upper bounds (seconds) of the answer-time histogram: authoritative answers take microseconds, forwarded ones an upstream's time. */
export const ANSWER_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
const ANSWER_BUCKETS_MS = ANSWER_BUCKETS.map((s) => s * 1000);

/** Answer times on the hot path: a bucket count and a sum in plain numbers, no allocation; a histogram at scrape time. */
export class AnswerTimes {
  readonly counts = new Float64Array(ANSWER_BUCKETS.length + 1);
  sumMs = 0;
  n = 0;

  observe(ms: number): void {
    let i = 0;
    while (i < ANSWER_BUCKETS_MS.length && ms > ANSWER_BUCKETS_MS[i]!) i++;
    this.counts[i]!++;
    this.sumMs += ms;
    this.n++;
  }
}

const BADVERS = 16;
const TCP_MAX = 65535;

export interface BoundListener {
  host: string;
  port: number;
}

interface Listener extends BoundListener {
  udp: UdpSocket;
  batch: BatchedUdp | null;
  tcp: TcpServer;
}

// dgram resolves the destination of every send() through dns.lookup, which defers the send by a
// tick and allocates a closure even for an IP literal. Our destinations are always the literal
// address a query came from: hand it back synchronously.
export function literalLookup(address: string, _opts: unknown, cb: (err: null, address: string, family: number) => void): void {
  cb(null, address, address.includes(':') ? 6 : 4);
}

export class DnsServer implements UdpAnswerer {
  readonly counts = new QueryCounts();
  /** How long answers took to be ready, in milliseconds (metrics). */
  readonly answerTimes = new AnswerTimes();
  private readonly q = new Query();
  private readonly udpPayload: number;
  private readonly tcpIdleMs: number;
  private readonly acl: RecursionAcl | null;
  private readonly limiter: RateLimiter | null;
  private readonly listeners = new Map<string, Listener>();
  private readonly conns = new Set<TcpSocket>();
  private readonly batches = new Map<UdpSocket, BatchedUdp>();
  private warnedBatch = false;
  /** Queries refused recursion (outside the cluster and the host). */
  refused = 0;

  constructor(
    private readonly zone: Zone,
    private readonly answers: AnswerCache,
    private readonly forwarder: Forwarder,
    private readonly opts: DnsServerOptions,
  ) {
    this.udpPayload = Math.min(4096, Math.max(512, opts.udpPayload ?? DEFAULT_UDP_PAYLOAD));
    this.tcpIdleMs = opts.tcpIdleMs ?? 10_000;
    this.acl = opts.acl ?? null;
    this.limiter = opts.limiter && opts.limiter.rate > 0 ? opts.limiter : null;
  }

  /** Binds UDP and TCP on every --dns-listen address; port 0 picks one free port for both. */
  async listen(): Promise<BoundListener[]> {
    const bound: BoundListener[] = [];
    for (const text of this.opts.listen) {
      const { host: h, port } = parseHostPort(text, '--dns-listen');
      bound.push(await this.addListener(h || '0.0.0.0', port));
    }
    return bound;
  }

  /** Where we listen now. */
  bound(): BoundListener[] {
    return [...this.listeners.values()].map(({ host, port }) => ({ host, port }));
  }

  /** Starts UDP and TCP on one more address (a block gateway that appeared). */
  async addListener(host: string, port: number): Promise<BoundListener> {
    for (let attempt = 0; ; attempt++) {
      const udp = await this.bindUdp(host, port);
      const actual = udp.address().port;
      try {
        const tcp = await this.bindTcp(host, actual);
        const key = `${host}:${actual}`;
        this.listeners.set(key, { host, port: actual, udp, tcp, batch: this.batches.get(udp) ?? null });
        this.opts.share?.attach(key, udp, isIPv6(host));
        return { host, port: actual };
      } catch (err) {
        await this.batches.get(udp)?.close();
        this.batches.delete(udp);
        udp.close();
        if (port !== 0 || attempt >= 10) throw err;
      }
    }
  }

  /** Stops listening on host:port (a block that went away). Open TCP connections finish. */
  async removeListener(host: string, port: number): Promise<void> {
    const key = `${host}:${port}`;
    const l = this.listeners.get(key);
    if (!l) return;
    this.listeners.delete(key);
    await this.opts.share?.detach(key);
    await this.stopBatch(l);
    await Promise.all([new Promise<void>((r) => l.udp.close(() => r())), new Promise<void>((r) => l.tcp.close(() => r()))]);
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    this.conns.clear();
    const all = [...this.listeners.values()];
    this.listeners.clear();
    await Promise.all(all.map((l) => this.stopBatch(l)));
    await Promise.all(all.flatMap((l) => [new Promise<void>((r) => l.udp.close(() => r())), new Promise<void>((r) => l.tcp.close(() => r()))]));
  }

  private bindUdp(host: string, port: number): Promise<UdpSocket> {
    return new Promise((resolve, reject) => {
      const sock = createSocket({ type: isIPv6(host) ? 'udp6' : 'udp4', recvBufferSize: 4 << 20, lookup: literalLookup });
      sock.once('error', reject);
      sock.bind(port, host, () => {
        sock.off('error', reject);
        sock.on('error', (err) => this.opts.log?.warn({ err: err.message }, 'DNS UDP socket error'));
        sock.on('message', (msg: Buffer, rinfo: RemoteInfo) => this.onDatagram(sock, msg, rinfo));
        if (this.opts.batch && !isIPv6(host)) {
          const { batch, why } = batchDgram(sock, this, (err) => this.opts.log?.warn({ err }, 'DNS UDP batch error'));
          if (batch) this.batches.set(sock, batch);
          else if (!this.warnedBatch) {
            this.warnedBatch = true;
            this.opts.log?.warn({ err: why }, 'DNS cannot batch UDP on this socket; one datagram at a time through Node dgram');
          }
        }
        resolve(sock);
      });
    });
  }

  private async stopBatch(l: Listener): Promise<void> {
    this.batches.delete(l.udp);
    await l.batch?.close();
  }

  private bindTcp(host: string, port: number): Promise<TcpServer> {
    return new Promise((resolve, reject) => {
      const server = createServer((conn) => this.onConnection(conn));
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        server.on('error', (err) => this.opts.log?.warn({ err: err.message }, 'DNS TCP listener error'));
        resolve(server);
      });
    });
  }

  /** One UDP query (also called by worker threads for their copies of the sockets). */
  onDatagram(sock: UdpSocket, msg: Buffer, rinfo: RemoteInfo): void {
    const out = this.answerUdp(msg, rinfo.address, rinfo.port, sock);
    if (out !== null) sock.send(out, rinfo.port, rinfo.address);
  }

  /**
   * The reply to one UDP query if it is ready now; null when it is dropped or waits for an
   * upstream (then `later` sends it). `msg` may be reused by the caller once this returns.
   */
  answerUdp(msg: Buffer, client: string, port: number, later: UdpSender): Buffer | null {
    const started = performance.now();
    const q = this.q;
    const parsed = parseQuery(msg, q);
    if (parsed === PARSE_DROP) return null;
    // Over the limit: drop. A reply costs us as much as an answer (the send is most of the
    // work per query), and dropping gives a flooding client nothing to amplify.
    if (this.limiter !== null && !this.limiter.allow(client, started)) return null;
    const limit = q.edns ? (q.udpSize < this.udpPayload ? q.udpSize : this.udpPayload) : 512;
    const out = parsed === PARSE_FORMERR ? this.formerr(q) : this.answerNow(q, limit, client);
    if (out !== null) {
      this.answerTimes.observe(performance.now() - started);
      return out;
    }
    const fq = cloneQuery(q);
    this.forwarder.resolve(fq).then(
      (a) => sendLater(later, this.timed(this.reply(fq, a, limit), started), port, client),
      () => sendLater(later, this.timed(this.error(fq, RCODE.SERVFAIL), started), port, client),
    );
    return null;
  }

  private onConnection(conn: TcpSocket): void {
    this.conns.add(conn);
    conn.setNoDelay(true);
    conn.setTimeout(this.tcpIdleMs, () => conn.destroy());
    conn.on('close', () => this.conns.delete(conn));
    conn.on('error', () => conn.destroy());
    const client = conn.remoteAddress ?? '';
    let pending: Buffer | null = null;
    conn.on('data', (chunk: Buffer) => {
      const buf = pending === null ? chunk : Buffer.concat([pending, chunk]);
      let off = 0;
      while (buf.length - off >= 2) {
        const len = buf.readUInt16BE(off);
        if (buf.length - off - 2 < len) break;
        this.onTcpMessage(conn, buf.subarray(off + 2, off + 2 + len), client);
        off += 2 + len;
      }
      pending = off === buf.length ? null : Buffer.from(buf.subarray(off));
    });
  }

  private onTcpMessage(conn: TcpSocket, msg: Buffer, client: string): void {
    const started = performance.now();
    const q = this.q;
    const parsed = parseQuery(msg, q);
    if (parsed === PARSE_DROP) return;
    // TCP sources cannot be spoofed: over the limit, say so instead of leaving a pipelined
    // client waiting for a reply that never comes.
    if (this.limiter !== null && !this.limiter.allow(client, started)) {
      writeFramed(conn, parsed === PARSE_FORMERR ? this.formerr(q) : this.error(q, RCODE.REFUSED));
      return;
    }
    const out = parsed === PARSE_FORMERR ? this.formerr(q) : this.answerNow(q, TCP_MAX, client);
    if (out !== null) {
      writeFramed(conn, this.timed(out, started));
      return;
    }
    const fq = cloneQuery(q);
    this.forwarder.resolve(fq).then(
      (a) => writeFramed(conn, this.timed(this.reply(fq, a, TCP_MAX), started)),
      () => writeFramed(conn, this.timed(this.error(fq, RCODE.SERVFAIL), started)),
    );
  }

  /** An answer ready now, timed from `started` (performance.now() at its query's arrival). */
  private timed(out: Buffer, started: number): Buffer {
    this.answerTimes.observe(performance.now() - started);
    return out;
  }

  /** The reply if it needs no upstream: authoritative, cached, or an error. Null = forward. */
  private answerNow(q: Query, limit: number, client: string): Buffer | null {
    if (q.opcode !== 0) return this.error(q, RCODE.NOTIMP);
    if (q.edns && q.ednsVersion > 0) return this.error(q, BADVERS);
    if (q.qclass !== CLASS_IN) return this.error(q, RCODE.REFUSED);
    let a: Answer | null;
    try {
      a = this.answers.get(q.name, q.qtype, client);
    } catch (err) {
      this.opts.log?.warn({ name: q.name, err: (err as Error).message }, 'cannot encode an answer');
      return this.error(q, RCODE.SERVFAIL);
    }
    if (a === null) {
      if (q.qtype === 251 || q.qtype === 252) return this.error(q, RCODE.REFUSED); // no zone transfers
      // Not ours: only the cluster and the host may recurse (checked before the cache, so an
      // outsider cannot snoop what our clients resolved either).
      if (this.acl !== null && !this.acl.allows(client, performance.now())) {
        this.refused++;
        return this.error(q, RCODE.REFUSED);
      }
      a = this.forwarder.cached(q, nowSec()) ?? null;
      if (a === null) return null;
    }
    return this.reply(q, a, limit);
  }

  private reply(q: Query, a: Answer, limit: number): Buffer {
    const out = assembleReply(q, a, limit, this.zone.revision, a.ttlAt === null ? 0 : nowSec(), this.udpPayload);
    this.counts.record(q.qtype, out[3]! & 0xf);
    return out;
  }

  private error(q: Query, rcode: number): Buffer {
    this.counts.record(q.qtype, rcode);
    return errorReply(q, rcode, true);
  }

  private formerr(q: Query): Buffer {
    this.counts.record(0, RCODE.FORMERR);
    return errorReply(q, RCODE.FORMERR, false);
  }
}

/** A reply that waited for an upstream: the socket may have closed meanwhile (shutdown, a gateway that went away). */
function sendLater(sock: UdpSender, out: Buffer, port: number, address: string): void {
  try {
    sock.send(out, port, address);
  } catch {
    // ERR_SOCKET_DGRAM_NOT_RUNNING: nobody to answer on any more.
  }
}

function cloneQuery(q: Query): Query {
  const c = new Query();
  c.id = q.id;
  c.flags = q.flags;
  c.opcode = q.opcode;
  c.qEnd = q.qEnd;
  c.qtype = q.qtype;
  c.qclass = q.qclass;
  c.name = q.name;
  c.edns = q.edns;
  c.ednsVersion = q.ednsVersion;
  c.udpSize = q.udpSize;
  c.packet = Buffer.from(q.packet.subarray(0, q.qEnd));
  return c;
}

function writeFramed(conn: TcpSocket, msg: Buffer): void {
  if (conn.destroyed) return;
  const len = Buffer.allocUnsafe(2);
  len.writeUInt16BE(msg.length);
  conn.cork();
  conn.write(len);
  conn.write(msg);
  conn.uncork();
}
