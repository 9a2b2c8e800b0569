// The wireguard-go device against a real wireguard-go (in a test netns): peers set and removed in
// batches, as the mesh does when a host joins a large fleet.
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
  });
  afterAll(async () => {
    wg?.kill('SIGTERM');
    await ns?.delete();
    rmSync(runDir, { recursive: true, force: true });
    rmSync(join(UAPI_DIR, `${ifname}.sock`), { force: true });
  });

  it('sets 1,000 peers in one call and changes them in one more', async () => {
    const keys = Array.from({ length: 1000 }, () => generateKeyPair().publicKey);
    const block = (i: number) => `10.${42 + (i >> 8)}.${i & 255}.0/24`;
    // No keepalive: with one, wireguard-go starts a handshake per peer at once, and towards these
    // unreachable endpoints a set of 1,000 sometimes never answered (seen in two runs out of many).
    await dev.setPeers(keys.map((publicKey, i) => ({ publicKey, endpoint: `10.99.${i >> 8}.${(i & 255) || 1}:51820`, allowedIps: [block(i)], keepaliveS: 0 })));
    let peers = await dev.peers();
    expect(peers).toHaveLength(1000);
    expect(new Map(peers.map((p) => [p.publicKey, p.allowedIps])).get(keys[999]!)).toEqual([block(999)]);
    // Half of them go, one moves its block to a new key (new first, then the old one removed).
    const next = generateKeyPair().publicKey;
    const changes: PeerChange[] = keys.slice(500).map((publicKey) => ({ publicKey, remove: true as const }));
    changes.unshift({ publicKey: next, endpoint: '10.99.0.1:51820', allowedIps: [block(0)], keepaliveS: 0 });
    changes.push({ publicKey: keys[0]!, remove: true });
    await dev.setPeers(changes);
    peers = await dev.peers();
    expect(peers).toHaveLength(500);
    expect(peers.find((p) => p.publicKey === next)?.allowedIps).toEqual([block(0)]);
    expect(peers.some((p) => p.publicKey === keys[0])).toBe(false);
    await dev.setPeers([]);
    expect(await dev.peers()).toHaveLength(500);
  });
});
