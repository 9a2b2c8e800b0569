// The canary gate: the new color against the old one over one step, from the figures every
// host's LB counted (lb/gate.ts), added up. A step passes unless the new color's 5xx share or its
// p99 is over the bounds `corral upgrade` was given; the verdict is one line either way.
import type { ColorFigures, Upgrade } from '../../api/types.js';
import { GATE_BUCKETS_MS } from '../../lb/gate.js';

/** later - earlier, per color (a color the earlier reading lacks counts from zero). */
export function window(earlier: ColorFigures[], later: ColorFigures[]): ColorFigures[] {
  const before = new Map(earlier.map((f) => [f.color, f]));
  return later.map((f) => {
    const b = before.get(f.color);
    if (!b || b.requests > f.requests) return f; // no baseline, or the LB restarted: its figures start over
    return { color: f.color, requests: f.requests - b.requests, errors: f.errors - b.errors, buckets: f.buckets.map((n, i) => n - (b.buckets[i] ?? 0)) };
  });
}

/** The 99th percentile's bucket bound in ms (the last bucket: twice the largest bound); 0 with no requests. */
export function p99Ms(f: ColorFigures | undefined): number {
  if (!f || f.requests === 0) return 0;
  const need = Math.ceil(f.requests * 0.99);
  let seen = 0;
  for (let i = 0; i < f.buckets.length; i++) {
    seen += f.buckets[i]!;
    if (seen >= need) return GATE_BUCKETS_MS[i] ?? GATE_BUCKETS_MS[GATE_BUCKETS_MS.length - 1]! * 2;
  }
  return GATE_BUCKETS_MS[GATE_BUCKETS_MS.length - 1]! * 2;
}

export interface Verdict {
  pass: boolean;
  /** The figures, one line ("green 10%: 120 requests, 0 5xx, p99 ≤ 5 ms; blue: ..."). */
  figures: string;
  /** Why it failed ('' when it passed). */
  reason: string;
  /** 5xx answers of the new color in this step. */
  newErrors: number;
}

export function judge(u: Upgrade, step: number, figures: ColorFigures[], missingHosts: string[]): Verdict {
  const to = figures.find((f) => f.color === u.toColor);
  const from = figures.find((f) => f.color === u.fromColor);
  const pct = u.steps[step]!;
  const show = (f: ColorFigures | undefined, name: string) => f && f.requests
    ? `${name} ${f.requests} requests, ${f.errors} 5xx (${(100 * f.errors / f.requests).toFixed(1)}%), p99 <= ${p99Ms(f)} ms`
    : `${name} no requests`;
  const text = `step ${step + 1}/${u.steps.length} (${u.toColor} ${pct}%): ${show(to, u.toColor)}; ${show(from, u.fromColor)}${missingHosts.length ? `; no figures from ${missingHosts.join(', ')}` : ''}`;
  const fail = (reason: string): Verdict => ({ pass: false, figures: text, reason: `gate failed at step ${step + 1}/${u.steps.length} (${u.toColor} ${pct}%): ${reason}`, newErrors: to?.errors ?? 0 });
  if (to && to.requests > 0) {
    const rate = to.errors / to.requests;
    if (rate > u.maxErrorRate) return fail(`${u.toColor} answered ${to.errors} of ${to.requests} requests with 5xx (${(100 * rate).toFixed(1)}% > ${(100 * u.maxErrorRate).toFixed(1)}%)`);
    const p99 = p99Ms(to);
    // Bucket bounds: a p99 in the bucket that ends at 100 ms is over 50 ms for sure, and fails --max-p99 60 too.
    if (u.maxP99Ms > 0 && p99 > u.maxP99Ms) return fail(`${u.toColor}'s p99 is over ${[...GATE_BUCKETS_MS].reverse().find((b) => b < p99) ?? 0} ms (bucket <= ${p99} ms), above --max-p99 ${u.maxP99Ms} ms`);
    const base = p99Ms(from);
    if (u.maxP99Ratio > 0 && from && from.requests > 0 && p99 > u.maxP99Ratio * base) return fail(`${u.toColor}'s p99 (<= ${p99} ms) is more than ${u.maxP99Ratio}x ${u.fromColor}'s (<= ${base} ms)`);
  }
  return { pass: true, figures: text, reason: '', newErrors: to?.errors ?? 0 };
}
