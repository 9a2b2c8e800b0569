// The PROXY protocol v2 header (HAProxy's proxy-protocol.txt, section 2.2): sent to an endpoint
// before the client's first byte on routes whose endpoints ask for it (label
// `corral.tcp.proxy-protocol=v2`), so the endpoint learns the client's address and port and the
// LB address the client connected to. Binary, PROXY command, TCP over IPv4 or IPv6, no TLVs.
import { isIPv4 } from 'node:net';
import { ipv6Groups } from '../../api/ipv6.js';

const SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V2_PROXY = 0x21;
const V2_LOCAL = 0x20;
const TCP4 = 0x11;
const TCP6 = 0x21;

/** "::ffff:1.2.3.4" (what a dual-stack listener reports for IPv4 clients) -> "1.2.3.4". */
function unmapped(a: string): string {
  return a.startsWith('::ffff:') && isIPv4(a.slice(7)) ? a.slice(7) : a;
}

function v4Bytes(a: string, out: Buffer, at: number): void {
  const parts = a.split('.');
  for (let i = 0; i < 4; i++) out[at + i] = Number(parts[i]);
}

function v6Bytes(a: string, out: Buffer, at: number): void {
  if (isIPv4(a)) {
    // An IPv4 address beside an IPv6 one: as ::ffff:a.b.c.d.
    out.fill(0, at, at + 10);
    out[at + 10] = 0xff;
    out[at + 11] = 0xff;
    v4Bytes(a, out, at + 12);
    return;
  }
  const g = ipv6Groups(a);
  for (let i = 0; i < 8; i++) out.writeUInt16BE(g[i]!, at + i * 2);
}

/**
 * The header for a connection from `src` to `dst` (the LB's own address and port). Addresses Node
 * could not tell (a socket already closed) give a LOCAL header, which endpoints accept and
 * read as "no client address".
 */
export function proxyV2Header(srcAddress: string | undefined, srcPort: number | undefined, dstAddress: string | undefined, dstPort: number | undefined): Buffer {
  if (!srcAddress || !dstAddress || srcPort === undefined || dstPort === undefined) {
    const local = Buffer.alloc(16);
    SIGNATURE.copy(local);
    local[12] = V2_LOCAL;
    return local;
  }
  const src = unmapped(srcAddress);
  const dst = unmapped(dstAddress);
  const four = isIPv4(src) && isIPv4(dst);
  const addrLen = four ? 12 : 36;
  const out = Buffer.alloc(16 + addrLen);
  SIGNATURE.copy(out);
  out[12] = V2_PROXY;
  out[13] = four ? TCP4 : TCP6;
  out.writeUInt16BE(addrLen, 14);
  if (four) {
    v4Bytes(src, out, 16);
    v4Bytes(dst, out, 20);
    out.writeUInt16BE(srcPort, 24);
    out.writeUInt16BE(dstPort, 26);
  } else {
    v6Bytes(src, out, 16);
    v6Bytes(dst, out, 32);
    out.writeUInt16BE(srcPort, 48);
    out.writeUInt16BE(dstPort, 50);
  }
  return out;
}
