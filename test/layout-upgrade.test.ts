// An agent started on a registry of the layout before per-host key prefixes: its own block
// lease and endpoints move under its prefix (it keeps its block and serves its endpoints);
// another host's record of that layout stays where it is, unserved, until that host upgrades.
// The block is the first, 10.42.0.0/24, as in every single-host test: without the move, the old
// key would mark it taken and the agent would lease 10.42.1.0/24.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EmbeddedRegistry } from '../agent/registry/embedded.js';
import { startDaemon, type Daemon } from './support/corral.js';
import { endpoint } from './support/records.js';

const json = (s: string) => JSON.parse(s);

describe('upgrading to per-host key prefixes', () => {
  const stateDir = mkdtempSync(join(tmpdir(), 'corral-layout-'));
  let agent: Daemon | undefined;
  afterAll(async () => {
    await agent?.stop();
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('moves this host\'s block lease and endpoints under its prefix and keeps serving them', async () => {
    const old = new EmbeddedRegistry(stateDir);
    await old.open();
    const mine = endpoint({ node: 'test-node', address: '127.0.0.1', port: 18080 });
    const theirs = endpoint({ node: 'other', address: '127.0.0.2', port: 18080 });
    await old.txn([
      { put: '/corral/blocks/10.42.0.0_24', value: JSON.stringify({ block: '10.42.0.0/24', node: 'test-node', sinceMs: 1 }) },
      { put: `/corral/endpoints/${mine.id}`, value: JSON.stringify(mine) },
      { put: `/corral/endpoints/${theirs.id}`, value: JSON.stringify(theirs) },
    ]);
    await old.close();

    agent = await startDaemon('agent', { stateDir });
    const status = json((await agent.cli(['status', '--json'])).stdout);
    expect(status.block).toBe('10.42.0.0/24');
    const eps = json((await agent.cli(['endpoints', 'web', '--json'])).stdout).endpoints as Array<{ id: string; node: string }>;
    expect(eps.map((e) => e.node)).toEqual(['test-node']);
    expect(status.problems).toEqual([`/corral/endpoints/${theirs.id}: node: "other" does not match its key ("") (written by other)`]);
    expect(agent.logs()).toMatch(/"records":2,"msg":"moved this host's records under its own key prefix/);
    await agent.stop();
    agent = undefined;

    const after = new EmbeddedRegistry(stateDir);
    await after.open();
    const keys = (await after.range('/corral/')).kvs.map((kv) => kv.key).filter((k) => !k.startsWith('/corral/hosts/'));
    await after.close();
    expect(keys.sort()).toEqual([`/corral/blocks/test-node/10.42.0.0_24`, `/corral/endpoints/${theirs.id}`, `/corral/endpoints/test-node/${mine.id}`].sort());
  });
});
