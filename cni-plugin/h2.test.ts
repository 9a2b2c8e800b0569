// The plugin's HTTP/2 client against node:http2 itself (the server the agent's gRPC runs on),
// and its HPACK decoder against the worked examples of RFC 7541 Appendix C.
import { createServer, type Http2Server } from 'node:http2';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { h2Post, H2Unreachable, HpackDecoder } from './h2.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('HPACK decoder', () => {
  it('decodes RFC 7541 C.4 (Huffman, dynamic table across three requests)', () => {
    const d = new HpackDecoder();
    expect([...d.decode(hex('8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff'))]).toEqual([[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com']]);
    expect([...d.decode(hex('8286 84be 5886 a8eb 1064 9cbf'))]).toEqual([[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com'], ['cache-control', 'no-cache']]);
    expect([...d.decode(hex('8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf'))]).toEqual([[':method', 'GET'], [':scheme', 'https'], [':path', '/index.html'], [':authority', 'www.example.com'], ['custom-key', 'custom-value']]);
  });

  it('evicts from a 256-byte table as RFC 7541 C.6 does', () => {
    const d = new HpackDecoder();
    d.decode(hex('3fe1 01')); // dynamic table size update to 256
    d.decode(hex('4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3'));
    const h = d.decode(hex('4883 640e ffc1 c0bf'));
    expect(h.get(':status')).toBe('307');
    expect(h.get('location')).toBe('https://www.example.com');
    expect(h.get('cache-control')).toBe('private');
  });
});

describe('h2Post', () => {
  let server: Http2Server | undefined;
  let dir = '';
  afterEach(async () => {
    await new Promise((r) => server?.close(r) ?? r(undefined));
    server = undefined;
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  async function serve(handler: Parameters<typeof createServer>[1]): Promise<string> {
    dir = mkdtempSync(join(tmpdir(), 'corral-h2-'));
    const sock = join(dir, 's.sock');
    server = createServer(handler);
    await new Promise<void>((r) => server!.listen(sock, r));
    return sock;
  }

  it('sends a body larger than the initial window and reads headers, data and trailers', async () => {
    const sock = await serve((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (d: Buffer) => chunks.push(d));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        res.writeHead(200, { 'content-type': 'application/grpc', 'x-path': req.url, 'x-te': String(req.headers.te) });
        res.addTrailers({ 'grpc-status': '0', 'grpc-message': 'all%20good', 'x-len': String(body.length), 'x-sum': String(body.reduce((a, b) => a + b, 0)) });
        res.end(Buffer.alloc(70_000, 7));
      });
    });
    const body = Buffer.alloc(200_000, 3);
    const res = await h2Post(sock, '/corral.v1.Agent/Cni', [[':method', 'POST'], [':scheme', 'http'], [':path', '/corral.v1.Agent/Cni'], [':authority', 'localhost'], ['te', 'trailers']], body, 5000);
    expect(res.headers.get(':status')).toBe('200');
    expect(res.headers.get('x-path')).toBe('/corral.v1.Agent/Cni');
    expect(res.headers.get('x-te')).toBe('trailers');
    expect(res.body.equals(Buffer.alloc(70_000, 7))).toBe(true);
    expect(res.trailers.get('grpc-message')).toBe('all%20good');
    expect(res.trailers.get('x-len')).toBe('200000');
    expect(res.trailers.get('x-sum')).toBe(String(600_000));
  });

  it('reports a socket nobody listens on as unreachable', async () => {
    dir = mkdtempSync(join(tmpdir(), 'corral-h2-'));
    await expect(h2Post(join(dir, 'none.sock'), '/', [[':method', 'POST'], [':scheme', 'http'], [':path', '/']], Buffer.alloc(0), 2000)).rejects.toBeInstanceOf(H2Unreachable);
  });
});
