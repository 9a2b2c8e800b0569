// Kernel WireGuard: the interface is made with rtnetlink (kind "wireguard") and configured over
// the `wg` generic-netlink family of the `netlink` package. Chosen when the module is present.
import { AttrStream, createRtNetlink, createWireGuard, FlagsNew, ifla, type wg } from 'netlink';
import { linkByName, v6bytes } from './link.js';
import { OverlayError, type DeviceConfig, type PeerChange, type WireGuardPeer, type WireGuardDevice } from './overlay.js';

const AF_INET = 2;
const AF_INET6 = 10;
/** Peers per netlink set message. */
const KERNEL_PEERS_PER_MESSAGE = 32;

function sockaddr(endpoint: string): Buffer {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(endpoint);
  if (!m) throw new OverlayError(`peer endpoint "${endpoint}" is not ADDR:PORT`);
  const port = Number(m[3]);
  if (m[2]) {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(port, 2);
    Buffer.from(m[2].split('.').map(Number)).copy(b, 4);
    return b;
  }
  const b = Buffer.alloc(28);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(port, 2);
  v6bytes(m[1]!).copy(b, 8);
  return b;
}

function allowedIp(cidr: string): wg.AllowedIp {
  const [addr, len] = cidr.split('/') as [string, string];
  const v6 = addr.includes(':');
  return { family: v6 ? AF_INET6 : AF_INET, ipaddr: v6 ? v6bytes(addr) : Buffer.from(addr.split('.').map(Number)), cidrMask: Number(len) };
}

function formatEndpoint(b: Buffer | undefined): string {
  if (!b || b.length < 8) return '';
  const fam = b.readUInt16LE(0);
  const port = b.readUInt16BE(2);
  if (fam === AF_INET) return `${[...b.subarray(4, 8)].join('.')}:${port}`;
  const groups: string[] = [];
  for (let i = 8; i < 24; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  return `[${groups.join(':')}]:${port}`;
}

function formatAllowed(a: wg.AllowedIp): string {
  const ip = a.ipaddr ?? Buffer.alloc(4);
  if (a.family === AF_INET) return `${[...ip].join('.')}/${a.cidrMask}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(ip.readUInt16BE(i).toString(16));
  return `${groups.join(':')}/${a.cidrMask}`;
}

export class KernelWireGuard implements WireGuardDevice {
  readonly kind = 'kernel';
  private ifname = '';
  private sock: Awaited<ReturnType<typeof createWireGuard>> | undefined;

  /** Whether this kernel can make WireGuard interfaces (tries, and removes the probe). */
  static async available(probeName: string): Promise<boolean> {
    const s = createRtNetlink();
    try {
      if (await linkByName(s, probeName)) return (await createWireGuard().then((w) => w.getDevice(probeName).then(() => true, () => false).finally(() => w.socket.socket.close())).catch(() => false));
      const linkinfo = bytes(ifla.formatInfo({ kind: 'wireguard' }));
      try {
        await s.newLink({}, { ifname: probeName, linkinfo }, { flags: FlagsNew.CREATE | FlagsNew.EXCL });
      } catch {
        return false;
      }
      const l = await linkByName(s, probeName);
      if (l) await s.delLink({ index: l.data.index });
      return true;
    } finally {
      s.socket.close();
    }
  }

  async up(cfg: DeviceConfig): Promise<void> {
    this.ifname = cfg.ifname;
    const s = createRtNetlink();
    try {
      if (!(await linkByName(s, cfg.ifname))) {
        await s.newLink({}, { ifname: cfg.ifname, linkinfo: bytes(ifla.formatInfo({ kind: 'wireguard' })) }, { flags: FlagsNew.CREATE | FlagsNew.EXCL });
      }
    } catch (err) {
      throw new OverlayError(`cannot create WireGuard interface ${cfg.ifname} in the kernel: ${(err as Error).message}; use --overlay wireguard-go`);
    } finally {
      s.socket.close();
    }
    this.sock = await createWireGuard();
    await this.set({ privateKey: cfg.privateKey, listenPort: cfg.listenPort });
  }

  async setPrivateKey(key: Buffer): Promise<void> {
    await this.set({ privateKey: key });
  }

  async setPeers(changes: PeerChange[]): Promise<void> {
    // Chunks keep each netlink message well under the socket's size limit (wg(8) splits too).
    for (let i = 0; i < changes.length; i += KERNEL_PEERS_PER_MESSAGE) {
      await this.set({
        peers: changes.slice(i, i + KERNEL_PEERS_PER_MESSAGE).map((p) => ('remove' in p
          ? { publicKey: Buffer.from(p.publicKey, 'base64'), flags: { removeMe: true } }
          : {
            publicKey: Buffer.from(p.publicKey, 'base64'),
            ...(p.endpoint ? { endpoint: sockaddr(p.endpoint) } : {}),
            persistentKeepaliveInterval: p.keepaliveS ?? 0,
            flags: { replaceAllowedIps: true },
            allowedIps: p.allowedIps.map(allowedIp),
          })),
      });
    }
  }

  async peers(): Promise<WireGuardPeer[]> {
    const devs = await this.wg().getDevice(this.ifname);
    const out: WireGuardPeer[] = [];
    for (const d of devs) {
      for (const p of d.peers ?? []) {
        const ts = p.lastHandshakeTime;
        out.push({
          publicKey: p.publicKey?.toString('base64') ?? '',
          endpoint: formatEndpoint(p.endpoint),
          allowedIps: (p.allowedIps ?? []).map(formatAllowed),
          keepaliveS: p.persistentKeepaliveInterval ?? 0,
          lastHandshakeMs: ts && ts.length >= 16 ? Number(ts.readBigInt64LE(0)) * 1000 + Math.floor(Number(ts.readBigInt64LE(8)) / 1e6) : 0,
          rxBytes: Number(p.rxBytes ?? 0n),
          txBytes: Number(p.txBytes ?? 0n),
        });
      }
    }
    return out;
  }

  async close(): Promise<void> {
    this.sock?.socket.socket.close();
    this.sock = undefined;
  }

  async destroy(): Promise<void> {
    await this.close();
    const s = createRtNetlink();
    try {
      const l = await linkByName(s, this.ifname);
      if (l) await s.delLink({ index: l.data.index });
    } finally {
      s.socket.close();
    }
  }

  private wg() {
    if (!this.sock) throw new OverlayError(`WireGuard interface ${this.ifname} is not up`);
    return this.sock;
  }

  private async set(d: wg.Device): Promise<void> {
    await this.wg().setDevice(this.ifname, d);
  }
}

function bytes(sd: Parameters<AttrStream['emit']>[0]): Buffer {
  const s = new AttrStream();
  s.emit(sd);
  return Buffer.concat(s.bufs);
}
