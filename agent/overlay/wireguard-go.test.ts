// The wireguard-go device against a real wireguard-go (in a test netns): peers set and removed in
// batches, as the mesh does when a host joins a large fleet, with the mesh's keepalive, towards
// endpoints that never answer (hosts that are down or not up yet).
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Netns } from '../../test/support/netns.js';
import { until } from '../../test/support/until.js';
import { generateKeyPair } from './keys.js';
import type { PeerChange } from './overlay.js';
import { UAPI_DIR, WireGuardGo } from './wireguard-go.js';

describe('wireguard-go device', () => {
  let ns: Netns;
  let dev: WireGuardGo;
  let runDir: string;
  let wg: ChildProcess | undefined;
  const ifname = `wgb${randomBytes(3).toString('hex')}`;
  beforeAll(async () => {
    ns = await Netns.create('corral-wg');
    runDir = mkdtempSync(join(tmpdir(), 'corral-wg-'));
    // Started inside the netns (its TUN lives there); the device adopts it by its UAPI socket.
    wg = ns.spawn('wireguard-go', [ifname], { stdio: 'ignore', env: { ...process.env, WG_PROCESS_FOREGROUND: '1', LOG_LEVEL: 'silent' } });
    await until('wireguard-go socket', () => existsSync(join(UAPI_DIR, `${ifname}.sock`)), { ms: 10_000 });
    dev = new WireGuardGo(runDir);
    await dev.up({ ifname, privateKey: generateKeyPair().privateKey, listenPort: 0 });
    // Up, as the agent leaves it (a device that is down sends nothing). The endpoints are on-link
    // on an underlay whose far end answers no ARP: every packet to them waits in the neighbour
    // queue until resolution fails, as towards a host of the same subnet that is down.
    await ns.exec('ip', ['link', 'set', ifname, 'up']);
    await ns.exec('ip', ['link', 'add', 'under0', 'type', 'veth', 'peer', 'name', 'under1']);
    await ns.exec('ip', ['addr', 'add', '10.99.255.254/16', 'dev', 'under0']);
    await ns.exec('ip', ['link', 'set', 'under0', 'up']);
    await ns.exec('ip', ['link', 'set', 'under1', 'up']);
  });
  afterAll(async () => {
    if (wg && wg.exitCode === null && wg.signalCode === null) {
      wg.kill('SIGTERM');
      // One stuck in a send acts on SIGTERM late, if at all.
      await until('wireguard-go to exit', () => wg!.exitCode !== null || wg!.signalCode !== null, { ms: 5000 }).catch(() => wg!.kill('SIGKILL'));
    }
    await ns?.delete();
    rmSync(runDir, { recursive: true, force: true });
    rmSync(join(UAPI_DIR, `${ifname}.sock`), { force: true });
  });

  it('sets 1,000 peers with keepalive towards unanswering endpoints in one batch, and changes them in one more', async () => {
    const keys = Array.from({ length: 1000 }, () => generateKeyPair().publicKey);
    const block = (i: number) => `10.${42 + (i >> 8)}.${i & 255}.0/24`;
    const endpoint = (i: number) => `10.99.${i >> 8}.${(i & 255) || 1}:51820`;
    // Keepalive on makes wireguard-go start a handshake to each new peer: the set must still answer.
    await dev.setPeers(keys.map((publicKey, i) => ({ publicKey, endpoint: endpoint(i), allowedIps: [block(i)], keepaliveS: 25 })));
    let peers = await until('1,000 peers with endpoint and keepalive 25', async () => {
      const got = await dev.peers();
      return got.length === 1000 && got.every((p) => p.keepaliveS === 25 && p.endpoint !== '') && got;
    }, { ms: 60_000 });
    const byKey = new Map(peers.map((p) => [p.publicKey, p]));
    expect(byKey.get(keys[999]!)?.allowedIps).toEqual([block(999)]);
    expect(byKey.get(keys[999]!)?.endpoint).toBe(endpoint(999));
    // Half of them go, one moves its block to a new key (new first, then the old one removed).
    const next = generateKeyPair().publicKey;
    const changes: PeerChange[] = keys.slice(500).map((publicKey) => ({ publicKey, remove: true as const }));
    changes.unshift({ publicKey: next, endpoint: endpoint(0), allowedIps: [block(0)], keepaliveS: 25 });
    changes.push({ publicKey: keys[0]!, remove: true });
    await dev.setPeers(changes);
    peers = await dev.peers();
    expect(peers).toHaveLength(500);
    expect(peers.find((p) => p.publicKey === next)).toMatchObject({ allowedIps: [block(0)], endpoint: endpoint(0), keepaliveS: 25 });
    expect(peers.some((p) => p.publicKey === keys[0])).toBe(false);
    await dev.setPeers([]);
    expect(await dev.peers()).toHaveLength(500);
  });
});
