// etcd with TLS and client-certificate authentication (certificates made by openssl for the
// test): agents given --etcd-ca/--etcd-cert/--etcd-key form the mesh; an agent that trusts another
// CA, or brings no client certificate, refuses to start with one line that names the flag to fix.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corral } from '../support/corral.js';
import { pings, reaches, startCluster, type Cluster, type TestContainer } from '../support/cluster.js';
import { until } from '../support/until.js';

const json = (s: string) => JSON.parse(s);

describe('etcd over TLS', () => {
  let c: Cluster;
  const ctr: TestContainer[] = [];
  beforeAll(async () => {
    c = await startCluster({ hosts: 2, leaseTtlS: 5, etcdTls: true });
    for (const h of c.hosts) ctr.push(await c.container(h));
  });
  afterAll(async () => {
    await c?.close();
  });

  it('forms the mesh with client certificates', async () => {
    expect(c.etcd.members[0]!.clientUrl).toMatch(/^https:/);
    await reaches(c, ctr[0]!, ctr[1]!.address, 'h1 container -> h2 container');
    for (const h of c.hosts) {
      const s = json((await h.agent!.cli(['status', '--json'])).stdout);
      expect(s.registry).toBe('etcd');
      expect(s.registryConnected).toBe(true);
      expect(json((await h.agent!.cli(['hosts', '--json'])).stdout).rows).toHaveLength(2);
    }
  });

  async function agentWith(tlsArgs: string[]) {
    const dir = mkdtempSync(join(tmpdir(), 'corral-badtls-'));
    try {
      const t0 = Date.now();
      const r = await corral(['agent', '--registry', c.etcd.spec, ...tlsArgs, '--state-dir', dir, '--run-dir', dir, '--node-name', 'intruder',
        '--overlay', 'off', '--docker-socket', '', '--admin-listen', '127.0.0.1:0'], { netns: c.hosts[0]!.ns.name, timeoutMs: 30_000 });
      return { ...r, ms: Date.now() - t0 };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('refuses etcd whose certificate another CA signed, in one line naming --etcd-ca', async () => {
    const pki = c.pki!;
    const r = await agentWith(['--etcd-ca', pki.otherCa, '--etcd-cert', pki.clientCert, '--etcd-key', pki.clientKey]);
    console.log(`wrong CA: exit ${r.code} after ${r.ms} ms: ${r.stderr.trim().split('\n').pop()}`);
    expect(r.code).toBe(1);
    const last = r.stderr.trim().split('\n').pop()!;
    expect(last).toMatch(/^corral: /);
    expect(last).toMatch(/etcd/);
    expect(last).toMatch(/--etcd-ca/);
    expect(r.ms).toBeLessThan(15_000);
  });

  it('is refused by etcd without a client certificate, in one line naming --etcd-cert', async () => {
    const r = await agentWith(['--etcd-ca', c.pki!.ca]);
    console.log(`no client cert: exit ${r.code} after ${r.ms} ms: ${r.stderr.trim().split('\n').pop()}`);
    expect(r.code).toBe(1);
    const last = r.stderr.trim().split('\n').pop()!;
    expect(last).toMatch(/--etcd-cert/);
  });
});
