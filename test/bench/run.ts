// `npm run bench`: runs every benchmark side by side with its anchor and writes RESULTS.md.
// `npm run bench -- dns` runs only the named ones.
import { writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import type { BenchSection } from './report.js';

const benches: Record<string, () => Promise<BenchSection>> = {
  dns: async () => (await import('./dns.js')).benchDns(),
  'docker-to-serving': async () => (await import('./docker-to-serving.js')).benchDockerToServing(),
  cni: async () => (await import('./cni.js')).benchCni(),
  lb: async () => (await import('./lb.js')).benchLb(),
  overlay: async () => (await import('./overlay.js')).benchOverlay(),
};

function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 100) return n.toFixed(0);
  if (Math.abs(n) >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

function render(sections: BenchSection[], command: string): string {
  const lines = [
    '# Benchmark results',
    '',
    `Made by \`${command}\` on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC,`,
    `${cpus().length} cores (${cpus()[0]?.model.trim() ?? 'unknown'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}.`,
    'Each section runs ours and its anchor in the same run on the same machine. Ratio > 1 means ours is better',
    '(ours/anchor for rates, anchor/ours for latencies). These machines are noisy: compare ratios, not times.',
    '',
  ];
  for (const s of sections) {
    lines.push(`## ${s.title}`, '', `Anchor: ${s.anchor}`, '', `Conditions: ${s.conditions}`, '');
    lines.push('| metric | ours | anchor | unit | ratio | target | met |', '|---|---:|---:|---|---:|---|---|');
    for (const r of s.rows) {
      lines.push(`| ${r.metric} | ${fmt(r.ours)} | ${fmt(r.anchor)} | ${r.unit} | ${fmt(r.ratio)}× | ${r.target ?? ''} | ${r.pass === undefined ? '' : r.pass ? 'yes' : 'no'} |`);
    }
    if (s.notes?.length) lines.push('', ...s.notes.map((n) => `- ${n}`));
    lines.push('');
  }
  return lines.join('\n');
}

const only = process.argv.slice(2);
const names = only.length ? only : Object.keys(benches);
for (const n of names) if (!benches[n]) throw new Error(`unknown benchmark "${n}"; known: ${Object.keys(benches).join(', ')}`);
const sections: BenchSection[] = [];
for (const n of names) {
  process.stderr.write(`bench: ${n}...\n`);
  const s = await benches[n]!();
  sections.push(s);
  process.stderr.write(render([s], '') + '\n');
}
const command = `npm run bench${only.length ? ` -- ${only.join(' ')}` : ''}`;
writeFileSync('test/bench/RESULTS.md', render(sections, command));
process.stderr.write('bench: wrote test/bench/RESULTS.md\n');
