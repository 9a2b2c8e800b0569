// Blue/green and canary: how `switch`, `weight` and `rollback` change a service's colors.
// Each returns the new Service record; the agent writes it as one registry revision.
import type { Endpoint, Service } from '../api/types.js';
import { dnsLabel, InvalidEndpoint } from './endpoints.js';

export class ColorError extends Error {}

export function initialService(namespace: string, name: string, color: string): Service {
  return { namespace, name, active: { [color]: 100 }, previous: {} };
}

function presentColors(endpoints: Endpoint[]): Set<string> {
  return new Set(endpoints.map((e) => e.color));
}

export function switchColor(svc: Service, endpoints: Endpoint[], color: string): Service {
  const c = dnsLabel('color', color);
  if (!presentColors(endpoints).has(c)) {
    const have = [...presentColors(endpoints)].sort().join(', ') || 'none';
    throw new ColorError(`service ${svc.name} in namespace ${svc.namespace} has no endpoint of color "${c}" (colors: ${have}); start the ${c} endpoints first`);
  }
  const next = { [c]: 100 };
  if (sameShares(svc.active, next)) return svc;
  return { ...svc, active: next, previous: svc.active };
}

export function setWeights(svc: Service, endpoints: Endpoint[], weights: Record<string, number>): Service {
  const present = presentColors(endpoints);
  const active: Record<string, number> = {};
  let total = 0;
  for (const [color, w] of Object.entries(weights)) {
    const c = dnsLabel('color', color);
    if (!Number.isInteger(w) || w < 0 || w > 100) throw new InvalidEndpoint(`weight of ${c}`, String(w), 'a whole number from 0 to 100');
    if (!present.has(c)) throw new ColorError(`service ${svc.name} in namespace ${svc.namespace} has no endpoint of color "${c}"; colors: ${[...present].sort().join(', ') || 'none'}`);
    if (w > 0) active[c] = w;
    total += w;
  }
  if (total === 0) throw new ColorError('at least one color needs a weight above 0 (for example blue=90 green=10)');
  if (sameShares(svc.active, active)) return svc;
  return { ...svc, active, previous: svc.active };
}

export function rollback(svc: Service): Service {
  if (Object.keys(svc.previous).length === 0) {
    throw new ColorError(`service ${svc.name} in namespace ${svc.namespace} has nothing to roll back to (no earlier switch or weight change)`);
  }
  return { ...svc, active: svc.previous, previous: svc.active };
}

function sameShares(a: Record<string, number>, b: Record<string, number>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}
