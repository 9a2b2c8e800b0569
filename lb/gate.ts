// What `corral upgrade`'s gate reads from this LB: per service and color, answers sent, 5xx among
// them, and upstream time in a few fixed buckets (enough for a p99). Cumulative from the LB's
// start; the agent takes the difference over a canary step (agent/upgrade/figures.ts). Counting is
// one WeakMap hit and three increments; the admin endpoint's /gate answers one service, O(colors).
import type { ColorFigures, Endpoint } from '../api/types.js';
import type { ProxyObserver } from './metrics.js';
import type { RouteTarget } from './routes.js';

/** Upper bounds of the upstream-time buckets, in ms; one more bucket past the last (+Inf). */
export const GATE_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000] as const;

class Tally {
  requests = 0;
  errors = 0;
  readonly buckets = new Array<number>(GATE_BUCKETS_MS.length + 1).fill(0);
}

export class GateFigures implements ProxyObserver {
  /** "<ns>/<name>" -> color -> tally. */
  private readonly byService = new Map<string, Map<string, Tally>>();
  /** Fast path: the tally of an endpoint record object (a new object each revision that changes it). */
  private readonly byEndpoint = new WeakMap<Endpoint, Tally>();

  response(target: RouteTarget | undefined, endpoint: Endpoint | undefined, code: number, upstreamSeconds: number): void {
    // Answers that reached no endpoint (404, 503 with nothing to serve) belong to no color.
    if (target === undefined || endpoint === undefined) return;
    let t = this.byEndpoint.get(endpoint);
    if (t === undefined) this.byEndpoint.set(endpoint, (t = this.tally(`${target.namespace}/${target.name}`, endpoint.color)));
    t.requests++;
    if (code >= 500) t.errors++;
    const ms = upstreamSeconds * 1000;
    let i = 0;
    while (i < GATE_BUCKETS_MS.length && ms > GATE_BUCKETS_MS[i]!) i++;
    t.buckets[i]!++;
  }

  /** One service's figures per color, "<ns>/<name>". */
  figures(service: string): ColorFigures[] {
    const colors = this.byService.get(service);
    if (!colors) return [];
    return [...colors].map(([color, t]) => ({ color, requests: t.requests, errors: t.errors, buckets: [...t.buckets] }));
  }

  private tally(service: string, color: string): Tally {
    let colors = this.byService.get(service);
    if (!colors) this.byService.set(service, (colors = new Map()));
    let t = colors.get(color);
    if (!t) colors.set(color, (t = new Tally()));
    return t;
  }
}

/** Figures of several threads (or hosts) added up per color. */
export function addFigures(lists: ColorFigures[][]): ColorFigures[] {
  const out = new Map<string, ColorFigures>();
  for (const list of lists) {
    for (const f of list) {
      let o = out.get(f.color);
      if (!o) out.set(f.color, (o = { color: f.color, requests: 0, errors: 0, buckets: new Array<number>(GATE_BUCKETS_MS.length + 1).fill(0) }));
      o.requests += f.requests;
      o.errors += f.errors;
      f.buckets.forEach((n, i) => { if (i < o!.buckets.length) o!.buckets[i]! += n; });
    }
  }
  return [...out.values()];
}

/** Reports each response to both observers (the Prometheus metrics and the gate figures). */
export function bothObservers(a: ProxyObserver, b: ProxyObserver): ProxyObserver {
  return {
    response: (t, e, c, s) => { a.response(t, e, c, s); b.response(t, e, c, s); },
    retried: (t) => { a.retried?.(t); b.retried?.(t); },
  };
}
