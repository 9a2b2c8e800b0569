import { execFileSync, spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EmbeddedRegistry, LEGACY_FILE, SNAPSHOT_FILE, logFileName, type EmbeddedOptions, type RegistryLog } from './embedded.js';
import type { KvBatch, Registry } from './registry.js';
import { registrySuite, until } from './registry.suite.js';

/** A logger that keeps what was said, so a test can read the warnings. */
function recordingLog(): RegistryLog & { warnings: string[]; infos: string[] } {
  const l = { warnings: [] as string[], infos: [] as string[], warn: (_f: object, m: string) => void l.warnings.push(m), info: (_f: object, m: string) => void l.infos.push(m) };
  return l;
}

const logsIn = (dir: string) => readdirSync(dir).filter((f) => f.endsWith('.log')).sort();

describe('embedded registry', () => {
  const dirs: string[] = [];
  const mounts: string[] = [];
  const dirOf = new Map<Registry, string>();
  afterEach(() => {
    for (const m of mounts.splice(0)) execFileSync('umount', [m]);
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const tempDir = () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-reg-'));
    dirs.push(dir);
    return dir;
  };
  const open = async (dir: string, opts: EmbeddedOptions = {}) => {
    const r = new EmbeddedRegistry(dir, { log: recordingLog(), ...opts });
    await r.open();
    dirOf.set(r, dir);
    return r;
  };

  registrySuite({
    fresh: async () => open(tempDir()),
    async reopen(old) {
      await old.close();
      return open(dirOf.get(old)!);
    },
    // history is not kept across restarts
    async forgetHistory(old) {
      await old.close();
      return open(dirOf.get(old)!);
    },
  });

  it('keeps its state in files only root can read', async () => {
    const dir = tempDir();
    const r = await open(dir, { logMinBytes: 1 });
    await r.txn([{ put: '/corral/endpoints/e1', value: '{"id":"e1"}' }]);
    await until(() => r.stats.compactions >= 1);
    await r.close();
    for (const f of [SNAPSHOT_FILE, ...logsIn(dir)]) expect(statSync(join(dir, f)).mode & 0o777).toBe(0o600);
    const fresh = join(dir, 'new');
    await (await open(fresh)).close();
    expect(statSync(fresh).mode & 0o777).toBe(0o700);
  });

  it('keeps every acknowledged transaction when its process is killed mid-stream', async () => {
    const dir = tempDir();
    // A real writer process, SIGKILLed while 16 concurrent writers keep it busy.
    const script = join(dir, 'writer.mts');
    writeFileSync(script, [
      `import { EmbeddedRegistry } from ${JSON.stringify(resolve('agent/registry/embedded.ts'))};`,
      `const r = new EmbeddedRegistry(${JSON.stringify(join(dir, 'state'))});`,
      'await r.open();',
      'let n = 0;',
      'await Promise.all(Array.from({ length: 16 }, async () => {',
      '  for (;;) { const i = n++; const rev = await r.txn([{ put: `/corral/k${i}`, value: `v${i}` }]); process.stdout.write(`${i} ${rev}\\n`); }',
      '}));',
    ].join('\n'));
    const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (err += d));
    await until(() => {
      if (child.exitCode !== null) throw new Error(`the writer exited with ${child.exitCode}: ${err}`);
      return out.split('\n').length > 2000;
    }, 30_000);
    child.kill('SIGKILL');
    await new Promise((res) => child.once('exit', res));
    const acked = out.split('\n').filter((l) => /^\d+ \d+$/.test(l)).map((l) => l.split(' ').map(Number) as [number, number]);
    const r = await open(join(dir, 'state'));
    const got = new Map((await r.range('/corral/')).kvs.map((kv) => [kv.key, kv]));
    for (const [i, rev] of acked) expect(got.get(`/corral/k${i}`)).toEqual({ key: `/corral/k${i}`, value: `v${i}`, modRevision: rev });
    // and the store goes on from where the log ends
    const last = (await r.range('/')).revision;
    expect(last).toBeGreaterThanOrEqual(acked.length);
    expect(await r.txn([{ put: '/after', value: '1' }])).toBe(last + 1);
    await r.close();
  });

  it('drops a torn last record with one warning and goes on after it', async () => {
    const dir = tempDir();
    const r = await open(dir);
    await r.txn([{ put: '/a', value: '1' }]);
    const rev2 = (await r.txn([{ put: '/b', value: '2' }, { delete: '/a' }]))!;
    await r.close();
    const log = join(dir, logsIn(dir)[0]!);
    truncateSync(log, statSync(log).size - 7); // the crash cut the last write short
    const warned = recordingLog();
    const again = await open(dir, { log: warned });
    expect(warned.warnings).toEqual([expect.stringMatching(/torn record.*dropped/)]);
    expect(await again.range('/')).toEqual({ revision: rev2 - 1, kvs: [{ key: '/a', value: '1', modRevision: rev2 - 1 }] });
    expect(await again.txn([{ put: '/c', value: '3' }])).toBe(rev2);
    await again.close();
    const quiet = recordingLog();
    const third = await open(dir, { log: quiet });
    expect(quiet.warnings).toEqual([]);
    expect((await third.range('/')).kvs.map((k) => k.key)).toEqual(['/a', '/c']);
    await third.close();
  });

  it('refuses a log damaged before its end and says which file and what to do', async () => {
    const dir = tempDir();
    const r = await open(dir);
    for (let i = 0; i < 3; i++) await r.txn([{ put: `/k${i}`, value: `value-${i}` }]);
    await r.close();
    const log = join(dir, logsIn(dir)[0]!);
    const text = readFileSync(log, 'utf8');
    const at = text.indexOf('value-1');
    writeFileSync(log, text.slice(0, at) + 'VALUE-1' + text.slice(at + 7));
    const secondRecord = text.indexOf('\n') + 1;
    await expect(new EmbeddedRegistry(dir, { log: recordingLog() }).open()).rejects.toThrow(
      new RegExp(`registry log ${log} is damaged at byte ${secondRecord} .*not a torn write.*truncate -s ${secondRecord} ${log}`),
    );
  });

  it('compacts its log into a snapshot and restarts from both', async () => {
    const dir = tempDir();
    const r = await open(dir, { logMinBytes: 4096 });
    const kept = new Map<string, string>();
    for (let i = 0; i < 300; i++) {
      const key = `/corral/endpoints/e${i % 40}`;
      if (i % 7 === 3) {
        await r.txn([{ delete: key }]);
        kept.delete(key);
      } else {
        await r.txn([{ put: key, value: `{"n":${i}}` }]);
        kept.set(key, `{"n":${i}}`);
      }
    }
    await until(() => r.stats.compactions >= 2);
    const before = await r.range('/');
    expect(new Map(before.kvs.map((k) => [k.key, k.value]))).toEqual(kept);
    await r.close();
    expect(existsSync(join(dir, SNAPSHOT_FILE))).toBe(true);
    const snapshotRevision = JSON.parse(readFileSync(join(dir, SNAPSHOT_FILE), 'utf8').split('\n')[0]!).revision as number;
    expect(logsIn(dir)).toEqual([logFileName(snapshotRevision)]); // older logs are gone
    const again = await open(dir, { logMinBytes: 4096 });
    expect(await again.range('/')).toEqual(before);
    expect(await again.txn([{ put: '/x', value: '1' }])).toBe(before.revision + 1);
    await again.close();
  });

  it('gives back every value exactly as written, through memory, the log and the snapshot (values are packed in memory)', async () => {
    const dir = tempDir();
    const r = await open(dir, { logMinBytes: 1024 });
    // Endpoint-like JSON (packed), values holding the control characters packing uses, text that
    // looks like the packed tokens, non-Latin text, the empty value.
    const values = [
      '{"id":"manual:default:web:10.0.0.1:80","service":"web","namespace":"default","healthy":true,"healthReason":"no health check","healthCheck":null,"httpHosts":["http.test"]}',
      '\x01\x02', '\x00x', 'a\u0019b', 'truefalse nullhttp default manual', '{"a":"\\u0001"}', '日本語 é', '',
    ];
    const want = new Map<string, string>();
    for (let round = 0; round < 20; round++) {
      for (const [i, v] of values.entries()) {
        await r.txn([{ put: `/v/${i}`, value: v + (round % 2 ? '' : ' ') }]);
        want.set(`/v/${i}`, v + (round % 2 ? '' : ' '));
      }
    }
    await until(() => r.stats.compactions >= 1);
    const read = async (reg: EmbeddedRegistry) => new Map((await reg.range('/v/')).kvs.map((k) => [k.key, k.value]));
    expect(await read(r)).toEqual(want);
    // Writing the same value again is no change (compared packed).
    const rev = (await r.range('/')).revision;
    expect(await r.txn([{ put: '/v/0', value: want.get('/v/0')! }])).toBe(rev);
    await r.close();
    const again = await open(dir);
    expect(await read(again)).toEqual(want);
    await again.close();
  });

  it('migrates a registry.json from before the log once', async () => {
    const dir = tempDir();
    const legacy = {
      format: 'corral-registry/1',
      revision: 42,
      kvs: {
        '/corral/services/default/web': { value: '{"name":"web"}', modRevision: 7 },
        '/corral/endpoints/e1': { value: '{"id":"e1"}', modRevision: 42 },
      },
    };
    writeFileSync(join(dir, LEGACY_FILE), JSON.stringify(legacy), { mode: 0o600 });
    const said = recordingLog();
    const r = await open(dir, { log: said });
    expect(said.infos).toEqual([expect.stringMatching(/migrated/)]);
    expect(existsSync(join(dir, LEGACY_FILE))).toBe(false);
    expect(await r.range('/corral/')).toEqual({
      revision: 42,
      kvs: [
        { key: '/corral/endpoints/e1', value: '{"id":"e1"}', modRevision: 42 },
        { key: '/corral/services/default/web', value: '{"name":"web"}', modRevision: 7 },
      ],
    });
    expect(await r.txn([{ delete: '/corral/endpoints/e1' }])).toBe(43);
    await r.close();
    const quiet = recordingLog();
    const again = await open(dir, { log: quiet });
    expect(quiet.infos).toEqual([]);
    expect(await again.range('/corral/')).toEqual({ revision: 43, kvs: [{ key: '/corral/services/default/web', value: '{"name":"web"}', modRevision: 7 }] });
    await again.close();
  });

  it('says what to do when the old registry.json is damaged', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, LEGACY_FILE), '{"format": "corral-registry/1", "revis');
    await expect(new EmbeddedRegistry(dir, { log: recordingLog() }).open()).rejects.toThrow(/not valid JSON.*move it away/);
  });

  it('syncs transactions made together once, and those made during a sync together in the next', async () => {
    const r = (await open(tempDir())) as EmbeddedRegistry;
    let syncs = r.stats.logSyncs;
    const together = await Promise.all(Array.from({ length: 16 }, (_, i) => r.txn([{ put: `/t${i}`, value: '1' }])));
    expect(new Set(together).size).toBe(16);
    expect(r.stats.logSyncs - syncs).toBe(1);

    syncs = r.stats.logSyncs;
    const first = r.txn([{ put: '/first', value: '1' }]);
    await new Promise((res) => setImmediate(res)); // the first is being written now
    const during = Array.from({ length: 15 }, (_, i) => r.txn([{ put: `/d${i}`, value: '1' }]));
    await Promise.all([first, ...during]);
    expect(r.stats.logSyncs - syncs).toBe(2);

    // 16 clients, each waiting for its answer before its next transaction: one sync per round.
    syncs = r.stats.logSyncs;
    await Promise.all(Array.from({ length: 16 }, async (_, c) => {
      for (let i = 0; i < 10; i++) await r.txn([{ put: `/c${c}`, value: String(i) }]);
    }));
    expect(r.stats.logSyncs - syncs).toBeLessThanOrEqual(10);
    await r.close();
  });

  it('checks compares against transactions accepted but not yet synced', async () => {
    const r = await open(tempDir());
    const base = (await r.range('/')).revision;
    const [a, b, c, d] = await Promise.all([
      r.txn([{ put: '/lock', value: 'h1' }], [{ key: '/lock', modRevision: 0 }]),
      r.txn([{ put: '/lock', value: 'h2' }], [{ key: '/lock', modRevision: 0 }]),
      r.txn([{ put: '/lock', value: 'h1-renewed' }], [{ key: '/lock', modRevision: base + 1 }]),
      r.txn([{ put: '/lock', value: 'h1-renewed' }]),
    ]);
    expect([a, b, c, d]).toEqual([base + 1, null, base + 2, base + 2]);
    expect((await r.range('/lock')).kvs).toEqual([{ key: '/lock', value: 'h1-renewed', modRevision: base + 2 }]);

    // 20 racing read-modify-write increments: each either wins its round or sees the winner.
    const counter = async () => {
      for (;;) {
        const cur = (await r.range('/n')).kvs[0];
        const next = String(Number(cur?.value ?? 0) + 1);
        if ((await r.txn([{ put: '/n', value: next }], [{ key: '/n', modRevision: cur?.modRevision ?? 0 }])) !== null) return;
      }
    };
    await Promise.all(Array.from({ length: 20 }, counter));
    expect((await r.range('/n')).kvs[0]!.value).toBe('20');
    await r.close();
  });

  it('gives watchers every batch once, in order, only after it is on disk', async () => {
    const dir = tempDir();
    const r = await open(dir);
    const base = (await r.range('/')).revision;
    const seen: KvBatch[] = [];
    let logAtDelivery = 0;
    r.watch('/', base, (b) => {
      seen.push(b);
      logAtDelivery = statSync(join(dir, logsIn(dir)[0]!)).size;
    }, () => {});
    const revs = await Promise.all(Array.from({ length: 50 }, (_, i) => r.txn([{ put: `/w${i % 5}`, value: String(i) }])));
    expect(seen.map((b) => b.revision)).toEqual(revs);
    expect(seen.map((b) => b.revision)).toEqual(Array.from({ length: 50 }, (_, i) => base + 1 + i));
    expect(logAtDelivery).toBe(statSync(join(dir, logsIn(dir)[0]!)).size);
    expect(logAtDelivery).toBeGreaterThan(0);
    await r.close();
  });

  it('tells the writer when a watcher throws, and keeps the change and the other watchers going', async () => {
    const r = await open(tempDir());
    const base = (await r.range('/')).revision;
    const seen: number[] = [];
    r.watch('/', base, (b) => {
      if (b.events.some((e) => e.key === '/bad')) throw new Error('watcher bug');
    }, () => {});
    r.watch('/', base, (b) => seen.push(b.revision), () => {});
    const [bad, good] = await Promise.allSettled([r.txn([{ put: '/bad', value: '1' }]), r.txn([{ put: '/good', value: '1' }])]);
    expect(bad).toMatchObject({ status: 'rejected', reason: new Error('watcher bug') });
    expect(good).toEqual({ status: 'fulfilled', value: base + 2 });
    expect(seen).toEqual([base + 1, base + 2]);
    expect((await r.range('/')).kvs.map((k) => k.key)).toEqual(['/bad', '/good']);
    await r.close();
  });

  it('rejects a batch it cannot write, with what depended on it, and stores none of it', async () => {
    // A real full disk: the state dir on a 256 KiB tmpfs.
    const dir = tempDir();
    const state = join(dir, 'state');
    mkdirSync(state);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', state]);
    mounts.push(state);
    const r = await open(state);
    const base = (await r.txn([{ put: '/kept', value: 'yes' }]))!;
    const filler = join(state, 'filler');
    try {
      appendFileSync(filler, Buffer.alloc(256 * 1024));
    } catch {
      // full: what we wanted
    }
    const big = 'x'.repeat(64 * 1024);
    const failed = await Promise.allSettled([
      r.txn([{ put: '/big', value: big }]),
      r.txn([{ put: '/after-big', value: '1' }], [{ key: '/big', modRevision: base + 1 }]),
      r.txn([{ put: '/big', value: big }]), // a no-op on top of the first: answered with it
    ]);
    for (const f of failed) {
      expect(f.status).toBe('rejected');
      expect(String((f as PromiseRejectedResult).reason)).toMatch(new RegExp(`cannot write the registry log ${state}/registry-\\d+\\.log: .*ENOSPC.*nothing was stored; try again`));
    }
    expect(await r.range('/')).toEqual({ revision: base, kvs: [{ key: '/kept', value: 'yes', modRevision: base }] });
    rmSync(filler);
    expect(await r.txn([{ put: '/small', value: '1' }])).toBe(base + 1);
    await r.close();
    const said = recordingLog();
    const again = await open(state, { log: said });
    expect(said.warnings).toEqual([]); // the half-written batch was cut off, not left as a torn record
    expect((await again.range('/')).kvs.map((k) => k.key)).toEqual(['/kept', '/small']);
    await again.close();
  });
});
