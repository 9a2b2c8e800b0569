// The SNI reader against real ClientHellos (Node's TLS client and `openssl s_client`), the same
// hellos split over records and reads, and a fuzz of mangled ones: it answers, never throws.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type AddressInfo } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readServerName, type HelloResult } from './clienthello.js';

/** The first bytes a TLS client sends to a plain TCP server (which never answers). */
async function capture(start: (port: number) => () => void): Promise<Buffer> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const got = new Promise<Buffer>((resolve) => {
    server.once('connection', (s) => {
      const chunks: Buffer[] = [];
      s.on('data', (d: Buffer) => {
        chunks.push(d);
        const all = Buffer.concat(chunks);
        if (readServerName(all).kind !== 'more') {
          resolve(all);
          s.destroy();
        }
      });
      s.on('error', () => undefined);
    });
  });
  const stop = start(port);
  const hello = await got;
  stop();
  server.close();
  return hello;
}

function nodeHello(port: number, servername?: string): () => void {
  const s = tlsConnect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false });
  s.on('error', () => undefined);
  return () => s.destroy();
}

function opensslHello(port: number, servername: string): () => void {
  const p = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', servername], { stdio: ['pipe', 'ignore', 'ignore'] });
  return () => p.kill();
}

/** The handshake message of a one-record hello, re-split into records of the given sizes. */
function resplit(hello: Buffer, sizes: number[]): Buffer {
  const len = hello.readUInt16BE(3);
  const msg = hello.subarray(5, 5 + len);
  const out: Buffer[] = [];
  let off = 0;
  let i = 0;
  while (off < msg.length) {
    const n = Math.min(Math.max(1, sizes[i++ % sizes.length]!), msg.length - off);
    const h = Buffer.from([22, 3, 1, 0, 0]);
    h.writeUInt16BE(n, 3);
    out.push(h, msg.subarray(off, off + n));
    off += n;
  }
  return Buffer.concat(out);
}

/** A deterministic generator, so a failing fuzz case can be replayed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x1_0000_0000;
  };
}

let node: Buffer;
let nodeNoSni: Buffer;
let openssl: Buffer;

beforeAll(async () => {
  node = await capture((p) => nodeHello(p, 'db.example.com'));
  nodeNoSni = await capture((p) => nodeHello(p, ''));
  openssl = await capture((p) => opensslHello(p, 'Cache.Example.ORG'));
});

afterAll(() => undefined);

describe('the SNI of a ClientHello', () => {
  it('reads the server name of real clients, lower-cased', () => {
    expect(readServerName(node)).toEqual({ kind: 'sni', name: 'db.example.com' });
    expect(readServerName(openssl)).toEqual({ kind: 'sni', name: 'cache.example.org' });
  });

  it('says there is none when the client sends no server name', () => {
    expect(readServerName(nodeNoSni)).toEqual({ kind: 'none' });
  });

  it('asks for more bytes on every prefix of a hello, however it arrives', () => {
    for (const hello of [node, openssl]) {
      for (let n = 0; n < hello.length; n++) expect(readServerName(hello.subarray(0, n)).kind).toBe('more');
    }
  });

  it('reads a hello split over many records (1-byte records included)', () => {
    for (const sizes of [[1], [3, 1, 7], [4], [100, 5], [16_384]]) {
      const split = resplit(openssl, sizes);
      expect(readServerName(split)).toEqual({ kind: 'sni', name: 'cache.example.org' });
      for (const n of [5, 6, 9, Math.floor(split.length / 2), split.length - 1]) expect(readServerName(split.subarray(0, n)).kind).toBe('more');
    }
  });

  it('refuses what is not a TLS ClientHello, with a reason', () => {
    const cases: Array<[Buffer, string]> = [
      [Buffer.from('GET / HTTP/1.1\r\n\r\n'), 'not TLS'],
      [Buffer.from([0x80, 0x2e, 0x01, 0x00, 0x02]), 'SSLv2'],
      [Buffer.from([22, 3, 1, 0, 0]), 'empty handshake record'],
      [Buffer.from([22, 3, 1, 0x40, 0x01]), 'record of 16385 bytes'],
      [Buffer.from([22, 2, 0, 0, 4, 1, 0, 0, 0]), 'not TLS'],
      [Buffer.from([22, 3, 1, 0, 4, 2, 0, 0, 0]), 'not a ClientHello'],
      [Buffer.from([22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]), 'ClientHello of 16777215 bytes'],
      [Buffer.concat([Buffer.from([22, 3, 1, 0, 4, 1, 0, 0, 40]), Buffer.from([21, 3, 3, 0, 2, 2, 40])]), 'record of type 21'],
    ];
    for (const [bytes, reason] of cases) {
      const r = readServerName(bytes);
      expect(r.kind, reason).toBe('error');
      expect((r as { reason: string }).reason).toContain(reason);
    }
  });

  it('refuses a hello whose lengths disagree or whose name is not a host name', () => {
    // The server_name extension of the Node hello, found by its name, then damaged.
    const at = node.indexOf('db.example.com');
    const bad = Buffer.from(node);
    bad[at + 2] = 0x00; // a NUL inside the name
    expect(readServerName(bad)).toMatchObject({ kind: 'error', reason: 'server name is not a DNS host name' });
    const long = Buffer.from(node);
    long.writeUInt16BE(long.readUInt16BE(at - 2) + 1, at - 2); // name length one past its list
    expect(readServerName(long).kind).toBe('error');
    const cut = Buffer.from(node);
    cut.writeUInt16BE(cut.readUInt16BE(3) - 1, 3); // record one byte short of the handshake it announces
    expect(readServerName(cut.subarray(0, cut.length - 1)).kind).toBe('more');
  });

  it('fuzz: 20,000 mangled hellos each get an answer, none throws, and re-split hellos keep their name', () => {
    const next = rng(16);
    const seeds = [node, nodeNoSni, openssl];
    const kinds: Record<string, number> = {};
    for (let i = 0; i < 20_000; i++) {
      const base = Buffer.from(seeds[i % seeds.length]!);
      let input: Buffer;
      const mode = i % 5;
      if (mode === 0) {
        // bit flips
        for (let k = 0; k < 1 + Math.floor(next() * 6); k++) base[Math.floor(next() * base.length)]! ^= 1 << Math.floor(next() * 8);
        input = base;
      } else if (mode === 1) {
        // a random length field or byte set to an extreme
        base[Math.floor(next() * base.length)] = next() < 0.5 ? 0xff : 0x00;
        input = base;
      } else if (mode === 2) {
        input = base.subarray(0, Math.floor(next() * base.length));
      } else if (mode === 3) {
        input = Buffer.concat([base.subarray(0, 5 + Math.floor(next() * 60)), Buffer.from(Array.from({ length: Math.floor(next() * 300) }, () => Math.floor(next() * 256)))]);
      } else {
        const sizes = [1 + Math.floor(next() * 50), 1 + Math.floor(next() * 500)];
        input = resplit(base, sizes);
        const want = readServerName(base);
        expect(readServerName(input)).toEqual(want);
      }
      let r: HelloResult;
      try {
        r = readServerName(input);
      } catch (err) {
        throw new Error(`case ${i} threw ${(err as Error).message} on ${input.toString('hex')}`);
      }
      kinds[r.kind] = (kinds[r.kind] ?? 0) + 1;
      if (r.kind === 'sni') expect(r.name).toMatch(/^[a-z0-9_.-]{1,253}$/);
    }
    // Every outcome occurred: the mangling reached past the first checks.
    expect(Object.keys(kinds).sort()).toEqual(['error', 'more', 'none', 'sni']);
  });
});
