// The one IPv6 text parser: DNS writes AAAA records and reverse names with it (dns/wire.ts), the
// LB's SO_REUSEPORT listeners bind with it (api/libc.ts sockaddr), the overlay writes netlink
// addresses and matches the underlay address with it (agent/overlay). Input is an address Node or
// the registry already validated; "::", a zone suffix and an embedded IPv4 tail are handled.

/** The 8 16-bit groups of an IPv6 address, "::" expanded. */
export function ipv6Groups(addr: string): number[] {
  let text = addr.split('%')[0]!.toLowerCase();
  const v4 = /^(.*:)(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [b0, b1, b2, b3] = [v4[2], v4[3], v4[4], v4[5]].map(Number) as [number, number, number, number];
    text = `${v4[1]}${((b0 << 8) | b1).toString(16)}:${((b2 << 8) | b3).toString(16)}`;
  }
  const parse = (s: string) => (s === '' ? [] : s.split(':').map((g) => parseInt(g, 16) & 0xffff));
  const dbl = text.indexOf('::');
  if (dbl < 0) return parse(text);
  const head = parse(text.slice(0, dbl));
  const rest = parse(text.slice(dbl + 2));
  return [...head, ...new Array<number>(Math.max(0, 8 - head.length - rest.length)).fill(0), ...rest];
}

/** Writes the 16 bytes of an IPv6 address at out[off]; returns 16. */
export function writeIPv6(addr: string, out: Buffer, off: number): number {
  const groups = ipv6Groups(addr);
  for (let i = 0; i < 8; i++) out.writeUInt16BE(groups[i]!, off + i * 2);
  return 16;
}
