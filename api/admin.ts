// The admin endpoint every daemon serves: /healthz (alive), /readyz (has state to serve),
// /metrics (Prometheus text from the daemon's own prom-client registry) and / (a status page).
import { createServer, type Server } from 'node:http';
import type { Registry as MetricsRegistry } from 'prom-client';
import { parseHostPort } from './options.js';

export interface AdminHandlers {
  /** A registry, or anything that renders Prometheus text like one (the LB merges its threads'). */
  metrics: Pick<MetricsRegistry, 'metrics' | 'contentType'>;
  ready(): boolean;
  /** The status page; may be asynchronous (the LB asks its worker threads). */
  status(): unknown;
}

export async function startAdmin(listen: string, h: AdminHandlers): Promise<Server> {
  const { host, port } = parseHostPort(listen, '--admin-listen');
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      const ok = h.ready();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ready\n' : 'not ready\n');
    } else if (path === '/metrics') {
      h.metrics.metrics().then(
        (text) => res.writeHead(200, { 'content-type': h.metrics.contentType }).end(text),
        (err: Error) => res.writeHead(500).end(`${err.message}\n`),
      );
    } else if (path === '/' || path === '/status') {
      Promise.resolve(h.status()).then(
        (status) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(status, null, 2) + '\n'),
        (err: Error) => res.writeHead(500).end(`${err.message}\n`),
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /healthz, /readyz, /metrics or /\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host || undefined, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}
