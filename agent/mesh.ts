// The WireGuard mesh: this host leases its block, keeps a key pair, publishes its Host record
// (block, underlay endpoint, public keys, port, MTU) on the agent's lease, and keeps one WireGuard
// peer per other host with allowed-ips = that host's block. Peers change incrementally as Host
// records change; the interface is never torn down.
//
// Cost per host does not grow with the fleet: the Host record is written only when a field peers
// act on changes (liveness is the registry lease, whose keep-alives are not revisions), and this
// host's view of its peers goes into a fixed-size HostStatus outside the watched prefix, at most
// once a minute (at once only to confirm a peer's key rotation).
import { IPv4CidrRange } from 'ip-num';
import type { Logger } from '../api/log.js';
import type { DaemonOptions } from '../api/options.js';
import type { Host, HostStatus, PeerStatus, RotateKeysReply, WatchEvent } from '../api/types.js';
import { VERSION } from '../api/version.js';
import { ensureGateway } from './attach/veth.js';
import { leaseBlock } from './blocks.js';
import { GATEWAY_LINK } from './attachments.js';
import { type Catalog, keys, STATUS } from './catalog.js';
import { wireGuardFor } from './overlay/index.js';
import { KeyStore, type KeyPair } from './overlay/keys.js';
import { defaultRouteSource, routeOverlay, underlayMtu } from './overlay/link.js';
import { overlayMtu, type PeerChange, type WireGuardDevice } from './overlay/overlay.js';
import type { Registry } from './registry/registry.js';

/**
 * What the mesh needs from the host's network: the WireGuard device, the underlay, and the links
 * around the device. The agent uses the real ones; the fleet simulator (test/scale) gives
 * in-memory ones so one process can run the mesh code of many hosts.
 */
export interface MeshHostNet {
  device(choice: 'auto' | 'kernel' | 'wireguard-go', ifname: string, runDir: string): Promise<WireGuardDevice>;
  /** The underlay address (given, or the default route's source) and its interface's MTU. */
  underlay(given: string): Promise<{ address: string; mtu: number; v6: boolean }>;
  /** The block gateway on its bridge, and the cluster CIDR routed into the device with the overlay MTU. */
  linkUp(o: { ifname: string; mtu: number; gateway: string; clusterCidr: string }): Promise<void>;
}

export const realHostNet: MeshHostNet = {
  device: wireGuardFor,
  async underlay(given) {
    const address = given || (await defaultRouteSource());
    return { address, ...(await underlayMtu(address)) };
  },
  async linkUp(o) {
    // The gateway's one owner is the attach code (its bridge corral-gw), which CNI and Docker attachments share.
    await ensureGateway(GATEWAY_LINK, o.gateway);
    await routeOverlay(o);
  },
};

/** How often the device's peers are read (locally: no registry write). */
const HEARTBEAT_MS = 5000;
/** At most one HostStatus write per this long, and only when it changed. */
export const STATUS_MIN_MS = 60_000;
/** How often a rotating host reads its peers' status reports for their confirmations. */
const CONFIRM_POLL_MS = 200;
/** First wait before bringing back a device whose process died; doubles while it keeps dying. */
const RESTORE_MIN_MS = 1000;
const RESTORE_MAX_MS = 30_000;
/** First wait before a failed peer update is tried again; doubles up to RESTORE_MAX_MS. */
const SYNC_RETRY_MIN_MS = 500;
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
  /** Key rotations this host completed since the agent started (metrics). */
  keyRotations = 0;
  /** Device changes, one at a time. Registry writes never wait in it (see publish). */
  private queue: Promise<void> = Promise.resolve();
  private syncQueued = false;
  /** Host record writes and status writes: one in flight each, calls meanwhile share the next. */
  private readonly hostWrites = new Coalesced(() => this.writeHost());
  private readonly statusWrites = new Coalesced(() => this.writeStatus());
  /** The Host record as last written: rewritten only when it differs. */
  private writtenHost = '';
  private writtenStatus: HostStatus | undefined;
  private statusAt = 0;
  private heartbeat: NodeJS.Timeout | undefined;
  private rotation: NodeJS.Timeout | undefined;
  private lastPeers: PeerStatus[] = [];
  private stopped = false;
  private restoreDelayMs = RESTORE_MIN_MS;
  private restoreTimer: NodeJS.Timeout | undefined;
  private rotationPoll: NodeJS.Timeout | undefined;
  private syncRetry: NodeJS.Timeout | undefined;
  private syncRetryMs = SYNC_RETRY_MIN_MS;

  constructor(
    private readonly registry: Registry,
    private readonly catalog: Catalog,
    private readonly opts: DaemonOptions,
    private readonly log: Logger,
    private readonly net: MeshHostNet = realHostNet,
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
    const u = await this.net.underlay(m.underlayAddress);
    this.underlay = u.address;
    this.mtu = m.mtu || overlayMtu(u.mtu, u.v6);
    this.key = this.keys.current();
    this.next = this.keys.next();
    this.device = await this.net.device(m.overlay === 'kernel' || m.overlay === 'wireguard-go' ? m.overlay : 'auto', m.wgInterface, this.opts.runDir);
    this.device.onExit = (why) => this.deviceGone(why);
    await this.deviceUp();
    // Peers left on a kept interface by the previous agent are adopted by public key.
    const existing = await this.device.peers();
    for (const h of this.catalog.hosts.values()) {
      if (h.name !== this.node && existing.some((p) => p.publicKey === h.publicKey)) {
        this.applied.set(h.name, { publicKey: h.publicKey, endpoint: '', block: '', next: '' });
      }
    }
    const known = new Set<string>();
    for (const h of this.catalog.hosts.values()) known.add(h.publicKey).add(h.nextPublicKey);
    await this.device.setPeers(existing.filter((p) => !known.has(p.publicKey)).map((p) => ({ publicKey: p.publicKey, remove: true as const })));
    await this.sync();
    await this.publish();
    await this.refreshPeers();
    await this.statusWrites.run().catch((err: Error) => this.log.warn({ err: err.message }, 'first status report failed; retried within a minute'));
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
    clearTimeout(this.syncRetry);
    clearInterval(this.rotationPoll);
    clearInterval(this.heartbeat);
    clearInterval(this.rotation);
    await this.queue.catch(() => {});
    await Promise.allSettled([this.hostWrites.settled(), this.statusWrites.settled()]);
    await this.device?.close();
  }

  /** Every watch event: peers follow Host records. */
  onEvent(ev: WatchEvent): void {
    // Before start() has its device, its own first sync covers whatever arrives.
    if (!this.device || !(ev.snapshot || ev.hosts.length || ev.deletedHosts.length)) {
      this.appliedRevision = Math.max(this.appliedRevision, ev.revision);
      return;
    }
    // One sync waiting in the queue reads the catalog when it runs: later events need no other.
    this.queueSync();
  }

  /** One sync waiting in the queue; a failed one (the device did not answer) is tried again after a wait, doubling. */
  private queueSync(): void {
    if (this.syncQueued) return;
    this.syncQueued = true;
    void this.enqueue(() => {
      this.syncQueued = false;
      return this.sync();
    }).then(() => {
      this.syncRetryMs = SYNC_RETRY_MIN_MS;
    }, () => {
      if (this.stopped || this.syncRetry) return;
      this.syncRetry = setTimeout(() => {
        this.syncRetry = undefined;
        this.queueSync();
      }, this.syncRetryMs);
      this.syncRetry.unref();
      this.syncRetryMs = Math.min(this.syncRetryMs * 2, RESTORE_MAX_MS);
    });
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
    let unconfirmed = await this.unconfirmed(published);
    while (unconfirmed.length && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, CONFIRM_POLL_MS));
      unconfirmed = await this.unconfirmed(published).catch(() => unconfirmed);
    }
    if (unconfirmed.length) this.log.warn({ hosts: unconfirmed }, 'switching keys before these hosts confirmed the next key: they reconnect once they see it');
    await this.enqueue(async () => {
      this.key = this.keys.finishRotation();
      this.next = undefined;
      await this.device!.setPrivateKey(this.key.privateKey);
    });
    const revision = await this.publish();
    this.keyRotations++;
    this.log.info({ previous, publicKey: this.key.publicKey, revision }, 'WireGuard key rotated');
    return { previousPublicKey: previous, publicKey: this.key.publicKey, revision, unconfirmed };
  }

  /** Interface up with this host's key and port, the gateway, and the cluster CIDR routed to it. */
  private async deviceUp(): Promise<void> {
    const m = this.opts.mesh;
    await this.device!.up({ ifname: m.wgInterface, privateKey: this.key.privateKey, listenPort: m.wgPort });
    await this.net.linkUp({ ifname: m.wgInterface, mtu: this.mtu, gateway: this.gateway, clusterCidr: this.opts.clusterCidr });
  }

  /**
   * The heartbeat reads the device's peers (for `corral status` and a device that stopped
   * answering) and reports them at most once a minute, only if something changed. Nothing here
   * writes the watched records: liveness is the registry lease.
   */
  private async beat(): Promise<void> {
    if (this.stopped || this.restoreTimer) return;
    try {
      await this.refreshPeers();
    } catch (err) {
      // wireguard-go died while no agent was its parent (adopted from a previous agent), or hangs.
      this.deviceGone(`does not answer (${(err as Error).message})`);
      return;
    }
    if (Date.now() - this.statusAt >= STATUS_MIN_MS && this.statusChanged()) void this.statusWrites.run().catch(() => {});
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

  /** Hosts whose last status report has not applied `revision` yet (read from the registry: nobody watches reports). */
  private async unconfirmed(revision: number): Promise<string[]> {
    const applied = new Map<string, number>();
    for (const kv of (await this.registry.range(STATUS)).kvs) {
      try {
        const st = this.catalog.status(kv.key, kv.value);
        applied.set(st.name, st.appliedRevision);
      } catch {
        // an unreadable report confirms nothing
      }
    }
    const out: string[] = [];
    for (const h of this.catalog.hosts.values()) if (h.name !== this.node && (applied.get(h.name) ?? 0) < revision) out.push(h.name);
    return out;
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(() => (this.stopped ? (undefined as T) : fn()));
    this.queue = run.then(() => undefined, (err: Error) => {
      this.log.error({ err: err.message }, 'overlay update failed; retried shortly and with the next change');
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
    // New and changed peers first, so a block moves between keys without a gap; one device call.
    let nextKeys = false;
    const before = new Map(this.applied);
    const changes: PeerChange[] = [];
    for (const [name, w] of want) {
      const old = this.applied.get(name);
      if (w.next !== (old?.next ?? '')) nextKeys = true;
      if (old && old.publicKey === w.publicKey && old.endpoint === w.endpoint && old.block === w.block && old.next === w.next) continue;
      changes.push({ publicKey: w.publicKey, endpoint: w.endpoint, allowedIps: [w.block], keepaliveS: KEEPALIVE_S });
      // The next key of a rotating peer: known, reachable, no addresses until it becomes current.
      if (w.next && w.next !== old?.next) changes.push({ publicKey: w.next, endpoint: w.endpoint, allowedIps: [] });
    }
    for (const [name, old] of before) {
      const w = want.get(name);
      // A rotated key: the new one already holds the block (set above), the old one goes now.
      if (!w || w.publicKey !== old.publicKey) changes.push({ publicKey: old.publicKey, remove: true });
      if (old.next && (!w || (w.next !== old.next && w.publicKey !== old.next))) changes.push({ publicKey: old.next, remove: true });
    }
    await dev.setPeers(changes);
    let added = 0;
    for (const [name, w] of want) {
      if (!before.has(name)) added++;
      this.applied.set(name, w);
    }
    let removed = 0;
    for (const name of before.keys()) {
      if (!want.has(name)) {
        this.applied.delete(name);
        removed++;
      }
    }
    if (added + removed > 0) this.log.info({ added, removed, peers: this.applied.size, revision }, added + removed === 1 ? (added ? 'peer added' : 'peer removed') : 'peers changed');
    this.appliedRevision = Math.max(this.appliedRevision, revision);
    this.watchRotations();
    // A rotating host waits for every peer to confirm its next key: report now, not within the
    // minute. Not awaited: device updates (the 100 ms rotation poll among them) must not wait for etcd.
    if (nextKeys) void this.statusWrites.run().catch(() => {});
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
      await this.device!.setPeers([{ publicKey: a.next, endpoint: a.endpoint, allowedIps: [a.block], keepaliveS: KEEPALIVE_S }, { publicKey: a.publicKey, remove: true }]);
      this.applied.set(name, { ...a, publicKey: a.next, next: '' });
      this.log.info({ host: name, publicKey: a.next }, 'peer switched to its next key (handshake seen)');
    }
    this.watchRotations();
  }

  /** Writes this host's record if it changed; resolves with the revision it is at. A failed write is logged and rejects. */
  private publish(): Promise<number> {
    const w = this.hostWrites.run();
    w.catch((err: Error) => this.log.error({ err: err.message }, 'publishing this host\'s record failed; retried at the next change or restart'));
    return w;
  }

  /** This host's record (ephemeral: it leaves with the agent's lease). Only fields peers act on. */
  private async writeHost(): Promise<number> {
    const m = this.opts.mesh;
    const host: Host = {
      name: this.node,
      block: this.block,
      underlay: this.underlay,
      publicKey: this.key.publicKey,
      version: VERSION,
      wgPort: m.wgPort,
      nextPublicKey: this.next?.publicKey ?? '',
      mtu: this.mtu,
      overlay: this.device?.kind ?? '',
    };
    const value = JSON.stringify(host);
    if (value === this.writtenHost) return this.catalog.revision;
    this.catalog.check(keys.host(this.node), value);
    const rev = (await this.registry.txn([{ put: keys.host(this.node), value, ephemeral: true }])) ?? 0;
    this.writtenHost = value;
    return rev;
  }

  /** The report `corral hosts` reads: fixed size, whatever the number of peers. */
  private status(): HostStatus {
    const now = Date.now();
    let handshaken = 0;
    let stale = 0;
    let worst: PeerStatus | undefined;
    for (const p of this.lastPeers) {
      if (p.lastHandshakeMs > 0) handshaken++;
      if (!p.lastHandshakeMs || now - p.lastHandshakeMs > HANDSHAKE_STALE_MS) stale++;
      if (!worst || p.lastHandshakeMs < worst.lastHandshakeMs) worst = p;
    }
    return {
      name: this.node, appliedRevision: this.appliedRevision, reportedMs: now, version: VERSION,
      peers: this.applied.size, handshaken, stale, worstPeer: worst?.host ?? '', worstHandshakeMs: worst?.lastHandshakeMs ?? 0,
    };
  }

  /** Whether a report now would say something the last one did not (the time of a handshake aside). */
  private statusChanged(): boolean {
    const a = this.writtenStatus;
    const b = this.status();
    return !a || a.appliedRevision !== b.appliedRevision || a.peers !== b.peers || a.handshaken !== b.handshaken || a.stale !== b.stale || a.worstPeer !== b.worstPeer || a.version !== b.version;
  }

  private async writeStatus(): Promise<number> {
    const st = this.status();
    const rev = (await this.registry.txn([{ put: keys.status(this.node), value: JSON.stringify(st), ephemeral: true }])) ?? 0;
    this.writtenStatus = st;
    this.statusAt = st.reportedMs;
    return rev;
  }

  private async refreshPeers(): Promise<void> {
    const byKey = new Map<string, string>();
    for (const [name, a] of this.applied) byKey.set(a.publicKey, name);
    const states = await this.device!.peers();
    this.lastPeers = states
      .filter((p) => byKey.has(p.publicKey))
      .map((p) => ({ host: byKey.get(p.publicKey)!, endpoint: p.endpoint, lastHandshakeMs: p.lastHandshakeMs, rxBytes: p.rxBytes, txBytes: p.txBytes, publicKey: p.publicKey }))
      .sort((a, b) => (a.host < b.host ? -1 : a.host > b.host ? 1 : 0));
  }
}

/** One run of fn at a time; calls while it runs share one more run after it. */
class Coalesced {
  private running: Promise<number> | undefined;
  private again: Promise<number> | undefined;

  constructor(private readonly fn: () => Promise<number>) {}

  run(): Promise<number> {
    if (!this.running) {
      this.running = this.fn().finally(() => (this.running = undefined));
      return this.running;
    }
    this.again ??= this.running.catch(() => 0).then(() => {
      this.again = undefined;
      return this.run();
    });
    return this.again;
  }

  settled(): Promise<unknown> {
    return Promise.allSettled([this.running, this.again]);
  }
}

function endpointOf(h: Host): string {
  const port = h.wgPort || 51820;
  return h.underlay.includes(':') ? `[${h.underlay}]:${port}` : `${h.underlay}:${port}`;
}
