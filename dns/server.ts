// UDP and TCP listeners: one parsed Query reused per datagram, authoritative answers straight
// from the encoded-answer cache, everything else from the forwarder (its cache first).
// TCP carries RFC 7766 framing: a 2-byte length, several pipelined queries, an idle timeout.
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { createServer, isIPv6, type Server as TcpServer, type Socket as TcpSocket } from 'node:net';
import type { Logger } from 'pino';
import { parseHostPort } from '../api/options.js';
import type { AnswerCache } from './answers.js';
import { nowSec, type Forwarder } from './forward.js';
import {
  assembleReply, CLASS_IN, DEFAULT_UDP_PAYLOAD, errorReply, parseQuery, PARSE_DROP, PARSE_FORMERR, Query, RCODE, type Answer,
} from './wire.js';
import type { Zone } from './zone.js';

export interface DnsServerOptions {
  listen: string[];
  /** Largest UDP reply we send (our EDNS0 payload size), 1232..4096. */
  udpPayload?: number;
  tcpIdleMs?: number;
  log?: Logger;
}

/** Queries answered, by (qtype, rcode): plain integers on the hot path, read at scrape time. */
export class QueryCounts {
  readonly counts = new Map<number, number>();

  record(qtype: number, rcode: number): void {
    const k = qtype * 32 + rcode;
    this.counts.set(k, (this.counts.get(k) ?? 0) + 1);
  }

  *entries(): Generator<{ qtype: number; rcode: number; count: number }> {
    for (const [k, count] of this.counts) yield { qtype: Math.floor(k / 32), rcode: k % 32, count };
  }
}

const BADVERS = 16;
const TCP_MAX = 65535;

export interface BoundListener {
  host: string;
  port: number;
}

export class DnsServer {
  readonly counts = new QueryCounts();
  private readonly q = new Query();
  private readonly udpPayload: number;
  private readonly tcpIdleMs: number;
  private readonly udp: UdpSocket[] = [];
  private readonly tcp: TcpServer[] = [];
  private readonly conns = new Set<TcpSocket>();

  constructor(
    private readonly zone: Zone,
    private readonly answers: AnswerCache,
    private readonly forwarder: Forwarder,
    private readonly opts: DnsServerOptions,
  ) {
    this.udpPayload = Math.min(4096, Math.max(1232, opts.udpPayload ?? DEFAULT_UDP_PAYLOAD));
    this.tcpIdleMs = opts.tcpIdleMs ?? 10_000;
  }

  /** Binds UDP and TCP on every listen address; port 0 picks one free port for both. */
  async listen(): Promise<BoundListener[]> {
    const bound: BoundListener[] = [];
    for (const text of this.opts.listen) {
      const { host: h, port } = parseHostPort(text, '--dns-listen');
      const host = h || '0.0.0.0';
      for (let attempt = 0; ; attempt++) {
        const udp = await this.bindUdp(host, port);
        const actual = udp.address().port;
        try {
          const tcp = await this.bindTcp(host, actual);
          this.udp.push(udp);
          this.tcp.push(tcp);
          bound.push({ host, port: actual });
          break;
        } catch (err) {
          udp.close();
          if (port !== 0 || attempt >= 10) throw err;
        }
      }
    }
    return bound;
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    this.conns.clear();
    await Promise.all([
      ...this.udp.map((s) => new Promise<void>((r) => s.close(() => r()))),
      ...this.tcp.map((s) => new Promise<void>((r) => s.close(() => r()))),
    ]);
    this.udp.length = 0;
    this.tcp.length = 0;
  }

  private bindUdp(host: string, port: number): Promise<UdpSocket> {
    return new Promise((resolve, reject) => {
      const sock = createSocket({ type: isIPv6(host) ? 'udp6' : 'udp4', recvBufferSize: 4 << 20 });
      sock.once('error', reject);
      sock.bind(port, host, () => {
        sock.off('error', reject);
        sock.on('error', (err) => this.opts.log?.warn({ err: err.message }, 'DNS UDP socket error'));
        sock.on('message', (msg: Buffer, rinfo: RemoteInfo) => this.onDatagram(sock, msg, rinfo));
        resolve(sock);
      });
    });
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

  private onDatagram(sock: UdpSocket, msg: Buffer, rinfo: RemoteInfo): void {
    const q = this.q;
    const parsed = parseQuery(msg, q);
    if (parsed === PARSE_DROP) return;
    const limit = q.edns ? Math.min(q.udpSize, this.udpPayload) : 512;
    const out = parsed === PARSE_FORMERR ? this.formerr(q) : this.answerNow(q, limit);
    if (out !== null) {
      sock.send(out, rinfo.port, rinfo.address);
      return;
    }
    const fq = cloneQuery(q);
    this.forwarder.resolve(fq).then(
      (a) => sock.send(this.reply(fq, a, limit), rinfo.port, rinfo.address),
      () => sock.send(this.error(fq, RCODE.SERVFAIL), rinfo.port, rinfo.address),
    );
  }

  private onConnection(conn: TcpSocket): void {
    this.conns.add(conn);
    conn.setNoDelay(true);
    conn.setTimeout(this.tcpIdleMs, () => conn.destroy());
    conn.on('close', () => this.conns.delete(conn));
    conn.on('error', () => conn.destroy());
    let pending: Buffer | null = null;
    conn.on('data', (chunk: Buffer) => {
      const buf = pending === null ? chunk : Buffer.concat([pending, chunk]);
      let off = 0;
      while (buf.length - off >= 2) {
        const len = buf.readUInt16BE(off);
        if (buf.length - off - 2 < len) break;
        this.onTcpMessage(conn, buf.subarray(off + 2, off + 2 + len));
        off += 2 + len;
      }
      pending = off === buf.length ? null : Buffer.from(buf.subarray(off));
    });
  }

  private onTcpMessage(conn: TcpSocket, msg: Buffer): void {
    const q = this.q;
    const parsed = parseQuery(msg, q);
    if (parsed === PARSE_DROP) return;
    const out = parsed === PARSE_FORMERR ? this.formerr(q) : this.answerNow(q, TCP_MAX);
    if (out !== null) {
      writeFramed(conn, out);
      return;
    }
    const fq = cloneQuery(q);
    this.forwarder.resolve(fq).then(
      (a) => writeFramed(conn, this.reply(fq, a, TCP_MAX)),
      () => writeFramed(conn, this.error(fq, RCODE.SERVFAIL)),
    );
  }

  /** The reply if it needs no upstream: authoritative, cached, or an error. Null = forward. */
  private answerNow(q: Query, limit: number): Buffer | null {
    if (q.opcode !== 0) return this.error(q, RCODE.NOTIMP);
    if (q.edns && q.ednsVersion > 0) return this.error(q, BADVERS);
    if (q.qclass !== CLASS_IN) return this.error(q, RCODE.REFUSED);
    let a: Answer | null;
    try {
      a = this.answers.get(q.name, q.qtype);
    } catch (err) {
      this.opts.log?.warn({ name: q.name, err: (err as Error).message }, 'cannot encode an answer');
      return this.error(q, RCODE.SERVFAIL);
    }
    if (a === null) {
      if (q.qtype === 251 || q.qtype === 252) return this.error(q, RCODE.REFUSED); // no zone transfers
      a = this.forwarder.cached(q, nowSec()) ?? null;
      if (a === null) return null;
    }
    return this.reply(q, a, limit);
  }

  private reply(q: Query, a: Answer, limit: number): Buffer {
    const out = assembleReply(q, a, limit, this.zone.revision, nowSec(), this.udpPayload);
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
