// TLS-ALPN-01 (RFC 8737) on the HTTPS port of every LB thread. While a challenge is pending (a
// <host>.pem in the alpn directory), each new TLS connection's ClientHello is read first: one that
// offers only "acme-tls/1" gets the challenge certificate for its SNI name, every other one goes
// to the TLS server unchanged (its bytes are put back). With no challenge pending, connections go
// straight to the TLS server: no cost.
import { readdirSync, readFileSync, watch, type FSWatcher } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { createSecureContext, TLSSocket, type SecureContext, type Server as TlsServer } from 'node:tls';

const ACME_TLS = 'acme-tls/1';
/** Largest ClientHello read before giving up on finding ALPN in it. */
const MAX_HELLO = 16 * 1024;

/** The server name and ALPN protocols of a TLS ClientHello; undefined while incomplete, null when not one. */
export function readClientHello(b: Buffer): { servername: string; alpn: string[] } | undefined | null {
  if (b.length < 5) return undefined;
  if (b[0] !== 0x16) return null;
  const recordLen = b.readUInt16BE(3);
  if (b.length < 5 + recordLen) return b.length >= MAX_HELLO ? null : undefined;
  let p = 5;
  if (b[p] !== 1) return null; // not a ClientHello
  p += 4 + 2 + 32; // handshake header, version, random
  const end = 5 + recordLen;
  const skip = (lenBytes: number): boolean => {
    if (p + lenBytes > end) return false;
    const n = lenBytes === 1 ? b[p]! : b.readUInt16BE(p);
    p += lenBytes + n;
    return p <= end;
  };
  if (!skip(1) || !skip(2) || !skip(1)) return null; // session id, cipher suites, compression
  if (p + 2 > end) return { servername: '', alpn: [] };
  const extEnd = Math.min(end, p + 2 + b.readUInt16BE(p));
  p += 2;
  let servername = '';
  const alpn: string[] = [];
  while (p + 4 <= extEnd) {
    const type = b.readUInt16BE(p);
    const len = b.readUInt16BE(p + 2);
    const body = p + 4;
    if (body + len > extEnd) return null;
    if (type === 0 && len >= 5) {
      const nameLen = b.readUInt16BE(body + 3);
      servername = b.latin1Slice(body + 5, Math.min(body + 5 + nameLen, body + len)).toLowerCase();
    } else if (type === 16 && len >= 2) {
      let q = body + 2;
      while (q < body + len) {
        const n = b[q]!;
        alpn.push(b.latin1Slice(q + 1, q + 1 + n));
        q += 1 + n;
      }
    }
    p = body + len;
  }
  return { servername, alpn };
}

export class AlpnChallenges {
  private contexts = new Map<string, SecureContext>();
  private watcher: FSWatcher | undefined;

  constructor(private readonly dir: string) {
    this.reload();
    try {
      this.watcher = watch(dir, { persistent: false }, () => this.reload());
      this.watcher.on('error', () => undefined);
    } catch { /* no watching: challenges present at start only */ }
  }

  private reload(): void {
    const next = new Map<string, SecureContext>();
    let files: string[] = [];
    try {
      files = readdirSync(this.dir);
    } catch { /* none */ }
    for (const f of files) {
      if (!f.endsWith('.pem')) continue;
      try {
        const pem = readFileSync(join(this.dir, f), 'latin1');
        next.set(f.slice(0, -4), createSecureContext({ cert: pem, key: pem }));
      } catch { /* half-written or removed: the next event reloads */ }
    }
    this.contexts = next;
  }

  /** Puts itself in front of the TLS server's connection handling. */
  intercept(server: TlsServer): void {
    const original = server.listeners('connection') as Array<(s: Socket) => void>;
    server.removeAllListeners('connection');
    const pass = (socket: Socket) => {
      for (const l of original) l.call(server, socket);
    };
    server.on('connection', (socket: Socket) => {
      if (this.contexts.size === 0) return pass(socket);
      let got: Buffer = Buffer.alloc(0);
      const onData = (chunk: Buffer) => {
        got = Buffer.concat([got, chunk]);
        const hello = readClientHello(got);
        if (hello === undefined) return;
        socket.off('data', onData);
        socket.pause();
        socket.unshift(got);
        const ctx = hello && hello.alpn.includes(ACME_TLS) ? this.contexts.get(hello.servername) : undefined;
        if (ctx === undefined) return pass(socket);
        // The validator only looks at the certificate: answer the handshake, then close.
        const tls = new TLSSocket(socket, { isServer: true, secureContext: ctx, ALPNProtocols: [ACME_TLS] });
        tls.on('secure', () => tls.end());
        tls.on('error', () => tls.destroy());
        setTimeout(() => tls.destroy(), 10_000).unref();
      };
      socket.on('data', onData);
      socket.on('error', () => socket.destroy());
    });
  }

  close(): void {
    this.watcher?.close();
  }
}
