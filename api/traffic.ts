// Which endpoints of a service receive traffic, and with what weight. DNS and LB both use this,
// so a blue/green switch changes both from the same revision.
import type { Endpoint, Service } from './types.js';

/**
 * The colors that receive traffic, with their share. A service record's `active` map decides;
 * when there is none, or none of its colors has any endpoint registered (the service was
 * redeployed under a new color), every color present receives traffic with equal share.
 */
export function activeColors(service: Service | undefined, endpoints: Iterable<Endpoint>): Map<string, number> {
  const present = new Set<string>();
  for (const ep of endpoints) present.add(ep.color);
  const out = new Map<string, number>();
  if (service) {
    for (const [color, share] of Object.entries(service.active)) {
      if (present.has(color) && share > 0) out.set(color, share);
    }
    // An explicit weight of 0 for every present color means "no traffic", not "fallback".
    const explicit = Object.keys(service.active).some((c) => present.has(c));
    if (out.size > 0 || explicit) return out;
  }
  for (const color of present) out.set(color, 100);
  return out;
}

/** May this endpoint get new requests (and appear in DNS)? Health and draining only. */
export function isServing(ep: Endpoint): boolean {
  return ep.healthy && !ep.draining;
}

/**
 * The serving endpoints of one service with their effective weights: the color's share
 * divided among its serving endpoints in proportion to their own weights.
 */
export function servingEndpoints(service: Service | undefined, endpoints: Endpoint[]): Array<{ endpoint: Endpoint; weight: number }> {
  const colors = activeColors(service, endpoints);
  const byColor = new Map<string, Endpoint[]>();
  for (const ep of endpoints) {
    if (!colors.has(ep.color) || !isServing(ep)) continue;
    let list = byColor.get(ep.color);
    if (!list) byColor.set(ep.color, (list = []));
    list.push(ep);
  }
  const out: Array<{ endpoint: Endpoint; weight: number }> = [];
  for (const [color, list] of byColor) {
    const share = colors.get(color)!;
    const total = list.reduce((s, ep) => s + Math.max(ep.weight, 1), 0);
    for (const ep of list) out.push({ endpoint: ep, weight: (share * Math.max(ep.weight, 1)) / total });
  }
  return out;
}

/** Serving endpoints of one color, regardless of which colors are active (`<color>.<svc>` names). */
export function colorEndpoints(endpoints: Endpoint[], color: string): Endpoint[] {
  return endpoints.filter((ep) => ep.color === color && isServing(ep));
}
