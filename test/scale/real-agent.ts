// A real `corral agent` (the bundled executable, --overlay off) on an etcd that already holds N
// hosts' block leases and Host records: how long until it serves, and its CPU and time per new
// host once it does. Run: node --import tsx test/scale/real-agent.ts [N ...] (after a build).
import { generateKeyPair } from '../../agent/overlay/keys.js';
import { blockKey } from '../../agent/blocks.js';
import { keys } from '../../agent/catalog.js';
import { VERSION } from '../../api/version.js';
import type { Host } from '../../api/types.js';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { childEnv, CORRAL, startDaemon } from '../support/corral.js';
import { startEtcd } from '../support/etcd.js';
import { cpuSeconds } from '../support/proc.js';
import { intToIp, simName } from './fleet.js';
import { EtcdMeter } from './meter.js';

const CIDR = '10.64.0.0/12';

function host(i: number): { block: string; host: Host } {
  const block = `${intToIp(0x0a400000 + i * 256)}/24`;
  return { block, host: { name: simName(i), block, underlay: `198.18.${(i >> 8) & 255}.${i & 255}`, publicKey: generateKeyPair().publicKey, version: VERSION, wgPort: 51820, nextPublicKey: '', mtu: 1440, overlay: 'wireguard-go' } };
}

for (const n of process.argv.slice(2).map(Number)) {
  const etcd = await startEtcd();
  const meter = new EtcdMeter(etcd.endpoints);
  try {
    const c = meter.client;
    for (let i = 0; i < n; i += 100) {
      await Promise.all(Array.from({ length: Math.min(100, n - i) }, async (_, k) => {
        const { block, host: h } = host(i + k);
        await c.put(blockKey(h.name, block)).value(JSON.stringify({ block, node: h.name, sinceMs: Date.now() }));
        await c.put(keys.host(h.name)).value(JSON.stringify(h));
      }));
    }
    const agentBlock = '10.79.255.0/24';
    await c.put(blockKey('real-agent', agentBlock)).value(JSON.stringify({ block: agentBlock, node: 'real-agent', sinceMs: Date.now() }));
    const args = ['--registry', `etcd://${etcd.endpoints.join(',')}`, '--overlay', 'off', '--cluster-cidr', CIDR];
    const t0 = Date.now();
    const agent = await startDaemon('agent', { nodeName: 'real-agent', args }).catch((err: Error) => err);
    if (agent instanceof Error) {
      // startDaemon gives up after 20 s: how long it really takes, from the process itself.
      const child = spawn(process.execPath, [CORRAL, 'agent', '--state-dir', mkdtempSync(join(tmpdir(), 'corral-state-')), '--run-dir', mkdtempSync(join(tmpdir(), 'corral-run-')), '--admin-listen', '127.0.0.1:0', '--docker-socket', '', '--docker-plugin-socket', '', '--dns-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0', '--node-name', 'real-agent-2', ...args], { env: childEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
      const t1 = Date.now();
      let readyAfter = NaN;
      child.stderr!.on('data', (d: Buffer) => {
        if (Number.isNaN(readyAfter) && d.toString().includes('agent ready')) readyAfter = Date.now() - t1;
      });
      while (Number.isNaN(readyAfter) && Date.now() - t1 < 600_000) await new Promise((r) => setTimeout(r, 200));
      const cpu = cpuSeconds(child.pid);
      child.kill('SIGKILL');
      process.stdout.write(`${n} hosts: startDaemon gave up (${agent.message.split('\n')[0]}); started again by hand: "agent ready" after ${(readyAfter / 1000).toFixed(1)} s, ${cpu.toFixed(1)} s of CPU\n`);
      continue;
    }
    const readyMs = Date.now() - t0;
    // One more host joins: its block lease, then its Host record; time until the agent lists it.
    const pid = agent.child.pid!;
    const cpu0 = cpuSeconds(pid);
    const t1 = Date.now();
    const { block, host: h } = host(n);
    await c.put(blockKey(h.name, block)).value(JSON.stringify({ block, node: h.name, sinceMs: Date.now() }));
    await c.put(keys.host(h.name)).value(JSON.stringify(h));
    let seenMs = NaN;
    for (let t = 0; t < 600; t++) {
      const r = await agent.cli(['hosts']);
      if (r.stdout.includes(h.name)) {
        seenMs = Date.now() - t1;
        break;
      }
      await new Promise((r2) => setTimeout(r2, 200));
    }
    const cpu = cpuSeconds(pid) - cpu0;
    process.stdout.write(`${n} hosts: agent ready after ${(readyMs / 1000).toFixed(1)} s; one more host listed by \`corral hosts\` after ${(seenMs / 1000).toFixed(1)} s, agent CPU ${cpu.toFixed(1)} s for it\n`);
    await agent.stop();
  } finally {
    await meter.close();
    await etcd.stop();
  }
}
process.exit(0);
