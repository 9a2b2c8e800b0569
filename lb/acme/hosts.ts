// Which host names the LB orders certificates for: the exact hosts of routes labelled
// corral.http.tls=acme, or of every route with --acme-all-hosts. Wildcard hosts need DNS-01,
// which the LB cannot answer: they are skipped with one warning each.
import type { Logger } from '../../api/log.js';
import type { RouteTable } from '../routes.js';

const warned = new Set<string>();

export function acmeHosts(routes: RouteTable, all: boolean, log?: Logger): Set<string> {
  const out = new Set<string>();
  for (const s of routes.routedServices()) {
    if (!all && s.edge.tls !== 'acme') continue;
    for (const h of s.hosts) {
      if (!h.startsWith('*')) out.add(h);
      else if (!warned.has(h)) {
        warned.add(h);
        log?.warn({ service: s.key, host: h }, 'no ACME certificate for a wildcard host: it needs a DNS-01 challenge, which the LB cannot answer; put a certificate for it in --tls-cert-dir');
      }
    }
  }
  return out;
}
