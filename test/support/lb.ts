// Test bed for the load balancer's tests: real HTTP backends on 127.0.0.1 and their records.
// Not used by the product.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable, type Duplex } from 'node:stream';
import { pino, type Logger } from 'pino';
import { expect } from 'vitest';
import type { Endpoint } from '../../api/types.js';
import type { Daemon } from './corral.js';
import { endpoint } from './records.js';

/** A backend that answers with its own name and color; see `handle` for the paths it knows. */
export class Backend {
  readonly server: Server;
  port = 0;
  /** TCP connections accepted so far (keep-alive reuse shows as few connections). */
  connections = 0;
  /** Requests received so far. */
  requests = 0;
  /** Requests that arrived and have not been answered yet. */
  inFlight = 0;
  last: IncomingMessage | undefined;
  /** Answer every request with this status (0: answer normally). */
  failWith = 0;
  /** What /health answers: 200 when true, 503 when false. */
  healthy = true;
  /** Health probes received. */
  probes = 0;
  /** Delay every answer by this much. */
  delayMs = 0;
  /** Upgrade requests seen (WebSocket handshake headers). */
  upgrades: IncomingMessage[] = [];
  private arrivals: Array<() => void> = [];
  private readonly tunnels = new Set<Duplex>();

  constructor(
    readonly name: string,
    readonly color = 'default',
  ) {
    this.server = createServer((req, res) => this.handle(req, res));
    this.server.on('connection', () => this.connections++);
    // Any Upgrade: answer 101 and echo raw bytes back, prefixed with the backend's name once.
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.upgrades.push(req);
      this.tunnels.add(socket);
      socket.on('close', () => this.tunnels.delete(socket));
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: ${req.headers.upgrade}\r\nconnection: upgrade\r\nx-backend: ${this.name}\r\n\r\n`);
      if (head.length) socket.write(head);
      socket.pipe(socket);
      socket.on('error', () => socket.destroy());
    });
  }

  async start(port = 0): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(port, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  /** Resolves when the next request has arrived (not answered). */
  nextArrival(): Promise<void> {
    return new Promise((resolve) => this.arrivals.push(resolve));
  }

  async stop(): Promise<void> {
    for (const t of this.tunnels) t.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    if (req.url === '/health') {
      this.probes++;
      res.statusCode = this.healthy ? 200 : 503;
      res.end(this.healthy ? 'ok\n' : 'sick\n');
      return;
    }
    this.requests++;
    this.inFlight++;
    this.last = req;
    res.on('close', () => this.inFlight--);
    for (const a of this.arrivals.splice(0)) a();
    const url = new URL(req.url ?? '/', 'http://backend');
    res.setHeader('x-backend', this.name);
    res.setHeader('x-color', this.color);
    if (this.failWith !== 0) {
      res.statusCode = this.failWith;
      res.end(`${this.name} failing with ${this.failWith}\n`);
      return;
    }
    if (this.delayMs > 0) {
      setTimeout(() => res.end(`${this.name} ${this.color}\n`), this.delayMs);
      return;
    }
    switch (url.pathname) {
      case '/headers':
        // Hop-by-hop headers the proxy must not pass back to the client.
        res.setHeader('connection', 'keep-alive, x-hop-response');
        res.setHeader('x-hop-response', 'must not reach the client');
        res.setHeader('proxy-agent', 'backend');
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ name: this.name, url: req.url, headers: req.headers }));
        return;
      case '/echo':
        // Streams the body back as it arrives.
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.flushHeaders();
        req.pipe(res);
        return;
      case '/reset':
        // Dies mid-request, before reading the body.
        req.socket.destroy();
        return;
      case '/slow': {
        const ms = Number(url.searchParams.get('ms') ?? '500');
        setTimeout(() => res.end(`${this.name} ${this.color}\n`), ms);
        return;
      }
      default:
        res.end(`${this.name} ${this.color}\n`);
    }
  }
}

export async function startBackends(...specs: Array<[name: string, color?: string]>): Promise<Backend[]> {
  return Promise.all(specs.map(([name, color]) => new Backend(name, color).start()));
}

/** A 127.0.0.1 port nothing listens on (bound, then released). */
export async function deadPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** The record of a test backend: its port and color, an id naming it. */
export function backendEndpoint(b: Backend, service: string, p: Partial<Endpoint> = {}): Endpoint {
  return endpoint({ service, port: b.port, color: b.color, id: `manual:default:${service}:${b.name}`, ...p });
}

/** A debug-level pino logger whose lines the test can read back as objects. */
export function capturingLogger(): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, sink) as unknown as Logger, lines };
}

/** `corral <args>` against an agent; must exit 0. Its stdout. */
export async function cliOk(agent: Daemon, args: string[]): Promise<string> {
  const r = await agent.cli(args);
  expect(r.code, `corral ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout;
}
