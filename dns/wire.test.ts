// Our hand-written encoder (wire.ts) read back by an independent decoder, dns2's: for a
// representative set of answers from the real server, every record dns2 decodes must be the one
// the zone meant to write (Zone.answer's sections): owner name, type, class, TTL and rdata, each
// record's RDLENGTH covering exactly its rdata, and nothing left over after the last one.
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { Packet } from 'dns2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStandaloneDns } from '../test/support/dns.js';
import { endpoint, watchEvent } from '../test/support/records.js';
import type { RunningDns } from './main.js';
import { buildQuery, CLASS_IN, RCODE, TYPE, type Rdata, type ResourceRecord, type Sections } from './wire.js';

let dns: RunningDns;
let port: number;

beforeAll(async () => {
  ({ dns, port } = await startStandaloneDns(200));
  dns.apply(watchEvent({
    revision: 17,
    snapshot: true,
    endpoints: [
      endpoint({ address: '10.42.0.5', color: 'blue' }),
      endpoint({ address: '10.42.0.6', color: 'blue', weight: 3 }),
      endpoint({ address: 'fd00:42::5', color: 'blue' }),
      endpoint({ service: 'api', namespace: 'prod', address: '10.42.1.5', port: 9000, portName: 'grpc' }),
      ...Array.from({ length: 100 }, (_, i) => endpoint({ service: 'big', address: `10.42.2.${i + 1}` })),
    ],
    services: [{ namespace: 'default', name: 'web', active: { blue: 100 }, previous: {} }],
  }));
});

afterAll(async () => {
  await dns?.close();
});

type Decoded = ReturnType<typeof Packet.parse>;
type DecodedRecord = Decoded['answers'][number];

/**
 * dns2's decoder, walked record by record: it fails on a name it cannot read (bad pointer, label
 * or length), on an RDLENGTH that does not match the rdata it read, and on trailing bytes.
 */
function decode(reply: Buffer): Decoded {
  const reader = new Packet.Reader(reply);
  const packet = new Packet();
  packet.header = Packet.Header.parse(reader);
  for (let i = 0; i < packet.header.qdcount; i++) packet.questions.push(Packet.Question.parse(reader));
  const section = (n: number, into: DecodedRecord[]) => {
    for (let i = 0; i < n; i++) {
      const start = reader.offset;
      Packet.Name.decode(reader);
      reader.read(16 + 16 + 32); // type, class, TTL
      const rdlength = reader.read(16);
      const rdataEnd = reader.offset + rdlength * 8;
      reader.offset = start;
      const r = Packet.Resource.parse(reader);
      expect(reader.offset / 8, `RDLENGTH of record ${i} (${r.name} type ${r.type})`).toBe(rdataEnd / 8);
      into.push(r);
    }
  };
  section(packet.header.ancount, packet.answers);
  section(packet.header.nscount, packet.authorities);
  section(packet.header.arcount, packet.additionals);
  expect(reader.offset / 8, 'bytes after the last record').toBe(reply.length);
  return packet;
}

/** A decoded record in wire.ts's own terms, to compare with what the zone meant to write. */
function asWritten(r: DecodedRecord): ResourceRecord & { class: number } {
  const data = ((): Rdata => {
    switch (r.type) {
      case TYPE.A: return { type: TYPE.A, address: r.address! };
      case TYPE.AAAA: return { type: TYPE.AAAA, address: r.address! };
      case TYPE.NS: return { type: TYPE.NS, target: r.ns! };
      case TYPE.PTR: return { type: TYPE.PTR, target: r.domain! };
      case TYPE.SRV: return { type: TYPE.SRV, priority: r.priority!, weight: r.weight!, port: r.port!, target: r.target! };
      case TYPE.SOA: return {
        type: TYPE.SOA, mname: r.primary!, rname: r.admin!, serial: r.serial!,
        refresh: r.refresh!, retry: r.retry!, expire: r.expiration!, minimum: r.minimum!,
      };
      default: throw new Error(`unexpected record type ${r.type} for ${r.name}`);
    }
  })();
  return { name: r.name.toLowerCase(), ttl: r.ttl, class: r.class, data };
}

const inClass = (rs: ResourceRecord[]) => rs.map((r) => ({ ...r, class: CLASS_IN }));
// A and AAAA records are shuffled on the way out: compare as sets.
const sorted = <T>(rs: T[]) => [...rs].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));

function udp(query: Buffer): Promise<Buffer> {
  const sock = createSocket('udp4');
  return new Promise<Buffer>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no UDP reply within 3 s')), 3000);
    sock.once('message', (m) => {
      clearTimeout(timer);
      resolve(m);
    });
    sock.send(query, port, '127.0.0.1');
  }).finally(() => sock.close());
}

function tcp(query: Buffer): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const sock = connect(port, '127.0.0.1', () => sock.write(Buffer.concat([Buffer.from([query.length >> 8, query.length & 0xff]), query])));
    let buf = Buffer.alloc(0);
    sock.on('error', reject);
    sock.setTimeout(3000, () => sock.destroy(new Error('no TCP reply within 3 s')));
    sock.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        sock.destroy();
        resolve(buf.subarray(2, 2 + buf.readUInt16BE(0)));
      }
    });
  });
}

let nextId = 0x100;

/**
 * Asks the server `name` `qtype` (over UDP with EDNS unless told otherwise), decodes the reply with
 * dns2, and checks it is exactly what the zone meant to write. Returns the decoded packet.
 */
async function askAndCompare(name: string, qtype: number, o: { transport?: 'udp' | 'tcp'; edns?: boolean } = {}): Promise<{ packet: Decoded; meant: Sections }> {
  const id = nextId++;
  const edns = o.edns ?? true;
  const reply = await (o.transport === 'tcp' ? tcp : udp)(buildQuery(id, name, qtype, edns ? { udpSize: 1232 } : {}));
  const meant = dns.zone.answer(name.toLowerCase(), qtype)!;
  expect(meant, `${name} is ours`).not.toBeNull();
  const packet = decode(reply);
  const h = packet.header;
  expect({ id: h.id, qr: h.qr, aa: h.aa, tc: h.tc, rcode: h.rcode }).toEqual({ id, qr: 1, aa: 1, tc: 0, rcode: meant.flags & 0xf });
  // The question comes back as asked, case included.
  expect(packet.questions.map((q) => ({ name: q.name, type: q.type, class: q.class }))).toEqual([{ name, type: qtype, class: CLASS_IN }]);
  expect(sorted(packet.answers.map(asWritten))).toEqual(sorted(inClass(meant.answer)));
  expect(sorted(packet.authorities.map(asWritten))).toEqual(sorted(inClass(meant.authority)));
  const opt = packet.additionals.filter((r) => r.type === TYPE.OPT);
  expect(sorted(packet.additionals.filter((r) => r.type !== TYPE.OPT).map(asWritten))).toEqual(sorted(inClass(meant.additional)));
  // Our EDNS payload size rides in the OPT record's class.
  expect(opt.map((r) => r.class)).toEqual(edns ? [1232] : []);
  return { packet, meant };
}

describe('answers read back by an independent decoder (dns2)', () => {
  it('A and AAAA: the active color\'s addresses, TTL 5', async () => {
    const a = await askAndCompare('web.default.corral.internal', TYPE.A);
    expect(a.packet.answers.map((r) => r.address).sort()).toEqual(['10.42.0.5', '10.42.0.6']);
    expect(a.packet.answers.every((r) => r.ttl === 5)).toBe(true);
    const aaaa = await askAndCompare('web.default.corral.internal', TYPE.AAAA);
    expect(aaaa.packet.answers.map((r) => r.address)).toEqual(['fd00:42::5']);
  });

  it('answer owner names point back at the question as asked, case preserved', async () => {
    const { packet } = await askAndCompare('WeB.DeFault.Corral.Internal', TYPE.A);
    expect(packet.answers.map((r) => r.name)).toEqual(['WeB.DeFault.Corral.Internal', 'WeB.DeFault.Corral.Internal']);
  });

  it('SRV: priority, weight, port and target, with the targets\' addresses in additional', async () => {
    const web = await askAndCompare('_http._tcp.web.default.corral.internal', TYPE.SRV);
    expect(web.packet.answers).toHaveLength(3);
    expect(web.packet.additionals.filter((r) => r.type !== TYPE.OPT)).toHaveLength(3);
    const api = await askAndCompare('_grpc._tcp.api.prod.corral.internal', TYPE.SRV);
    expect(api.packet.answers.map((r) => [r.priority, r.weight, r.port, r.target])).toEqual([[0, 10000, 9000, '10-42-1-5.api.prod.corral.internal']]);
  });

  it('PTR for IPv4 and IPv6 endpoint addresses', async () => {
    const v4 = await askAndCompare('5.0.42.10.in-addr.arpa', TYPE.PTR);
    expect(v4.packet.answers.map((r) => r.domain)).toEqual(['10-42-0-5.web.default.corral.internal']);
    const nibbles = 'fd000042000000000000000000000005'.split('').reverse().join('.');
    const v6 = await askAndCompare(`${nibbles}.ip6.arpa`, TYPE.PTR);
    expect(v6.packet.answers.map((r) => r.domain)).toEqual(['fd00-42-0-0-0-0-0-5.web.default.corral.internal']);
  });

  it('SOA and NS at the apex, the serial being the applied revision', async () => {
    const soa = await askAndCompare('corral.internal', TYPE.SOA);
    expect(soa.packet.answers.map((r) => [r.primary, r.admin, r.serial, r.minimum])).toEqual([['ns.corral.internal', 'hostmaster.corral.internal', 17, 5]]);
    const ns = await askAndCompare('corral.internal', TYPE.NS);
    expect(ns.packet.answers.map((r) => r.ns)).toEqual(['ns.corral.internal']);
  });

  it('NXDOMAIN and NODATA carry the SOA in authority and no answer', async () => {
    const nx = await askAndCompare('nothere.default.corral.internal', TYPE.A);
    expect(nx.packet.header.rcode).toBe(RCODE.NXDOMAIN);
    expect(nx.packet.answers).toEqual([]);
    expect(nx.packet.authorities.map((r) => [r.name, r.type])).toEqual([['corral.internal', TYPE.SOA]]);
    const nodata = await askAndCompare('api.prod.corral.internal', TYPE.AAAA);
    expect(nodata.packet.header.rcode).toBe(RCODE.NOERROR);
    expect(nodata.packet.authorities.map((r) => r.type)).toEqual([TYPE.SOA]);
  });

  it('truncation: over UDP only the header (TC), the question and OPT; over TCP all 100 records', async () => {
    for (const edns of [true, false]) {
      const id = nextId++;
      const packet = decode(await udp(buildQuery(id, 'big.default.corral.internal', TYPE.A, edns ? { udpSize: 1232 } : {})));
      expect({ id: packet.header.id, tc: packet.header.tc, aa: packet.header.aa, rcode: packet.header.rcode }).toEqual({ id, tc: 1, aa: 1, rcode: 0 });
      expect(packet.questions.map((q) => q.name)).toEqual(['big.default.corral.internal']);
      expect([packet.answers, packet.authorities]).toEqual([[], []]);
      expect(packet.additionals.map((r) => [r.type, r.class])).toEqual(edns ? [[TYPE.OPT, 1232]] : []);
    }
    const full = await askAndCompare('big.default.corral.internal', TYPE.A, { transport: 'tcp' });
    expect(full.packet.answers).toHaveLength(100);
    const plain = await askAndCompare('big.default.corral.internal', TYPE.A, { transport: 'tcp', edns: false });
    expect(plain.packet.answers).toHaveLength(100);
  });
});
