// The WireGuard mesh: this host leases its block, keeps a key pair, publishes its Host record
// (block, underlay endpoint, public key, applied revision, last handshake per peer) on the
// agent's lease, and keeps one WireGuard peer per other host with allowed-ips = that host's
// block. Peers change incrementally as Host records change; the interface is never torn down.
import { IPv4CidrRange } from 'ip-num';
import type { Logger } from '../api/log.js';
import type { DaemonOptions } from '../api/options.js';
import type { Host, PeerStatus, RotateKeysReply, WatchEvent } from '../api/types.js';
import { VERSION } from '../api/version.js';
import { ensureGateway } from './attach/veth.js';
import { leaseBlock } from './blocks.js';
import { GATEWAY_LINK } from './cni.js';
import { type Catalog, keys } from './catalog.js';
import { wireGuardFor } from './overlay/index.js';
import { KeyStore, type KeyPair } from './overlay/keys.js';
import { defaultRouteSource, routeOverlay, underlayMtu } from './overlay/link.js';
import { overlayMtu, type WireGuardDevice } from './overlay/overlay.js';
import type { Registry } from './registry/registry.js';

const HEARTBEAT_MS = 5000;
/** First wait before bringing back a device whose process died; doubles while it keeps dying. */
const RESTORE_MIN_MS = 1000;
const RESTORE_MAX_MS = 30_000;
/** How often a peer in the middle of a key rotation is checked for a handshake with its next key. */
const ROTATION_POLL_MS = 100;
const KEEPALIVE_S = 25;
/** A peer without a handshake for this long is reported by `corral status`. */
export const HANDSHAKE_STALE_MS = 180_000;

interface AppliedPeer { publicKey: string; endpoint: string; block: string; next: string }

export class Mesh {
  private device: WireGuardDevice | undefined;
  private readonly keys: KeyStore;
  private key!: KeyPair;
  private next: KeyPair | undefined;
  block = '';
  private gateway = '';
  private underlay = '';
  mtu = 0;
  /** Peers as configured on the device, by host name. */
  private readonly applied = new Map<string, AppliedPeer>();
  appliedRevision = 0;
  /** Device changes, one at a time. Registry writes never wait in it (see publish). */
  private queue: Promise<void> = Promise.resolve();
  /** The record write in flight, and the one queued behind it (publish coalesces). */
  private writing: Promise<number> | undefined;
  private writeAgain: Promise<number> | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private rotation: NodeJS.Timeout | undefined;
  private lastPeers: PeerStatus[] = [];
  private stopped = false;
  private restoreDelayMs = RESTORE_MIN_MS;
  private restoreTimer: NodeJS.Timeout | undefined;
  private rotationPoll: NodeJS.Timeout | undefined;

  constructor(
    private readonly registry: Registry,
    private readonly catalog: Catalog,
    private readonly opts: DaemonOptions,
    private readonly log: Logger,
  ) {
    this.keys = new KeyStore(opts.stateDir);
  }

  get node(): string {
    return this.opts.nodeName;
  }

  get kind(): string {
    return this.device?.kind ?? '';
  }

  get publicKey(): string {
    return this.key?.publicKey ?? '';
  }

  async start(): Promise<void> {
    const m = this.opts.mesh;
    this.block = await leaseBlock(this.registry, this.opts.clusterCidr, this.node);
    this.gateway = IPv4CidrRange.fromCidr(this.block).getFirst().nextIPNumber().toString();
    this.underlay = m.underlayAddress || (await defaultRouteSource());
    const u = await underlayMtu(this.underlay);
    this.mtu = m.mtu || overlayMtu(u.mtu, u.v6);
    this.key = this.keys.current();
    this.next = this.keys.next();
    this.device = await wireGuardFor(m.overlay === 'kernel' || m.overlay === 'wireguard-go' ? m.overlay : 'auto', m.wgInterface, this.opts.runDir);
    this.device.onExit = (why) => this.deviceGone(why);
    await this.deviceUp();
    // Peers left on a kept interface by the previous agent are adopted by public key.
    const existing = await this.device.peers();
    for (const h of this.catalog.hosts.values()) {
      if (h.name !== this.node && existing.some((p) => p.publicKey === h.publicKey)) {
        this.applied.set(h.name, { publicKey: h.publicKey, endpoint: '', block: '', next: '' });
      }
    }
    for (const p of existing) {
      if (![...this.catalog.hosts.values()].some((h) => h.publicKey === p.publicKey || h.nextPublicKey === p.publicKey)) await this.device.removePeer(p.publicKey);
    }
    await this.sync();
    await this.publish();
    this.heartbeat = setInterval(() => void this.beat(), HEARTBEAT_MS);
    this.heartbeat.unref();
    if (m.keyRotationMs > 0) {
      this.rotation = setInterval(() => void this.rotateKeys().catch((err: Error) => this.log.error({ err: err.message }, 'scheduled key rotation failed')), m.keyRotationMs);
      this.rotation.unref();
    }
    this.log.info({ block: this.block, underlay: `${this.underlay}:${m.wgPort}`, overlay: this.device.kind, interface: m.wgInterface, mtu: this.mtu, publicKey: this.key.publicKey }, 'overlay up');
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.restoreTimer);
    clearInterval(this.rotationPoll);
    clearInterval(this.heartbeat);
    clearInterval(this.rotation);
    await this.queue.catch(() => {});
    await Promise.allSettled([this.writing, this.writeAgain]);
    await this.device?.close();
  }

  /** Every watch event: peers follow Host records. */
  onEvent(ev: WatchEvent): void {
    if (ev.snapshot || ev.hosts.length || ev.deletedHosts.length) void this.enqueue(() => this.sync());
    else this.appliedRevision = Math.max(this.appliedRevision, ev.revision);
  }

  peerStatus(): PeerStatus[] {
    return this.lastPeers;
  }

  /** `corral rotate-keys`: publish the next key, let every host apply it, then switch to it. */
  async rotateKeys(): Promise<RotateKeysReply> {
    const previous = this.key.publicKey;
    this.next = this.keys.startRotation();
    const published = await this.publish();
    // Peers accept both keys once they have applied the revision that carries the next one.
    const deadline = Date.now() + 10_000;
    let unconfirmed = this.unconfirmed(published);
    while (unconfirmed.length && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      unconfirmed = this.unconfirmed(published);
    }
    if (unconfirmed.length) this.log.warn({ hosts: unconfirmed }, 'switching keys before these hosts confirmed the next key: they reconnect once they see it');
    await this.enqueue(async () => {
      this.key = this.keys.finishRotation();
      this.next = undefined;
      await this.device!.setPrivateKey(this.key.privateKey);
    });
    const revision = await this.publish();
    this.log.info({ previous, publicKey: this.key.publicKey, revision }, 'WireGuard key rotated');
    return { previousPublicKey: previous, publicKey: this.key.publicKey, revision, unconfirmed };
  }

  /** Interface up with this host's key and port, the gateway, and the cluster CIDR routed to it. */
  private async deviceUp(): Promise<void> {
    const m = this.opts.mesh;
    await this.device!.up({ ifname: m.wgInterface, privateKey: this.key.privateKey, listenPort: m.wgPort });
    // The gateway's one owner is the attach code (its bridge corral-gw), which CNI and Docker attachments share.
    await ensureGateway(GATEWAY_LINK, this.gateway);
    await routeOverlay({ ifname: m.wgInterface, mtu: this.mtu, gateway: this.gateway, clusterCidr: this.opts.clusterCidr });
  }

  /** The heartbeat: read the peers' state and publish this host's record; a device that does not answer is brought back instead. */
  private async beat(): Promise<void> {
    if (this.stopped || this.restoreTimer) return;
    try {
      await this.refreshPeers();
    } catch (err) {
      // wireguard-go died while no agent was its parent (adopted from a previous agent), or hangs.
      this.deviceGone(`does not answer (${(err as Error).message})`);
      return;
    }
    await this.publish({ refreshed: true }).catch(() => {});
  }

  /** The device's process is gone: bring it back after a short wait (longer each time it keeps dying). */
  private deviceGone(why: string): void {
    if (this.stopped || this.restoreTimer) return;
    const delay = this.restoreDelayMs;
    this.log.warn({ interface: this.opts.mesh.wgInterface, overlay: this.kind, why, restartInMs: delay }, 'WireGuard device is gone; traffic to other hosts stops until it is back');
    this.restoreTimer = setTimeout(() => {
      void this.enqueue(async () => {
        this.restoreTimer = undefined;
        this.restoreDelayMs = Math.min(this.restoreDelayMs * 2, RESTORE_MAX_MS);
        await this.deviceUp();
        // A new interface has no peers: configure every one again.
        this.applied.clear();
        await this.sync();
        void this.publish().catch(() => {});
        this.log.info({ interface: this.opts.mesh.wgInterface, peers: this.applied.size }, 'WireGuard device restored with its peers');
        // Stable again for a while: the next failure starts from the short wait.
        setTimeout(() => (this.restoreDelayMs = RESTORE_MIN_MS), RESTORE_MAX_MS * 2).unref();
      }).catch(() => this.deviceGone('restart failed'));
    }, delay);
    this.restoreTimer.unref();
  }

  private unconfirmed(revision: number): string[] {
    const out: string[] = [];
    for (const h of this.catalog.hosts.values()) if (h.name !== this.node && h.appliedRevision < revision) out.push(h.name);
    return out;
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(() => (this.stopped ? (undefined as T) : fn()));
    this.queue = run.then(() => undefined, (err: Error) => {
      this.log.error({ err: err.message }, 'overlay update failed; retried with the next change');
    });
    return run;
  }

  /** Brings the device's peers in line with the Host records, changing only what differs. */
  private async sync(): Promise<void> {
    const dev = this.device!;
    const revision = this.catalog.revision;
    const want = new Map<string, AppliedPeer>();
    for (const h of this.catalog.hosts.values()) {
      if (h.name === this.node || !h.publicKey || !h.block || !h.underlay) continue;
      const next = h.nextPublicKey ?? '';
      // Already moved to its next key on the handshake (promoteRotated): the record will say so shortly.
      const promoted = next !== '' && this.applied.get(h.name)?.publicKey === next;
      want.set(h.name, { publicKey: promoted ? next : h.publicKey, endpoint: endpointOf(h), block: h.block, next: promoted ? '' : next });
    }
    // New and changed peers first, so a block moves between keys without a gap.
    let nextKeys = false;
    const before = new Map(this.applied);
    for (const [name, w] of want) {
      const old = this.applied.get(name);
      if (w.next !== (old?.next ?? '')) nextKeys = true;
      if (old && old.publicKey === w.publicKey && old.endpoint === w.endpoint && old.block === w.block && old.next === w.next) continue;
      await dev.setPeer({ publicKey: w.publicKey, endpoint: w.endpoint, allowedIps: [w.block], keepaliveS: KEEPALIVE_S });
      // The next key of a rotating peer: known, reachable, no addresses until it becomes current.
      if (w.next && w.next !== old?.next) await dev.setPeer({ publicKey: w.next, endpoint: w.endpoint, allowedIps: [] });
      this.applied.set(name, w);
      if (!old) this.log.info({ host: name, block: w.block, endpoint: w.endpoint }, 'peer added');
    }
    for (const [name, old] of before) {
      const w = want.get(name);
      // A rotated key: the new one already holds the block (set above), the old one goes now.
      if (!w || w.publicKey !== old.publicKey) await dev.removePeer(old.publicKey);
      if (old.next && (!w || (w.next !== old.next && w.publicKey !== old.next))) await dev.removePeer(old.next);
      if (!w) {
        this.applied.delete(name);
        this.log.info({ host: name }, 'peer removed');
      }
    }
    this.appliedRevision = Math.max(this.appliedRevision, revision);
    this.watchRotations();
    // A rotating host waits for every peer to confirm its next key: say so now, not at the next
    // heartbeat. Not awaited: device updates (the 100 ms rotation poll among them) must not wait for etcd.
    if (nextKeys) void this.publish().catch(() => {});
  }

  /** While a peer rotates, look for the first handshake with its next key every ROTATION_POLL_MS. */
  private rotating(): boolean {
    for (const a of this.applied.values()) if (a.next !== '') return true;
    return false;
  }

  private watchRotations(): void {
    if (!this.rotating() || this.stopped) {
      clearInterval(this.rotationPoll);
      this.rotationPoll = undefined;
    } else if (this.rotationPoll === undefined) {
      this.rotationPoll = setInterval(() => void this.enqueue(() => this.promoteRotated()), ROTATION_POLL_MS);
      this.rotationPoll.unref();
    }
  }

  /**
   * A handshake with a peer's next key means that peer has switched to it (nobody else holds the
   * private key): move its block to the new key at once instead of when its record arrives
   * through the registry, which on a loaded machine takes long enough to drop packets.
   */
  private async promoteRotated(): Promise<void> {
    if (!this.rotating()) return this.watchRotations();
    const states = await this.device!.peers();
    for (const [name, a] of this.applied) {
      if (a.next === '') continue;
      if (!states.some((p) => p.publicKey === a.next && p.lastHandshakeMs > 0)) continue;
      await this.device!.setPeer({ publicKey: a.next, endpoint: a.endpoint, allowedIps: [a.block], keepaliveS: KEEPALIVE_S });
      await this.device!.removePeer(a.publicKey);
      this.applied.set(name, { ...a, publicKey: a.next, next: '' });
      this.log.info({ host: name, publicKey: a.next }, 'peer switched to its next key (handshake seen)');
    }
    this.watchRotations();
  }

  /**
   * Reads the peers' state and writes this host's record; resolves with the revision of a write
   * that started after the call. Outside the device queue: an etcd transaction under load can take
   * a second, and a block move waiting behind it drops packets. Calls during a write share one
   * write after it. A failed write is logged and rejects.
   */
  private publish(o: { refreshed?: boolean } = {}): Promise<number> {
    if (this.writing) {
      this.writeAgain ??= this.writing.catch(() => 0).then(() => {
        this.writeAgain = undefined;
        return this.publish();
      });
      return this.writeAgain;
    }
    const write = (async () => {
      if (!o.refreshed) await this.refreshPeers();
      return this.writeHost();
    })();
    this.writing = write.finally(() => (this.writing = undefined));
    this.writing.catch((err: Error) => this.log.error({ err: err.message }, 'publishing this host\'s record failed; retried at the next heartbeat'));
    return this.writing;
  }

  /** Writes this host's record (ephemeral: it leaves with the agent's lease) with the peer states refreshPeers() last read. */
  private async writeHost(): Promise<number> {
    const m = this.opts.mesh;
    const host: Host = {
      name: this.node,
      block: this.block,
      underlay: this.underlay,
      publicKey: this.key.publicKey,
      appliedRevision: this.appliedRevision,
      version: VERSION,
      heartbeatMs: Date.now(),
      wgPort: m.wgPort,
      nextPublicKey: this.next?.publicKey ?? '',
      peers: this.lastPeers,
      mtu: this.mtu,
      overlay: this.device?.kind ?? '',
    };
    return (await this.registry.txn([{ put: keys.host(this.node), value: JSON.stringify(host), ephemeral: true }])) ?? 0;
  }

  private async refreshPeers(): Promise<void> {
    const byKey = new Map<string, string>();
    for (const [name, a] of this.applied) byKey.set(a.publicKey, name);
    const states = await this.device!.peers();
    this.lastPeers = states
      .filter((p) => byKey.has(p.publicKey))
      .map((p) => ({ host: byKey.get(p.publicKey)!, endpoint: p.endpoint, lastHandshakeMs: p.lastHandshakeMs, rxBytes: p.rxBytes, txBytes: p.txBytes, publicKey: p.publicKey }))
      .sort((a, b) => a.host.localeCompare(b.host));
  }
}

function endpointOf(h: Host): string {
  const port = h.wgPort || 51820;
  return h.underlay.includes(':') ? `[${h.underlay}]:${port}` : `${h.underlay}:${port}`;
}
