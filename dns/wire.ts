// The DNS wire format on the hot path: parse one query into a reused Query, encode answer bodies
// once, and assemble a reply from a cached body with a copy and a few patched bytes.
// Written for the engine (undici-style): no per-query closures, scratch buffers reused.
import { ipv6Groups, writeIPv6 } from '../api/ipv6.js';

export const TYPE = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, AAAA: 28, SRV: 33, OPT: 41, ANY: 255 } as const;
export const CLASS_IN = 1;
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;

export const TYPE_NAMES: Record<number, string> = {
  1: 'A', 2: 'NS', 5: 'CNAME', 6: 'SOA', 12: 'PTR', 15: 'MX', 16: 'TXT', 28: 'AAAA', 33: 'SRV', 41: 'OPT', 65: 'HTTPS', 255: 'ANY',
};

const FLAG_QR = 0x8000;
const FLAG_AA = 0x0400;
const FLAG_TC = 0x0200;
const FLAG_RD = 0x0100;
const FLAG_RA = 0x0080;

/** Our own EDNS0 UDP payload size: the DNS Flag Day 2020 value, safe from fragmentation. */
export const DEFAULT_UDP_PAYLOAD = 1232;

/** One parsed query. A single instance is reused for every UDP packet. */
export class Query {
  id = 0;
  flags = 0;
  opcode = 0;
  /** Offset just past the question's QCLASS: the question occupies [12, qEnd). */
  qEnd = 0;
  qtype = 0;
  qclass = 0;
  /** Lowercase dotted name without the trailing dot ("" for the root). */
  name = '';
  edns = false;
  ednsVersion = 0;
  /** Client's EDNS0 UDP payload size, 512 without EDNS. */
  udpSize = 512;
  /** The packet the question bytes are copied from when replying. */
  packet: Buffer = EMPTY;
}
const EMPTY = Buffer.alloc(0);

/** parseQuery results: reply FORMERR (header is known), or drop silently. */
export const PARSE_OK = 0;
export const PARSE_FORMERR = 1;
export const PARSE_DROP = 2;

// Lowercased name bytes with '.' between labels; a literal '.' inside a label becomes 0x00 so
// it can never collide with a real name.
const nameScratch = Buffer.allocUnsafe(256);

/** Parses a query into q. Never throws. */
export function parseQuery(buf: Buffer, q: Query): number {
  const len = buf.length;
  if (len < 12) return PARSE_DROP;
  const flags = buf.readUInt16BE(2);
  if (flags & FLAG_QR) return PARSE_DROP; // a response: never answer one (reflection loops)
  q.packet = buf;
  q.id = buf.readUInt16BE(0);
  q.flags = flags;
  q.opcode = (flags >> 11) & 0xf;
  q.edns = false;
  q.ednsVersion = 0;
  q.udpSize = 512;
  q.name = '';
  q.qEnd = 12;
  if (buf.readUInt16BE(4) !== 1) return PARSE_FORMERR;
  // The question: uncompressed labels, each <= 63, whole name <= 255 octets.
  let off = 12;
  let n = 0;
  for (;;) {
    if (off >= len) return PARSE_FORMERR;
    const l = buf[off]!;
    if (l === 0) {
      off++;
      break;
    }
    if (l > 63) return PARSE_FORMERR; // compression pointer or reserved label type
    if (off + 1 + l > len) return PARSE_FORMERR;
    if (n + l + 2 > 255) return PARSE_FORMERR;
    if (n > 0) nameScratch[n++] = 0x2e;
    for (let i = off + 1, end = off + 1 + l; i < end; i++) {
      let c = buf[i]!;
      if (c >= 0x41 && c <= 0x5a) c |= 0x20;
      else if (c === 0x2e) c = 0;
      nameScratch[n++] = c;
    }
    off += 1 + l;
  }
  if (off + 4 > len) return PARSE_FORMERR;
  q.qtype = buf.readUInt16BE(off);
  q.qclass = buf.readUInt16BE(off + 2);
  off += 4;
  q.qEnd = off;
  q.name = n === 0 ? '' : nameScratch.toString('latin1', 0, n);
  // Skip answer and authority records (a query normally has none), then look for OPT.
  const an = buf.readUInt16BE(6);
  const ns = buf.readUInt16BE(8);
  const ar = buf.readUInt16BE(10);
  for (let i = 0; i < an + ns; i++) {
    off = skipRecord(buf, off);
    if (off < 0) return PARSE_FORMERR;
  }
  for (let i = 0; i < ar; i++) {
    const nameEnd = skipName(buf, off);
    if (nameEnd < 0 || nameEnd + 10 > len) return PARSE_FORMERR;
    if (buf.readUInt16BE(nameEnd) === TYPE.OPT) {
      if (q.edns || nameEnd !== off + 1) return PARSE_FORMERR; // one OPT, owned by the root
      q.edns = true;
      const size = buf.readUInt16BE(nameEnd + 2);
      q.udpSize = size < 512 ? 512 : size;
      q.ednsVersion = buf[nameEnd + 5]!;
    }
    off = nameEnd + 10 + buf.readUInt16BE(nameEnd + 8);
    if (off > len) return PARSE_FORMERR;
  }
  return PARSE_OK;
}

/** Offset after a (possibly compressed) name starting at off, or -1. */
export function skipName(buf: Buffer, off: number): number {
  const len = buf.length;
  for (let guard = 0; guard < 128; guard++) {
    if (off >= len) return -1;
    const l = buf[off]!;
    if (l === 0) return off + 1;
    if ((l & 0xc0) === 0xc0) return off + 2 <= len ? off + 2 : -1;
    if (l > 63) return -1;
    off += 1 + l;
  }
  return -1;
}

/** Offset after one resource record, or -1. */
export function skipRecord(buf: Buffer, off: number): number {
  off = skipName(buf, off);
  if (off < 0 || off + 10 > buf.length) return -1;
  off += 10 + buf.readUInt16BE(off + 8);
  return off <= buf.length ? off : -1;
}

/**
 * An encoded reply body: the answer, authority and additional sections as they follow a
 * question of the same length (compression pointers assume the question at offset 12).
 * Cached per (name, type); a reply is header + the asker's own question bytes + this body.
 */
export interface Answer {
  /** Header flags besides QR/RD/RA/TC: AA and RCODE. */
  flags: number;
  an: number;
  ns: number;
  ar: number;
  body: Buffer;
  /** Offset of the SOA serial in body, patched to the current revision; -1 when none. */
  serialAt: number;
  /** When > 0, every answer record is an A (4) or AAAA (16) of this rdata size: shuffle them. */
  shuffleSize: number;
  /** Forwarded answers: offsets of TTL fields in body and their values when stored. */
  ttlAt: number[] | null;
  ttls: number[] | null;
  /** Seconds (monotonic) when stored; TTLs are counted down from here. */
  storedAt: number;
  /** The body already carries an OPT record (a forwarded reply whose OPT was not last). */
  hasOpt: boolean;
}

const OPT_SIZE = 11;

/**
 * Builds the reply to q from an answer body. Over UDP, a reply larger than the client accepts
 * goes out as header + question with TC set, and the client retries over TCP (RFC 7766).
 */
export function assembleReply(q: Query, a: Answer, limit: number, serial: number, nowSec: number, udpPayload: number): Buffer {
  const qEnd = q.qEnd;
  const withOpt = q.edns && !a.hasOpt;
  const body = a.body;
  const size = qEnd + body.length + (withOpt ? OPT_SIZE : 0);
  const baseFlags = FLAG_QR | FLAG_RA | (q.flags & FLAG_RD) | (q.opcode << 11);
  if (size > limit) {
    const out = Buffer.allocUnsafe(qEnd + (q.edns ? OPT_SIZE : 0));
    writeHeader(out, q.id, baseFlags | (a.flags & (FLAG_AA | 0xf)) | FLAG_TC, 0, 0, q.edns ? 1 : 0);
    copyQuestion(q.packet, out, qEnd);
    if (q.edns) writeOpt(out, qEnd, udpPayload, 0);
    return out;
  }
  const out = Buffer.allocUnsafe(size);
  writeHeader(out, q.id, baseFlags | a.flags, a.an, a.ns, a.ar + (withOpt ? 1 : 0));
  copyQuestion(q.packet, out, qEnd);
  // Uint8Array#set is a V8 builtin: no call into C++ as Buffer#copy makes.
  out.set(body, qEnd);
  if (a.serialAt >= 0) out.writeUInt32BE(serial >>> 0, qEnd + a.serialAt);
  if (a.ttlAt !== null) {
    const elapsed = nowSec - a.storedAt;
    const at = a.ttlAt;
    const ttls = a.ttls!;
    for (let i = 0; i < at.length; i++) {
      const t = ttls[i]! - elapsed;
      out.writeUInt32BE(t > 0 ? t : 0, qEnd + at[i]!);
    }
  }
  if (a.shuffleSize > 0 && a.an > 1) shuffleRdata(out, qEnd, a.an, a.shuffleSize);
  if (withOpt) writeOpt(out, size - OPT_SIZE, udpPayload, 0);
  return out;
}

/** The asker's question bytes [12, qEnd), case preserved; short enough that a loop beats a native copy. */
function copyQuestion(from: Buffer, to: Buffer, qEnd: number): void {
  for (let i = 12; i < qEnd; i++) to[i] = from[i]!;
}

/** A reply with no records: FORMERR, SERVFAIL, REFUSED, NOTIMP, BADVERS. */
export function errorReply(q: Query, rcode: number, withQuestion: boolean): Buffer {
  const qEnd = withQuestion ? q.qEnd : 12;
  const badvers = rcode === 16;
  const opt = q.edns || badvers;
  const out = Buffer.allocUnsafe(qEnd + (opt ? OPT_SIZE : 0));
  const flags = FLAG_QR | FLAG_RA | (q.flags & FLAG_RD) | (q.opcode << 11) | (rcode & 0xf);
  writeHeader(out, q.id, flags, 0, 0, opt ? 1 : 0);
  out.writeUInt16BE(withQuestion ? 1 : 0, 4);
  if (withQuestion) q.packet.copy(out, 12, 12, qEnd);
  if (opt) writeOpt(out, qEnd, DEFAULT_UDP_PAYLOAD, rcode >> 4);
  return out;
}

function writeHeader(out: Buffer, id: number, flags: number, an: number, ns: number, ar: number): void {
  out[0] = id >>> 8;
  out[1] = id & 0xff;
  out[2] = (flags >>> 8) & 0xff;
  out[3] = flags & 0xff;
  out[4] = 0;
  out[5] = 1;
  out[6] = an >>> 8;
  out[7] = an & 0xff;
  out[8] = ns >>> 8;
  out[9] = ns & 0xff;
  out[10] = ar >>> 8;
  out[11] = ar & 0xff;
}

function writeOpt(out: Buffer, off: number, payload: number, extRcode: number): void {
  out[off] = 0;
  out.writeUInt16BE(TYPE.OPT, off + 1);
  out.writeUInt16BE(payload, off + 3);
  out.writeUInt32BE((extRcode & 0xff) << 24, off + 5);
  out.writeUInt16BE(0, off + 9);
}

// Answer records of one A/AAAA set differ only in rdata; swapping rdata is a shuffle.
function shuffleRdata(out: Buffer, bodyAt: number, count: number, rdSize: number): void {
  const stride = 12 + rdSize; // pointer(2) type(2) class(2) ttl(4) rdlen(2) rdata
  const first = bodyAt + 12;
  for (let i = count - 1; i > 0; i--) {
    const j = (Math.random() * (i + 1)) | 0;
    if (j === i) continue;
    const a = first + i * stride;
    const b = first + j * stride;
    for (let k = 0; k < rdSize; k++) {
      const t = out[a + k]!;
      out[a + k] = out[b + k]!;
      out[b + k] = t;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding answer bodies (once per cache miss, so clarity over speed).

/** One record to encode. Names are lowercase dotted, without the trailing dot. */
export type Rdata =
  | { type: 1; address: string }
  | { type: 28; address: string }
  | { type: 2 | 5 | 12; target: string }
  | { type: 33; priority: number; weight: number; port: number; target: string }
  | { type: 6; mname: string; rname: string; serial: number; refresh: number; retry: number; expire: number; minimum: number };

export interface ResourceRecord {
  name: string;
  ttl: number;
  data: Rdata;
}

export interface Sections {
  flags: number;
  answer: ResourceRecord[];
  authority: ResourceRecord[];
  additional: ResourceRecord[];
}

const encodeBuf = Buffer.allocUnsafe(65535 + 512);

/** Encodes sections into an Answer for questions of `qname` (lowercase, no trailing dot). */
export function encodeAnswer(qname: string, s: Sections): Answer {
  const w = new BodyWriter(qname);
  const answer: Answer = {
    flags: s.flags, an: s.answer.length, ns: s.authority.length, ar: s.additional.length,
    body: EMPTY, serialAt: -1, shuffleSize: 0, ttlAt: null, ttls: null, storedAt: 0, hasOpt: false,
  };
  for (const r of s.answer) w.record(r, answer);
  for (const r of s.authority) w.record(r, answer);
  for (const r of s.additional) w.record(r, answer);
  answer.body = Buffer.from(encodeBuf.subarray(w.start, w.off));
  answer.serialAt = answer.serialAt >= 0 ? answer.serialAt - w.start : -1;
  let shuffle = 0;
  if (s.answer.length > 1) {
    const t = s.answer[0]!.data.type;
    if ((t === TYPE.A || t === TYPE.AAAA) && s.answer.every((r) => r.data.type === t && r.name === qname)) shuffle = t === TYPE.A ? 4 : 16;
  }
  answer.shuffleSize = shuffle;
  return answer;
}

class BodyWriter {
  readonly start: number;
  off: number;
  private readonly names = new Map<string, number>();

  constructor(qname: string) {
    // The question name sits at offset 12: register each of its suffixes for compression.
    let at = 12;
    const labels = qname === '' ? [] : qname.split('.');
    for (let i = 0; i < labels.length; i++) {
      this.names.set(labels.slice(i).join('.'), at);
      at += 1 + Buffer.byteLength(labels[i]!, 'latin1');
    }
    this.start = at + 1 + 4;
    this.off = this.start;
  }

  record(r: ResourceRecord, answer: Answer): void {
    this.name(r.name, true);
    const d = r.data;
    this.u16(d.type);
    this.u16(CLASS_IN);
    this.u32(r.ttl);
    const lenAt = this.off;
    this.off += 2;
    switch (d.type) {
      case 1:
        for (const part of d.address.split('.')) encodeBuf[this.off++] = Number(part);
        break;
      case 28:
        this.off += writeIPv6(d.address, encodeBuf, this.off);
        break;
      case 2:
      case 5:
      case 12:
        this.name(d.target, true);
        break;
      case 33:
        this.u16(d.priority);
        this.u16(d.weight);
        this.u16(d.port);
        this.name(d.target, false); // RFC 2782: no compression of the SRV target
        break;
      case 6:
        this.name(d.mname, true);
        this.name(d.rname, true);
        answer.serialAt = this.off;
        this.u32(d.serial);
        this.u32(d.refresh);
        this.u32(d.retry);
        this.u32(d.expire);
        this.u32(d.minimum);
        break;
    }
    encodeBuf.writeUInt16BE(this.off - lenAt - 2, lenAt);
    if (this.off > 65535) throw new Error('DNS answer larger than 64 KiB');
  }

  private name(name: string, compress: boolean): void {
    let rest = name;
    while (rest !== '') {
      const ptr = compress ? this.names.get(rest) : undefined;
      if (ptr !== undefined) {
        this.u16(0xc000 | ptr);
        return;
      }
      if (this.off < 0x3fff && !this.names.has(rest)) this.names.set(rest, this.off);
      const dot = rest.indexOf('.');
      const label = dot < 0 ? rest : rest.slice(0, dot);
      const l = Buffer.byteLength(label, 'latin1');
      if (l === 0 || l > 63) throw new Error(`DNS label "${label}" in "${name}" is empty or longer than 63 octets`);
      encodeBuf[this.off++] = l;
      this.off += encodeBuf.write(label, this.off, 'latin1');
      rest = dot < 0 ? '' : rest.slice(dot + 1);
    }
    encodeBuf[this.off++] = 0;
  }

  private u16(v: number): void {
    encodeBuf.writeUInt16BE(v & 0xffff, this.off);
    this.off += 2;
  }

  private u32(v: number): void {
    encodeBuf.writeUInt32BE(v >>> 0, this.off);
    this.off += 4;
  }
}

/** The fully expanded 8 groups of an IPv6 address, for reverse names. */
export function expandIPv6(addr: string): number[] {
  return ipv6Groups(addr);
}

/** Builds a standard query packet (tests, upstream TCP retries). */
export function buildQuery(id: number, name: string, qtype: number, opts: { rd?: boolean; udpSize?: number } = {}): Buffer {
  const labels = name.replace(/\.$/, '').split('.').filter(Boolean);
  const qlen = labels.reduce((s, l) => s + 1 + Buffer.byteLength(l, 'latin1'), 0) + 1;
  const out = Buffer.alloc(12 + qlen + 4 + (opts.udpSize ? OPT_SIZE : 0));
  out.writeUInt16BE(id, 0);
  out.writeUInt16BE(opts.rd === false ? 0 : FLAG_RD, 2);
  out.writeUInt16BE(1, 4);
  out.writeUInt16BE(opts.udpSize ? 1 : 0, 10);
  let off = 12;
  for (const l of labels) {
    out[off++] = Buffer.byteLength(l, 'latin1');
    off += out.write(l, off, 'latin1');
  }
  out[off++] = 0;
  out.writeUInt16BE(qtype, off);
  out.writeUInt16BE(CLASS_IN, off + 2);
  off += 4;
  if (opts.udpSize) writeOpt(out, off, opts.udpSize, 0);
  return out;
}

export const HEADER_FLAGS = { QR: FLAG_QR, AA: FLAG_AA, TC: FLAG_TC, RD: FLAG_RD, RA: FLAG_RA };
