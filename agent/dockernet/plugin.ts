// The Docker plugin socket: Docker finds `/run/docker/plugins/<name>.sock`, POSTs
// `/Plugin.Activate`, then `/NetworkDriver.*` and `/IpamDriver.*` calls with JSON bodies.
// Every reply is 200 with JSON; a failure is `{"Err": "..."}`, which Docker shows the user.
import { connect } from 'node:net';
import { createServer, type Server } from 'node:http';
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import type { Logger } from '../../api/log.js';
import { DriverError, type DockerNetworkDriver } from './driver.js';

const CONTENT_TYPE = 'application/vnd.docker.plugins.v1+json';

/** The plugin name Docker knows this socket by (`-d <name> --ipam-driver <name>`). */
export function pluginName(socketPath: string): string {
  return basename(socketPath).replace(/\.sock$/, '');
}

function alive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

export class DockerPlugin {
  private server: Server | undefined;

  constructor(private readonly socketPath: string, private readonly driver: DockerNetworkDriver, private readonly log: Logger) {}

  async start(): Promise<void> {
    if (await alive(this.socketPath)) {
      throw new Error(`another process serves the Docker plugin socket ${this.socketPath}: stop it, or give this agent another --docker-plugin-socket`);
    }
    mkdirSync(dirname(this.socketPath), { recursive: true });
    rmSync(this.socketPath, { force: true });
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const reply = (status: number, body: object) => {
          res.writeHead(status, { 'Content-Type': CONTENT_TYPE });
          res.end(JSON.stringify(body));
        };
        let body: Record<string, unknown> = {};
        try {
          const text = Buffer.concat(chunks).toString();
          if (text.trim()) body = JSON.parse(text) as Record<string, unknown>;
        } catch {
          return reply(400, { Err: `corral: ${req.url} body is not JSON` });
        }
        this.driver.call(req.url ?? '', body).then(
          (r) => reply(200, r),
          (err: Error) => {
            if (!(err instanceof DriverError)) this.log.error({ err, call: req.url }, 'docker plugin call failed');
            reply(200, { Err: err.message });
          },
        );
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => resolve());
    });
    chmodSync(this.socketPath, 0o660);
    this.server = server;
    this.log.info({ socket: this.socketPath, plugin: pluginName(this.socketPath) }, 'Docker network and IPAM driver ready');
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    await new Promise<void>((resolve) => s.close(() => resolve()));
    s.closeAllConnections();
    // Docker takes a missing socket for a plugin that is gone, and finds it again when it returns.
    rmSync(this.socketPath, { force: true });
  }
}
