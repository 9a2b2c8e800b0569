// The top of a V8 .cpuprofile (node --cpu-prof): self time by function and by file, and total
// (inclusive) time of the functions that call into the heavy ones, in a window of the profile.
// Run: node --import tsx test/bench/cpuprofile-top.ts <file.cpuprofile> [--from <µs> --to <µs> | --last <s> [--skip-end <s>]] [--top <n>]
// (--from/--to: monotonic-clock µs, as agent-churn.ts prints its churn window).
import { readFileSync } from 'node:fs';

interface Node { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }
interface Profile { nodes: Node[]; samples: number[]; timeDeltas: number[]; startTime: number; endTime: number }

const args = process.argv.slice(2);
const opt = (name: string, d: number) => {
  const i = args.indexOf(name);
  return i < 0 ? d : Number(args[i + 1]);
};
const file = args[0]!;
const last = opt('--last', Infinity);
const skipEnd = opt('--skip-end', 0);
const top = opt('--top', 30);
const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;

const byId = new Map(p.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const label = (n: Node) => `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.replace(/^.*\/(node_modules\/|dist\/)/, '$1')}:${n.callFrame.lineNumber + 1}`;
const fileOf = (n: Node) => n.callFrame.url.replace(/^.*\/(node_modules\/[^/]+|dist\/chunks\/[^-]+|dist)\/?.*$/, '$1') || n.callFrame.functionName;

// Sample times (monotonic µs); the window is [from, to], else [end - skipEnd - last, end - skipEnd].
const times: number[] = [];
let t = p.startTime;
for (const d of p.timeDeltas) times.push((t += d));
const end = times[times.length - 1] ?? 0;
const hi = opt('--to', end - skipEnd * 1e6);
const lo = opt('--from', hi - last * 1e6);
const self = new Map<string, number>();
const files = new Map<string, number>();
const total = new Map<string, number>();
let inWindow = 0;
let idle = 0;
for (let i = 0; i < p.samples.length; i++) {
  if (times[i]! < lo || times[i]! > hi) continue;
  const dt = (p.timeDeltas[i + 1] ?? 0) / 1000; // ms this sample stands for
  const n = byId.get(p.samples[i]!)!;
  if (n.callFrame.functionName === '(idle)') {
    idle += dt;
    continue;
  }
  inWindow += dt;
  self.set(label(n), (self.get(label(n)) ?? 0) + dt);
  files.set(fileOf(n), (files.get(fileOf(n)) ?? 0) + dt);
  const seen = new Set<string>();
  for (let id: number | undefined = n.id; id !== undefined; id = parent.get(id)) {
    const l = label(byId.get(id)!);
    if (seen.has(l)) continue;
    seen.add(l);
    total.set(l, (total.get(l) ?? 0) + dt);
  }
}
const show = (title: string, m: Map<string, number>) => {
  process.stdout.write(`\n${title}\n`);
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) process.stdout.write(`${v.toFixed(0).padStart(7)} ms ${((100 * v) / inWindow).toFixed(1).padStart(5)}%  ${k}\n`);
};
process.stdout.write(`window ${((hi - lo) / 1e6).toFixed(1)} s: busy ${inWindow.toFixed(0)} ms, idle ${idle.toFixed(0)} ms\n`);
show('self time by function', self);
show('self time by file', files);
show('total time (inclusive)', total);
