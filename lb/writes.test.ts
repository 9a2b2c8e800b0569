// writeWhole on real loopback sockets: the bytes the kernel does not take at once are queued by
// libuv and stay in front of later writes; a socket whose peer is gone fails like net.Socket's write.
import { randomBytes } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { until } from '../test/support/until.js';
import { writeWhole } from './writes.js';

const servers: Server[] = [];
const sockets: Socket[] = [];
afterEach(() => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const s of servers.splice(0)) s.close();
});

/** A connected pair on 127.0.0.1: [client, the server's side]. */
async function pair(): Promise<[Socket, Socket]> {
  const server = createServer();
  servers.push(server);
  const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
  await new Promise((resolve) => client.once('connect', resolve));
  const peer = await accepted;
  sockets.push(client, peer);
  return [client, peer];
}

describe('writeWhole', () => {
  it('writes small heads at once, and keeps order with socket.write after it', async () => {
    const [client, peer] = await pair();
    const got: Buffer[] = [];
    peer.on('data', (d: Buffer) => got.push(d));
    const parts = ['GET / HTTP/1.1\r\n', Buffer.from('host: a.test\r\n\r\n'), 'GET /2 HTTP/1.1\r\nhost: a.test\r\n\r\n'];
    for (const p of parts) expect(writeWhole(client, p)).toBe(true);
    client.write('tail');
    const want = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : p)).concat(Buffer.from('tail')));
    await until('the peer has every byte', () => Buffer.concat(got).length >= want.length, { everyMs: 20 });
    expect(Buffer.concat(got).equals(want)).toBe(true);
  });

  it('queues what the kernel does not take (a reader that waits) and keeps it in front of later writes', async () => {
    const [client, peer] = await pair();
    peer.pause();
    // More than the socket buffers hold: libuv writes the rest later, from this buffer.
    const big = randomBytes(16 * 1024 * 1024);
    expect(writeWhole(client, big)).toBe(true);
    // The kernel took part of it; libuv holds the rest (the path this test is about).
    expect((client as unknown as { _handle: { writeQueueSize: number } })._handle.writeQueueSize).toBeGreaterThan(0);
    // Not the direct path now (libuv has bytes queued): socket.write, which must come after them.
    client.write('after');
    writeWhole(client, 'and more');
    const got: Buffer[] = [];
    peer.on('data', (d: Buffer) => got.push(d));
    peer.resume();
    const want = Buffer.concat([big, Buffer.from('afterand more')]);
    await until('the peer has every byte', () => got.reduce((n, b) => n + b.length, 0) >= want.length, { ms: 30_000, everyMs: 20 });
    expect(Buffer.concat(got).equals(want)).toBe(true);
    expect(client.destroyed).toBe(false);
  });

  it('fails the socket with the write error when the peer is gone, on a later tick', async () => {
    const [client, peer] = await pair();
    const errors: Array<Error & { code?: string }> = [];
    client.on('error', (e) => errors.push(e));
    peer.resetAndDestroy();
    await until('the reset reached the client', () => {
      if (!client.destroyed) writeWhole(client, 'GET / HTTP/1.1\r\n\r\n');
      return client.destroyed;
    });
    await until('the error was emitted', () => errors.length > 0);
    expect(['EPIPE', 'ECONNRESET']).toContain(errors[0]!.code);
  });
});
