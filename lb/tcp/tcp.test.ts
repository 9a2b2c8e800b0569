// TCP and TLS routing as users run it: the bundled `corral lb` (two threads) watching a real
// `corral agent`, routes registered with `corral register --tcp-port/--tls-sni/--proxy-protocol`,
// and real servers and clients: redis-server + redis-cli, PostgreSQL + psql, `openssl s_server` +
// `openssl s_client`, HAProxy reading the PROXY v2 header.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startDaemon, type Daemon } from '../../test/support/corral.js';
import { cliOk } from '../../test/support/lb.js';
import { run } from '../../test/support/netns.js';
import { redisCli, selfSigned, startPostgres, startProxyProtocolEcho, startRedis, startTlsServer, tlsSubject, type TcpServer } from '../../test/support/tcp.js';
import { until } from '../../test/support/until.js';

const exec = promisify(execFile);

let agent: Daemon;
let lb: Daemon;
let httpsPort: number;
const servers: TcpServer[] = [];

const detail = () => `--- lb ---\n${lb.logs().slice(-4000)}\n--- agent ---\n${agent.logs().slice(-2000)}`;
const cli = (args: string[]) => cliOk(agent, args);

beforeAll(async () => {
  httpsPort = await freePort();
  agent = await startDaemon('agent');
  lb = await startDaemon('lb', { args: ['--agent-socket', agent.socket, '--lb-threads', '2', '--https-listen', `127.0.0.1:${httpsPort}`] });
});

afterAll(async () => {
  await lb?.stop();
  await agent?.stop();
  await Promise.all(servers.map((s) => s.stop()));
});

/** The revision the LB has applied on every thread (its status page). */
async function lbRevision(): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${lb.adminPort}/`);
  return ((await res.json()) as { revision: number }).revision;
}

async function register(service: string, server: TcpServer, args: string[]): Promise<number> {
  return (JSON.parse(await cli(['register', service, `127.0.0.1:${server.port}`, '--json', ...args])) as { revision: number }).revision;
}

async function applied(revision: number): Promise<void> {
  await until(`the LB applying revision ${revision}`, async () => (await lbRevision()) >= revision, { detail });
}

/** One RESP exchange on an open connection: an inline command, the bulk string answer. */
function ask(s: Socket, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString();
      const m = /^\$(\d+)\r\n/.exec(buf);
      if (m && buf.length >= m[0].length + Number(m[1]) + 2) {
        s.off('data', onData);
        resolve(buf.slice(m[0].length, m[0].length + Number(m[1])));
      } else if (/^[-+:].*\r\n/.test(buf)) {
        s.off('data', onData);
        resolve(buf.trim());
      }
    };
    s.on('data', onData);
    s.once('error', reject);
    s.write(`${command}\r\n`);
  });
}

/**
 * A real TLS handshake (Node's client) whose bytes reach the LB 1-7 bytes per TCP segment, 1 ms
 * apart: the CN of the certificate the far end presented.
 */
async function trickledHandshake(port: number, servername: string): Promise<string> {
  const raw = connect({ host: '127.0.0.1', port, noDelay: true });
  await new Promise((r) => raw.once('connect', r));
  const slow = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, done) {
      void (async () => {
        for (let i = 0; i < chunk.length;) {
          const n = 1 + Math.floor(Math.random() * 7);
          raw.write(chunk.subarray(i, i + n));
          i += n;
          await new Promise((r) => setTimeout(r, 1));
        }
        done();
      })();
    },
  });
  raw.on('data', (d: Buffer) => slow.push(d));
  raw.on('end', () => slow.push(null));
  const tls = tlsConnect({ socket: slow, servername, rejectUnauthorized: false });
  try {
    await new Promise<void>((resolve, reject) => {
      tls.once('secureConnect', () => resolve());
      tls.once('error', reject);
    });
    return String(tls.getPeerCertificate().subject?.CN ?? '');
  } finally {
    tls.destroy();
    raw.destroy();
  }
}

describe('TCP routes (corral.tcp.port)', () => {
  it('carries redis-cli to redis-server, and a color switch under a client loop fails no command; open connections stay on the old color', async () => {
    const blue = await startRedis('blue');
    const green = await startRedis('green');
    servers.push(blue, green);
    const port = await freePort();
    await register('cache', blue, ['--tcp-port', String(port), '--color', 'blue']);
    await register('cache', green, ['--tcp-port', String(port), '--color', 'green']);
    const r0 = (JSON.parse(await cli(['switch', 'cache', 'blue', '--json'])) as { revision: number }).revision;
    await applied(r0);
    await until('redis-cli through the LB', async () => (await redisCli(port, ['GET', 'color'])).trim() === 'blue', { detail });
    // Both threads of the LB accept on the port (SO_REUSEPORT), like its HTTP port.
    await until('both LB threads listening on the TCP port', () => lb.logs().split('\n').filter((l) => l.includes('listening for a TCP route') && l.includes(`"port":${port}`)).length === 2, { detail });

    // A connection opened before the switch: it must keep working, on blue, after it.
    const held = connect({ host: '127.0.0.1', port });
    await new Promise((r) => held.once('connect', r));
    expect(await ask(held, 'GET color')).toBe('blue');

    const results: Array<{ startedAt: number; answer: string; error?: string }> = [];
    let stop = false;
    let switchedAt = Infinity;
    const loop = (async () => {
      while (!stop) {
        const startedAt = Date.now();
        try {
          results.push({ startedAt, answer: (await redisCli(port, ['GET', 'color'])).trim() });
        } catch (err) {
          results.push({ startedAt, answer: '', error: (err as Error).message });
        }
      }
    })();
    await until('a few blue answers in the loop', () => results.length >= 5, { detail });
    const r1 = (JSON.parse(await cli(['switch', 'cache', 'green', '--json'])) as { revision: number }).revision;
    await applied(r1);
    switchedAt = Date.now();
    await until('green answers after the switch', () => results.filter((r) => r.startedAt > switchedAt).length >= 5, { detail });
    stop = true;
    await loop;

    expect(results.filter((r) => r.error !== undefined || (r.answer !== 'blue' && r.answer !== 'green'))).toEqual([]);
    expect(results.filter((r) => r.startedAt > switchedAt).every((r) => r.answer === 'green')).toBe(true);
    expect(results[0]!.answer).toBe('blue');
    // Existing connections drain on the old color instead of being cut.
    expect(await ask(held, 'GET color')).toBe('blue');
    held.destroy();
  });

  it('retries a connect that fails on another endpoint, so a stopped server costs no command', async () => {
    const a = await startRedis('a');
    const b = await startRedis('b');
    servers.push(a, b);
    const port = await freePort();
    await register('kv', a, ['--tcp-port', String(port)]);
    await applied(await register('kv', b, ['--tcp-port', String(port)]));
    await until('both endpoints answer', async () => new Set(await Promise.all([1, 2, 3, 4].map(async () => (await redisCli(port, ['GET', 'color'])).trim()))).size === 2, { detail });
    await a.stop();
    // The registry still lists it (no health check): the LB must route around it by itself.
    const answers: string[] = [];
    for (let i = 0; i < 12; i++) answers.push((await redisCli(port, ['GET', 'color'])).trim());
    expect(answers).toEqual(new Array(12).fill('b'));
  });

  it('drains an endpoint that leaves: new connections go elsewhere at once, open ones are closed after its drain time', async () => {
    const a = await startRedis('a');
    const b = await startRedis('b');
    servers.push(a, b);
    const port = await freePort();
    await register('queue', a, ['--tcp-port', String(port)]);
    await applied(await register('queue', b, ['--tcp-port', String(port)]));
    // A connection that landed on a.
    let held: Socket | undefined;
    await until('a connection to a', async () => {
      const s = connect({ host: '127.0.0.1', port });
      s.on('error', () => undefined);
      await new Promise((r) => s.once('connect', r));
      if ((await ask(s, 'GET color')) === 'a') return (held = s);
      s.destroy();
      return undefined;
    }, { detail });
    const closed = new Promise<number>((r) => held!.once('close', () => r(Date.now())));
    const out = JSON.parse(await cli(['deregister', 'queue', `127.0.0.1:${a.port}`, '--json'])) as { revision: number; endpoint: { drainMs: number } };
    const leftAt = Date.now();
    await applied(out.revision);
    for (let i = 0; i < 6; i++) expect((await redisCli(port, ['GET', 'color'])).trim()).toBe('b');
    expect(await ask(held!, 'GET color')).toBe('a'); // still served while draining
    const at = await closed;
    expect(at - leftAt).toBeGreaterThanOrEqual(out.endpoint.drainMs - 1_000);
  }, 60_000);

  it('carries psql to PostgreSQL', async () => {
    const pg = await startPostgres();
    servers.push(pg);
    const port = await freePort();
    await applied(await register('pg', pg, ['--tcp-port', String(port)]));
    const out = await until('psql through the LB', async () => {
      const { stdout } = await exec('psql', ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-Atc', 'select 40 + 2, inet_server_port()'], { timeout: 15_000 });
      return stdout.trim();
    }, { ms: 30_000, detail });
    expect(out).toBe(`42|${pg.port}`);
  });

  it('sends a PROXY v2 header when the endpoint asks for it: the endpoint sees the client address and port', async () => {
    const echo = await startProxyProtocolEcho();
    servers.push(echo);
    const port = await freePort();
    await applied(await register('pp', echo, ['--tcp-port', String(port), '--proxy-protocol', 'v2']));
    const { stdout } = await run('curl', ['-sS', '--max-time', '10', '-w', ' %{local_ip} %{local_port}', `http://127.0.0.1:${port}/`]);
    const [src, srcPort, dst, dstPort, localIp, localPort] = stdout.trim().split(/\s+/);
    expect({ src, srcPort, dst, dstPort }).toEqual({ src: localIp, srcPort: localPort, dst: '127.0.0.1', dstPort: String(port) });
  });
});

describe('TLS routes by SNI (corral.tls.sni)', () => {
  it('routes two TLS backends on one port by server name without terminating, and closes unknown or malformed hellos with a logged reason', async () => {
    const a = await startTlsServer('a.test');
    const b = await startTlsServer('b.test');
    servers.push(a, b);
    const port = await freePort();
    await register('tls-a', a, ['--tcp-port', String(port), '--tls-sni', 'a.test']);
    await applied(await register('tls-b', b, ['--tcp-port', String(port), '--tls-sni', 'b.test,*.b.test']));
    await until('a.test through the LB', async () => (await tlsSubject(port, 'a.test')) === 'a.test', { detail });
    expect(await tlsSubject(port, 'b.test')).toBe('b.test');
    expect(await tlsSubject(port, 'x.b.test')).toBe('b.test');
    expect(await tlsSubject(port, 'A.TEST')).toBe('a.test');

    // A ClientHello trickling in a few bytes per TCP segment is still routed by its name.
    expect(await trickledHandshake(port, 'b.test')).toBe('b.test');

    expect(await tlsSubject(port, 'nobody.test')).toBe('');
    await until('the unknown name logged', () => lb.logs().includes('no TLS route for server name \\"nobody.test\\"'), { detail });

    // Not TLS at all, and a ClientHello whose lengths lie: closed, logged, and the LB goes on.
    for (const bytes of [Buffer.from('GET / HTTP/1.1\r\nhost: a.test\r\n\r\n'), Buffer.from([22, 3, 1, 0, 8, 1, 0, 0, 4, 3, 3, 0xff, 0xff])]) {
      const s = connect({ host: '127.0.0.1', port });
      s.on('error', () => undefined);
      s.write(bytes);
      await new Promise((r) => s.once('close', r));
    }
    await until('the malformed hello logged', () => lb.logs().includes('malformed or non-TLS ClientHello'), { detail });
    // Half a hello, then the client's FIN: closed at once, not after the hello timeout.
    const half = connect({ host: '127.0.0.1', port });
    half.on('error', () => undefined);
    half.end(Buffer.from([22, 3, 1, 1, 0, 1, 0, 0, 252, 3, 3]));
    await new Promise((r) => half.once('close', r));
    await until('the cut hello logged', () => lb.logs().includes('the client closed before its ClientHello was complete'), { detail });
    expect(await tlsSubject(port, 'b.test')).toBe('b.test');
  });

  it('routes SNI names without a port on the HTTPS port', async () => {
    const c = await startTlsServer('c.test');
    servers.push(c);
    await applied(await register('tls-c', c, ['--tls-sni', 'c.test']));
    await until('c.test on the HTTPS port', async () => (await tlsSubject(httpsPort, 'c.test')) === 'c.test', { detail });
  });

  it('shares the HTTPS port with an LB that terminates TLS there: routed names pass through, the others get the LB\'s own certificate', async () => {
    const d = await startTlsServer('d.test');
    servers.push(d);
    const certs = mkdtempSync(join(tmpdir(), 'corral-tcp-certs-'));
    await selfSigned(certs, 'web.test');
    const port = await freePort();
    const tlsLb = await startDaemon('lb', { args: ['--agent-socket', agent.socket, '--lb-threads', '2', '--tls-cert-dir', certs, '--https-listen', `127.0.0.1:${port}`] });
    try {
      await register('tls-d', d, ['--tls-sni', 'd.test']);
      await until('d.test passed through on the terminating LB\'s HTTPS port', async () => (await tlsSubject(port, 'd.test')) === 'd.test', { detail: () => tlsLb.logs().slice(-3000) });
      expect(await tlsSubject(port, 'web.test')).toBe('web.test');
      expect(await tlsSubject(port, 'other.test')).toBe('web.test');
    } finally {
      await tlsLb.stop();
      rmSync(certs, { recursive: true, force: true });
    }
  });

  it('does not take the LB\'s own HTTP port for a TCP route, and says so', async () => {
    const a = await startRedis('a');
    servers.push(a);
    await applied(await register('clash', a, ['--tcp-port', String(lb.httpPort)]));
    await until('the refusal logged', () => lb.logs().includes(`port ${lb.httpPort} is the LB's own HTTP or HTTPS port`), { detail });
    const res = await fetch(`http://127.0.0.1:${lb.httpPort}/`, { headers: { host: 'nothing.test' } });
    expect(res.status).toBe(404); // still the HTTP listener, answering for itself
    await cli(['deregister', 'clash', `127.0.0.1:${a.port}`]);
  });

  it('refuses labels that make no sense, saying which', async () => {
    const bad = await agent.cli(['register', 'x', '127.0.0.1:9', '--proxy-protocol', 'v2']);
    expect(bad.code).toBe(2); // bad usage, as every invalid argument
    expect(bad.stderr).toContain('used only with a TCP port or TLS server names');
    const name = await agent.cli(['register', 'x', '127.0.0.1:9', '--tls-sni', 'bad name']);
    expect(name.code).toBe(2);
    expect(name.stderr).toContain('TLS server names');
  });
});
