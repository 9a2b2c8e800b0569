// `corral.deploy=auto`: a color that appears next to the active one(s), all of whose endpoints
// say deploy=auto, is promoted (one `switch`, one registry revision, `rollback` returns) once all
// its endpoints are healthy and stay healthy for a promotion window. An endpoint of that color
// that fails (turns unhealthy, stops) within the window cancels the promotion: traffic stays
// where it was, and the color is not retried until its set of endpoints changes (a redeploy).
//
// Every agent that owns an endpoint of the candidate color runs this; the switch is a
// compare-and-swap on the service record, so the first one wins and the others see it done.
import type { Logger } from '../api/log.js';
import type { Endpoint, ServiceReply, SwitchRequest, WatchEvent } from '../api/types.js';
import { serviceKey } from '../api/types.js';
import type { Catalog } from './catalog.js';

/** Without health checks there is no interval to scale by: this long healthy (running) is enough. */
export const PROMOTION_WINDOW_MIN_MS = 2_000;

/** The promotion window for a color: long enough for its checks to see a fall, with room (interval × (fall + 2)). */
export function promotionWindowMs(endpoints: Endpoint[]): number {
  let ms = PROMOTION_WINDOW_MIN_MS;
  for (const ep of endpoints) {
    const hc = ep.healthCheck;
    if (hc && (hc.path || hc.tcp)) ms = Math.max(ms, hc.intervalMs * (hc.fall + 2));
  }
  return ms;
}

interface Candidate {
  /** Endpoint ids of the color: a new one means a new deployment (start over), a lost one a failure. */
  members: Set<string>;
  timer: NodeJS.Timeout | undefined;
  /** Promotion gave up on this set of endpoints. */
  failed: boolean;
}

export interface Promoter {
  readonly catalog: Catalog;
  readonly node: string;
  switchColor(req: SwitchRequest): Promise<ServiceReply>;
  /** A `corral upgrade` of the service is under way: its steps move the traffic, not a promotion. */
  upgrading?(namespace: string, service: string): boolean;
}

export class AutoPromotion {
  /** "<ns>/<service>|<color>" -> its promotion state. */
  private readonly candidates = new Map<string, Candidate>();
  /**
   * Per service: its active colors when last seen, and the endpoints present then. Only a color
   * with an endpoint started after the last change of the active colors is "newly started": a
   * rollback or switch by hand is never undone by a promotion of a color that was already there.
   */
  private readonly settled = new Map<string, { stamp: string; ids: Set<string> }>();
  private stopped = false;

  constructor(private readonly agent: Promoter, private readonly log: Logger) {}

  /** Look again at the services a registry change touched (after the catalog applied it). */
  review(ev: WatchEvent): void {
    if (this.stopped) return;
    const touched = new Map<string, [string, string]>();
    if (ev.snapshot) for (const s of this.agent.catalog.services.values()) touched.set(serviceKey(s.namespace, s.name), [s.namespace, s.name]);
    for (const ep of ev.endpoints) touched.set(serviceKey(ep.namespace, ep.service), [ep.namespace, ep.service]);
    for (const s of ev.services) touched.set(serviceKey(s.namespace, s.name), [s.namespace, s.name]);
    // A deleted endpoint no longer names its service: look at every service with a candidate.
    if (ev.deletedEndpoints.length > 0 || ev.deletedServices.length > 0) {
      for (const id of this.candidates.keys()) {
        const key = id.slice(0, id.indexOf('|'));
        const slash = key.indexOf('/');
        touched.set(key, [key.slice(0, slash), key.slice(slash + 1)]);
      }
    }
    for (const [ns, name] of touched.values()) this.reviewService(ns, name);
  }

  stop(): void {
    this.stopped = true;
    for (const c of this.candidates.values()) if (c.timer) clearTimeout(c.timer);
    this.candidates.clear();
    this.settled.clear();
  }

  private reviewService(ns: string, name: string): void {
    const key = serviceKey(ns, name);
    const svc = this.agent.catalog.services.get(key);
    const endpoints = this.agent.catalog.endpointsOf(ns, name);
    const byColor = new Map<string, Endpoint[]>();
    for (const ep of endpoints) {
      if (ep.draining) continue;
      let list = byColor.get(ep.color);
      if (!list) byColor.set(ep.color, (list = []));
      list.push(ep);
    }
    const seen = new Set<string>();
    if (svc && !this.agent.upgrading?.(ns, name)) {
      const stamp = JSON.stringify(svc.active);
      let settled = this.settled.get(key);
      if (settled === undefined || settled.stamp !== stamp) {
        this.settled.set(key, (settled = { stamp, ids: new Set(endpoints.map((e) => e.id)) }));
      }
      const ids = settled.ids;
      for (const [color, eps] of byColor) {
        const active = (svc.active[color] ?? 0) > 0;
        if (active || !eps.some((e) => !ids.has(e.id))) continue;
        if (!eps.every((e) => e.deploy === 'auto') || !eps.some((e) => e.node === this.agent.node)) continue;
        const id = `${key}|${color}`;
        seen.add(id);
        this.reviewColor(id, ns, name, color, eps);
      }
    }
    // Colors that became active, lost their endpoints or stopped being auto: forget them.
    for (const [id, c] of this.candidates) {
      if (id.startsWith(`${key}|`) && !seen.has(id)) {
        if (c.timer) clearTimeout(c.timer);
        this.candidates.delete(id);
      }
    }
  }

  private reviewColor(id: string, ns: string, name: string, color: string, eps: Endpoint[]): void {
    const members = new Set(eps.map((e) => e.id));
    let c = this.candidates.get(id);
    if (c && [...members].some((m) => !c!.members.has(m))) {
      // A new endpoint of this color (a redeploy or a scale-up): start over.
      if (c.timer) clearTimeout(c.timer);
      this.candidates.delete(id);
      c = undefined;
    }
    if (!c) this.candidates.set(id, (c = { members, timer: undefined, failed: false }));
    if (c.failed) return;
    const lost = [...c.members].find((m) => !members.has(m));
    const sick = eps.find((e) => !e.healthy);
    if (lost !== undefined || (sick && c.timer)) {
      // An endpoint stopped, or failed after the color was healthy: give up on this deployment.
      if (c.timer) clearTimeout(c.timer);
      c.timer = undefined;
      c.failed = true;
      this.log.warn(
        { service: name, namespace: ns, color, endpoint: lost ?? sick!.id, reason: lost ? 'stopped' : sick!.healthReason },
        `not promoting color ${color}: an endpoint failed within the promotion window; traffic stays where it was (fix it and redeploy, or \`corral switch ${name} ${color}\`)`,
      );
      return;
    }
    if (sick) return; // not all healthy yet
    if (c.timer) return;
    const windowMs = promotionWindowMs(eps);
    this.log.info({ service: name, namespace: ns, color, endpoints: eps.length, windowMs }, 'new color healthy; promoting it after the promotion window');
    const cand = c;
    c.timer = setTimeout(() => {
      cand.timer = undefined;
      if (this.stopped || this.candidates.get(id) !== cand || this.agent.upgrading?.(ns, name)) return;
      // Last look: the same endpoints, all healthy.
      const now = this.agent.catalog.endpointsOf(ns, name).filter((e) => e.color === color && !e.draining);
      if (now.length !== members.size || now.some((e) => !members.has(e.id) || !e.healthy)) {
        this.reviewService(ns, name);
        return;
      }
      this.candidates.delete(id);
      this.agent.switchColor({ service: name, namespace: ns, color }).then(
        (r) => this.log.info({ service: name, namespace: ns, color, revision: r.revision }, `promoted color ${color} (corral.deploy=auto); \`corral rollback ${name}\` returns`),
        (err: Error) => this.log.warn({ service: name, namespace: ns, color, err: err.message }, 'automatic promotion failed'),
      );
    }, windowMs);
    c.timer.unref();
  }
}
