// The LB's ACME state for `corral status`: the LB writes <state dir>/acme/status.json on every
// change; the agent of the same host reads it into its status reply's problem lines.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { HostAcme } from './manager.js';

export const STATUS_FILE = 'status.json';

/** One line per host whose last ACME order failed (none when all is well, or without ACME). */
export function acmeProblems(stateDir: string): string[] {
  let hosts: HostAcme[];
  try {
    hosts = (JSON.parse(readFileSync(join(stateDir, 'acme', STATUS_FILE), 'utf8')) as { hosts: HostAcme[] }).hosts;
  } catch {
    return [];
  }
  if (!Array.isArray(hosts)) return [];
  return hosts.filter((h) => h.failures > 0).map((h) =>
    `ACME certificate for ${h.host}: ${h.failures} failed order(s) in a row: ${h.lastError}; ${h.notAfter ? `the LB serves the previous one (valid until ${h.notAfter})` : 'no certificate yet, so HTTPS for it fails'}; next try at ${h.nextTryAt}`);
}
