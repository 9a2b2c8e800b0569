// Which edge config a service has, per LB thread: the edge labels its endpoints carry (most
// endpoints win when they disagree, like corral.lb.balance, with one warning), parsed into a
// RouteMiddleware built once per change. A service without any keeps `middleware === null`.
import type { Logger } from '../../api/log.js';
import type { Endpoint } from '../../api/types.js';
import { BasicAuth } from './auth.js';
import { BrokenMiddleware, RouteMiddleware, type ChainContext } from './chain.js';
import { EdgeLabelError, EMPTY_EDGE, hasMiddleware, parseEdge, type EdgeConfig } from './labels.js';

/** What a service keeps (routes.ts ServiceState has these fields). */
export interface EdgeState {
  readonly key: string;
  edgeKey: string;
  edge: EdgeConfig;
  middleware: RouteMiddleware | null;
}

export interface EdgeOptions {
  /** --lb-auth-dir: the basic-auth password files. */
  authDir: string;
  /** The HTTPS port clients use, for redirects (443: not written). */
  httpsPort: number;
  /** Warn about routes asking for ACME certificates while the LB has no --acme-directory (one thread says it). */
  warnNoAcme?: boolean;
}

export class EdgeRoutes {
  private readonly ctx: ChainContext;
  private readonly auths = new Map<string, BasicAuth>();

  constructor(private readonly o: EdgeOptions, private readonly log?: Logger) {
    this.ctx = {
      httpsPortSuffix: o.httpsPort === 443 || o.httpsPort === 0 ? '' : `:${o.httpsPort}`,
      auth: (name) => {
        let a = this.auths.get(name);
        if (!a) this.auths.set(name, (a = BasicAuth.in(o.authDir, name, (msg, file) => this.log?.error({ file }, msg))));
        return a;
      },
    };
  }

  /** Brings a service's edge config in line with its endpoints. */
  update(state: EdgeState, endpoints: Endpoint[]): void {
    let votes: Map<string, { n: number; ep: Endpoint }> | undefined;
    for (const ep of endpoints) {
      const e = ep.edge;
      if (e === undefined || ep.httpHosts.length === 0) continue;
      const k = JSON.stringify(e);
      if (k === '{}') continue;
      const v = (votes ??= new Map()).get(k);
      if (v) v.n++;
      else votes.set(k, { n: 1, ep });
    }
    let key = '';
    let from: Endpoint | undefined;
    if (votes) {
      let best = 0;
      for (const [k, v] of votes) if (v.n > best || (v.n === best && k < key)) [key, best, from] = [k, v.n, v.ep];
      if (votes.size > 1) this.log?.warn({ service: state.key, variants: votes.size, chosen: key }, 'endpoints of one service carry different corral.http.* edge labels; using the set most of them carry; give them all the same labels');
    }
    if (key === state.edgeKey) return;
    state.edgeKey = key;
    state.middleware?.close();
    if (!from) {
      state.edge = EMPTY_EDGE;
      state.middleware = null;
      return;
    }
    let config: EdgeConfig;
    try {
      config = parseEdge(from.edge!);
    } catch (err) {
      const why = err instanceof EdgeLabelError ? err.message : String(err);
      this.log?.error({ service: state.key, err: why }, 'edge labels of the service cannot be applied; its routes answer 503 until they are fixed');
      state.edge = EMPTY_EDGE;
      state.middleware = new BrokenMiddleware(EMPTY_EDGE, this.ctx, why);
      return;
    }
    state.edge = config;
    if (config.tls === 'acme' && this.o.warnNoAcme) this.log?.warn({ service: state.key }, 'the service asks for an ACME certificate (corral.http.tls=acme) but this LB has no --acme-directory; its hosts get no certificate from it');
    state.middleware = hasMiddleware(config) ? new RouteMiddleware(config, normalizedPath(from.httpPath), this.ctx, state.key) : null;
  }
}

function normalizedPath(p: string): string {
  let end = p.length;
  while (end > 1 && p.charCodeAt(end - 1) === 47) end--;
  return p.slice(0, end) || '/';
}
