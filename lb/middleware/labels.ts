// The edge labels of a route: HTTPS (ACME certificate, redirect, HSTS) and the middlewares (rate
// limit, basic auth, IP allow-list, strip-prefix, header set/remove). The agent checks them when
// it reads a container's labels (a bad one: the container is not registered, one warning); the
// LB parses them again from the endpoint record (records come from other hosts: untrusted).
import { BlockList, isIP } from 'node:net';

/** Labels with one value. */
export const EDGE_LABEL = {
  tls: 'corral.http.tls',
  redirect: 'corral.http.redirect',
  hsts: 'corral.http.hsts',
  rateLimit: 'corral.http.rate-limit',
  basicAuth: 'corral.http.auth.basic',
  allow: 'corral.http.allow',
  stripPrefix: 'corral.http.strip-prefix',
  requestRemove: 'corral.http.request.remove-headers',
  responseRemove: 'corral.http.response.remove-headers',
} as const;

/** Label families: one label per header name. */
export const EDGE_PREFIX = {
  requestSet: 'corral.http.request.set-header.',
  responseSet: 'corral.http.response.set-header.',
} as const;

const SINGLE = new Set<string>(Object.values(EDGE_LABEL));
/** Most edge labels one endpoint may carry (the record's bound). */
export const MAX_EDGE_LABELS = 32;

/** True for a label name this module reads. */
export function isEdgeLabel(name: string): boolean {
  return SINGLE.has(name) || name.startsWith(EDGE_PREFIX.requestSet) || name.startsWith(EDGE_PREFIX.responseSet);
}

export class EdgeLabelError extends Error {
  constructor(readonly label: string, readonly value: string, readonly accepted: string) {
    super(`label ${label}="${value}" is not valid: ${accepted}`);
  }
}

export interface RateLimit {
  /** Tokens added per second. */
  perSecond: number;
  /** Bucket size: requests a client may send at once. */
  burst: number;
}

/** What a route's labels ask for; `EMPTY_EDGE` when nothing. */
export interface EdgeConfig {
  /** "acme": the LB gets the route's certificate from --acme-directory. */
  tls: '' | 'acme';
  /** Plain HTTP requests get a 308 to https://. */
  redirectHttps: boolean;
  /** Strict-Transport-Security value for HTTPS answers ('' = none). */
  hsts: string;
  rateLimit: RateLimit | null;
  /** Name of the htpasswd-style file in --lb-auth-dir ('' = no auth). */
  basicAuth: string;
  /** Client addresses allowed (null = everyone); the text as written, for errors and equality. */
  allow: { text: string; list: BlockList } | null;
  stripPrefix: boolean;
  requestSet: Array<[name: string, value: string]>;
  requestRemove: string[];
  responseSet: Array<[name: string, value: string]>;
  responseRemove: string[];
}

/** True when a route with this config needs the request middleware (anything besides tls). */
export function hasMiddleware(c: EdgeConfig): boolean {
  return c.redirectHttps || c.hsts !== '' || c.rateLimit !== null || c.basicAuth !== '' || c.allow !== null || c.stripPrefix
    || c.requestSet.length > 0 || c.requestRemove.length > 0 || c.responseSet.length > 0 || c.responseRemove.length > 0;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const VALUE = /^[\x20-\x7e\t]*$/;
/** Fields the proxy owns (framing, hop-by-hop, routing): a label may not set or remove them. */
const PROXY_OWNED = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'te', 'trailer', 'proxy-connection']);

function bool(label: string, value: string): boolean {
  const v = value.trim().toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(v)) return true;
  if (['false', '0', 'no', 'off'].includes(v)) return false;
  throw new EdgeLabelError(label, value, 'true or false');
}

function headerName(label: string, value: string, name: string): string {
  const n = name.trim().toLowerCase();
  if (!TOKEN.test(n)) throw new EdgeLabelError(label, value, `a header name of letters, digits and !#$%&'*+.^_\`|~- ("${name}" is not)`);
  if (PROXY_OWNED.has(n)) throw new EdgeLabelError(label, value, `a header the proxy does not own ("${n}" frames or routes the request)`);
  return n;
}

function headerNames(label: string, value: string): string[] {
  const out = value.split(',').map((s) => s.trim()).filter((s) => s !== '').map((s) => headerName(label, value, s));
  if (out.length === 0) throw new EdgeLabelError(label, value, 'comma-separated header names such as Server,X-Powered-By');
  return [...new Set(out)];
}

function headerValue(label: string, value: string): string {
  const v = value.trim();
  if (!VALUE.test(v) || v.length > 1024) throw new EdgeLabelError(label, value, 'a header value of printable characters, at most 1024 (no line breaks)');
  return v;
}

function rateLimit(label: string, value: string): RateLimit {
  const m = /^\s*(\d+)\s*\/\s*(s|m|h)\s*(?:,\s*burst\s*=\s*(\d+)\s*)?$/i.exec(value);
  const accepted = 'requests per second, minute or hour per client address, such as 100/s, 600/m or 10/s,burst=50';
  if (!m) throw new EdgeLabelError(label, value, accepted);
  const n = Number(m[1]);
  const per = { s: 1, m: 60, h: 3600 }[m[2]!.toLowerCase() as 's' | 'm' | 'h'];
  const burst = m[3] === undefined ? n : Number(m[3]);
  if (n < 1 || n > 1_000_000 || burst < 1 || burst > 1_000_000) throw new EdgeLabelError(label, value, `${accepted}; counts from 1 to 1000000`);
  return { perSecond: n / per, burst };
}

function allowList(label: string, value: string): { text: string; list: BlockList } {
  const list = new BlockList();
  const parts = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const accepted = 'comma-separated addresses or CIDRs such as 10.0.0.0/8,192.168.1.7,fd00::/8';
  if (parts.length === 0) throw new EdgeLabelError(label, value, accepted);
  for (const p of parts) {
    const [addr, bits, extra] = p.split('/');
    const family = isIP(addr ?? '');
    const max = family === 6 ? 128 : 32;
    const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
    if (family === 0 || extra !== undefined || !(prefix >= 0 && prefix <= max)) throw new EdgeLabelError(label, value, `${accepted} ("${p}" is not)`);
    list.addSubnet(addr!, prefix, family === 6 ? 'ipv6' : 'ipv4');
    // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d; the proxy strips that prefix.
  }
  return { text: parts.join(','), list };
}

function hsts(label: string, value: string): string {
  const parts = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const accepted = 'max-age in seconds, optionally with includeSubDomains and preload: 31536000 or 31536000,includeSubDomains';
  const age = parts.shift();
  if (age === undefined || !/^\d{1,9}$/.test(age)) throw new EdgeLabelError(label, value, accepted);
  let out = `max-age=${Number(age)}`;
  for (const p of parts) {
    const l = p.toLowerCase();
    if (l === 'includesubdomains') out += '; includeSubDomains';
    else if (l === 'preload') out += '; preload';
    else throw new EdgeLabelError(label, value, accepted);
  }
  return out;
}

export const EMPTY_EDGE: EdgeConfig = Object.freeze({
  tls: '', redirectHttps: false, hsts: '', rateLimit: null, basicAuth: '', allow: null, stripPrefix: false,
  requestSet: [], requestRemove: [], responseSet: [], responseRemove: [],
}) as EdgeConfig;

/**
 * The edge config of a label map (other labels are ignored); throws EdgeLabelError for the first
 * bad one (sorted by name, so the same labels always name the same error).
 */
export function parseEdge(labels: Record<string, string>): EdgeConfig {
  const c: EdgeConfig = { ...EMPTY_EDGE, requestSet: [], requestRemove: [], responseSet: [], responseRemove: [] };
  const names = Object.keys(labels).filter(isEdgeLabel).sort();
  if (names.length > MAX_EDGE_LABELS) throw new EdgeLabelError(names[MAX_EDGE_LABELS]!, labels[names[MAX_EDGE_LABELS]!]!, `at most ${MAX_EDGE_LABELS} corral.http.* edge labels per container`);
  for (const name of names) {
    const value = labels[name]!;
    switch (name) {
      case EDGE_LABEL.tls: {
        const v = value.trim().toLowerCase();
        if (v !== 'acme' && v !== '') throw new EdgeLabelError(name, value, 'acme (a certificate from the LB\'s --acme-directory)');
        c.tls = v;
        break;
      }
      case EDGE_LABEL.redirect: {
        const v = value.trim().toLowerCase();
        if (v !== 'https' && v !== '') throw new EdgeLabelError(name, value, 'https (plain HTTP requests get a 308 to https://)');
        c.redirectHttps = v === 'https';
        break;
      }
      case EDGE_LABEL.hsts: c.hsts = hsts(name, value); break;
      case EDGE_LABEL.rateLimit: c.rateLimit = rateLimit(name, value); break;
      case EDGE_LABEL.basicAuth: {
        const v = value.trim();
        if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(v)) throw new EdgeLabelError(name, value, 'the name of a password file in the LB\'s --lb-auth-dir (letters, digits, ".", "_", "-"; never a password)');
        c.basicAuth = v;
        break;
      }
      case EDGE_LABEL.allow: c.allow = allowList(name, value); break;
      case EDGE_LABEL.stripPrefix: c.stripPrefix = bool(name, value); break;
      case EDGE_LABEL.requestRemove: c.requestRemove = headerNames(name, value); break;
      case EDGE_LABEL.responseRemove: c.responseRemove = headerNames(name, value); break;
      default:
        if (name.startsWith(EDGE_PREFIX.requestSet)) c.requestSet.push([headerName(name, value, name.slice(EDGE_PREFIX.requestSet.length)), headerValue(name, value)]);
        else c.responseSet.push([headerName(name, value, name.slice(EDGE_PREFIX.responseSet.length)), headerValue(name, value)]);
    }
  }
  return c;
}

/** The edge labels among `labels`, as an endpoint record keeps them (full label names). */
export function edgeLabels(labels: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of Object.keys(labels).sort()) if (isEdgeLabel(name)) out[name] = labels[name]!;
  return out;
}
