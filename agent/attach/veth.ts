// The per-container data plane: a veth pair, one end in the container's namespace as
// CNI_IFNAME with its /32 address, a link route to the host gateway and a default route via
// it; the host end with a /32 route to the container (routed, no shared L2 between containers).
// Everything through rtnetlink (the `netlink` package); no `ip` processes.
import { createHash } from 'node:crypto';
import { closeSync } from 'node:fs';
import { AttrStream, FlagsNew, ifla, rt, type RtNetlinkSocket } from 'netlink';
import { NetnsGone, openNetns, rtnetlinkHere, rtnetlinkIn } from './netns.js';

const AF_INET = 2;

export interface AttachSpec {
  netns: string;          // path of the container's namespace
  ifname: string;         // CNI_IFNAME
  hostIfname: string;     // host end of the veth
  address: string;        // container address (IPv4)
  gateway: string;        // host gateway (first address of the block)
  mtu: number;
}

export interface Attached {
  hostIfname: string;
  hostMac: string;
  mac: string;            // container interface MAC
}

/** The host end's name: stable for (container id, ifname), at most 15 characters. */
export function hostIfnameFor(containerId: string, ifname: string): string {
  return 'cr' + createHash('sha256').update(`${containerId}/${ifname}`).digest('hex').slice(0, 11);
}

function ip4(a: string): Buffer {
  return Buffer.from(a.split('.').map(Number));
}

function bytes(sd: Parameters<AttrStream['emit']>[0]): Buffer {
  const s = new AttrStream();
  s.emit(sd);
  return Buffer.concat(s.bufs);
}

function mac(b: Buffer | undefined): string {
  return b ? [...b].map((x) => x.toString(16).padStart(2, '0')).join(':') : '';
}

async function linkByName(s: RtNetlinkSocket, name: string): Promise<rt.LinkMessage | undefined> {
  try {
    const r = await s.getLink({}, { ifname: name });
    return r[0];
  } catch (err) {
    if (errnoOf(err) === 'ENODEV') return undefined;
    throw err;
  }
}

/** The package reports kernel errors as "Request rejected: ENODEV". */
export function errnoOf(err: unknown): string {
  const m = /Request rejected: (\w+)/.exec((err as Error)?.message ?? '');
  return m ? m[1]! : ((err as NodeJS.ErrnoException)?.code ?? '');
}

function isExists(err: unknown): boolean {
  return errnoOf(err) === 'EEXIST';
}

/**
 * The host end of a container's veth: up, with the /32 route to the container's address. Source =
 * the gateway: what the host sends a container (DNS replies from a wildcard socket, health
 * checks) comes from an address it has a route to.
 */
async function hostEndUp(host: RtNetlinkSocket, spec: { hostIfname: string; address: string; gateway: string }): Promise<rt.LinkMessage> {
  const h = (await linkByName(host, spec.hostIfname))!;
  await host.setLink({ index: h.data.index, change: { up: true }, flags: { up: true } });
  await host.newRoute(
    { family: AF_INET, dstLen: 32, table: 254, protocol: 'BOOT', scope: 'LINK', type: 'UNICAST' },
    { dst: ip4(spec.address), oif: h.data.index, prefsrc: ip4(spec.gateway) },
    { flags: FlagsNew.CREATE | FlagsNew.REPLACE },
  );
  return h;
}

/** Creates and configures both ends. On any failure, removes what it made and rethrows. */
export async function attach(spec: AttachSpec): Promise<Attached> {
  const host = rtnetlinkHere();
  let inner: RtNetlinkSocket | undefined;
  const nsFd = openNetns(spec.netns);
  try {
    inner = rtnetlinkIn(spec.netns);
    if (await linkByName(inner, spec.ifname)) throw new Error(`interface ${spec.ifname} already exists in ${spec.netns}: choose another CNI_IFNAME or DEL the old attachment first`);
    // A leftover host end from an ADD that died half-way: remove it, it is ours by name.
    const stale = await linkByName(host, spec.hostIfname);
    if (stale) await host.delLink({ index: stale.data.index });
    const peer = Buffer.concat([
      rt.formatLink({}),
      bytes(ifla.formatLinkAttrs({ ifname: spec.ifname, netNsFd: nsFd, mtu: spec.mtu })),
    ]);
    const linkinfo = bytes(ifla.formatInfo({ kind: 'veth', data: bytes(ifla.formatVethInfo({ peer })) }));
    await host.newLink({}, { ifname: spec.hostIfname, mtu: spec.mtu, linkinfo }, { flags: FlagsNew.CREATE | FlagsNew.EXCL });
    try {
      const h = await hostEndUp(host, spec);
      const c = await linkByName(inner, spec.ifname);
      if (!c) throw new Error(`veth end ${spec.ifname} did not appear in ${spec.netns}`);
      await inner.newAddress({ family: AF_INET, prefixlen: 32, index: c.data.index }, { local: ip4(spec.address), address: ip4(spec.address) }, { flags: FlagsNew.CREATE | FlagsNew.EXCL });
      await inner.setLink({ index: c.data.index, change: { up: true }, flags: { up: true } });
      await inner.newRoute(
        { family: AF_INET, dstLen: 32, table: 254, protocol: 'BOOT', scope: 'LINK', type: 'UNICAST' },
        { dst: ip4(spec.gateway), oif: c.data.index },
        { flags: FlagsNew.CREATE | FlagsNew.REPLACE },
      );
      await inner.newRoute(
        { family: AF_INET, dstLen: 0, table: 254, protocol: 'BOOT', scope: 'UNIVERSE', type: 'UNICAST' },
        { gateway: ip4(spec.gateway), oif: c.data.index },
        { flags: FlagsNew.CREATE | FlagsNew.REPLACE },
      );
      return { hostIfname: spec.hostIfname, hostMac: mac(h.attrs.address), mac: mac(c.attrs.address) };
    } catch (err) {
      // Deleting one end of a veth deletes both.
      const h = await linkByName(host, spec.hostIfname).catch(() => undefined);
      if (h) await host.delLink({ index: h.data.index }).catch(() => undefined);
      throw err;
    }
  } finally {
    closeSync(nsFd);
    inner?.socket.close();
    host.socket.close();
  }
}

/**
 * Removes the pair (idempotent: a missing namespace or interface is success). `alongside` starts
 * once nothing can pass through the pair any more (host end down: the container end loses its
 * carrier) and runs while the kernel deletes it, which takes about 20 ms.
 */
export async function detach(hostIfname: string, alongside?: () => Promise<void>): Promise<void> {
  const host = rtnetlinkHere();
  try {
    const h = await linkByName(host, hostIfname);
    if (!h) {
      await alongside?.();
      return;
    }
    const gone = (err: unknown) => {
      if (errnoOf(err) !== 'ENODEV') throw err;
    };
    if (alongside) await host.setLink({ index: h.data.index, change: { up: true }, flags: {} }).catch(gone);
    const [del, also] = await Promise.allSettled([host.delLink({ index: h.data.index }).catch(gone), alongside?.()]);
    if (del.status === 'rejected') throw del.reason;
    if (also.status === 'rejected') throw also.reason;
  } finally {
    host.socket.close();
  }
}

/** What CHECK verifies: the interface, its MTU, its address, the default route, and the host end. Returns problems. */
export async function inspect(spec: AttachSpec): Promise<string[]> {
  const problems: string[] = [];
  const host = rtnetlinkHere();
  let inner: RtNetlinkSocket | undefined;
  try {
    const h = await linkByName(host, spec.hostIfname);
    if (!h) problems.push(`host interface ${spec.hostIfname} is missing`);
    try {
      inner = rtnetlinkIn(spec.netns);
    } catch (err) {
      if (err instanceof NetnsGone) return [...problems, err.message];
      throw err;
    }
    const c = await linkByName(inner, spec.ifname);
    if (!c) return [...problems, `interface ${spec.ifname} is missing in ${spec.netns}`];
    if (!c.data.flags?.up) problems.push(`interface ${spec.ifname} is down`);
    if (c.attrs.mtu !== spec.mtu) problems.push(`interface ${spec.ifname} has MTU ${c.attrs.mtu}, the config says ${spec.mtu}`);
    const addrs = await inner.getAddresses({ family: AF_INET });
    const want = ip4(spec.address);
    if (!addrs.some((a) => a.data.index === c.data.index && a.attrs.local?.equals(want))) problems.push(`interface ${spec.ifname} lacks address ${spec.address}`);
    const routes = await inner.getRoutes({ family: AF_INET });
    const gw = ip4(spec.gateway);
    if (!routes.some((r) => r.data.dstLen === 0 && r.attrs.gateway?.equals(gw) && r.attrs.oif === c.data.index)) problems.push(`no default route via ${spec.gateway} on ${spec.ifname}`);
    return problems;
  } finally {
    inner?.socket.close();
    host.socket.close();
  }
}

/** The host gateway address lives on a portless bridge, so it exists with or without containers. */
export async function ensureGateway(name: string, gateway: string): Promise<void> {
  const host = rtnetlinkHere();
  try {
    let l = await linkByName(host, name);
    if (!l) {
      await host.newLink({}, { ifname: name, linkinfo: bytes(ifla.formatInfo({ kind: 'bridge' })) }, { flags: FlagsNew.CREATE | FlagsNew.EXCL }).catch((err) => {
        if (!isExists(err)) throw err;
      });
      l = (await linkByName(host, name))!;
    }
    await host.setLink({ index: l.data.index, change: { up: true }, flags: { up: true } });
    await host.newAddress({ family: AF_INET, prefixlen: 32, index: l.data.index }, { local: ip4(gateway), address: ip4(gateway) }, { flags: FlagsNew.CREATE | FlagsNew.EXCL }).catch((err) => {
      if (!isExists(err)) throw err;
    });
  } finally {
    host.socket.close();
  }
}

/**
 * A veth pair with both ends here, for a runtime that moves the container end itself (Docker's
 * Join): the host end up with the /32 route to `address` (source: the gateway), the other end `peerIfname`, down, with
 * the MTU. The runtime renames it, sets the address and routes inside. Removes what it made on failure.
 */
export async function vethPair(spec: { hostIfname: string; peerIfname: string; address: string; gateway: string; mtu: number }): Promise<Attached> {
  const host = rtnetlinkHere();
  try {
    for (const name of [spec.hostIfname, spec.peerIfname]) {
      const stale = await linkByName(host, name);
      if (stale) await host.delLink({ index: stale.data.index });
    }
    const peer = Buffer.concat([rt.formatLink({}), bytes(ifla.formatLinkAttrs({ ifname: spec.peerIfname, mtu: spec.mtu }))]);
    const linkinfo = bytes(ifla.formatInfo({ kind: 'veth', data: bytes(ifla.formatVethInfo({ peer })) }));
    await host.newLink({}, { ifname: spec.hostIfname, mtu: spec.mtu, linkinfo }, { flags: FlagsNew.CREATE | FlagsNew.EXCL });
    try {
      const h = await hostEndUp(host, spec);
      const c = (await linkByName(host, spec.peerIfname))!;
      return { hostIfname: spec.hostIfname, hostMac: mac(h.attrs.address), mac: mac(c.attrs.address) };
    } catch (err) {
      const h = await linkByName(host, spec.hostIfname).catch(() => undefined);
      if (h) await host.delLink({ index: h.data.index }).catch(() => undefined);
      throw err;
    }
  } finally {
    host.socket.close();
  }
}
