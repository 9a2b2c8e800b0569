// The shape every benchmark returns; test/bench/run.ts writes them into RESULTS.md.
export interface BenchRow {
  metric: string;        // "queries/s", "p99 latency at half load (ms)" ...
  ours: number;
  anchor: number;
  unit: string;
  /** ours / anchor, or anchor / ours where lower is better (so > 1 is always "ours better"). */
  ratio: number;
  target?: string;       // "≥ 0.8×"
  pass?: boolean;
}

export interface BenchSection {
  title: string;
  anchor: string;        // what we compare against, with its configuration
  conditions: string;    // machine, load, query file, durations
  rows: BenchRow[];
  notes?: string[];
}

export function ratioHigherBetter(ours: number, anchor: number): number {
  return anchor === 0 ? 0 : ours / anchor;
}
export function ratioLowerBetter(ours: number, anchor: number): number {
  return ours === 0 ? 0 : anchor / ours;
}
