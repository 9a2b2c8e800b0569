// Bad input never crashes the server: 100,000 random and mutated packets over UDP and 20,000
// framed ones over TCP (truncated headers, compression loops, label overflows, bad counts, huge
// names, random bytes), then the same server must still answer every kind of question correctly.
// The server runs in this process: an exception in its handlers would fail the run.
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dig, kdig, startStandaloneDns } from '../test/support/dns.js';
import { endpoint, watchEvent } from '../test/support/records.js';
import type { RunningDns } from './main.js';
import { buildQuery, TYPE } from './wire.js';

let dns: RunningDns;
let port: number;

// A small deterministic PRNG (xorshift32): a failure can be replayed with the same seed.
let seed = 0x2545f491;
function rnd(n: number): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) % n;
}

const NAMES = ['web.default.corral.internal', 'WeB.DeFault.corral.internal', '_http._tcp.web.default.corral.internal', 'corral.internal', 'nothere.corral.internal', '5.0.42.10.in-addr.arpa', 'web.corral.internal'];
const TYPES = [TYPE.A, TYPE.AAAA, TYPE.SRV, TYPE.PTR, TYPE.SOA, TYPE.NS, TYPE.ANY, 16, 252, 65535];

function label(len: number): Buffer {
  return Buffer.alloc(len, 0x61 + rnd(26));
}

/** One hostile packet. */
function packet(): Buffer {
  const base = buildQuery(rnd(0x10000), NAMES[rnd(NAMES.length)]!, TYPES[rnd(TYPES.length)]!, rnd(2) ? { udpSize: rnd(5000) } : {});
  const header = base.subarray(0, 12);
  switch (rnd(10)) {
    case 0: // random bytes, any length (including shorter than a header)
      return Buffer.from(Array.from({ length: rnd(600) }, () => rnd(256)));
    case 1: // truncated anywhere
      return base.subarray(0, rnd(base.length));
    case 2: { // bit flips
      const b = Buffer.from(base);
      for (let i = rnd(6) + 1; i > 0; i--) b[rnd(b.length)]! ^= 1 << rnd(8);
      return b;
    }
    case 3: { // bad counts
      const b = Buffer.from(base);
      for (const at of [4, 6, 8, 10]) if (rnd(2)) b.writeUInt16BE(rnd(3) === 0 ? 0xffff : rnd(5), at);
      return b;
    }
    case 4: // compression pointer in the question, pointing at itself or at the header
      return Buffer.concat([header, Buffer.from([0xc0, rnd(2) ? 12 : rnd(256), 0, 1, 0, 1])]);
    case 5: { // a compression loop in an additional record's name
      const b = Buffer.concat([base, Buffer.from([0xc0, 0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0])]);
      const at = base.length;
      b[at + 1] = at; // points at itself
      b.writeUInt16BE(b.readUInt16BE(10) + 1, 10);
      return b;
    }
    case 6: // a label over 63, or a label type 0x40/0x80
      return Buffer.concat([header, Buffer.from([64 + rnd(128)]), label(70), Buffer.from([0, 0, 1, 0, 1])]);
    case 7: { // a name over 255 octets (many labels)
      const labels = Array.from({ length: 5 + rnd(10) }, () => Buffer.concat([Buffer.from([63]), label(63)]));
      return Buffer.concat([header, ...labels, Buffer.from([0, 0, 1, 0, 1])]);
    }
    case 8: { // several OPT records, OPT with a huge rdlength, EDNS version > 0
      const opt = Buffer.from([0, 0, 41, 0x10, 0, rnd(2), rnd(3), 0, 0, rnd(256), rnd(256)]);
      const b = Buffer.concat([base.subarray(0, base.length - (base.readUInt16BE(10) ? 11 : 0)), opt, rnd(2) ? opt : Buffer.alloc(0)]);
      b.writeUInt16BE(b.length > base.length ? 2 : 1, 10);
      return b;
    }
    default: { // a valid query with junk after it, or a response (QR set)
      const b = Buffer.concat([base, Buffer.from(Array.from({ length: rnd(40) }, () => rnd(256)))]);
      if (rnd(4) === 0) b[2]! |= 0x80;
      return b;
    }
  }
}

beforeAll(async () => {
  ({ dns, port } = await startStandaloneDns(100));
  dns.apply(watchEvent({
    revision: 3,
    snapshot: true,
    endpoints: [endpoint({ address: '10.42.0.5' }), endpoint({ address: '10.42.0.6' }), endpoint({ address: 'fd00:42::5' })],
  }));
});

afterAll(async () => {
  await dns?.close();
});

async function stillCorrect(): Promise<void> {
  const a = await dig(port, 'web.default.corral.internal', 'A');
  expect(a.status).toBe('NOERROR');
  expect(a.answer.map((r) => r.data).sort()).toEqual(['10.42.0.5', '10.42.0.6']);
  expect((await dig(port, 'web.default.corral.internal', 'AAAA')).answer.map((r) => r.data)).toEqual(['fd00:42::5']);
  expect((await dig(port, '_http._tcp.web.default.corral.internal', 'SRV')).answer).toHaveLength(3);
  expect((await dig(port, '-x', '10.42.0.5')).answer.map((r) => r.data)).toEqual(['10-42-0-5.web.default.corral.internal.']);
  const nx = await dig(port, 'nothere.default.corral.internal', 'A');
  expect(nx.status).toBe('NXDOMAIN');
  expect(nx.authority.map((r) => r.type)).toEqual(['SOA']);
  const tcp = await kdig(port, 'web.default.corral.internal', 'A', '+tcp');
  expect(tcp.answer).toHaveLength(2);
}

describe('fuzzing', () => {
  it('survives 100,000 hostile UDP packets and still answers correctly', async () => {
    const sock = createSocket('udp4');
    let replies = 0;
    let badReplies = 0;
    sock.on('message', (m) => {
      replies++;
      if (m.length < 12 || !(m[2]! & 0x80)) badReplies++;
    });
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
    const started = Date.now();
    for (let sent = 0; sent < 100_000; ) {
      // Bursts of 30, then one event-loop turn: libuv reads at most 32 datagrams per socket
      // per turn, so the server sees every packet instead of the kernel dropping the excess.
      for (let i = 0; i < 30; i++, sent++) sock.send(packet(), port, '127.0.0.1');
      await new Promise((r) => setImmediate(r));
    }
    await new Promise((r) => setTimeout(r, 300));
    sock.close();
    expect(Date.now() - started).toBeLessThan(40_000);
    process.stderr.write(`fuzz: ${replies} UDP replies to 100000 packets in ${Date.now() - started} ms\n`);
    // Every packet that is not dropped by design (shorter than a header, or a response) gets a
    // reply: FORMERR, REFUSED, NOTIMP, BADVERS, SERVFAIL from the dead upstream, or an answer.
    expect(replies).toBeGreaterThan(60_000);
    expect(badReplies).toBe(0); // every reply is a well-formed response header
    await stillCorrect();
  }, 60_000);

  it('survives 20,000 hostile framed TCP messages and garbage streams, and still answers correctly', async () => {
    const conns = Array.from({ length: 20 }, (_, c) => new Promise<void>((resolve) => {
      const sock = connect(port, '127.0.0.1');
      sock.on('error', () => resolve());
      sock.on('close', () => resolve());
      sock.on('data', () => {});
      sock.on('connect', () => {
        const frames: Buffer[] = [];
        for (let i = 0; i < 1000; i++) {
          const p = packet();
          const len = Buffer.alloc(2);
          // Now and then a length that lies (longer or shorter than what follows).
          len.writeUInt16BE(rnd(50) === 0 ? rnd(0x10000) : p.length);
          frames.push(len, p);
        }
        if (c % 5 === 0) frames.push(Buffer.from(Array.from({ length: 3000 }, () => rnd(256))));
        sock.end(Buffer.concat(frames));
      });
      setTimeout(() => sock.destroy(), 10_000).unref();
    }));
    await Promise.all(conns);
    await stillCorrect();
  }, 60_000);
});
