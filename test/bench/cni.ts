// CNI ADD and DEL latency, plugin start-up included, of `corral` (installed by `corral install-cni`,
// talking to a running agent) against the reference `bridge` + `host-local` plugins from
// /usr/lib/cni, each exec'd exactly as a runtime does (CNI_* environment, config on stdin, no
// NODE_EXTRA_CA_CERTS) into a fresh netns, alternating ours and theirs so both see the same
// machine. Plus the IPAM's own allocation throughput (journal fsync per operation).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { corral, startDaemon } from '../support/corral.js';
import { REFERENCE_PLUGINS } from '../support/cni.js';
import { Netns } from '../support/netns.js';
import { Ipam } from '../../agent/ipam.js';
import { ratioHigherBetter, ratioLowerBetter, type BenchSection } from './report.js';

const RUNS = 50;
const IPAM_OPS = 2000;

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
}

/** Execs a plugin in the host netns `host` (as a runtime does, from the host's namespace) and times it. */
function exec(host: Netns, bin: string, env: Record<string, string>, conf: object): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const c = spawn('nsenter', [`--net=${host.path}`, bin], { env: { PATH: process.env.PATH!, CNI_PATH: REFERENCE_PLUGINS, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d));
    c.stderr.on('data', (d: Buffer) => (out += d));
    c.once('error', reject);
    c.stdin.on('error', () => undefined); // a plugin may exit without reading its config
    c.once('close', (code) => {
      const ms = performance.now() - t0;
      if (code === 0) resolve(ms);
      else reject(new Error(`${bin} ${env.CNI_COMMAND} exited ${code}: ${out.trim()}`));
    });
    c.stdin.end(JSON.stringify(conf));
  });
}

function ipamThroughput(): number {
  const dir = mkdtempSync(join(tmpdir(), 'corral-bench-ipam-'));
  try {
    const ipam = new Ipam(dir, '10.42.0.0/24');
    ipam.open();
    const t0 = performance.now();
    for (let i = 0; i < IPAM_OPS / 2; i++) {
      const id = `c${i}`;
      ipam.allocate({ containerId: id, ifname: 'eth0', namespace: 'default', network: 'bench', netns: '', name: '', hostIfname: '', masq: true });
      ipam.release(id, 'eth0');
    }
    const s = (performance.now() - t0) / 1000;
    ipam.close();
    return IPAM_OPS / s;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** host-local alone, exec'd per allocation as a runtime's IPAM call would be (ADD then DEL). */
async function hostLocalThroughput(host: Netns, n: number): Promise<number> {
  const dataDir = mkdtempSync(join(tmpdir(), 'corral-bench-hl-'));
  const conf = { cniVersion: '1.0.0', name: 'benchhl', ipam: { type: 'host-local', subnet: '10.89.0.0/24', dataDir } };
  try {
    const t0 = performance.now();
    for (let i = 0; i < n / 2; i++) {
      const env = { CNI_CONTAINERID: `hl${i}`, CNI_NETNS: '/dev/null', CNI_IFNAME: 'eth0' };
      await exec(host, `${REFERENCE_PLUGINS}/host-local`, { ...env, CNI_COMMAND: 'ADD' }, conf);
      await exec(host, `${REFERENCE_PLUGINS}/host-local`, { ...env, CNI_COMMAND: 'DEL' }, conf);
    }
    return n / ((performance.now() - t0) / 1000);
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}

export async function benchCni(): Promise<BenchSection> {
  const host = await Netns.create('corral-bh');
  const made: Netns[] = [];
  const bin = mkdtempSync(join(tmpdir(), 'corral-bench-bin-'));
  const hlData = mkdtempSync(join(tmpdir(), 'corral-bench-hl-'));
  const agent = await startDaemon('agent', { netns: host.name, args: ['--log-level', 'warn'] });
  const ours = { add: [] as number[], del: [] as number[] };
  const ref = { add: [] as number[], del: [] as number[] };
  let nsenterMs = 0;
  try {
    const inst = await corral(['install-cni', '--bin-dir', bin, '--conf-dir', bin]);
    if (inst.code !== 0) throw new Error(`install-cni failed: ${inst.stderr}`);
    const oursConf = { cniVersion: '1.0.0', name: 'bench', type: 'corral', agentSocket: agent.socket };
    const refConf = { cniVersion: '1.0.0', name: 'benchref', type: 'bridge', bridge: 'cbr-bench', isGateway: true, ipMasq: true, ipam: { type: 'host-local', subnet: '10.88.0.0/24', dataDir: hlData } };
    for (let i = 0; i < 2 * RUNS; i++) made.push(await Netns.create('corral-bc'));
    // One warm-up each (page cache, the agent's first-ADD gateway and nft table), not counted.
    const warm = [made[0]!, made[1]!];
    await exec(host, join(bin, 'corral'), { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'warm', CNI_NETNS: warm[0]!.path, CNI_IFNAME: 'eth0' }, oursConf);
    await exec(host, join(bin, 'corral'), { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'warm', CNI_NETNS: warm[0]!.path, CNI_IFNAME: 'eth0' }, oursConf);
    await exec(host, `${REFERENCE_PLUGINS}/bridge`, { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'warm', CNI_NETNS: warm[1]!.path, CNI_IFNAME: 'eth0' }, refConf);
    await exec(host, `${REFERENCE_PLUGINS}/bridge`, { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'warm', CNI_NETNS: warm[1]!.path, CNI_IFNAME: 'eth0' }, refConf);
    const env = (cmd: string, i: number, ns: Netns) => ({ CNI_COMMAND: cmd, CNI_CONTAINERID: `bench${i}`, CNI_NETNS: ns.path, CNI_IFNAME: 'eth0' });
    for (let i = 0; i < RUNS; i++) {
      ours.add.push(await exec(host, join(bin, 'corral'), env('ADD', i, made[2 * i]!), oursConf));
      ref.add.push(await exec(host, `${REFERENCE_PLUGINS}/bridge`, env('ADD', i, made[2 * i + 1]!), refConf));
    }
    for (let i = 0; i < RUNS; i++) {
      ours.del.push(await exec(host, join(bin, 'corral'), env('DEL', i, made[2 * i]!), oursConf));
      ref.del.push(await exec(host, `${REFERENCE_PLUGINS}/bridge`, env('DEL', i, made[2 * i + 1]!), refConf));
    }
    const ns: number[] = [];
    for (let i = 0; i < 20; i++) ns.push(await exec(host, '/bin/true', {}, {}));
    nsenterMs = quantile(ns, 0.5);
  } finally {
    await agent.stop();
    for (const n of made) await n.delete();
    await host.delete();
    rmSync(bin, { recursive: true, force: true });
    rmSync(hlData, { recursive: true, force: true });
  }
  const ipamOps = ipamThroughput();
  const hlHost = await Netns.create('corral-bh');
  let hlOps: number;
  try {
    hlOps = await hostLocalThroughput(hlHost, 200);
  } finally {
    await hlHost.delete();
  }
  const row = (metric: string, o: number[], a: number[], q: number) => {
    const ov = quantile(o, q);
    const av = quantile(a, q);
    const ratio = ratioLowerBetter(ov, av);
    return { metric, ours: ov, anchor: av, unit: 'ms', ratio, target: '≤ 2× the reference (ratio ≥ 0.5×)', pass: ratio >= 0.5 };
  };
  return {
    title: 'CNI ADD/DEL latency (plugin start-up included) and IPAM throughput',
    anchor: 'the reference `bridge` (isGateway, ipMasq) + `host-local` plugins from /usr/lib/cni (Debian containernetworking-plugins), exec\'d the same way in the same run',
    conditions: `${RUNS} ADDs then ${RUNS} DELs each, ours and the reference alternating, each into its own fresh netns; CNI 1.0.0 configs; every plugin exec'd with CNI_* env + config on stdin, no NODE_EXTRA_CA_CERTS, under \`nsenter --net\` of a test host netns (nsenter + exec of /bin/true alone: ${nsenterMs.toFixed(1)} ms median, in both columns); ours = \`corral install-cni\`'s script (node + 12 KB plain script, HTTP/2 on node:net) → agent over gRPC (IPAM journal fsync, veth via netlink beside one \`nft -f -\`; DEL deletes the veth beside its nft removal; the registry record follows the answer); IPAM throughput: allocate+release pairs on an ext4 state dir, fsync per operation`,
    rows: [
      row('ADD median', ours.add, ref.add, 0.5),
      row('ADD p95', ours.add, ref.add, 0.95),
      row('DEL median', ours.del, ref.del, 0.5),
      row('DEL p95', ours.del, ref.del, 0.95),
      { metric: 'IPAM allocations+releases/s', ours: ipamOps, anchor: hlOps, unit: 'ops/s', ratio: ratioHigherBetter(ipamOps, hlOps) },
    ],
    notes: [
      'The IPAM row compares unlike things on purpose: ours is the in-agent journal alone (the cost behind every ADD), the anchor is host-local exec\'d per operation as a runtime calls it (process start dominates); no target is set for it.',
    ],
  };
}
