// The overlay interface's place in the host's routing, through rtnetlink (no `ip` processes):
// MTU and up, the cluster CIDR routed to it from the host's block gateway,
// and the underlay's MTU for deriving the overlay's.
import { writeFileSync } from 'node:fs';
import { createRtNetlink, FlagsNew, type RtNetlinkSocket, type rt } from 'netlink';
import { writeIPv6 } from '../../api/ipv6.js';
import { OverlayError } from './overlay.js';

const AF_INET = 2;

function ip4(a: string): Buffer {
  return Buffer.from(a.split('.').map(Number));
}

function errnoOf(err: unknown): string {
  const m = /Request rejected: (\w+)/.exec((err as Error)?.message ?? '');
  return m ? m[1]! : ((err as NodeJS.ErrnoException)?.code ?? '');
}

async function withSocket<T>(fn: (s: RtNetlinkSocket) => Promise<T>): Promise<T> {
  const s = createRtNetlink();
  try {
    return await fn(s);
  } finally {
    s.socket.close();
  }
}

export async function linkByName(s: RtNetlinkSocket, name: string): Promise<rt.LinkMessage | undefined> {
  try {
    return (await s.getLink({}, { ifname: name }))[0];
  } catch (err) {
    if (errnoOf(err) === 'ENODEV') return undefined;
    throw err;
  }
}

export function linkExists(name: string): Promise<boolean> {
  return withSocket(async (s) => (await linkByName(s, name)) !== undefined);
}

/** Sets MTU, brings the link up and routes clusterCidr to it with the gateway as source (idempotent); the gateway must exist. */
export async function routeOverlay(o: { ifname: string; mtu: number; gateway: string; clusterCidr: string }): Promise<void> {
  await withSocket(async (s) => {
    const l = await linkByName(s, o.ifname);
    if (!l) throw new OverlayError(`interface ${o.ifname} is missing`);
    await s.setLink({ index: l.data.index, change: { up: true }, flags: { up: true } }, { mtu: o.mtu });
    // The gateway address itself lives on the attach code's bridge (ensureGateway, one owner); here it is only the source.
    const [net, len] = o.clusterCidr.split('/');
    await s.newRoute(
      { family: AF_INET, dstLen: Number(len), table: 254, protocol: 'BOOT', scope: 'LINK', type: 'UNICAST' },
      { dst: ip4(net!), oif: l.data.index, prefsrc: ip4(o.gateway) },
      { flags: FlagsNew.CREATE | FlagsNew.REPLACE },
    );
  });
  // Containers' packets cross this host on their way to and from the overlay.
  writeFileSync('/proc/sys/net/ipv4/ip_forward', '1');
}

/** The MTU of the interface that holds `address`, and whether it is IPv6. */
export async function underlayMtu(address: string): Promise<{ mtu: number; v6: boolean }> {
  const v6 = address.includes(':');
  return withSocket(async (s) => {
    const addrs = await s.getAddresses();
    // Compared as bytes: an IPv6 address has many spellings (zeros, case, where "::" goes).
    const want = v6 ? v6bytes(address) : ip4(address);
    const a = addrs.find((x) => x.attrs.local?.equals(want) || x.attrs.address?.equals(want));
    if (!a) throw new OverlayError(`no interface here has the underlay address ${address}: pass --underlay-address with one of this host's addresses`);
    const l = (await s.getLink({ index: a.data.index }))[0];
    return { mtu: l?.attrs.mtu ?? 1500, v6 };
  });
}

/** The source address of the default route (what other hosts most likely reach this one at). */
export async function defaultRouteSource(): Promise<string> {
  return withSocket(async (s) => {
    const routes = await s.getRoutes({ family: AF_INET });
    const def = routes.find((r) => r.data.dstLen === 0 && r.data.table === 254);
    if (!def) throw new OverlayError('this host has no default route to take its underlay address from: pass --underlay-address');
    if (def.attrs.prefsrc) return [...def.attrs.prefsrc].join('.');
    const addrs = await s.getAddresses({ family: AF_INET });
    const a = addrs.find((x) => x.data.index === def.attrs.oif && x.attrs.local);
    if (!a) throw new OverlayError('the default route\'s interface has no IPv4 address: pass --underlay-address');
    return [...a.attrs.local!].join('.');
  });
}

/** The 16 bytes of an IPv6 address (netlink's form). */
export function v6bytes(address: string): Buffer {
  const b = Buffer.alloc(16);
  writeIPv6(address, b, 0);
  return b;
}
