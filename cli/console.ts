// `corral console`: the web console's URL with this host's token, read from the agent's state dir.
import { readToken } from '../agent/console/token.js';
import { ADMIN_DEFAULTS, defaultOptions, parseHostPort } from '../api/options.js';
import { isLoopback } from '../api/admin.js';
import type { agentClient } from '../api/grpc.js';
import { type Parsed, UsageError } from './flags.js';

type Client = ReturnType<typeof agentClient>;

/** The console's URL: the token rides in the fragment, which a browser never sends to any server. */
export function consoleUrl(adminListen: string, token: string): string {
  const { host, port } = parseHostPort(adminListen, '--admin-listen');
  // An agent listening on all addresses is reached on loopback, where the console answers.
  const h = host === '' || host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host;
  return `http://${h}:${port}/console/#token=${token}`;
}

export const consoleCommands: Record<string, { usage: string; run(p: Parsed, c: Client): Promise<void> }> = {
  console: {
    usage: 'console [--state-dir /var/lib/corral] [--admin-listen 127.0.0.1:9190] [--json]',
    async run(p) {
      if (p.args.length) throw new UsageError(`usage: corral ${this.usage}`);
      const stateDir = p.flags.get('state-dir') ?? defaultOptions().stateDir;
      const admin = p.flags.get('admin-listen') || ADMIN_DEFAULTS.agent;
      let url: string;
      try {
        url = consoleUrl(admin, readToken(stateDir));
      } catch (err) {
        if (/--admin-listen/.test((err as Error).message)) throw new UsageError((err as Error).message);
        throw err;
      }
      const host = new URL(url).hostname.replace(/^\[|\]$/g, '');
      if (!isLoopback(host) && host !== 'localhost') {
        process.stderr.write(`corral: the console answers loopback clients only; an agent on --admin-listen ${admin} serves it to no one (listen on 127.0.0.1 or on all addresses)\n`);
      }
      process.stdout.write(p.bools.has('json') ? JSON.stringify({ url }, null, 2) + '\n' : `${url}\n`);
    },
  },
};
