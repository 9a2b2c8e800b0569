// Strict HTTP/1.1 message heads (RFC 9112) parsed straight from the bytes the socket delivered.
//
// The proxy never builds header objects: a parse records where each field's name and value lie
// in the buffer and what kind of field it is (the few the proxy acts on), in typed arrays reused
// for every message. The builders in `build.ts` copy the kept fields as byte ranges.
//
// Refused (a status for the client, and the connection is closed after it): bare LF, CR without
// LF, obs-fold, whitespace before the colon, a name that is not a token, control characters in a
// value, request lines that are not `token SP target SP HTTP/1.x`, duplicate Content-Length or
// Transfer-Encoding fields, a Content-Length that is not digits, Content-Length together with
// Transfer-Encoding, a Transfer-Encoding other than `chunked`, Transfer-Encoding in HTTP/1.0,
// more than one Host.

/** Most fields a head may have; a 16 KiB head of the shortest fields ("a:b\r\n") has fewer. */
export const MAX_FIELDS = 4096;

// Field kinds: the fields the proxy acts on. Everything else is OTHER and passed through.
export const F_OTHER = 0;
export const F_HOST = 1;
export const F_CONTENT_LENGTH = 2;
export const F_TRANSFER_ENCODING = 3;
export const F_CONNECTION = 4;
export const F_KEEP_ALIVE = 5;
export const F_TE = 6;
export const F_TRAILER = 7;
export const F_UPGRADE = 8;
export const F_EXPECT = 9;
export const F_PROXY = 10; // proxy-* (Proxy-Authorization, Proxy-Connection, ...)
export const F_XFF = 11;
export const F_XFP = 12;
export const F_XFH = 13;
export const F_FORWARDED = 14;

/** Hop-by-hop (RFC 9110 7.6.1) for this proxy: never forwarded as they came. */
export function isHopByHop(kind: number): boolean {
  return kind >= F_TRANSFER_ENCODING && kind <= F_PROXY;
}

// Byte classes.
/** 1 for the bytes of a token (RFC 9110 5.6.2): field names, methods. */
export const TCHAR = new Uint8Array(256);
const VCHAR = new Uint8Array(256); // field-value bytes: HTAB, SP, VCHAR, obs-text
const TARGET = new Uint8Array(256); // request-target bytes: visible ASCII and obs-text, no SP or CTL
for (let c = 0; c < 256; c++) {
  const ch = String.fromCharCode(c);
  TCHAR[c] = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/.test(ch) ? 1 : 0;
  VCHAR[c] = c === 9 || (c >= 0x20 && c !== 0x7f) ? 1 : 0;
  TARGET[c] = c > 0x20 && c !== 0x7f ? 1 : 0;
}

const CR = 13;
const LF = 10;
const SP = 32;
const HT = 9;

/** Lower-case comparison of a validated token against a lower-case literal of the same length. */
/** buf[at, at + lit.length) is `lit` (lower-case letters, digits and '-'), letters in any case; for validated tokens. */
export function eqLower(buf: Buffer, at: number, lit: string): boolean {
  for (let i = 0; i < lit.length; i++) if ((buf[at + i]! | 0x20) !== lit.charCodeAt(i)) return false;
  return true;
}

/** The kind of the field named by buf[s, e) (a validated token). */
export function fieldKind(buf: Buffer, s: number, e: number): number {
  const n = e - s;
  switch (n) {
    case 2: return eqLower(buf, s, 'te') ? F_TE : F_OTHER;
    case 4: return eqLower(buf, s, 'host') ? F_HOST : F_OTHER;
    case 6: return eqLower(buf, s, 'expect') ? F_EXPECT : eqLower(buf, s, 'proxy-') ? F_PROXY : F_OTHER;
    case 7: return eqLower(buf, s, 'upgrade') ? F_UPGRADE : eqLower(buf, s, 'trailer') ? F_TRAILER : eqLower(buf, s, 'proxy-') ? F_PROXY : F_OTHER;
    case 9: return eqLower(buf, s, 'forwarded') ? F_FORWARDED : eqLower(buf, s, 'proxy-') ? F_PROXY : F_OTHER;
    case 10: return eqLower(buf, s, 'connection') ? F_CONNECTION : eqLower(buf, s, 'keep-alive') ? F_KEEP_ALIVE : eqLower(buf, s, 'proxy-') ? F_PROXY : F_OTHER;
    case 14: return eqLower(buf, s, 'content-length') ? F_CONTENT_LENGTH : eqLower(buf, s, 'proxy-') ? F_PROXY : F_OTHER;
    case 15: return eqLower(buf, s, 'x-forwarded-for') ? F_XFF : eqLower(buf, s, 'proxy-') ? F_PROXY : F_OTHER;
    case 16: return eqLower(buf, s, 'x-forwarded-host') ? F_XFH : eqLower(buf, s, 'proxy-') ? F_PROXY : F_OTHER;
    case 17:
      return eqLower(buf, s, 'transfer-encoding') ? F_TRANSFER_ENCODING : eqLower(buf, s, 'x-forwarded-proto') ? F_XFP : eqLower(buf, s, 'proxy-') ? F_PROXY : F_OTHER;
    default: return n > 6 && eqLower(buf, s, 'proxy-') ? F_PROXY : F_OTHER;
  }
}

/**
 * The fields of one head: for field i, pos[5i..5i+4] = name start, name end, value start, value
 * end (without surrounding whitespace), line end (after its CRLF); kind[i] its kind.
 */
export class Fields {
  count = 0;
  readonly pos = new Int32Array(MAX_FIELDS * 5);
  readonly kind = new Uint8Array(MAX_FIELDS);
}

// Connection tokens seen (bit flags).
export const C_CLOSE = 1;
export const C_KEEP_ALIVE = 2;
export const C_UPGRADE = 4;
/** Connection names some other field: those are dropped too (slow path). */
export const C_OTHER = 8;

/** Parses the comma-separated tokens of a Connection value into C_* flags. */
function connectionFlags(buf: Buffer, s: number, e: number): number {
  let flags = 0;
  let i = s;
  while (i < e) {
    while (i < e && (buf[i] === SP || buf[i] === HT || buf[i] === 44 /* , */)) i++;
    const t = i;
    while (i < e && buf[i] !== 44 && buf[i] !== SP && buf[i] !== HT) i++;
    const n = i - t;
    if (n === 0) continue;
    if (n === 5 && eqLower(buf, t, 'close')) flags |= C_CLOSE;
    else if (n === 10 && eqLower(buf, t, 'keep-alive')) flags |= C_KEEP_ALIVE;
    else if (n === 7 && eqLower(buf, t, 'upgrade')) flags |= C_UPGRADE;
    else flags |= C_OTHER;
  }
  return flags;
}

/** A Content-Length value: its number, or -1 when it is not 1*DIGIT (or absurdly long). */
function contentLength(buf: Buffer, s: number, e: number): number {
  if (e <= s || e - s > 15) return -1;
  let n = 0;
  for (let i = s; i < e; i++) {
    const d = buf[i]! - 48;
    if (d < 0 || d > 9) return -1;
    n = n * 10 + d;
  }
  return n;
}

/** What the head parsers found besides the fields. `reason` says what was wrong when they refused. */
class HeadCommon {
  readonly fields = new Fields();
  /** 10 or 11. */
  version = 11;
  /** -1: no Content-Length. */
  contentLength = -1;
  chunked = false;
  /** C_* flags of every Connection field. */
  connection = 0;
  /** Index of the Host field, -1 none (requests only). */
  host = -1;
  /** Some X-Forwarded-For/-Proto/-Host or Forwarded field is present (requests: slow path). */
  forwarding = false;
  /** A Keep-Alive field (responses: its timeout= hint caps the idle time). */
  keepAlive = -1;
  reason = '';

  reset(): void {
    this.fields.count = 0;
    this.version = 11;
    this.contentLength = -1;
    this.chunked = false;
    this.connection = 0;
    this.host = -1;
    this.forwarding = false;
    this.keepAlive = -1;
    this.reason = '';
  }
}

export class RequestHead extends HeadCommon {
  methodEnd = 0;
  targetStart = 0;
  targetEnd = 0;
  /** Index of the request line's CRLF end (the first field's start). */
  lineEnd = 0;
  /** 0 none, 1 `100-continue`, 2 anything else. */
  expect = 0;
  upgrade = false;
}

export class ResponseHead extends HeadCommon {
  status = 0;
  /** Start of the status code in the status line (the reason phrase follows it). */
  statusStart = 0;
  /** End of the status line without its CRLF. */
  statusLineEnd = 0;
  lineEnd = 0;
  /** A Transfer-Encoding that does not end in chunked: the body runs until the connection closes. */
  untilClose = false;
}

/**
 * Fields from buf[at, end), where end is just after the empty line's CRLF. Returns 0, or 400 with
 * h.reason set.
 */
function parseFields(buf: Buffer, at: number, end: number, h: HeadCommon, request: boolean): number {
  const f = h.fields;
  const pos = f.pos;
  let n = 0;
  let i = at;
  let seenCl = false;
  let seenTe = false;
  while (i < end) {
    const c = buf[i]!;
    if (c === CR) {
      if (i + 2 === end && buf[i + 1] === LF) break;
      h.reason = 'bare CR in the header block';
      return 400;
    }
    if (c === SP || c === HT) {
      h.reason = 'obsolete line folding in a header';
      return 400;
    }
    const nameStart = i;
    while (TCHAR[buf[i]!] === 1) i++;
    if (buf[i] !== 58 /* : */ || i === nameStart) {
      h.reason = buf[i] === LF ? 'bare LF in the header block' : 'invalid header name';
      return 400;
    }
    const nameEnd = i++;
    while (buf[i] === SP || buf[i] === HT) i++;
    const valueStart = i;
    while (VCHAR[buf[i]!] === 1) i++;
    let valueEnd = i;
    if (buf[i] !== CR || buf[i + 1] !== LF) {
      h.reason = buf[i] === LF ? 'bare LF in the header block' : 'invalid character in a header value';
      return 400;
    }
    while (valueEnd > valueStart && (buf[valueEnd - 1] === SP || buf[valueEnd - 1] === HT)) valueEnd--;
    i += 2;
    if (n === MAX_FIELDS) {
      h.reason = 'too many header fields';
      return 431;
    }
    const kind = fieldKind(buf, nameStart, nameEnd);
    const p = n * 5;
    pos[p] = nameStart;
    pos[p + 1] = nameEnd;
    pos[p + 2] = valueStart;
    pos[p + 3] = valueEnd;
    pos[p + 4] = i;
    f.kind[n] = kind;
    switch (kind) {
      case F_OTHER:
        break;
      case F_HOST:
        if (h.host >= 0) {
          h.reason = 'more than one Host header';
          return 400;
        }
        h.host = n;
        break;
      case F_CONTENT_LENGTH: {
        const len = contentLength(buf, valueStart, valueEnd);
        if (seenCl || len < 0) {
          h.reason = seenCl ? 'more than one Content-Length' : 'invalid Content-Length';
          return 400;
        }
        seenCl = true;
        h.contentLength = len;
        break;
      }
      case F_TRANSFER_ENCODING:
        if (seenTe) {
          h.reason = 'more than one Transfer-Encoding header';
          return 400;
        }
        seenTe = true;
        if (valueEnd - valueStart === 7 && eqLower(buf, valueStart, 'chunked')) h.chunked = true;
        else if (request) {
          h.reason = 'Transfer-Encoding other than chunked';
          return 400;
        } else {
          // RFC 9112 6.3: a response coding list not ending in chunked is read until close.
          const lastComma = buf.lastIndexOf(44, valueEnd - 1);
          let t = lastComma >= valueStart ? lastComma + 1 : valueStart;
          while (buf[t] === SP || buf[t] === HT) t++;
          if (valueEnd - t === 7 && eqLower(buf, t, 'chunked')) h.chunked = true;
          else (h as ResponseHead).untilClose = true;
        }
        break;
      case F_CONNECTION:
        h.connection |= connectionFlags(buf, valueStart, valueEnd);
        break;
      case F_KEEP_ALIVE:
        h.keepAlive = n;
        break;
      case F_EXPECT:
        if (request) {
          (h as RequestHead).expect = valueEnd - valueStart === 12 && eqLower(buf, valueStart, '100-continue') ? 1 : 2;
        }
        break;
      case F_UPGRADE:
        if (request) (h as RequestHead).upgrade = true;
        break;
      case F_XFF:
      case F_XFP:
      case F_XFH:
      case F_FORWARDED:
        h.forwarding = true;
        break;
      default:
        break;
    }
    n++;
  }
  f.count = n;
  if (seenCl && seenTe) {
    h.reason = 'both Content-Length and Transfer-Encoding';
    if (request) return 400;
    h.contentLength = -1; // RFC 9112 6.3: Transfer-Encoding wins; the caller does not reuse the connection
    h.connection |= C_CLOSE;
  }
  return 0;
}

/** HTTP/1.0 or HTTP/1.1 at buf[i, i+8): 10, 11 or 0. */
function httpVersion(buf: Buffer, i: number): number {
  if (buf[i] !== 72 || buf[i + 1] !== 84 || buf[i + 2] !== 84 || buf[i + 3] !== 80 || buf[i + 4] !== 47 || buf[i + 5] !== 49 || buf[i + 6] !== 46) return 0;
  const minor = buf[i + 7];
  return minor === 49 ? 11 : minor === 48 ? 10 : 0;
}

/**
 * A request head in buf[start, end), end just after the CRLFCRLF. Returns 0, or the status to
 * refuse with (400, 431) and h.reason.
 */
export function parseRequestHead(buf: Buffer, start: number, end: number, h: RequestHead): number {
  h.reset();
  h.expect = 0;
  h.upgrade = false;
  let i = start;
  while (TCHAR[buf[i]!] === 1) i++;
  if (i === start || buf[i] !== SP) {
    h.reason = 'invalid request line';
    return 400;
  }
  h.methodEnd = i++;
  h.targetStart = i;
  while (TARGET[buf[i]!] === 1) i++;
  if (i === h.targetStart || buf[i] !== SP) {
    h.reason = 'invalid request target';
    return 400;
  }
  h.targetEnd = i++;
  h.version = httpVersion(buf, i);
  if (h.version === 0 || buf[i + 8] !== CR || buf[i + 9] !== LF) {
    h.reason = 'invalid HTTP version in the request line';
    return 400;
  }
  h.lineEnd = i + 10;
  const code = parseFields(buf, h.lineEnd, end, h, true);
  if (code !== 0) return code;
  if (h.chunked && h.version === 10) {
    h.reason = 'Transfer-Encoding in an HTTP/1.0 request';
    return 400;
  }
  return 0;
}

// How a message body is framed. Requests use the first three; responseFraming gives a response's.
export const BODY_NONE = 0;
export const BODY_LENGTH = 1;
export const BODY_CHUNKED = 2;
/** A response read until the endpoint closes (no length, or a coding list not ending in chunked). */
export const BODY_UNTIL_CLOSE = 3;

/**
 * How the body of a parsed final response is framed (RFC 9112 6.3): none for an answer to HEAD
 * and for 204 and 304, then chunked, then until close, then Content-Length. The one rule for the
 * HTTP/1.1 proxy and the HTTP/2 translation.
 */
export function responseFraming(h: ResponseHead, toHead: boolean): number {
  if (toHead || h.status === 204 || h.status === 304) return BODY_NONE;
  if (h.chunked) return BODY_CHUNKED;
  if (h.untilClose || h.contentLength < 0) return BODY_UNTIL_CLOSE;
  return h.contentLength === 0 ? BODY_NONE : BODY_LENGTH;
}

/** A response head in buf[start, end). Returns 0, or 502 with h.reason. */
export function parseResponseHead(buf: Buffer, start: number, end: number, h: ResponseHead): number {
  h.reset();
  h.untilClose = false;
  h.version = httpVersion(buf, start);
  const s = start + 9;
  const d0 = buf[s]! - 48;
  const d1 = buf[s + 1]! - 48;
  const d2 = buf[s + 2]! - 48;
  if (h.version === 0 || buf[start + 8] !== SP || d0 < 1 || d0 > 5 || d1 < 0 || d1 > 9 || d2 < 0 || d2 > 9) {
    h.reason = 'invalid status line from the endpoint';
    return 502;
  }
  h.status = d0 * 100 + d1 * 10 + d2;
  h.statusStart = s;
  let i = s + 3;
  if (buf[i] === SP) {
    i++;
    while (VCHAR[buf[i]!] === 1) i++;
  }
  if (buf[i] !== CR || buf[i + 1] !== LF) {
    h.reason = 'invalid status line from the endpoint';
    return 502;
  }
  h.statusLineEnd = i;
  h.lineEnd = i + 2;
  const code = parseFields(buf, h.lineEnd, end, h, false);
  if (code !== 0) {
    h.reason = `${h.reason} (from the endpoint)`;
    return 502;
  }
  return 0;
}

/** The `timeout=N` of a Keep-Alive value in ms, or -1. */
export function keepAliveTimeoutMs(buf: Buffer, s: number, e: number): number {
  const text = buf.latin1Slice(s, e).toLowerCase();
  const m = /(?:^|[\s,;])timeout\s*=\s*(\d{1,9})/.exec(text);
  return m ? Number(m[1]) * 1000 : -1;
}

/** Index just past the first CRLFCRLF in buf[from, end), or -1. */
const CRLFCRLF = Buffer.from('\r\n\r\n', 'latin1');
export function headEnd(buf: Buffer, from: number): number {
  const i = buf.indexOf(CRLFCRLF, from);
  return i < 0 ? -1 : i + 4;
}

/** An incomplete head that already shows a bare-LF line end (LF LF, or LF not after CR at a line end): refuse now rather than wait. */
export function hasBareLfEnd(buf: Buffer, from: number): boolean {
  return buf.indexOf('\n\n', from, 'latin1') >= 0;
}
