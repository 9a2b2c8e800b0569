// Pod sandbox start through containerd's CRI (what kubelet waits for): RunPodSandbox with Corral's
// conflist (from `corral install-cni`, the agent running) against the reference `bridge` +
// `host-local` conflist, in one private containerd 1.6: the anchor is a second runtime handler
// whose CNI config dir holds the reference conflist, so both start the same sandbox image on the
// same daemon, alternating pod by pod. Each pod is stopped and removed after it is timed (not timed).
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { corral, startDaemon, type Daemon } from '../support/corral.js';
import { CriClient } from '../support/cri/client.js';
import { startContainerd, type Containerd } from '../support/cri/containerd.js';
import { Netns } from '../support/netns.js';
import { ratioLowerBetter, type BenchSection } from './report.js';

const RUNS = Number(process.env.CRI_BENCH_RUNS ?? 40);
const WARMUP = 3;
const ANCHOR = 'refbridge';

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
}

export async function benchCri(): Promise<BenchSection> {
  const host = await Netns.create('cri-bench');
  let agent: Daemon | undefined;
  let ctrd: Containerd | undefined;
  let cri: CriClient | undefined;
  const anchorDir = join('/tmp', `cri-bench-anchor-${process.pid}`);
  try {
    agent = await startDaemon('agent', { netns: host.name });
    await mkdir(anchorDir, { recursive: true });
    ctrd = await startContainerd({ netns: host, prefix: 'cri-bench', runtimes: { [ANCHOR]: { cniConfDir: anchorDir } } });
    for (const p of ['loopback', 'portmap', 'bridge', 'host-local']) await copyFile(`/usr/lib/cni/${p}`, join(ctrd.cniBinDir, p));
    const inst = await corral(['install-cni', '--bin-dir', ctrd.cniBinDir, '--conf-dir', ctrd.cniConfDir, '--agent-socket', agent.socket]);
    if (inst.code !== 0) throw new Error(`corral install-cni failed: ${inst.stderr}`);
    // The reference: what a node without Corral would run, portmap chained like ours.
    await writeFile(join(anchorDir, '10-bridge.conflist'), JSON.stringify({
      cniVersion: '1.0.0', name: 'refbridge',
      plugins: [
        { type: 'bridge', bridge: 'crib0', isGateway: true, ipMasq: true, ipam: { type: 'host-local', ranges: [[{ subnet: '10.89.0.0/24' }]], routes: [{ dst: '0.0.0.0/0' }], dataDir: join(anchorDir, 'ipam') } },
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    }));
    cri = new CriClient(ctrd.socket);
    const logDir = join(ctrd.dir, 'pods');
    const ours: number[] = [];
    const anchor: number[] = [];
    // CNI config is loaded by a file watcher: the first pods wait until both networks serve.
    for (let i = 0; i < RUNS + WARMUP; i++) {
      for (const [handler, out] of [['', ours], [ANCHOR, anchor]] as const) {
        const t0 = performance.now();
        let pod;
        for (let attempt = 0; ; attempt++) {
          try {
            pod = await cri.runPod({ name: `b${i}-${handler || 'corral'}`, namespace: 'bench' }, logDir, handler);
            break;
          } catch (err) {
            if (i > 0 || attempt > 50) throw err;
            await new Promise((r) => setTimeout(r, 200));
          }
        }
        const ms = performance.now() - t0;
        if (i >= WARMUP) out.push(ms);
        const ip = (await cri.podStatus(pod.id)).ip;
        // Each handler's pods are on its own network: Corral's cluster CIDR, or the reference bridge's subnet.
        if (!ip.startsWith(handler ? '10.89.0.' : '10.42.')) throw new Error(`pod ${pod.id} (${handler || 'corral'}) has address "${ip}", not one of its network`);
        await cri.stopPod(pod.id);
        await cri.removePod(pod.id);
      }
    }
    const rows = [
      { metric: 'RunPodSandbox median', ours: quantile(ours, 0.5), anchor: quantile(anchor, 0.5) },
      { metric: 'RunPodSandbox p95', ours: quantile(ours, 0.95), anchor: quantile(anchor, 0.95) },
    ].map((r) => {
      const ratio = ratioLowerBetter(r.ours, r.anchor);
      return { ...r, unit: 'ms', ratio, target: 'ours ≤ 1.5× anchor (ratio ≥ 0.67×)', pass: ratio >= 1 / 1.5 };
    });
    return {
      title: 'Pod sandbox start through containerd CRI',
      anchor: 'the reference `bridge` + `host-local` conflist (+ `portmap`, as ours) from /usr/lib/cni, a second runtime handler of the same containerd',
      conditions: `containerd ${(await cri.version()).runtime_version} (private root, overlayfs, restrict_oom_score_adj), CRI v1 over gRPC from Node; ${RUNS} pods each after ${WARMUP} warm-up, alternating ours and anchor; RunPodSandbox round trip (sandbox container, netns, CNI ADD; the plugin exec'd by go-cni without NODE_EXTRA_CA_CERTS); corral agent with the embedded registry in the same netns`,
      rows,
      notes: [
        `ours: corral-cni (Node script, relaying to the agent) then portmap; samples ms, ours min ${Math.min(...ours).toFixed(0)} max ${Math.max(...ours).toFixed(0)}, anchor min ${Math.min(...anchor).toFixed(0)} max ${Math.max(...anchor).toFixed(0)}.`,
      ],
    };
  } finally {
    if (cri) {
      await cri.removeAll();
      cri.close();
    }
    await ctrd?.stop().catch(() => undefined);
    await agent?.stop().catch(() => undefined);
    await host.exec('ip', ['link', 'del', 'crib0']).catch(() => undefined);
    await host.delete();
    await rm(anchorDir, { recursive: true, force: true });
  }
}
