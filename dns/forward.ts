// Every name that is not ours goes to the host's upstream resolvers: UDP with a timeout and a
// retry on the next upstream, TCP when the UDP answer is truncated, one in-flight query per
// (name, type, class), and a cache that counts TTLs down (negative answers per RFC 2308).
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { connect as tcpConnect, isIPv6 } from 'node:net';
import { DEFAULT_UDP_PAYLOAD, HEADER_FLAGS, RCODE, TYPE, skipName, type Answer, type Query } from './wire.js';

export interface Upstream {
  host: string;
  port: number;
}

export interface ForwarderOptions {
  /** Per attempt. */
  timeoutMs?: number;
  /** How many times the whole upstream list is tried. */
  rounds?: number;
  /** Cache bound (entries) and TTL caps (seconds). */
  maxEntries?: number;
  maxTtl?: number;
  maxNegativeTtl?: number;
  /** Called once per upstream exchange with its duration. */
  onUpstream?: (seconds: number) => void;
}

/** Consecutive transport failures (timeouts, socket errors) after which an upstream is skipped. */
const FAILS_TO_SKIP = 3;
const PROBE_FIRST_MS = 1000;
const PROBE_MAX_MS = 30_000;

interface UpstreamHealth {
  fails: number;
  /** Skipped until a probe gets any reply. */
  down: boolean;
  probeMs: number;
  timer: NodeJS.Timeout | undefined;
}

interface CacheEntry {
  answer: Answer;
  expiresAt: number;
}

interface Pending {
  upstream: Upstream;
  question: Buffer;
  resolve: (msg: Buffer) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/** "ADDR", "ADDR:PORT", "[v6]:PORT" or a bare IPv6 address; port 53 by default. */
export function parseUpstream(text: string): Upstream {
  const t = text.trim();
  const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(t);
  if (bracket) return { host: bracket[1]!, port: bracket[2] ? Number(bracket[2]) : 53 };
  if (isIPv6(t)) return { host: t, port: 53 };
  const m = /^([^:]+)(?::(\d+))?$/.exec(t);
  if (!m) throw new Error(`--dns-upstream "${text}" is not ADDR[:PORT] (for example 127.0.0.53 or [::1]:53)`);
  return { host: m[1]!, port: m[2] ? Number(m[2]) : 53 };
}

/** The `nameserver` lines of a resolv.conf. */
export function resolvConfUpstreams(path = '/etc/resolv.conf'): Upstream[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return [];
  }
  const out: Upstream[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (m) out.push({ host: m[1]!.split('%')[0]!, port: 53 });
  }
  return out;
}

export function nowSec(): number {
  return Math.floor(performance.now() / 1000);
}

const SERVFAIL_ANSWER: Answer = {
  flags: RCODE.SERVFAIL, an: 0, ns: 0, ar: 0, body: Buffer.alloc(0), serialAt: -1, shuffleSize: 0,
  ttlAt: null, ttls: null, storedAt: 0, hasOpt: false,
};

export class Forwarder {
  /** name -> qtype -> entry (class IN only: other classes are refused before they get here). */
  private readonly cache = new Map<string, Map<number, CacheEntry>>();
  private entries = 0;
  private readonly inflight = new Map<string, Promise<Answer>>();
  private readonly pending = new Map<number, Pending>();
  private readonly sockets = new Map<Upstream, UdpSocket>();
  private readonly healthOf = new Map<Upstream, UpstreamHealth>();
  private closed = false;
  private readonly timeoutMs: number;
  private readonly rounds: number;
  private readonly maxEntries: number;
  private readonly maxTtl: number;
  private readonly maxNegativeTtl: number;
  hits = 0;
  upstreamQueries = 0;
  /** Exchanges that failed: transport errors and unreadable replies (metrics). */
  upstreamErrors = 0;

  constructor(readonly upstreams: Upstream[], private readonly opts: ForwarderOptions = {}) {
    this.timeoutMs = opts.timeoutMs ?? 1500;
    this.rounds = opts.rounds ?? 2;
    this.maxEntries = opts.maxEntries ?? 10_000;
    this.maxTtl = opts.maxTtl ?? 3600;
    this.maxNegativeTtl = opts.maxNegativeTtl ?? 900;
    for (const u of upstreams) this.healthOf.set(u, { fails: 0, down: false, probeMs: PROBE_FIRST_MS, timer: undefined });
  }

  /** Each upstream and whether it is in use (status page, metrics). */
  health(): Array<{ upstream: string; up: boolean; fails: number }> {
    return this.upstreams.map((u) => {
      const h = this.healthOf.get(u)!;
      return { upstream: `${u.host}:${u.port}`, up: !h.down, fails: h.fails };
    });
  }

  /** A fresh cached answer for q, or undefined. Synchronous: the UDP fast path asks first. */
  cached(q: Query, now: number): Answer | undefined {
    const types = this.cache.get(q.name);
    if (types === undefined) return undefined;
    const e = types.get(q.qtype);
    if (e === undefined) return undefined;
    if (e.expiresAt <= now) {
      types.delete(q.qtype);
      this.entries--;
      if (types.size === 0) this.cache.delete(q.name);
      return undefined;
    }
    this.hits++;
    return e.answer;
  }

  private store(key: { name: string; qtype: number }, answer: Answer, lifetime: number): void {
    if (this.entries >= this.maxEntries) {
      // Evict the oldest name (Map order is insertion order).
      const [oldest, types] = this.cache.entries().next().value!;
      this.entries -= types.size;
      this.cache.delete(oldest);
    }
    let types = this.cache.get(key.name);
    if (types === undefined) this.cache.set(key.name, (types = new Map()));
    if (!types.has(key.qtype)) this.entries++;
    answer.storedAt = nowSec();
    types.set(key.qtype, { answer, expiresAt: answer.storedAt + lifetime });
  }

  /** Resolves q upstream (q may be reused by the caller after this returns). */
  resolve(q: Query): Promise<Answer> {
    const key = cacheKey(q);
    const running = this.inflight.get(key);
    if (running) return running;
    const question = Buffer.from(q.packet.subarray(12, q.qEnd));
    const p = this.exchange(question).then((a) => {
      this.inflight.delete(key);
      return a;
    });
    this.inflight.set(key, p);
    return p;
  }

  get cacheSize(): number {
    return this.entries;
  }

  close(): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error('forwarder closed'));
    }
    this.pending.clear();
    this.closed = true;
    for (const h of this.healthOf.values()) clearTimeout(h.timer);
    for (const s of this.sockets.values()) s.close();
    this.sockets.clear();
  }

  private async exchange(question: Buffer): Promise<Answer> {
    const key = questionKey(question);
    let last: Answer | undefined;
    // Upstreams that keep failing are skipped until a probe hears from them again; when every
    // upstream is down, try them all rather than fail without asking.
    let order = this.upstreams.filter((u) => !this.healthOf.get(u)!.down);
    if (order.length === 0) order = this.upstreams;
    for (let round = 0; round < this.rounds; round++) {
      for (const u of order) {
        if (this.closed) return SERVFAIL_ANSWER;
        const started = performance.now();
        let msg: Buffer;
        try {
          this.upstreamQueries++;
          msg = await this.udp(u, question);
          if (msg.readUInt16BE(2) & HEADER_FLAGS.TC) msg = await this.tcp(u, question);
        } catch {
          this.failed(u);
          continue;
        } finally {
          this.opts.onUpstream?.((performance.now() - started) / 1000);
        }
        const parsed = readReply(msg, question.length);
        if (!parsed) {
          this.failed(u);
          continue;
        }
        this.succeeded(u);
        const rcode = parsed.answer.flags & 0xf;
        if (rcode === RCODE.SERVFAIL || rcode === RCODE.REFUSED) {
          last = parsed.answer;
          continue;
        }
        const lifetime = Math.min(parsed.lifetime, parsed.negative ? this.maxNegativeTtl : this.maxTtl);
        if (lifetime > 0) this.store(key, parsed.answer, lifetime);
        return parsed.answer;
      }
    }
    return last ?? SERVFAIL_ANSWER;
  }

  private succeeded(u: Upstream): void {
    const h = this.healthOf.get(u);
    if (!h) return;
    h.fails = 0;
    if (h.down) {
      h.down = false;
      h.probeMs = PROBE_FIRST_MS;
      clearTimeout(h.timer);
    }
  }

  private failed(u: Upstream): void {
    this.upstreamErrors++;
    const h = this.healthOf.get(u);
    if (!h || h.down) return;
    if (++h.fails >= FAILS_TO_SKIP) {
      h.down = true;
      this.scheduleProbe(u, h);
    }
  }

  /** Asks a skipped upstream for the root NS now and then: any reply at all brings it back. */
  private scheduleProbe(u: Upstream, h: UpstreamHealth): void {
    if (this.closed) return;
    h.timer = setTimeout(() => {
      this.udp(u, ROOT_NS_QUESTION).then(
        () => this.succeeded(u),
        () => {
          h.probeMs = Math.min(PROBE_MAX_MS, h.probeMs * 2);
          if (h.down) this.scheduleProbe(u, h);
        },
      );
    }, h.probeMs);
    h.timer.unref();
  }

  private socket(u: Upstream): UdpSocket {
    let s = this.sockets.get(u);
    if (s) return s;
    s = createSocket(isIPv6(u.host) ? 'udp6' : 'udp4');
    s.on('message', (msg: Buffer) => this.onReply(u, msg));
    s.on('error', () => {
      // A dead socket fails its pending queries at once; the next query opens a new one.
      this.sockets.delete(u);
      s!.close();
      for (const [id, p] of this.pending) {
        if (p.upstream !== u) continue;
        this.pending.delete(id);
        clearTimeout(p.timer);
        p.reject(new Error('upstream socket error'));
      }
    });
    this.sockets.set(u, s);
    return s;
  }

  private udp(u: Upstream, question: Buffer): Promise<Buffer> {
    if (this.closed) return Promise.reject(new Error('forwarder closed'));
    let id: number;
    do id = (Math.random() * 0x10000) | 0;
    while (this.pending.has(id));
    const packet = queryPacket(id, question);
    return new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`upstream ${u.host}:${u.port} timed out`));
      }, this.timeoutMs);
      this.pending.set(id, { upstream: u, question, resolve, reject, timer });
      this.socket(u).send(packet, u.port, u.host, (err) => {
        if (!err) return;
        const p = this.pending.get(id);
        if (!p) return;
        this.pending.delete(id);
        clearTimeout(p.timer);
        reject(err);
      });
    });
  }

  private onReply(u: Upstream, msg: Buffer): void {
    if (msg.length < 12) return;
    const p = this.pending.get(msg.readUInt16BE(0));
    // Only the upstream we asked, with our question, may answer (spoofing, late replies).
    if (!p || p.upstream !== u || !sameQuestion(msg, p.question)) return;
    this.pending.delete(msg.readUInt16BE(0));
    clearTimeout(p.timer);
    p.resolve(msg);
  }

  private tcp(u: Upstream, question: Buffer): Promise<Buffer> {
    const id = (Math.random() * 0x10000) | 0;
    const packet = queryPacket(id, question);
    return new Promise<Buffer>((resolve, reject) => {
      const sock = tcpConnect({ host: u.host, port: u.port });
      let buf = Buffer.alloc(0);
      const fail = (err: Error) => {
        sock.destroy();
        reject(err);
      };
      sock.setTimeout(this.timeoutMs, () => fail(new Error(`upstream ${u.host}:${u.port} TCP timed out`)));
      sock.on('error', fail);
      sock.on('connect', () => {
        const len = Buffer.allocUnsafe(2);
        len.writeUInt16BE(packet.length);
        sock.end(Buffer.concat([len, packet]));
      });
      sock.on('data', (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk]);
        if (buf.length < 2) return;
        const need = buf.readUInt16BE(0);
        if (buf.length < 2 + need) return;
        sock.destroy();
        const msg = buf.subarray(2, 2 + need);
        if (msg.length >= 12 && msg.readUInt16BE(0) === id && sameQuestion(msg, question)) resolve(msg);
        else reject(new Error(`upstream ${u.host}:${u.port} sent a TCP reply to another question`));
      });
      sock.on('close', () => reject(new Error(`upstream ${u.host}:${u.port} closed the TCP connection`)));
    });
  }
}

/** `. IN NS`: the question health probes ask. */
const ROOT_NS_QUESTION = Buffer.from([0, 0, TYPE.NS, 0, 1]);

function cacheKey(q: Query): string {
  return `${q.qtype}/${q.name}`;
}

/** The same key from raw question bytes (labels, type, class). */
function questionKey(question: Buffer): { name: string; qtype: number } {
  const labels: string[] = [];
  let off = 0;
  while (question[off]! !== 0) {
    const l = question[off]!;
    labels.push(question.toString('latin1', off + 1, off + 1 + l).toLowerCase().replace(/\./g, '\0'));
    off += 1 + l;
  }
  return { name: labels.join('.'), qtype: question.readUInt16BE(off + 1) };
}

function queryPacket(id: number, question: Buffer): Buffer {
  const out = Buffer.allocUnsafe(12 + question.length + 11);
  out.writeUInt16BE(id, 0);
  out.writeUInt16BE(HEADER_FLAGS.RD, 2);
  out.writeUInt16BE(1, 4);
  out.writeUInt16BE(0, 6);
  out.writeUInt16BE(0, 8);
  out.writeUInt16BE(1, 10);
  question.copy(out, 12);
  const o = 12 + question.length;
  out[o] = 0;
  out.writeUInt16BE(TYPE.OPT, o + 1);
  out.writeUInt16BE(DEFAULT_UDP_PAYLOAD, o + 3);
  out.writeUInt32BE(0, o + 5);
  out.writeUInt16BE(0, o + 9);
  return out;
}

function sameQuestion(msg: Buffer, question: Buffer): boolean {
  if (!(msg.readUInt16BE(2) & HEADER_FLAGS.QR) || msg.readUInt16BE(4) !== 1) return false;
  if (msg.length < 12 + question.length) return false;
  for (let i = 0; i < question.length; i++) {
    let a = msg[12 + i]!;
    let b = question[i]!;
    if (a >= 0x41 && a <= 0x5a) a |= 0x20;
    if (b >= 0x41 && b <= 0x5a) b |= 0x20;
    if (a !== b) return false;
  }
  return true;
}

/**
 * Turns an upstream reply into a cacheable Answer: the sections after the question, without
 * the upstream's OPT (the asker gets its own), TTL offsets for counting down, and how long it
 * may be cached (min TTL; for negative answers min(SOA TTL, SOA minimum), RFC 2308 §5).
 */
function readReply(msg: Buffer, qlen: number): { answer: Answer; lifetime: number; negative: boolean } | null {
  const qEnd = 12 + qlen;
  const flags = msg.readUInt16BE(2);
  const rcode = flags & 0xf;
  const an = msg.readUInt16BE(6);
  const ns = msg.readUInt16BE(8);
  let ar = msg.readUInt16BE(10);
  const ttlAt: number[] = [];
  const ttls: number[] = [];
  let minTtl = Infinity;
  let soaNeg = -1;
  let off = qEnd;
  let end = -1;
  let hasOpt = false;
  const total = an + ns + ar;
  for (let i = 0; i < total; i++) {
    const start = off;
    const nameEnd = skipName(msg, off);
    if (nameEnd < 0 || nameEnd + 10 > msg.length) return null;
    const type = msg.readUInt16BE(nameEnd);
    const rdlen = msg.readUInt16BE(nameEnd + 8);
    off = nameEnd + 10 + rdlen;
    if (off > msg.length) return null;
    if (type === TYPE.OPT) {
      if (i === total - 1) {
        end = start;
        ar--;
      } else hasOpt = true;
      continue;
    }
    const ttl = msg.readUInt32BE(nameEnd + 4) & 0x7fffffff;
    ttlAt.push(nameEnd + 4 - qEnd);
    ttls.push(ttl);
    if (ttl < minTtl) minTtl = ttl;
    if (type === TYPE.SOA && i >= an && i < an + ns && rdlen >= 20) {
      soaNeg = Math.min(ttl, msg.readUInt32BE(off - 4));
    }
  }
  if (end < 0) end = off;
  const negative = rcode === RCODE.NXDOMAIN || (rcode === RCODE.NOERROR && an === 0);
  let lifetime = 0;
  if (negative) lifetime = soaNeg > 0 ? soaNeg : 0;
  else if (rcode === RCODE.NOERROR && minTtl !== Infinity) lifetime = minTtl;
  return {
    answer: {
      flags: rcode, an, ns, ar, body: Buffer.from(msg.subarray(qEnd, end)), serialAt: -1, shuffleSize: 0,
      ttlAt, ttls, storedAt: nowSec(), hasOpt,
    },
    lifetime,
    negative,
  };
}
