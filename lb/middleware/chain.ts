// One route's middlewares, built once per thread and service from its EdgeConfig (labels.ts). The
// proxy asks `request` once per request on routes that have one (a route without any has
// `middleware === null`: one property check), and takes the header changes for the upstream
// head and the response head from here. Order: redirect, allow-list, rate limit, basic auth,
// then the rewrites (strip-prefix, request headers).
import type { Fields } from '../http1/head.js';
import type { BasicAuth } from './auth.js';
import type { EdgeConfig } from './labels.js';
import { RateLimiter } from './ratelimit.js';

/** An answer the middleware gives instead of the endpoint. */
export interface MiddlewareAnswer {
  code: number;
  text: string;
  /** Extra header lines, each ending in CRLF. */
  headers: string;
}

/** What `request` says: go on (null), answer, or wait for an async check and ask again. */
export type Verdict = null | MiddlewareAnswer | Promise<void>;

/** Value of the first field named `lower` (lower-case), or undefined. */
export function fieldValue(buf: Buffer, fields: Fields, lower: string): string | undefined {
  const pos = fields.pos;
  for (let i = 0; i < fields.count; i++) {
    const p = i * 5;
    if (pos[p + 1]! - pos[p]! !== lower.length) continue;
    if (buf.latin1Slice(pos[p]!, pos[p + 1]!).toLowerCase() === lower) return buf.latin1Slice(pos[p + 2]!, pos[p + 3]!);
  }
  return undefined;
}

export interface ChainContext {
  /** The HTTPS port clients see, for redirects ('' = 443). */
  httpsPortSuffix: string;
  /** Basic-auth files by name (auth.ts), undefined when --lb-auth-dir is not readable. */
  auth: (name: string) => BasicAuth;
}

function union(a: Set<string> | null, b: Set<string> | null): Set<string> | null {
  if (a === null) return b;
  if (b === null) return a;
  const out = new Set(a);
  for (const x of b) out.add(x);
  return out;
}

export class RouteMiddleware {
  private readonly limiter: RateLimiter | null;
  private readonly auth: BasicAuth | null;
  /** Names dropped from the upstream request: removed ones and the ones set (set replaces). */
  private readonly requestDrop: Set<string> | null;
  /** Header lines added to the upstream request. */
  readonly requestTail: string;
  private readonly responseDrop: Set<string> | null;
  private readonly responseTailHttp: string;
  private readonly responseTailHttps: string;
  /** Path prefix removed before the request goes up ('' none). */
  readonly strip: string;

  /** `service` (namespace/service) keys the rate limit's counts, which every LB thread shares. */
  constructor(readonly config: EdgeConfig, routePath: string, private readonly ctx: ChainContext, service = '') {
    this.limiter = config.rateLimit ? new RateLimiter(config.rateLimit, service) : null;
    this.auth = config.basicAuth ? ctx.auth(config.basicAuth) : null;
    const reqDrop = new Set([...config.requestRemove, ...config.requestSet.map(([n]) => n)]);
    // The credentials are for the LB: the endpoint does not get them.
    if (this.auth) reqDrop.add('authorization');
    this.requestDrop = reqDrop.size ? reqDrop : null;
    this.requestTail = config.requestSet.map(([n, v]) => `${n}: ${v}\r\n`).join('');
    const resSet = config.responseSet.map(([n, v]) => `${n}: ${v}\r\n`).join('');
    const resDrop = new Set([...config.responseRemove, ...config.responseSet.map(([n]) => n)]);
    if (config.hsts) resDrop.add('strict-transport-security');
    this.responseDrop = resDrop.size ? resDrop : null;
    this.responseTailHttp = resSet;
    this.responseTailHttps = config.hsts ? `${resSet}strict-transport-security: ${config.hsts}\r\n` : resSet;
    this.strip = config.stripPrefix && routePath !== '/' ? routePath : '';
    const set: Array<readonly [string, string]> = config.responseSet.map(([n, v]) => [n.toLowerCase(), v] as const);
    if (config.hsts) set.push(['strict-transport-security', config.hsts]);
    this.responseFieldsHttps = set;
    this.responseRemoved = new Set([...resDrop].map((n) => n.toLowerCase()));
  }

  /** The response fields set on HTTPS (h2 answers): lower-case names, HSTS included. */
  readonly responseFieldsHttps: ReadonlyArray<readonly [string, string]>;
  /** The response fields removed (lower-case; the ones set are removed first). */
  readonly responseRemoved: ReadonlySet<string>;

  /**
   * Checks one request before it is balanced. `url` is the origin-form target. The Authorization
   * field is read from the HTTP/1.1 head (`buf`, `fields`), or given (h2: `buf` null).
   */
  request(client: string, proto: string, hostHeader: string, url: string, buf: Buffer | null, fields: Fields | null, authorization?: string): Verdict {
    const c = this.config;
    if (c.redirectHttps && proto === 'http') {
      const host = hostHeader.replace(/:\d+$/, '');
      return { code: 308, text: `moved to https://${host}${this.ctx.httpsPortSuffix}${url}\n`, headers: `location: https://${host}${this.ctx.httpsPortSuffix}${url}\r\n` };
    }
    if (c.allow !== null && !c.allow.list.check(client, client.includes(':') ? 'ipv6' : 'ipv4')) {
      return { code: 403, text: `forbidden: ${client} is not in this route's allow-list\n`, headers: '' };
    }
    if (this.limiter !== null) {
      const wait = this.limiter.take(client);
      if (wait > 0) return { code: 429, text: 'too many requests: this route\'s rate limit for your address is used up; retry later\n', headers: `retry-after: ${Math.ceil(wait)}\r\n` };
    }
    if (this.auth !== null) {
      const r = this.auth.check(buf !== null && fields !== null ? fieldValue(buf, fields, 'authorization') : authorization);
      if (r === true) return null;
      if (r === false) return { code: 401, text: 'unauthorized: this route needs a user name and password\n', headers: `www-authenticate: Basic realm="${this.auth.realm}", charset="UTF-8"\r\n` };
      return r;
    }
    return null;
  }

  /** The target to send up after strip-prefix, or null when it stays as it is. */
  rewrite(url: string): string | null {
    const p = this.strip;
    if (p === '' || !url.startsWith(p)) return null;
    const rest = url.slice(p.length);
    if (rest === '' || rest.charCodeAt(0) === 63 /* ? */) return `/${rest}`;
    return rest.charCodeAt(0) === 47 /* / */ ? rest : null;
  }

  /** Connection-named fields of the request plus the ones this route drops. */
  dropRequest(named: Set<string> | null): Set<string> | null {
    return union(named, this.requestDrop);
  }

  dropResponse(named: Set<string> | null): Set<string> | null {
    return union(named, this.responseDrop);
  }

  responseTail(proto: string): string {
    return proto === 'https' ? this.responseTailHttps : this.responseTailHttp;
  }

  close(): void {
    this.limiter?.close();
  }
}

/** A route whose edge labels cannot be used: it answers 503 saying why, rather than serve without them. */
export class BrokenMiddleware extends RouteMiddleware {
  constructor(config: EdgeConfig, ctx: ChainContext, private readonly why: string) {
    super(config, '/', ctx);
  }

  override request(): Verdict {
    return { code: 503, text: `service unavailable: this route's labels cannot be applied: ${this.why}\n`, headers: '' };
  }
}
