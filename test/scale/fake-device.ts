// The host-network side of one simulated host, in memory: a WireGuard device that keeps its peers
// the way wireguard-go does (a set applies allowed-ips as given, a remove drops the peer) and
// counts the device calls the mesh makes, and a MeshHostNet that hands it out. Nothing here
// touches the kernel or sends a packet.
import type { MeshHostNet } from '../../agent/mesh.js';
import type { DeviceConfig, PeerChange, WireGuardPeer, WireGuardDevice } from '../../agent/overlay/overlay.js';

/** WireGuard re-handshakes every 2 minutes while traffic flows. */
const REHANDSHAKE_MS = 120_000;

interface FakePeer { publicKey: string; endpoint: string; allowedIps: string[]; keepaliveS: number; sinceMs: number }

export class FakeWireGuardDevice implements WireGuardDevice {
  readonly kind = 'wireguard-go' as const;
  config: DeviceConfig | undefined;
  private readonly byKey = new Map<string, FakePeer>();
  /** One entry per setPeers call: how many changes it carried. */
  readonly peersPerCall: number[] = [];
  onExit?: (why: string) => void;
  closed = false;

  get setPeersCalls(): number {
    return this.peersPerCall.length;
  }

  /** Peers that hold an address (the next key of a rotating peer holds none). */
  get peerCount(): number {
    let n = 0;
    for (const p of this.byKey.values()) if (p.allowedIps.length) n++;
    return n;
  }

  async up(cfg: DeviceConfig): Promise<void> {
    this.config = cfg;
  }

  async setPrivateKey(key: Buffer): Promise<void> {
    if (this.config) this.config = { ...this.config, privateKey: key };
  }

  async setPeers(changes: PeerChange[]): Promise<void> {
    // The mesh calls with an empty list when nothing differs; wireguard-go is not asked then.
    if (changes.length === 0) return;
    this.peersPerCall.push(changes.length);
    const now = Date.now();
    for (const c of changes) {
      if ('remove' in c) {
        this.byKey.delete(c.publicKey);
        continue;
      }
      const old = this.byKey.get(c.publicKey);
      this.byKey.set(c.publicKey, { publicKey: c.publicKey, endpoint: c.endpoint, allowedIps: [...c.allowedIps], keepaliveS: c.keepaliveS ?? 0, sinceMs: old?.sinceMs ?? now });
    }
  }

  /** Every peer with an endpoint has shaken hands when it was set, and again every 2 minutes since. */
  async peers(): Promise<WireGuardPeer[]> {
    const now = Date.now();
    const out: WireGuardPeer[] = [];
    for (const p of this.byKey.values()) {
      const up = p.endpoint !== '';
      const age = now - p.sinceMs;
      out.push({
        publicKey: p.publicKey, endpoint: p.endpoint, allowedIps: p.allowedIps, keepaliveS: p.keepaliveS,
        lastHandshakeMs: up ? p.sinceMs + Math.floor(age / REHANDSHAKE_MS) * REHANDSHAKE_MS : 0,
        rxBytes: up ? Math.floor(age / 10) : 0,
        txBytes: up ? Math.floor(age / 12) : 0,
      });
    }
    return out;
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  async destroy(): Promise<void> {
    this.byKey.clear();
    this.closed = true;
  }
}

/** A MeshHostNet for one simulated host: its fake device, the underlay it is given, links always up. */
export class MemoryHostNet implements MeshHostNet {
  readonly fake = new FakeWireGuardDevice();
  linkUps = 0;

  async device(): Promise<WireGuardDevice> {
    return this.fake;
  }

  async underlay(given: string): Promise<{ address: string; mtu: number; v6: boolean }> {
    return { address: given, mtu: 1500, v6: given.includes(':') };
  }

  async linkUp(): Promise<void> {
    this.linkUps++;
  }
}
