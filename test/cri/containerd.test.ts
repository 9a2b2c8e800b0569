// The Kubernetes node path: kubelet never execs a CNI plugin, it asks containerd over CRI, and
// containerd's CRI plugin calls corral-cni through go-cni/libcni. Two test hosts (two agents on one
// etcd, the WireGuard mesh between them), each with a private containerd 1.6 whose CRI `cni`
// dirs hold what `corral install-cni --namespace-from-pod` wrote. This test speaks CRI v1 over
// gRPC exactly as kubelet would (RunPodSandbox with metadata, namespace options and DNS config,
// Create/StartContainer, Stop/RemovePodSandbox) and checks what a pod sees.
import { copyFile, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCluster, type Cluster, type TestHost } from '../support/cluster.js';
import { corral, startDaemon, type Daemon } from '../support/corral.js';
import { CriClient, CriError, type Pod, type PodSpec } from '../support/cri/client.js';
import { startContainerd, type Containerd } from '../support/cri/containerd.js';
import { until } from '../support/until.js';

interface Node { host: TestHost; ctrd: Containerd; cri: CriClient; dns: Daemon; gateway: string }

const json = (s: string) => JSON.parse(s);

describe('containerd CRI with corral-cni on two hosts', () => {
  let c: Cluster;
  const nodes: Node[] = [];
  let web: { pod: Pod; ctr: string; ip: string };
  let client: { pod: Pod; ctr: string; ip: string };

  /** This host's allocations (`ipam ls` lists the cluster's). */
  async function allocations(n: Node): Promise<Array<{ address: string; namespace: string; containerId: string; name: string; node: string }>> {
    const r = await n.host.agent!.cli(['ipam', 'ls', '--json']);
    expect(r.code, r.stderr).toBe(0);
    return json(r.stdout).allocations.filter((a: { node: string }) => a.node === n.host.name);
  }

  /** A pod as kubelet would start it, DNS pointing at this host's Corral DNS (its block gateway). */
  function podSpec(n: Node, name: string, namespace: string): PodSpec {
    return { name, namespace, dns: { servers: [n.gateway], searches: [`${namespace}.corral.internal`, 'corral.internal'], options: ['ndots:2'] } };
  }

  async function startPod(n: Node, name: string, namespace: string, command: string[]) {
    const pod = await n.cri.runPod(podSpec(n, name, namespace), join(n.ctrd.dir, 'pods'));
    const ctr = await n.cri.startContainer(pod, name, command);
    const ip = (await n.cri.podStatus(pod.id)).ip;
    return { pod, ctr, ip };
  }

  const wget = (n: Node, ctr: string, url: string) => n.cri.exec(ctr, ['/bin/timeout', '5', '/bin/wget', '-q', '-O', '-', url], 15);

  beforeAll(async () => {
    c = await startCluster({ hosts: 2 });
    for (const host of c.hosts) {
      const ctrd = await startContainerd({ netns: host.ns, prefix: 'cri' });
      // What a node's containernetworking-plugins package provides: containerd adds `lo` itself, corral's conflist chains portmap.
      for (const p of ['loopback', 'portmap']) await copyFile(`/usr/lib/cni/${p}`, join(ctrd.cniBinDir, p));
      const inst = await corral(['install-cni', '--bin-dir', ctrd.cniBinDir, '--conf-dir', ctrd.cniConfDir, '--namespace-from-pod', '--agent-socket', host.agent!.socket]);
      expect(inst.code, inst.stderr).toBe(0);
      const row = json((await host.agent!.cli(['hosts', '--json'])).stdout).rows.find((r: { host: { name: string } }) => r.host.name === host.name);
      const gateway = String(row.host.block).replace(/\.0\/\d+$/, '.1');
      const dns = await startDaemon('dns', { netns: host.ns.name, nodeName: host.name, args: ['--agent-socket', host.agent!.socket, '--dns-listen', 'gateway:53'] });
      const cri = new CriClient(ctrd.socket);
      nodes.push({ host, ctrd, cri, dns, gateway });
      // kubelet's gate: the runtime ready and the network config loaded (containerd watches the conf dir).
      await until(`containerd on ${host.name} ready with Corral's network`, () => cri.ready(), { ms: 30_000, everyMs: 100, detail: () => ctrd.logTail() });
    }
  });

  afterAll(async () => {
    for (const n of nodes) {
      await n.cri.removeAll();
      n.cri.close();
      await n.dns.stop().catch(() => undefined);
      await n.ctrd.stop().catch(() => undefined);
    }
    await c?.close();
  });

  it('starts pods through CRI on both hosts: addresses from each block, the pod namespace as Corral namespace, reachable over the mesh and by name', async () => {
    const [n1, n2] = nodes as [Node, Node];
    expect((await n1.cri.version()).runtime_name).toBe('containerd');
    web = await startPod(n1, 'web-0', 'shop', ['/bin/httpd', '-f', '-p', '8080', '-h', '/www']);
    client = await startPod(n2, 'client-0', 'shop', ['/bin/sleep', '3600']);
    expect(web.ip.split('.').slice(0, 3).join('.')).toBe(n1.gateway.split('.').slice(0, 3).join('.'));
    expect(client.ip.split('.').slice(0, 3).join('.')).toBe(n2.gateway.split('.').slice(0, 3).join('.'));
    // The pod's Kubernetes namespace (K8S_POD_NAMESPACE from containerd) is its Corral namespace.
    const a1 = (await allocations(n1)).find((a) => a.address === web.ip);
    expect(a1).toMatchObject({ namespace: 'shop', name: 'web-0' });
    // The overlay MTU on the pod's interface; the DNS config kubelet sent in its resolv.conf.
    expect((await n2.cri.exec(client.ctr, ['/bin/ip', 'link', 'show', 'eth0'])).stdout).toMatch(/mtu 1440 /);
    expect((await n2.cri.exec(client.ctr, ['/bin/cat', '/etc/resolv.conf'])).stdout).toContain(`nameserver ${n2.gateway}`);

    // Across hosts by address (h2's pod to h1's pod, over WireGuard).
    await until('client-0 on h2 reaches web-0 on h1', async () => (await wget(n2, client.ctr, `http://${web.ip}:8080/`)).stdout === 'ok\n', { ms: 20_000, everyMs: 250 });
    // By name: a service registered on h1 for the pod, resolved by h2's Corral DNS in the pod's namespace.
    const reg = await n1.host.agent!.cli(['register', 'web', `${web.ip}:8080`, '-n', 'shop']);
    expect(reg.code, reg.stderr).toBe(0);
    await until('web resolves in client-0', async () => (await n2.cri.exec(client.ctr, ['/bin/nslookup', 'web'])).stdout.includes(web.ip), { ms: 20_000, everyMs: 250 });
    expect((await wget(n2, client.ctr, 'http://web:8080/')).stdout).toBe('ok\n');
  });

  it('frees the address when a sandbox is stopped and removed', async () => {
    const [, n2] = nodes as [Node, Node];
    const p = await startPod(n2, 'short-lived', 'shop', ['/bin/sleep', '3600']);
    expect((await allocations(n2)).map((a) => a.address)).toContain(p.ip);
    await n2.cri.stopPod(p.pod.id);
    expect((await allocations(n2)).map((a) => a.address)).not.toContain(p.ip);
    await n2.cri.removePod(p.pod.id);
    expect((await n2.cri.listPods()).map((x) => x.id)).not.toContain(p.pod.id);
    expect((await allocations(n2)).map((a) => a.address).sort()).toEqual([client.ip]);
  });

  it('keeps running pods networked across a containerd restart, and starts new ones after it', async () => {
    const [n1, n2] = nodes as [Node, Node];
    await n2.ctrd.stopDaemon('SIGTERM');
    // containerd is down: the pod's shim and process run on, and so does its network.
    expect((await wget(n1, web.ctr, `http://${web.ip}:8080/`)).stdout).toBe('ok\n');
    await n2.ctrd.startDaemon();
    // As kubelet does, wait for the runtime to say it is ready (CRI answers "not initialized" while it recovers its state).
    await until('containerd on h2 ready again', () => n2.cri.ready(), { ms: 30_000, everyMs: 100 });
    expect((await n2.cri.podStatus(client.pod.id)).state).toBe('SANDBOX_READY');
    expect((await n2.cri.podStatus(client.pod.id)).ip).toBe(client.ip);
    expect((await wget(n2, client.ctr, `http://${web.ip}:8080/`)).stdout).toBe('ok\n');
    const fresh = await startPod(n2, 'after-restart', 'shop', ['/bin/sleep', '3600']);
    expect(fresh.ip).not.toBe(client.ip);
    await until('the new pod reaches web-0 on h1', async () => (await wget(n2, fresh.ctr, `http://${web.ip}:8080/`)).stdout === 'ok\n', { ms: 20_000, everyMs: 250 });
    await n2.cri.stopPod(fresh.pod.id);
    await n2.cri.removePod(fresh.pod.id);
  });

  it('fails a sandbox whose network config is wrong with our message in containerd\'s error, holding no address', async () => {
    const [n1] = nodes as [Node, Node];
    const file = join(n1.ctrd.cniConfDir, '10-corral.conflist');
    const good = await readFile(file, 'utf8');
    const bad = json(good);
    bad.plugins[0].mtu = 5;
    // Written whole (rename), as install-cni does: containerd reloads the dir on the change.
    await writeFile(`${file}.new`, JSON.stringify(bad));
    await rename(`${file}.new`, file);
    const before = (await allocations(n1)).map((a) => a.address).sort();
    let err: CriError | undefined;
    try {
      await until('containerd runs the bad config', async () => {
        try {
          const p = await n1.cri.runPod(podSpec(n1, 'bad-0', 'shop'), join(n1.ctrd.dir, 'pods'));
          // containerd had not reloaded yet: this one started with the good config
          await n1.cri.stopPod(p.id);
          await n1.cri.removePod(p.id);
          return false;
        } catch (e) {
          err = e as CriError;
          return true;
        }
      }, { ms: 20_000, everyMs: 200 });
      expect(err).toBeInstanceOf(CriError);
      expect(err!.details).toContain('"mtu" 5 is not a whole number from 576 to 9000');
      expect((await allocations(n1)).map((a) => a.address).sort()).toEqual(before);
    } finally {
      await writeFile(`${file}.new`, good);
      await rename(`${file}.new`, file);
    }
    // and the good config serves again
    const ok = await until('a pod starts again with the good config', async () => {
      try {
        return await n1.cri.runPod(podSpec(n1, 'good-again', 'shop'), join(n1.ctrd.dir, 'pods'));
      } catch {
        return undefined;
      }
    }, { ms: 20_000, everyMs: 200 });
    await n1.cri.stopPod(ok.id);
    await n1.cri.removePod(ok.id);
  });

  it('fails a sandbox while the agent is down with our "try again" in containerd\'s error; once it is back, kubelet\'s stop and remove clean up and pods start', async () => {
    const [n1] = nodes as [Node, Node];
    const before = (await allocations(n1)).map((a) => a.address).sort();
    await n1.host.agent!.stop('SIGTERM');
    const err = await n1.cri.runPod(podSpec(n1, 'agentless-0', 'shop'), join(n1.ctrd.dir, 'pods')).then(() => undefined, (e: CriError) => e);
    expect(err).toBeInstanceOf(CriError);
    expect(err!.details).toMatch(/try again once the agent is up/);
    await n1.host.start();
    // What kubelet does with a sandbox that failed: stop and remove it (containerd may have kept it, its DEL having failed too).
    for (const p of (await n1.cri.listPods()).filter((x) => x.name === 'agentless-0')) {
      await n1.cri.stopPod(p.id);
      await n1.cri.removePod(p.id);
    }
    expect((await n1.cri.listPods()).filter((x) => x.name === 'agentless-0')).toEqual([]);
    expect((await allocations(n1)).map((a) => a.address).sort()).toEqual(before);
    const p = await startPod(n1, 'agent-back', 'shop', ['/bin/sleep', '3600']);
    expect(p.ip).toBeTruthy();
    await n1.cri.stopPod(p.pod.id);
    await n1.cri.removePod(p.pod.id);
    expect((await allocations(n1)).map((a) => a.address).sort()).toEqual(before);
  });
});
