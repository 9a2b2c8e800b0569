import { Etcd3 } from 'etcd3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startEtcd, type EtcdCluster } from '../../test/support/etcd.js';
import { pino } from 'pino';
import { Compactor, COMPACTOR_KEY } from './compaction.js';
import { EtcdRegistry, parseEtcdSpec } from './etcd.js';
import type { Registry } from './registry.js';
import { until } from '../../test/support/until.js';
import { registrySuite } from './registry.suite.js';

/** Watch and connection state, polled closely. */
const SOON = { ms: 10_000, everyMs: 20 };

describe('etcd registry', () => {
  let etcd: EtcdCluster;
  let admin: Etcd3;
  const open: Registry[] = [];
  beforeAll(async () => {
    etcd = await startEtcd();
    admin = new Etcd3({ hosts: etcd.members.map((m) => m.clientUrl) });
  });
  afterEach(async () => {
    for (const r of open.splice(0)) await r.close().catch(() => {});
    await admin.delete().all();
  });
  afterAll(async () => {
    admin?.close();
    await etcd?.stop();
  });
  const client = async (o: { leaseTtlS?: number } = {}) => {
    const r = new EtcdRegistry({ endpoints: etcd.endpoints, leaseTtlS: o.leaseTtlS ?? 10, rpcTimeoutMs: 2000 });
    await r.open();
    open.push(r);
    return r;
  };

  registrySuite({
    fresh: () => client(),
    reopen: () => client(),
    async forgetHistory(r) {
      const rev = (await r.range('/')).revision;
      await (r as EtcdRegistry).compact(rev);
      return r;
    },
  });

  it('lets one agent of the fleet compact history to one interval ago, and another take over when it goes', async () => {
    const log = pino({ level: 'silent' });
    const a = await client({ leaseTtlS: 2 });
    const b = await client();
    const ca = new Compactor(a as EtcdRegistry, 'a', 60_000, log);
    const cb = new Compactor(b as EtcdRegistry, 'b', 60_000, log);
    await a.txn([{ put: '/corral/services/default/web', value: '1' }]);
    const first = (await a.range('/')).revision;
    expect(await ca.round()).toBe(true);   // takes the post, remembers the revision
    expect(await cb.round()).toBe(false);  // the post is held: only a read
    await a.txn([{ put: '/corral/services/default/web', value: '2' }]);
    expect(await ca.round()).toBe(true);   // compacts to the revision of the previous round
    expect(ca.compactions).toBe(1);
    await expect(admin.kv.range({ key: Buffer.from('/corral/services/default/web'), revision: String(first - 1) })).rejects.toThrow(/compacted/);
    expect((await admin.kv.range({ key: Buffer.from('/corral/services/default/web'), revision: String(first) })).kvs[0]!.value.toString()).toBe('1');
    // The compacting agent dies: its post goes with its lease, and another agent takes it.
    (a as EtcdRegistry).compactor = undefined;
    await a.close();
    await until('the compactor post gone with its lease', async () => (await admin.get(COMPACTOR_KEY).string()) === null, { ms: 15_000 });
    expect(await cb.round()).toBe(true);
    expect(await admin.get(COMPACTOR_KEY).string()).toBe('b');
  });

  it('parses --registry etcd:// lists and says what it accepts', () => {
    expect(parseEtcdSpec('etcd://10.0.0.1:2379,10.0.0.2:2379')).toEqual(['10.0.0.1:2379', '10.0.0.2:2379']);
    expect(() => parseEtcdSpec('etcd://')).toThrow(/is not etcd:\/\/HOST:PORT/);
    expect(() => parseEtcdSpec('etcd://h1')).toThrow(/for example etcd:\/\//);
  });

  it('says etcd cannot be reached, naming the endpoints', async () => {
    const r = new EtcdRegistry({ endpoints: ['127.0.0.1:9'], rpcTimeoutMs: 500 });
    await expect(r.open()).rejects.toThrow(/cannot reach etcd at 127.0.0.1:9: .*check that etcd runs/);
  });

  it('removes the ephemeral records of a client that stopped renewing after the lease TTL', async () => {
    const dying = await client({ leaseTtlS: 2 });
    const watcher = await client();
    const base = (await watcher.range('/')).revision;
    await dying.txn([{ put: '/corral/hosts/h1', value: '{"name":"h1"}', ephemeral: true }, { put: '/corral/services/default/web', value: '{}' }]);
    const deleted: string[] = [];
    watcher.watch('/corral/', base, (b) => b.events.forEach((e) => e.type === 'delete' && deleted.push(e.key)), () => {});
    await dying.close(); // like kill -9: the lease is not revoked, it runs out
    await until('the dead client\'s record deleted', () => deleted.includes('/corral/hosts/h1'), { ms: 15_000, everyMs: 20 });
    expect((await watcher.range('/corral/')).kvs.map((k) => k.key)).toEqual(['/corral/services/default/web']);
  });

  it('puts its ephemeral records back under a new lease when the old one is lost', async () => {
    const r = await client({ leaseTtlS: 5 });
    await r.txn([{ put: '/corral/hosts/h1', value: '{"name":"h1"}', ephemeral: true }]);
    const held = await admin.kv.range({ key: Buffer.from('/corral/hosts/h1') });
    const lease = held.kvs[0]!.lease;
    expect(lease).not.toBe('0');
    await admin.leaseClient.leaseRevoke({ ID: lease });
    expect((await admin.get('/corral/hosts/h1').string())).toBeNull();
    await until('the record back', async () => (await admin.get('/corral/hosts/h1').string()) === '{"name":"h1"}', { ms: 8000, everyMs: 20 });
    expect((await admin.kv.range({ key: Buffer.from('/corral/hosts/h1') })).kvs[0]!.lease).not.toBe(lease);
  });

  it('resumes a watch after etcd restarts and reports itself disconnected meanwhile', async () => {
    const r = await client();
    const base = (await r.range('/')).revision;
    const seen: number[] = [];
    let reset = false;
    r.watch('/corral/', base, (b) => seen.push(b.revision), () => (reset = true));
    const rev1 = (await r.txn([{ put: '/corral/a', value: '1' }]))!;
    await until('the first put seen', () => seen.includes(rev1), SOON);
    await etcd.members[0]!.stop();
    await until('disconnected', () => !r.health().connected, SOON).catch(async () => {
      await r.range('/').catch(() => {}); // an RPC notices the loss even before the stream does
      expect(r.health().connected).toBe(false);
    });
    expect(r.health().error).not.toBe('');
    await etcd.members[0]!.start();
    const other = await client();
    const rev2 = (await other.txn([{ put: '/corral/b', value: '2' }]))!;
    await until('the put made while it was down seen', () => seen.includes(rev2), { ms: 15_000, everyMs: 20 });
    expect(seen).toEqual([rev1, rev2]);
    expect(reset).toBe(false);
    await until('connected again', () => r.health().connected, SOON);
  });
});
