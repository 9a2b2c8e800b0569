// `npm run bench`: runs every benchmark side by side with its anchor and writes RESULTS.md.
// `npm run bench -- dns` runs only the named ones.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import type { BenchSection } from './report.js';

const benches: Record<string, () => Promise<BenchSection>> = {
  dns: async () => (await import('./dns.js')).benchDns(),
  'docker-to-serving': async () => (await import('./docker-to-serving.js')).benchDockerToServing(),
  cni: async () => (await import('./cni.js')).benchCni(),
  cri: async () => (await import('./cri.js')).benchCri(),
  lb: async () => (await import('./lb.js')).benchLb(),
  'lb-h2': async () => (await import('./lb-h2.js')).benchLbH2(),
  'lb-tcp': async () => (await import('./lb-tcp.js')).benchLbTcp(),
  overlay: async () => (await import('./overlay.js')).benchOverlay(),
  register: async () => (await import('./register.js')).benchRegister(),
  scale: async () => (await import('./scale.js')).benchScale(),
  restart: async () => (await import('./restart.js')).benchRestart(),
  'agent-churn': async () => (await import('./agent-churn.js')).benchAgentChurn(),
  upgrade: async () => (await import('./upgrade.js')).benchUpgrade(),
  console: async () => (await import('./console.js')).benchConsole(),
  // 5,000 hosts, 100,000 endpoints, no targets; the simulated devices do not follow the fleet (see FleetOptions.deliverEvents).
  'scale-5000': async () => {
    const { benchScale, scaleFromEnv } = await import('./scale.js');
    return benchScale(scaleFromEnv({ hosts: 5000, endpoints: 100_000, services: 10_000, soakS: 60, idleS: 30, join: 200, probes: 30, legacyHosts: [], targets: false, deliverEvents: false }));
  },
};

function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 100) return n.toFixed(0);
  if (Math.abs(n) >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

const HEADER = [
  '# Benchmark results',
  '',
  'Each section runs ours and its anchor in the same run on the same machine and says which command',
  'made it and when. Ratio > 1 means ours is better (ours/anchor for rates, anchor/ours for',
  'latencies). These machines are noisy: compare ratios, not times.',
  '',
].join('\n');

/** The machine's CPU tick counters (/proc/stat): total and steal (time the hypervisor gave to someone else). */
function cpuTicks(): { total: number; steal: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  return { total: f.reduce((a, b) => a + b, 0), steal: f[7] ?? 0 };
}

/** The SCALE_* knobs set for this run, as they would be typed before the command. */
function knobs(): string {
  return Object.entries(process.env).filter(([k]) => k.startsWith('SCALE_')).map(([k, v]) => `${k}=${v} `).join('');
}

function renderSection(name: string, s: BenchSection, stealPct: number): string {
  const lines = [
    `<!-- bench:${name} -->`,
    `## ${s.title}`,
    '',
    `Made by \`${knobs()}npm run bench -- ${name}\` (or \`npm run bench\`) on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, ` +
      `${cpus().length} cores (${cpus()[0]?.model.trim() ?? 'unknown'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}.`,
    `CPU steal during the run: ${stealPct.toFixed(1)}% of the machine's CPU time went to other guests of the hypervisor` +
      (stealPct >= 5 ? ' — the machine ran slowed down: absolute numbers are low and ratios less trustworthy than usual.' : '.'),
    '',
    `Anchor: ${s.anchor}`,
    '',
    `Conditions: ${s.conditions}`,
    '',
    '| metric | ours | anchor | unit | ratio | target | met |',
    '|---|---:|---:|---|---:|---|---|',
  ];
  for (const r of s.rows) {
    lines.push(`| ${r.metric} | ${fmt(r.ours)} | ${fmt(r.anchor)} | ${r.unit} | ${fmt(r.ratio)}× | ${r.target ?? ''} | ${r.pass === undefined ? '' : r.pass ? 'yes' : 'no'} |`);
  }
  if (s.notes?.length) lines.push('', ...s.notes.map((n) => `- ${n}`));
  lines.push(`<!-- /bench:${name} -->`);
  return lines.join('\n');
}

/** Sections already in RESULTS.md, by bench name, so a partial run replaces only its own. */
function existingSections(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of text.matchAll(/<!-- bench:([\w-]+) -->[\s\S]*?<!-- \/bench:\1 -->/g)) out.set(m[1]!, m[0]);
  return out;
}

const FILE = 'test/bench/RESULTS.md';
const only = process.argv.slice(2);
const names = only.length ? only : Object.keys(benches);
for (const n of names) if (!benches[n]) throw new Error(`unknown benchmark "${n}"; known: ${Object.keys(benches).join(', ')}`);
const sections = existsSync(FILE) ? existingSections(readFileSync(FILE, 'utf8')) : new Map<string, string>();
for (const n of names) {
  process.stderr.write(`bench: ${n}...\n`);
  const t0 = cpuTicks();
  const section = await benches[n]!();
  const t1 = cpuTicks();
  const text = renderSection(n, section, t1.total > t0.total ? (100 * (t1.steal - t0.steal)) / (t1.total - t0.total) : 0);
  process.stderr.write(text + '\n\n');
  sections.set(n, text);
  // Written after every benchmark, so a later failure keeps what was measured.
  const ordered = Object.keys(benches).filter((k) => sections.has(k)).map((k) => sections.get(k)!);
  writeFileSync(FILE, [HEADER, ...ordered].join('\n\n') + '\n');
}
process.stderr.write(`bench: wrote ${FILE}\n`);
// Every bench has closed what it started; a client library's idle handle must not keep the run open.
process.exit(0);
