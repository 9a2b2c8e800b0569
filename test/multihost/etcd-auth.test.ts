// Per-host write authority, enforced by etcd (SECURITY.md): with etcd's auth on, each agent is
// its own etcd user (made by `corral etcd-init`) that may write only its own host's keys, and
// only the operator's user may write service records. Two hosts run as usual; then host h1's
// credentials, used directly against etcd, try to overwrite, claim or delete h2's records and
// to set a service's colors: etcd refuses every one. h1's agent asked to remove h2's endpoint
// reports it in one line and keeps running.
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { COMPACTOR_KEY } from '../../agent/registry/compaction.js';
import { EtcdRegistry, readPassword } from '../../agent/registry/etcd.js';
import { PermissionDenied } from '../../agent/registry/registry.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { makePki, type TestPki } from '../support/tls.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corral } from '../support/corral.js';
import { pings, reaches, startCluster, type Cluster, type TestContainer, type TestHost } from '../support/cluster.js';
import { until } from '../support/until.js';

const b64 = (s: string) => Buffer.from(s).toString('base64');
const json = (s: string) => JSON.parse(s);

describe('per-host write authority with etcd auth on', () => {
  let c: Cluster;
  let h1: TestHost;
  let h2: TestHost;
  const ctr: TestContainer[] = [];
  let url: string;

  /** etcd's JSON gateway on the underlay, as a user (token from /v3/auth/authenticate) or anonymous. */
  async function gw(path: string, body: unknown, token = ''): Promise<Record<string, any>> {
    const args = ['-s', '-m', '3', '-X', 'POST', ...(token ? ['-H', `Authorization: ${token}`] : []), '-d', JSON.stringify(body), `${url}${path}`];
    const r = await c.underlay.exec('curl', args);
    return json(r.stdout);
  }
  async function login(user: string, passwordFile: string): Promise<string> {
    const password = readFileSync(passwordFile, 'utf8').trim();
    const r = await gw('/v3/auth/authenticate', { name: user, password });
    if (!r.token) throw new Error(`no token for ${user}: ${JSON.stringify(r)}`);
    return r.token as string;
  }
  const pw = (user: string) => join(c.auth!.dir, `${user}.password`);
  async function get(key: string, token: string): Promise<{ value: string; modRevision: number } | undefined> {
    const r = await gw('/v3/kv/range', { key: b64(key) }, token);
    const kv = r.kvs?.[0];
    return kv ? { value: Buffer.from(kv.value ?? '', 'base64').toString(), modRevision: Number(kv.mod_revision) } : undefined;
  }
  const opArgs = () => ['--registry', c.etcd.spec, '--etcd-user', 'corral-operator', '--etcd-password-file', pw('corral-operator')];

  beforeAll(async () => {
    // Tokens expire after 2 s idle (etcd's default is 5 minutes), so the tests see them expire.
    c = await startCluster({ hosts: 2, etcdAuth: true, leaseTtlS: 5, etcdArgs: ['--auth-token-ttl', '2'] });
    [h1, h2] = c.hosts as [TestHost, TestHost];
    url = c.etcd.members[0]!.clientUrl;
    ctr.push(await c.container(h1), await c.container(h2));
    await reaches(c, ctr[0]!, ctr[1]!.address, 'h1 container -> h2 container');
  });
  afterAll(async () => {
    await c?.close();
  });

  it('corral etcd-init made a user per host and the operator\'s, with password files of mode 600, turned auth on, and changes nothing run again', async () => {
    const first = c.auth!.init.stdout;
    expect(first).toMatch(/^created user h1 with roles corral-host-h1, corral-reader$/m);
    expect(first).toMatch(/^created user h2 with roles corral-host-h2, corral-reader$/m);
    expect(first).toMatch(/^created user corral-operator with roles corral-operator, corral-reader$/m);
    expect(first).toMatch(/^etcd authentication is now on$/m);
    for (const u of ['h1', 'h2', 'corral-operator']) expect(statSync(pw(u)).mode & 0o777).toBe(0o600);
    // Anonymous clients are refused now.
    expect(JSON.stringify(await gw('/v3/kv/range', { key: b64('/corral/hosts/h1') }))).toMatch(/user name is empty|permission denied/);
    const again = await corral(['etcd-init', '--registry', c.etcd.spec, '--etcd-password-file', c.auth!.rootPasswordFile, '--hosts', 'h1,h2', '--password-dir', c.auth!.dir, '--enable-auth'], { netns: c.underlay.name });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/^kept .*h1\.password$/m);
    expect(again.stdout).toMatch(/^updated user h1 with roles corral-host-h1, corral-reader$/m);
    expect(again.stdout).toMatch(/^etcd authentication was already on$/m);
    // The hosts' passwords still work: their agents keep their sessions and log in again.
    await login('h1', pw('h1'));
  });

  it('runs two hosts as usual: containers reach each other, each host\'s endpoints are served on both, and the operator sets colors', async () => {
    await reaches(c, ctr[1]!, ctr[0]!.address, 'h2 container -> h1 container');
    const r1 = await h1.agent!.cli(['register', 'web', `${ctr[0]!.address}:8080`, '--color', 'blue']);
    expect(r1.code, r1.stderr).toBe(0);
    const r2 = await h2.agent!.cli(['register', 'web', `${ctr[1]!.address}:8080`, '--color', 'green']);
    expect(r2.code, r2.stderr).toBe(0);
    for (const h of [h1, h2]) {
      await until(`both endpoints listed on ${h.name}`, async () => {
        const l = json((await h.agent!.cli(['endpoints', 'web', '--json'])).stdout);
        return l.endpoints.map((e: { node: string }) => e.node).sort().join() === 'h1,h2' ? true : undefined;
      }, { ms: 10_000, everyMs: 100 });
    }
    // The agents' users may not create the service record: one line each says so, and the service
    // serves every color present until the operator sets them.
    expect(h1.agent!.logs()).toMatch(/etcd refused user \\?"h1\\?" writing \/corral\/services\/default\/web: permission denied/);
    // A color switch through an agent is refused in one line naming the key and the user...
    const viaAgent = await h1.agent!.cli(['switch', 'web', 'green']);
    expect(viaAgent.code).toBe(1);
    expect(viaAgent.stderr.trim().split('\n')).toHaveLength(1);
    expect(viaAgent.stderr).toMatch(/^corral: etcd refused user "h1" writing \/corral\/services\/default\/web: permission denied; service records belong to the corral-operator role/);
    // ...and made by the operator with its own credentials.
    const viaOperator = await corral(['switch', 'web', 'green', ...opArgs()], { netns: h1.ns.name });
    expect(viaOperator.code, viaOperator.stderr).toBe(0);
    expect(viaOperator.stdout).toMatch(/^web: active color is now green at revision \d+/);
    const weights = await corral(['weight', 'web', 'blue=90', 'green=10', ...opArgs()], { netns: h2.ns.name });
    expect(weights.code, weights.stderr).toBe(0);
    for (const h of [h1, h2]) {
      await until(`${h.name} serves the operator's weights`, async () => {
        const s = json((await h.agent!.cli(['services', '--json'])).stdout);
        const web = (s.services as Array<{ name: string; active: Record<string, number> }>).find((x) => x.name === 'web');
        return web && web.active.blue === 90 && web.active.green === 10 ? true : undefined;
      }, { ms: 10_000, everyMs: 100 });
    }
  });

  it('refuses every write of h1\'s user to h2\'s records and to service records (authority violations tried / accepted)', async () => {
    const t1 = await login('h1', pw('h1'));
    const t2 = await login('h2', pw('h2'));
    const h2Host = await get('/corral/hosts/h2', t1); // reading is allowed: every agent reads /corral/
    expect(h2Host).toBeDefined();
    const h2Block = json(h2Host!.value).block as string;
    const h2Ep = json((await h2.agent!.cli(['endpoints', 'web', '--json'])).stdout).endpoints.find((e: { node: string }) => e.node === 'h2');
    const h2EpKey = `/corral/endpoints/h2/${h2Ep.id}`;
    const h2AllocKey = `/corral/allocations/h2/${ctr[1]!.address}`;
    expect(await get(h2EpKey, t1)).toBeDefined();
    expect(await get(h2AllocKey, t1)).toBeDefined();
    const before = await Promise.all(['/corral/hosts/h2', `/corral/blocks/h2/${h2Block.replace('/', '_')}`, h2EpKey, h2AllocKey, '/corral/services/default/web'].map((k) => get(k, t2)));

    const put = (key: string, value: unknown) => ({ request_put: { key: b64(key), value: b64(JSON.stringify(value)) } });
    const attempts: Array<[string, string, unknown]> = [
      ['overwrite h2\'s host record', '/v3/kv/put', { key: b64('/corral/hosts/h2'), value: b64(JSON.stringify({ ...json(h2Host!.value), underlay: h1.address })) }],
      ['claim h2\'s block under h2\'s prefix', '/v3/kv/put', { key: b64(`/corral/blocks/h2/${h2Block.replace('/', '_')}`), value: b64(JSON.stringify({ block: h2Block, node: 'h2', sinceMs: 1 })) }],
      ['delete h2\'s endpoint', '/v3/kv/deleterange', { key: b64(h2EpKey) }],
      ['delete every endpoint', '/v3/kv/deleterange', { key: b64('/corral/endpoints/'), range_end: b64('/corral/endpoints0') }],
      ['overwrite h2\'s allocation', '/v3/kv/put', { key: b64(h2AllocKey), value: b64('{}') }],
      ['overwrite h2\'s status report', '/v3/kv/put', { key: b64('/corral-status/h2'), value: b64('{}') }],
      ['write a service\'s colors', '/v3/kv/put', { key: b64('/corral/services/default/web'), value: b64(JSON.stringify({ namespace: 'default', name: 'web', active: { blue: 100 }, previous: {} })) }],
      ['delete a service record', '/v3/kv/deleterange', { key: b64('/corral/services/default/web') }],
      ['write its own key and h2\'s in one transaction', '/v3/kv/txn', { success: [put('/corral/endpoints/h1/probe', 'x'), put('/corral/hosts/h2', 'x')] }],
    ];
    let accepted = 0;
    for (const [what, path, body] of attempts) {
      const r = await gw(path, body, t1);
      const refused = /permission denied/.test(String(r.error ?? r.message ?? ''));
      if (!refused) accepted++;
      console.log(`h1 tries to ${what}: ${refused ? 'refused by etcd' : `ACCEPTED ${JSON.stringify(r)}`}`);
    }
    console.log(`authority violations tried ${attempts.length}, accepted ${accepted}`);
    expect(accepted).toBe(0);
    const after = await Promise.all(['/corral/hosts/h2', `/corral/blocks/h2/${h2Block.replace('/', '_')}`, h2EpKey, h2AllocKey, '/corral/services/default/web'].map((k) => get(k, t2)));
    expect(after.map((x) => x?.modRevision)).toEqual(before.map((x) => x?.modRevision));
    expect(await get('/corral/endpoints/h1/probe', t1)).toBeUndefined(); // the mixed transaction wrote nothing

    // Under its own prefix h1 may write a lease of h2's block: etcd takes it, the catalog does not
    // serve it (the older lease wins) and h2 keeps its block everywhere.
    const own = await gw('/v3/kv/put', { key: b64(`/corral/blocks/h1/${h2Block.replace('/', '_')}`), value: b64(JSON.stringify({ block: h2Block, node: 'h1', sinceMs: Date.now() })) }, t1);
    expect(own.error).toBeUndefined();
    for (const h of [h1, h2]) {
      await until(`${h.name} reports h1's younger lease of ${h2Block}`, async () => {
        const s = json((await h.agent!.cli(['status', '--json'])).stdout);
        return (s.problems as string[]).some((p) => p.startsWith(`/corral/blocks/h1/${h2Block.replace('/', '_')}: block: ${h2Block} overlaps ${h2Block}, leased earlier to h2`)) ? true : undefined;
      }, { ms: 10_000, everyMs: 100 });
      const rows = json((await h.agent!.cli(['hosts', '--json'])).stdout).rows as Array<{ host: { name: string; block: string } }>;
      expect(rows.find((r) => r.host.name === 'h2')?.host.block).toBe(h2Block);
    }
    expect(await pings(ctr[0]!, ctr[1]!.address)).toBe(true);
    const gone = await gw('/v3/kv/deleterange', { key: b64(`/corral/blocks/h1/${h2Block.replace('/', '_')}`) }, await login('h1', pw('h1')));
    expect(gone.deleted).toBe('1');
  });

  it('h1\'s agent asked to remove h2\'s endpoint reports the refusal in one line and keeps running', async () => {
    const logBefore = h1.agent!.logs().length;
    const r = await h1.agent!.cli(['deregister', 'web', `${ctr[1]!.address}:8080`]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^corral: etcd refused user "h1" writing \/corral\/endpoints\/h2\/\S+: permission denied; a host's etcd user may write only its own host's keys/);
    // No password in any log line.
    for (const u of ['h1', 'h2', 'corral-operator']) expect(h1.agent!.logs() + h2.agent!.logs()).not.toContain(readFileSync(pw(u), 'utf8').trim());
    const lines = h1.agent!.logs().slice(logBefore).split('\n').filter((l) => l.includes('etcd refused user'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/"etcdUser":"h1"/);
    expect(lines[0]).toMatch(/\/corral\/endpoints\/h2\//);
    // Still running and in sync; h2's endpoint still served everywhere.
    const st = json((await h1.agent!.cli(['status', '--json'])).stdout);
    expect(st.registryConnected).toBe(true);
    for (const h of [h1, h2]) {
      const l = json((await h.agent!.cli(['endpoints', 'web', '--json'])).stdout);
      expect(l.endpoints.map((e: { node: string }) => e.node).sort()).toEqual(['h1', 'h2']);
    }
    // Its own endpoint it removes as usual.
    const own = await h1.agent!.cli(['deregister', 'web', `${ctr[0]!.address}:8080`]);
    expect(own.code, own.stderr).toBe(0);
  });

  it('keeps working when the agents\' tokens expired and etcd restarted: watches and leases come back as the same users', async () => {
    await new Promise((r) => setTimeout(r, 3000)); // past --auth-token-ttl
    const m = c.etcd.members[0]!;
    await m.stop();
    await m.start();
    const r = await h2.agent!.cli(['register', 'api', `${ctr[1]!.address}:9090`]);
    expect(r.code, r.stderr).toBe(0);
    await until('h1 lists h2\'s new endpoint', async () => {
      const l = await h1.agent!.cli(['endpoints', 'api', '--json']);
      return l.code === 0 && json(l.stdout).endpoints.length === 1 ? true : undefined;
    }, { ms: 20_000, everyMs: 200 });
    for (const h of [h1, h2]) {
      await until(`${h.name} connected`, async () => (json((await h.agent!.cli(['status', '--json'])).stdout).registryConnected ? true : undefined), { ms: 10_000, everyMs: 200 });
    }
    // Both hosts' records outlived the restart (their leases were kept or put back).
    const rows = json((await h1.agent!.cli(['hosts', '--json'])).stdout).rows as Array<{ host: { name: string } }>;
    expect(rows.map((x) => x.host.name).sort()).toEqual(['h1', 'h2']);
    expect(await pings(ctr[0]!, ctr[1]!.address)).toBe(true);
  });
});

describe('etcd users from client certificates and password files', () => {
  let etcd: EtcdCluster;
  let pki: TestPki;
  let dir: string;

  beforeAll(async () => {
    pki = await makePki([]);
    etcd = await startEtcd({ tls: { ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, clientCert: pki.clientCert, clientKey: pki.clientKey } });
    dir = mkdtempSync(join(tmpdir(), 'corral-etcd-cn-'));
    writeFileSync(join(dir, 'root.password'), 'root-secret\n', { mode: 0o600 });
    const init = await corral(['etcd-init', '--registry', etcd.spec, '--etcd-ca', pki.ca, '--etcd-cert', pki.clientCert, '--etcd-key', pki.clientKey, '--etcd-password-file', join(dir, 'root.password'), '--hosts', 'h1,h2', '--password-dir', join(dir, 'users'), '--enable-auth']);
    expect(init.code, init.stdout + init.stderr).toBe(0);
  });
  afterAll(async () => {
    await etcd?.stop();
    pki?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('takes a client certificate\'s CN as the etcd user: CN=h1 writes h1\'s keys, holds the compactor post and compacts, and is refused h2\'s and service records', async () => {
    const h1 = await pki.clientFor('h1');
    const r = new EtcdRegistry({ endpoints: etcd.endpoints, tls: { ca: pki.ca, cert: h1.cert, key: h1.key } });
    await r.open();
    try {
      expect(r.user).toBe('h1');
      expect(await r.txn([{ put: '/corral/hosts/h1', value: '{}' }])).toBeGreaterThan(0);
      let tried = 0;
      let accepted = 0;
      for (const key of ['/corral/hosts/h2', '/corral/endpoints/h2/e', '/corral/blocks/h2/10.42.1.0_24', '/corral/services/default/web']) {
        tried++;
        const err = await r.txn([{ put: key, value: '{}' }]).then(() => undefined, (e: Error) => e);
        if (!(err instanceof PermissionDenied)) accepted++;
        else expect(err.message.startsWith(`etcd refused user "h1" writing ${key}: permission denied; ${key.includes('/services/') ? 'service records belong to the corral-operator role' : "a host's etcd user may write only its own host's keys"}`), err.message).toBe(true);
      }
      console.log(`CN=h1: authority violations tried ${tried}, accepted ${accepted}`);
      expect(accepted).toBe(0);
      expect(r.health().connected).toBe(true); // a refusal is not an outage
      // The compactor post (on this user's lease) and compaction itself: etcd 3.4 allows both.
      const rev = await r.txn([{ put: COMPACTOR_KEY, value: 'h1', ephemeral: true }], [{ key: COMPACTOR_KEY, modRevision: 0 }]);
      expect(rev).toBeGreaterThan(0);
      await r.compact(rev! - 1);
    } finally {
      await r.close();
    }
  });

  it('reads a password file only when other users cannot, and says which flag to fix for a wrong password', async () => {
    const file = join(dir, 'users', 'h2.password');
    expect(readPassword(file)).toMatch(/^[A-Za-z0-9_-]{32}$/);
    chmodSync(file, 0o644);
    expect(() => readPassword(file)).toThrow(/may be read by other users: chmod 600 it/);
    chmodSync(file, 0o600);
    const wrong = join(dir, 'wrong.password');
    writeFileSync(wrong, 'not-it\n', { mode: 0o600 });
    const r = new EtcdRegistry({ endpoints: etcd.endpoints, tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey }, auth: { user: 'h2', passwordFile: wrong } });
    await expect(r.open()).rejects.toThrow(/etcd refused user "h2" with that password: check --etcd-user and --etcd-password-file/);
    const ok = new EtcdRegistry({ endpoints: etcd.endpoints, tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey }, auth: { user: 'h2', passwordFile: file } });
    await ok.open();
    expect(await ok.txn([{ put: '/corral-status/h2', value: '{}' }])).toBeGreaterThan(0);
    await ok.close();
  });
});
