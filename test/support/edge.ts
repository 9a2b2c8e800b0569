// Test bed for the LB's edge tests (lb/middleware, lb/acme): a watch fed by the test instead of an
// agent, curl as the client, and a self-signed certificate for HTTPS. Not used by the product.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { WatchEvent } from '../../api/types.js';
import type { WatchHandlers, WatchSource, WatchStream } from '../../api/watch.js';

const run = promisify(execFile);

/** A WatchSource the test pushes events into (what the agent's watch would deliver). */
export function memoryWatch(): { source: WatchSource; push(ev: WatchEvent): Promise<void> } {
  let handlers: WatchHandlers | undefined;
  let revision = 0;
  const pending: WatchEvent[] = [];
  const source: WatchSource = (_component, h) => {
    handlers = h;
    const stream: WatchStream = {
      start() {
        for (const ev of pending.splice(0)) void h.onEvent(ev);
      },
      close() {
        handlers = undefined;
      },
      get revision() {
        return revision;
      },
      get connected() {
        return true;
      },
    };
    return stream;
  };
  return {
    source,
    async push(ev) {
      revision = ev.revision;
      if (!handlers) pending.push(ev);
      else await handlers.onEvent(ev);
    },
  };
}

export interface CurlResult { status: number; headers: Record<string, string>; body: string }

/** curl with `args`; the status, the last response's headers (lower-case names) and the body. */
export async function curl(args: string[], timeoutMs = 10_000): Promise<CurlResult> {
  const { stdout } = await run('curl', ['-sS', '-D', '-', '--max-time', String(timeoutMs / 1000), ...args], { timeout: timeoutMs + 2_000, maxBuffer: 16 << 20 });
  // -D - writes every head (100 Continue too) before the body: the last head is the answer's.
  let rest = stdout;
  let head = '';
  for (;;) {
    const end = rest.indexOf('\r\n\r\n');
    if (!rest.startsWith('HTTP/') || end < 0) break;
    head = rest.slice(0, end);
    rest = rest.slice(end + 4);
  }
  const [statusLine, ...lines] = head.split('\r\n');
  const headers: Record<string, string> = {};
  for (const l of lines) {
    const c = l.indexOf(':');
    if (c > 0) headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim();
  }
  return { status: Number(statusLine?.split(' ')[1] ?? 0), headers, body: rest };
}

/** A self-signed certificate for `names` in dir as <first name>.crt/.key (openssl). */
export async function selfSigned(dir: string, names: string[]): Promise<void> {
  const base = `${dir}/${names[0]}`;
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=${names[0]}`,
    '-addext', `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}`, '-keyout', `${base}.key`, '-out', `${base}.crt`]);
}

/**
 * A free 127.0.0.1 TCP port below Linux's ephemeral range (32768+), so no outgoing connection
 * (etcd clients, HTTP clients) takes it between this call and the listen that uses it.
 */
export async function stablePort(): Promise<number> {
  const { createServer } = await import('node:net');
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const ok = await new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
}
