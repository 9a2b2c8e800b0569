// The server name a TLS client asks for (SNI, RFC 6066), read from the first bytes of a
// connection without terminating TLS. The bytes come from anyone on the network: every length is
// checked against what is there, the ClientHello may be split over several records (RFC 8446
// 5.1 allows it) and over several reads, and anything that is not a well-formed ClientHello is
// an error with its reason, never an exception.

/** TLS record header: type, version, length. */
const RECORD_HEADER = 5;
const CONTENT_HANDSHAKE = 22;
const HANDSHAKE_CLIENT_HELLO = 1;
const EXT_SERVER_NAME = 0;
const NAME_TYPE_HOST = 0;
/** A plaintext record's fragment is at most 2^14 bytes (RFC 8446 5.1). */
const MAX_FRAGMENT = 16_384;
/** Largest ClientHello we wait for: post-quantum key shares make them ~2 KiB; 64 KiB is generous. */
export const MAX_CLIENT_HELLO = 65_536;

export type HelloResult =
  /** Not enough bytes yet: read more (the caller bounds the time and the size). */
  | { kind: 'more' }
  /** A complete ClientHello naming `name` (lower case, no trailing dot). */
  | { kind: 'sni'; name: string }
  /** A complete ClientHello without a server name (clients connecting by address). */
  | { kind: 'none' }
  /** Not a ClientHello, or a malformed one: close the connection, log `reason`. */
  | { kind: 'error'; reason: string };

const MORE: HelloResult = { kind: 'more' };
const NONE: HelloResult = { kind: 'none' };
const fail = (reason: string): HelloResult => ({ kind: 'error', reason });

/**
 * Reads the SNI from the bytes a client sent so far (`data`: everything from the first byte).
 * Pure: call it again with more bytes when it answers `more`.
 */
export function readServerName(data: Buffer): HelloResult {
  if (data.length === 0) return MORE;
  if (data[0] !== CONTENT_HANDSHAKE) {
    // 0x80: an SSLv2-style hello; letters: someone speaking HTTP or another plain protocol.
    return fail(data[0]! >= 0x80 ? 'SSLv2-style hello (no SNI possible)' : `not TLS (first byte 0x${data[0]!.toString(16).padStart(2, '0')})`);
  }
  // Gather the handshake message from as many records as it spans.
  let want = -1; // handshake message length once its 4-byte header is in
  let off = 0;
  const parts: Buffer[] = [];
  let have = 0;
  while (want < 0 || have < want + 4) {
    if (data.length - off < RECORD_HEADER) return MORE;
    const type = data[off]!;
    if (type !== CONTENT_HANDSHAKE) return fail(`record of type ${type} inside the ClientHello`);
    if (data[off + 1] !== 3) return fail(`record version ${data[off + 1]}.${data[off + 2]} is not TLS`);
    const len = data.readUInt16BE(off + 3);
    if (len === 0) return fail('empty handshake record');
    if (len > MAX_FRAGMENT) return fail(`record of ${len} bytes (at most ${MAX_FRAGMENT})`);
    if (data.length - off - RECORD_HEADER < len) return MORE;
    parts.push(data.subarray(off + RECORD_HEADER, off + RECORD_HEADER + len));
    have += len;
    off += RECORD_HEADER + len;
    if (want < 0 && have >= 4) {
      const head = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
      if (head[0] !== HANDSHAKE_CLIENT_HELLO) return fail(`handshake message ${head[0]} is not a ClientHello`);
      want = head.readUIntBE(1, 3);
      if (want > MAX_CLIENT_HELLO) return fail(`ClientHello of ${want} bytes (at most ${MAX_CLIENT_HELLO})`);
    }
  }
  const msg = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  return parseClientHello(msg.subarray(4, 4 + want));
}

/** The ClientHello body (after the 4-byte handshake header), exactly `body.length` bytes long. */
function parseClientHello(body: Buffer): HelloResult {
  const end = body.length;
  let p = 0;
  // legacy_version (2) + random (32)
  if (end < 34) return fail('ClientHello shorter than its fixed fields');
  if (body[0] !== 3) return fail(`ClientHello version ${body[0]}.${body[1]} is not TLS`);
  p = 34;
  // legacy_session_id <0..32>
  if (p + 1 > end) return fail('ClientHello cut in its session id');
  const sid = body[p]!;
  if (sid > 32) return fail(`session id of ${sid} bytes (at most 32)`);
  p += 1 + sid;
  // cipher_suites <2..2^16-2>
  if (p + 2 > end) return fail('ClientHello cut before its cipher suites');
  const cs = body.readUInt16BE(p);
  if (cs < 2 || cs % 2 !== 0) return fail(`cipher suites of ${cs} bytes`);
  p += 2 + cs;
  // legacy_compression_methods <1..2^8-1>
  if (p + 1 > end) return fail('ClientHello cut before its compression methods');
  const cm = body[p]!;
  if (cm < 1) return fail('no compression method');
  p += 1 + cm;
  if (p > end) return fail('ClientHello cut in its compression methods');
  // No extensions at all (TLS 1.0-style hello): no SNI.
  if (p === end) return NONE;
  if (p + 2 > end) return fail('ClientHello cut in its extensions length');
  const extLen = body.readUInt16BE(p);
  p += 2;
  if (p + extLen !== end) return fail(`extensions of ${extLen} bytes where ${end - p} remain`);
  let name: string | undefined;
  const seen = new Set<number>();
  while (p < end) {
    if (p + 4 > end) return fail('extension header cut');
    const type = body.readUInt16BE(p);
    const len = body.readUInt16BE(p + 2);
    p += 4;
    if (p + len > end) return fail(`extension ${type} of ${len} bytes overruns the ClientHello`);
    // RFC 8446 4.2: the same extension twice is an error; two SNIs would be ambiguous to route.
    if (seen.has(type)) return fail(`extension ${type} appears twice`);
    seen.add(type);
    if (type === EXT_SERVER_NAME) {
      const r = parseServerNameList(body.subarray(p, p + len));
      if (typeof r !== 'string') return r;
      name = r;
    }
    p += len;
  }
  return name === undefined ? NONE : { kind: 'sni', name };
}

/** The host_name of a server_name extension, or the error. */
function parseServerNameList(ext: Buffer): string | HelloResult {
  if (ext.length < 2) return fail('server_name extension cut');
  const listLen = ext.readUInt16BE(0);
  if (listLen + 2 !== ext.length) return fail(`server_name list of ${listLen} bytes in an extension of ${ext.length - 2}`);
  let p = 2;
  let host: string | undefined;
  while (p < ext.length) {
    if (p + 3 > ext.length) return fail('server name entry cut');
    const type = ext[p]!;
    const len = ext.readUInt16BE(p + 1);
    p += 3;
    if (p + len > ext.length) return fail('server name overruns its list');
    if (type === NAME_TYPE_HOST) {
      if (host !== undefined) return fail('two host names in server_name');
      const h = hostName(ext.subarray(p, p + len));
      if (h === undefined) return fail('server name is not a DNS host name');
      host = h;
    }
    p += len;
  }
  return host ?? NONE;
}

/** A DNS host name from SNI bytes (letters, digits, '-', '_', '.'), lower-cased; undefined otherwise. */
function hostName(b: Buffer): string | undefined {
  let len = b.length;
  if (len > 0 && b[len - 1] === 0x2e) len--; // a trailing dot is not allowed, but harmless
  if (len === 0 || len > 253) return undefined;
  let label = 0;
  for (let i = 0; i < len; i++) {
    const c = b[i]!;
    if (c === 0x2e) {
      if (label === 0) return undefined;
      label = 0;
      continue;
    }
    const ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f;
    if (!ok || ++label > 63) return undefined;
  }
  if (label === 0) return undefined;
  return b.toString('latin1', 0, len).toLowerCase();
}
