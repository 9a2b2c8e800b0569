// The HTTP/1.1 request head for an h2 stream, serialized straight from the header object Node's
// http2 gives (no HTTP/1.1 text parsed back): request line, Host from `:authority`, the end-to-end
// fields, then the proxy's forwarding fields, exactly as the HTTP/1.1 path sends them upstream.
import type { IncomingHttpHeaders } from 'node:http2';

/**
 * Fields not passed on: h2's connection-specific ones (nghttp2 refuses most already), the
 * HTTP/1.1 hop-by-hop ones, Host (`:authority` is the Host), and the forwarding fields the proxy
 * writes itself (priors are folded into its own values).
 */
const DROP = new Set([
  'host', 'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'expect', 'http2-settings',
  'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded',
]);

/** The request's authority: `:authority`, else a `host` field (RFC 9113 8.3.1); '' for none. */
export function authorityOf(headers: IncomingHttpHeaders): string {
  const a = headers[':authority'] ?? headers.host;
  return typeof a === 'string' ? a : '';
}

/** A forwarding field's values as one list. */
function joined(value: string | string[]): string {
  return typeof value === 'string' ? value : value.join(', ');
}

/**
 * Where the request goes and what it carries besides its own fields: the client address, the
 * authority, and whether the body is re-chunked (an h2 body without content-length).
 */
export interface HeadContext {
  client: string;
  authority: string;
  chunked: boolean;
  /** A route's middlewares (lb/middleware/): the target after strip-prefix, fields dropped, lines added. */
  path?: string;
  drop?: ReadonlySet<string> | null;
  extra?: string;
}

/** The proxy's own fields and the end of the head; `priorXff`/`priorForwarded` are what the client sent. */
export function forwardingTail(c: HeadContext, priorXff: string | undefined, priorForwarded: string | undefined): string {
  const client = c.client;
  const host = c.authority;
  // RFC 7239: IPv6 addresses are bracketed and quoted; the host is quoted (it may hold a colon).
  let forwarded = `for=${client.includes(':') ? `"[${client}]"` : client};host="${host.replace(/["\\]/g, '')}";proto=https`;
  if (priorForwarded !== undefined) forwarded = `${priorForwarded}, ${forwarded}`;
  const xff = priorXff === undefined ? client : `${priorXff}, ${client}`;
  return `x-forwarded-for: ${xff}\r\nx-forwarded-proto: https\r\nx-forwarded-host: ${host}\r\nforwarded: ${forwarded}\r\n` +
    (c.chunked ? 'connection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n' : 'connection: keep-alive\r\n\r\n');
}

/**
 * `METHOD :path HTTP/1.1`, `host: <authority>`, the end-to-end fields (cookie crumbs joined with
 * "; ", RFC 9113 8.2.3; other repeated fields as repeated lines), then the forwarding fields. `tail` is a cached forwardingTail for this client and
 * authority, used when the client sent no forwarding fields of its own. A latin1 string: Node's
 * http2 hands field values over byte for byte.
 */
export function requestHead(headers: IncomingHttpHeaders, c: HeadContext, tail?: string): string {
  let head = `${headers[':method']} ${c.path ?? headers[':path']} HTTP/1.1\r\nhost: ${c.authority}\r\n`;
  const drop = c.drop;
  let priorXff: string | undefined;
  let priorForwarded: string | undefined;
  let prior = false;
  for (const name in headers) {
    if (name.charCodeAt(0) === 58 /* : */) continue;
    const value = headers[name];
    if (value === undefined) continue;
    if (DROP.has(name) || name.startsWith('proxy-')) {
      if (name === 'x-forwarded-for') {
        priorXff = joined(value);
        prior = true;
      } else if (name === 'forwarded') {
        priorForwarded = joined(value);
        prior = true;
      } else if (name === 'x-forwarded-proto' || name === 'x-forwarded-host') {
        prior = true;
      }
      continue;
    }
    if (drop != null && drop.has(name)) continue;
    if (typeof value === 'string') head += `${name}: ${value}\r\n`;
    else if (name === 'cookie') head += `cookie: ${value.join('; ')}\r\n`;
    else for (const v of value) head += `${name}: ${v}\r\n`;
  }
  if (c.extra) head += c.extra;
  return head + (tail !== undefined && !prior ? tail : forwardingTail(c, priorXff, priorForwarded));
}
