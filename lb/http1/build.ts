// Heads for the other side of the proxy, built by copying the kept fields of a parsed head as byte
// ranges (adjacent kept fields in one copy) into one buffer, followed by the proxy's own fields.
// One allocation per head (from Node's buffer pool for small sizes), and one write.
import {
  C_OTHER, F_CONTENT_LENGTH, F_FORWARDED, F_HOST, F_OTHER, F_UPGRADE, F_XFF, F_XFH, F_XFP, isHopByHop,
  type Fields, type RequestHead, type ResponseHead,
} from './head.js';

/** Lower-case names a Connection field lists besides close/keep-alive/upgrade (the slow path). */
export function connectionNamed(buf: Buffer, fields: Fields, connectionKind: number): Set<string> {
  const named = new Set<string>();
  const pos = fields.pos;
  for (let i = 0; i < fields.count; i++) {
    if (fields.kind[i] !== connectionKind) continue;
    for (const token of buf.latin1Slice(pos[i * 5 + 2]!, pos[i * 5 + 3]!).split(',')) {
      const t = token.trim().toLowerCase();
      if (t !== '' && t !== 'close' && t !== 'keep-alive' && t !== 'upgrade') named.add(t);
    }
  }
  return named;
}

/**
 * Field i's name is one of `names` (lower-case: named by Connection, or dropped by a route's
 * middleware), compared in place: no string per field on a route that drops a few names.
 */
function isNamed(buf: Buffer, fields: Fields, i: number, names: readonly string[]): boolean {
  const p = i * 5;
  const s = fields.pos[p]!;
  const n = fields.pos[p + 1]! - s;
  for (let k = 0; k < names.length; k++) {
    const name = names[k]!;
    if (name.length !== n) continue;
    let j = 0;
    for (; j < n; j++) {
      let c = buf[s + j]!;
      if (c >= 65 && c <= 90) c += 32; // A-Z
      if (c !== name.charCodeAt(j)) break;
    }
    if (j === n) return true;
  }
  return false;
}

/** The kept-field mask for a request: drop hop-by-hop and the forwarding fields the proxy rewrites, and Host when the proxy sets it. */
function keepRequestField(kind: number, keepUpgrade: boolean, keepHost: boolean): boolean {
  if (kind === F_OTHER || kind === F_CONTENT_LENGTH) return true;
  if (kind === F_HOST) return keepHost;
  if (kind === F_UPGRADE) return keepUpgrade;
  return false; // hop-by-hop, X-Forwarded-*, Forwarded
}

/** Copies the kept fields of `fields` into out at `at`; returns the new offset (out null: only counts). */
function copyFields(buf: Buffer, fields: Fields, keep: Uint8Array, out: Buffer | null, at: number): number {
  const pos = fields.pos;
  let runStart = -1;
  let runEnd = -1;
  for (let i = 0; i < fields.count; i++) {
    const p = i * 5;
    if (keep[i] === 1) {
      if (runStart < 0) runStart = pos[p]!;
      runEnd = pos[p + 4]!;
      continue;
    }
    if (runStart >= 0) {
      if (out !== null) buf.copy(out, at, runStart, runEnd);
      at += runEnd - runStart;
      runStart = -1;
    }
  }
  if (runStart >= 0) {
    if (out !== null) buf.copy(out, at, runStart, runEnd);
    at += runEnd - runStart;
  }
  return at;
}

const keepMask = new Uint8Array(4096);

/**
 * The head to send upstream: `METHOD target HTTP/1.1`, the kept fields, then `tail` (the proxy's
 * forwarding fields, Connection, Transfer-Encoding when re-chunked, and the final CRLF).
 * `target` (origin-form) replaces an absolute-form request target, and then the client's Host is
 * dropped too: its authority is the Host (RFC 9112 3.2.2), and `tail` must carry it. null keeps
 * the client's target and Host.
 */
export function buildRequestHead(buf: Buffer, start: number, h: RequestHead, target: string | null, tail: string, keepUpgrade: boolean, named: Set<string> | null): Buffer {
  const fields = h.fields;
  const keepHost = target === null;
  const names = named === null ? null : [...named];
  for (let i = 0; i < fields.count; i++) {
    keepMask[i] = keepRequestField(fields.kind[i]!, keepUpgrade, keepHost) && (names === null || !isNamed(buf, fields, i, names)) ? 1 : 0;
  }
  const methodLen = h.methodEnd - start + 1; // with its SP
  const targetLen = target === null ? h.targetEnd - h.targetStart : target.length;
  const fieldsLen = copyFields(buf, fields, keepMask, null, 0);
  const out = Buffer.allocUnsafe(methodLen + targetLen + 11 + fieldsLen + tail.length);
  let at = buf.copy(out, 0, start, start + methodLen);
  if (target === null) at += buf.copy(out, at, h.targetStart, h.targetEnd);
  else at += out.latin1Write(target, at);
  at += out.latin1Write(' HTTP/1.1\r\n', at);
  at = copyFields(buf, fields, keepMask, out, at);
  out.latin1Write(tail, at);
  return out;
}

/**
 * The head for the client: `HTTP/1.1 <status and reason as the endpoint sent them>`, the kept
 * fields, `tail` (Transfer-Encoding/Connection the proxy decided, final CRLF), and then, when
 * bodyEnd > bodyStart, body bytes buf[bodyStart, bodyEnd) in the same buffer (one write).
 */
export function buildResponseHead(
  buf: Buffer, h: ResponseHead, dropLength: boolean, tail: string, named: Set<string> | null, bodyStart: number, bodyEnd: number,
): Buffer {
  const fields = h.fields;
  const names = named === null ? null : [...named];
  for (let i = 0; i < fields.count; i++) {
    const kind = fields.kind[i]!;
    keepMask[i] = !isHopByHop(kind) && !(dropLength && kind === F_CONTENT_LENGTH) && (names === null || !isNamed(buf, fields, i, names)) ? 1 : 0;
  }
  const statusLen = h.statusLineEnd - h.statusStart;
  const fieldsLen = copyFields(buf, fields, keepMask, null, 0);
  const bodyLen = bodyEnd > bodyStart ? bodyEnd - bodyStart : 0;
  const out = Buffer.allocUnsafe(9 + statusLen + 2 + fieldsLen + tail.length + bodyLen);
  let at = out.latin1Write('HTTP/1.1 ', 0);
  at += buf.copy(out, at, h.statusStart, h.statusLineEnd);
  at += out.latin1Write('\r\n', at);
  at = copyFields(buf, fields, keepMask, out, at);
  at += out.latin1Write(tail, at);
  if (bodyLen > 0) buf.copy(out, at, bodyStart, bodyEnd);
  return out;
}

/** Joined values of the fields of one kind ("a, b"), or undefined. */
export function joinedValues(buf: Buffer, fields: Fields, kind: number): string | undefined {
  let out: string | undefined;
  const pos = fields.pos;
  for (let i = 0; i < fields.count; i++) {
    if (fields.kind[i] !== kind) continue;
    const v = buf.latin1Slice(pos[i * 5 + 2]!, pos[i * 5 + 3]!);
    out = out === undefined ? v : `${out}, ${v}`;
  }
  return out;
}

export { C_OTHER, F_FORWARDED, F_XFF, F_XFH, F_XFP };
