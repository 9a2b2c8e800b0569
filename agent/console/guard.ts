// Who may use the console. Like the status page, it answers loopback clients only, not through a
// proxy. Against a web page in the operator's browser (CSRF, DNS rebinding) it also wants a Host
// that names loopback and, when the browser sends an Origin, that origin; and an action (a POST)
// needs the token in an Authorization header, which no other site can make a browser send: no
// cookie is ever involved.
import type { IncomingMessage } from 'node:http';
import { isLoopback } from '../../api/admin.js';
import { sameToken } from './token.js';

export interface Refusal { code: number; text: string; headers?: Record<string, string> }

/** "127.0.0.1:9190", "[::1]:9190", "localhost:9190" (port optional): names that can only mean this host. */
const LOOPBACK_HOST = /^(?:127(?:\.\d{1,3}){3}|\[::1\]|localhost)(?::\d{1,5})?$/i;

/** Refuses what is not the operator on this host; undefined when the request may read the console. */
export function refuseReader(req: IncomingMessage): Refusal | undefined {
  if (!isLoopback(req.socket.remoteAddress) || req.headers['x-forwarded-for'] !== undefined || req.headers.forwarded !== undefined) {
    return { code: 403, text: 'forbidden: the console answers loopback clients only, not through a proxy (open the URL `corral console` prints, on this host or through an SSH tunnel)\n' };
  }
  const host = req.headers.host ?? '';
  if (!LOOPBACK_HOST.test(host)) {
    return { code: 403, text: `forbidden: the console answers requests addressed to 127.0.0.1, [::1] or localhost, not to "${host.slice(0, 100)}"\n` };
  }
  const origin = req.headers.origin;
  // A browser names the page that made the request: only the console's own pages may.
  if (origin !== undefined && origin.toLowerCase() !== `http://${host.toLowerCase()}`) {
    return { code: 403, text: `forbidden: a request from the page ${origin.slice(0, 100)} (another origin); the console takes requests from its own page only\n` };
  }
  if (req.headers['sec-fetch-site'] === 'cross-site') {
    return { code: 403, text: 'forbidden: a cross-site request; the console takes requests from its own page only\n' };
  }
  return undefined;
}

/** Refuses an action without this host's token (Authorization: Bearer <token>). */
export function refuseActor(req: IncomingMessage, token: string): Refusal | undefined {
  const reader = refuseReader(req);
  if (reader) return reader;
  const auth = req.headers.authorization ?? '';
  const m = /^Bearer ([^\s]+)$/i.exec(auth);
  if (!m) {
    return { code: 401, text: 'unauthorized: console actions need the token (Authorization: Bearer <token>); `corral console` prints a URL that carries it\n', headers: { 'www-authenticate': 'Bearer realm="corral console"' } };
  }
  if (!sameToken(m[1]!, token)) {
    return { code: 401, text: 'unauthorized: wrong console token; `corral console` prints the current one (from <state dir>/console.token)\n', headers: { 'www-authenticate': 'Bearer realm="corral console", error="invalid_token"' } };
  }
  return undefined;
}
