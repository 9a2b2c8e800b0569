// Real TCP and TLS servers for the LB's TCP/TLS routing tests and bench (lb/tcp/): Debian's
// redis-server and PostgreSQL, `openssl s_server` with a certificate of its own, HAProxy reading
// a PROXY v2 header. Each runs on 127.0.0.1 in a temp dir of its own, and is stopped by its pid.
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './corral.js';
import { run } from './netns.js';
import { until } from './until.js';

/** A server process this test started, with its port and dir. */
export interface TcpServer {
  port: number;
  dir: string;
  child: ChildProcess | undefined;
  log(): string;
  stop(): Promise<void>;
}

function start(cmd: string, args: string[], dir: string, port: number, opts: { uid?: number } = {}): TcpServer {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: dir, uid: opts.uid, gid: opts.uid });
  let log = '';
  child.stdout!.on('data', (d: Buffer) => (log = (log + d.toString()).slice(-20_000)));
  child.stderr!.on('data', (d: Buffer) => (log = (log + d.toString()).slice(-20_000)));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return {
    port, dir, child,
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** True once something accepts TCP connections on 127.0.0.1:port. */
export function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** redis-server on a private port and dir, no persistence; `color` is stored under the key "color". */
export async function startRedis(color: string): Promise<TcpServer> {
  const dir = mkdtempSync(join(tmpdir(), 'corral-tcp-redis-'));
  const port = await freePort();
  const s = start('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--logfile', ''], dir, port);
  await until(`redis-server on ${port}`, async () => (await redisCli(port, ['PING'])).trim() === 'PONG', { ms: 15_000, detail: s.log });
  await redisCli(port, ['SET', 'color', color]);
  return s;
}

/** `redis-cli -h 127.0.0.1 -p port args…`; rejects when it exits non-zero or answers an error. */
export async function redisCli(port: number, args: string[]): Promise<string> {
  const { stdout } = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeoutMs: 10_000 });
  if (/^(ERR|Could not connect|Error)/m.test(stdout)) throw new Error(`redis-cli ${args.join(' ')}: ${stdout.trim()}`);
  return stdout;
}

/** A private PostgreSQL cluster (initdb as the postgres user, trust auth) on 127.0.0.1:port. */
export async function startPostgres(): Promise<TcpServer> {
  const bin = join('/usr/lib/postgresql', readdirSync('/usr/lib/postgresql').sort().pop()!, 'bin');
  const dir = mkdtempSync(join(tmpdir(), 'corral-tcp-pg-'));
  const { stdout } = await run('id', ['-u', 'postgres']);
  const uid = Number(stdout.trim());
  chownSync(dir, uid, uid);
  const data = join(dir, 'data');
  await run('runuser', ['-u', 'postgres', '--', join(bin, 'initdb'), '-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync'], { timeoutMs: 60_000 });
  const port = await freePort();
  const s = start(join(bin, 'postgres'), ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off'], dir, port, { uid });
  await until(`postgres on ${port}`, () => accepts(port), { ms: 30_000, detail: s.log });
  return s;
}

/** A self-signed certificate for `name` in `dir`: { cert, key } paths. */
export async function selfSigned(dir: string, name: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', `/CN=${name}`, '-addext', `subjectAltName=DNS:${name}`]);
  return { cert, key };
}

/** `openssl s_server` with a certificate for `name`, answering HTTP with its status page (-www). */
export async function startTlsServer(name: string): Promise<TcpServer> {
  const dir = mkdtempSync(join(tmpdir(), 'corral-tcp-tls-'));
  const { cert, key } = await selfSigned(dir, name);
  const port = await freePort();
  const s = start('openssl', ['s_server', '-accept', `127.0.0.1:${port}`, '-cert', cert, '-key', key, '-www', '-quiet'], dir, port);
  await until(`openssl s_server on ${port}`, () => accepts(port), { ms: 15_000, detail: s.log });
  return s;
}

/** `openssl s_client -servername name` against 127.0.0.1:port: the CN the server presented, or '' when the handshake failed. */
export async function tlsSubject(port: number, servername: string): Promise<string> {
  try {
    const { stdout } = await run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', servername], { input: '', timeoutMs: 15_000 });
    return /subject=.*CN\s*=\s*([^\s,/]+)/.exec(stdout)?.[1] ?? '';
  } catch {
    return '';
  }
}

/**
 * HAProxy that reads a PROXY protocol header on every connection (`accept-proxy`) and answers
 * each HTTP request with the client address it learnt from it: "src src_port dst dst_port".
 */
export async function startProxyProtocolEcho(): Promise<TcpServer> {
  const dir = mkdtempSync(join(tmpdir(), 'corral-tcp-pp-'));
  const port = await freePort();
  writeFileSync(join(dir, 'haproxy.cfg'), [
    'global', '  maxconn 100',
    'defaults', '  mode http', '  timeout connect 5s', '  timeout client 30s', '  timeout server 30s',
    'frontend echo', `  bind 127.0.0.1:${port} accept-proxy`,
    '  http-request return status 200 content-type text/plain lf-string "%[src] %[src_port] %[dst] %[dst_port]"',
    '',
  ].join('\n'));
  const s = start('haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], dir, port);
  await until(`haproxy on ${port}`, () => accepts(port), { ms: 15_000, detail: s.log });
  return s;
}
