// The overlay seam (flannel-style): one small interface, two implementations chosen at runtime —
// kernel WireGuard over generic netlink (kernel.ts) and wireguard-go over its UAPI socket
// (wireguard-go.ts). Callers set peers incrementally; nothing here tears the interface down.

export interface DeviceConfig {
  ifname: string;
  privateKey: Buffer;     // 32 bytes
  listenPort: number;
}

export interface PeerConfig {
  publicKey: string;      // base64, as published in the Host record
  endpoint: string;       // "ADDR:PORT" ("[v6]:PORT"); "" = none (the peer reaches us first)
  allowedIps: string[];   // CIDRs; replaces what the peer had
  keepaliveS?: number;
}

/** One change in a batch: set a peer (PeerConfig) or remove one. */
export type PeerChange = PeerConfig | { publicKey: string; remove: true };

export interface WireGuardPeer {
  publicKey: string;
  endpoint: string;
  allowedIps: string[];
  keepaliveS: number;      // 0 = off
  lastHandshakeMs: number; // 0 = never
  rxBytes: number;
  txBytes: number;
}

export interface WireGuardDevice {
  readonly kind: 'kernel' | 'wireguard-go';
  /** Creates the interface when missing (an existing one is kept, with its peers) and sets key and port. */
  up(cfg: DeviceConfig): Promise<void>;
  setPrivateKey(key: Buffer): Promise<void>;
  /**
   * Applies the changes in order, in as few device calls as the implementation allows (for
   * wireguard-go a get and at most two sets, whatever the count: a host joining a fleet of 1,000
   * sets 1,000 peers).
   */
  setPeers(changes: PeerChange[]): Promise<void>;
  peers(): Promise<WireGuardPeer[]>;
  /** Releases sockets; the interface and its peers stay for the next agent. */
  close(): Promise<void>;
  /** Deletes the interface (tests, `--overlay off` after use). */
  destroy(): Promise<void>;
  /** Set by the mesh: called when the device's process (wireguard-go) ends under the agent. */
  onExit?: (why: string) => void;
}

export class OverlayError extends Error {}

/** WireGuard's per-packet overhead on the underlay: 60 bytes over IPv4, 80 over IPv6. */
export function overlayMtu(underlayMtu: number, underlayIsV6: boolean): number {
  return underlayMtu - (underlayIsV6 ? 80 : 60);
}
