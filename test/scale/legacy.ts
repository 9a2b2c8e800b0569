// The protocol before issue 11, reproduced as the bench's anchor: every host rewrote its Host
// record every 5 s (the heartbeat), and the record carried this host's status of every peer
// (handshake, byte counters), so it grew with N and the bytes written grew with N². Same record
// shape as agent/mesh.ts and api/types.ts at commit 41d4112, same write path (an ephemeral put
// through the host's own EtcdRegistry), same key.
import { randomBytes } from 'node:crypto';
import type { Etcd3 } from 'etcd3';
import type { PeerStatus } from '../../api/types.js';
import { VERSION } from '../../api/version.js';
import { keys } from '../../agent/catalog.js';
import { EtcdRegistry } from '../../agent/registry/etcd.js';
import { intToIp, simName } from './fleet.js';

/** api/types.ts Host at 41d4112. */
export interface LegacyHostRecord {
  name: string;
  block: string;
  underlay: string;
  publicKey: string;
  appliedRevision: number;
  version: string;
  heartbeatMs: number;
  wgPort: number;
  nextPublicKey: string;
  peers: PeerStatus[];
  mtu: number;
  overlay: string;
}

const HEARTBEAT_MS = 5000;

interface LegacyHost { name: string; block: string; underlay: string; publicKey: string; registry: EtcdRegistry; timer?: NodeJS.Timeout; sinceMs: number; inFlight?: boolean }

export class LegacyFleet {
  private readonly hosts: LegacyHost[] = [];
  writes = 0;
  failures = 0;
  /** Beats skipped because the host's previous write had not finished: offered load etcd did not absorb. */
  skipped = 0;
  largest = 0;

  constructor(private readonly client: Etcd3, private readonly endpoints: string[], private readonly n: number) {}

  /** Every host opens its session and starts its 5 s heartbeat, spread over the first period. */
  async start(): Promise<void> {
    for (let i = 0; i < this.n; i++) {
      const registry = new EtcdRegistry({ endpoints: this.endpoints, client: this.client });
      await registry.open();
      this.hosts.push({ name: simName(i), block: `${intToIp(0x0a400000 + i * 256)}/24`, underlay: `198.18.${(i >> 8) & 255}.${i & 255}`, publicKey: randomBytes(32).toString('base64'), registry, sinceMs: Date.now() });
    }
    for (const [i, h] of this.hosts.entries()) {
      // One write in flight per host: a beat while the last one is still waiting for etcd is
      // skipped and counted (beyond what etcd absorbs, the backlog would only grow).
      const beat = () => {
        if (h.inFlight) {
          this.skipped++;
          return;
        }
        h.inFlight = true;
        void this.write(h).then(() => this.writes++, () => this.failures++).finally(() => (h.inFlight = false));
      };
      h.timer = setTimeout(() => {
        beat();
        h.timer = setInterval(beat, HEARTBEAT_MS);
      }, (i * HEARTBEAT_MS) / this.n);
    }
  }

  /** The record host h wrote at each heartbeat: itself, and its view of every other host. */
  record(h: LegacyHost): LegacyHostRecord {
    const now = Date.now();
    const age = now - h.sinceMs;
    const peers: PeerStatus[] = this.hosts.filter((p) => p !== h).map((p) => ({
      host: p.name, endpoint: `${p.underlay}:51820`, lastHandshakeMs: now - Math.floor(Math.random() * 120_000),
      rxBytes: Math.floor(age * 97.3), txBytes: Math.floor(age * 88.1), publicKey: p.publicKey,
    }));
    return { name: h.name, block: h.block, underlay: h.underlay, publicKey: h.publicKey, appliedRevision: 1_000_000 + Math.floor(age / 10), version: VERSION, heartbeatMs: now, wgPort: 51820, nextPublicKey: '', peers, mtu: 1440, overlay: 'wireguard-go' };
  }

  private async write(h: LegacyHost): Promise<void> {
    const value = JSON.stringify(this.record(h));
    this.largest = Math.max(this.largest, value.length);
    await h.registry.txn([{ put: keys.host(h.name), value, ephemeral: true }]);
  }

  async stop(): Promise<void> {
    for (const h of this.hosts) clearTimeout(h.timer); // the first beat's timeout or the interval
    await Promise.allSettled(this.hosts.map((h) => h.registry.close()));
  }
}
