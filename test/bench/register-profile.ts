// Where a registration's time and memory go as the registry grows: a real `corral up` (or
// `corral agent`, for the agent alone) on a one-member etcd, 16 gRPC clients calling Register
// (1,000 services, one HTTP host each), with CPU and RSS read at checkpoints. Run by hand:
//   node scripts/build.mjs && node --import tsx test/bench/register-profile.ts [up|agent] [total] [extra corral args...]
// CORRAL_PROFILE_NODE_ARGS go on the daemon's node command line (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof",
// which NODE_OPTIONS refuses): startDaemon runs process.execPath, so a wrapper script stands in for it.
import { chmodSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../support/corral.js';
import { startEtcd } from '../support/etcd.js';
import { cpuSeconds, rssBytes } from '../support/proc.js';
import { register, settledRss } from './register.js';

const STEP = 10_000;

function threadCpu(pid: number): Map<number, [string, number]> {
  const out = new Map<number, [string, number]>();
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const name = readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim();
      const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
      out.set(Number(t), [name, (f[11]! + f[12]!) / 100]);
    } catch {
      // gone
    }
  }
  return out;
}

function rssMb(pid: number): number {
  return rssBytes(pid) / 2 ** 20;
}

async function settled(pid: number): Promise<number> {
  return settledRss(pid, rssMb, Number(process.env.CORRAL_PROFILE_IDLE_S ?? 300));
}

const [part = 'up', totalArg = '50000', ...extra] = process.argv.slice(2);
const total = Number(totalArg);
const etcd = await startEtcd();
const env: Record<string, string> = {};
if (process.env.CORRAL_PROFILE_NODE_ARGS) {
  const wrapper = join(mkdtempSync(join(tmpdir(), 'corral-profile-')), 'node');
  writeFileSync(wrapper, `#!/bin/sh\nexec ${process.execPath} ${process.env.CORRAL_PROFILE_NODE_ARGS} "$@"\n`);
  chmodSync(wrapper, 0o755);
  process.execPath = wrapper;
}
// --overlay off: with etcd the overlay would come up in this (the root) namespace.
const d = await startDaemon(part as 'up' | 'agent', { args: ['--registry', etcd.spec, '--overlay', 'off', '--log-level', 'warn', ...extra], env });
try {
  const pid = d.child.pid!;
  const rss0 = await settled(pid);
  console.log(`${part} ${extra.join(' ')}: RSS ${rss0.toFixed(0)} MB with no endpoints`);
  for (let at = 0; at < total; at += STEP) {
    const before = threadCpu(pid);
    const cpu0 = cpuSeconds(pid);
    const rate = await register(d.socket, at, Math.min(total, at + STEP));
    const cpu1 = cpuSeconds(pid);
    const after = threadCpu(pid);
    const per: string[] = [];
    for (const [tid, [name, s]] of after) {
      const d0 = before.get(tid)?.[1] ?? 0;
      const us = ((s - d0) * 1e6) / STEP;
      if (us >= 5) per.push(`${tid}:${name}=${us.toFixed(0)}`);
    }
    console.log(`from ${at}: ${rate.toFixed(0)} reg/s, ${(((cpu1 - cpu0) * 1e6) / STEP).toFixed(0)} µs CPU/registration [${per.join(' ')}], RSS ${rssMb(pid).toFixed(0)} MB`);
  }
  const rss = await settled(pid);
  console.log(`${part}: RSS ${rss.toFixed(0)} MB at ${total} (settled), ${(((rss - rss0) * 1024) / total).toFixed(2)} KB/endpoint`);
  if (process.env.CORRAL_PROFILE_HOLD) {
    console.log(`holding pid ${pid} for ${process.env.CORRAL_PROFILE_HOLD} s`);
    await new Promise((r) => setTimeout(r, Number(process.env.CORRAL_PROFILE_HOLD) * 1000));
  }
} finally {
  await d.stop();
  await etcd.stop();
}
