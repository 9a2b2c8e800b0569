// A minimal gRPC unary client over node:http2 for the one call the plugin makes (Agent/Cni),
// with CniRequest/CniReply encoded by hand. Still gRPC on the wire; it spares every container
// start the load of @grpc/grpc-js and proto-loader (numbers in README.md).
import { connect } from 'node:http2';
import { connect as netConnect } from 'node:net';
import type { CniReply, CniRequest } from '../api/types.js';

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}

function field(no: number, value: Buffer): Buffer[] {
  return value.length ? [varint((no << 3) | 2), varint(value.length), value] : [];
}

export function encodeCniRequest(r: CniRequest): Buffer {
  return Buffer.concat([
    ...field(1, Buffer.from(r.command)), ...field(2, Buffer.from(r.containerId)), ...field(3, Buffer.from(r.netns)),
    ...field(4, Buffer.from(r.ifname)), ...field(5, Buffer.from(r.args)), ...field(6, r.config),
  ]);
}

export function decodeCniReply(b: Buffer): CniReply {
  const rep: CniReply = { result: Buffer.alloc(0), code: 0, msg: '', details: '' };
  let i = 0;
  const readVarint = (): number => {
    let n = 0;
    let mul = 1;
    for (;;) {
      const x = b[i++]!;
      n += (x & 0x7f) * mul;
      if (x < 0x80) return n;
      mul *= 128;
    }
  };
  while (i < b.length) {
    const tag = readVarint();
    const no = tag >>> 3;
    const wire = tag & 7;
    if (wire === 0) {
      const v = readVarint();
      if (no === 2) rep.code = v;
    } else if (wire === 2) {
      const len = readVarint();
      const v = b.subarray(i, i + len);
      i += len;
      if (no === 1) rep.result = v;
      else if (no === 3) rep.msg = v.toString();
      else if (no === 4) rep.details = v.toString();
    } else throw new Error(`unexpected protobuf wire type ${wire} from the agent`);
  }
  return rep;
}

export class Unreachable extends Error {}

/** Calls corral.v1.Agent/Cni on the unix socket; Unreachable when nothing answers there. */
export function callCni(socket: string, req: CniRequest, timeoutMs: number): Promise<CniReply> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = (err: Error | null, rep?: CniReply) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      session.close();
      session.destroy();
      if (err) reject(err);
      else resolve(rep!);
    };
    const session = connect('http://localhost', { createConnection: () => netConnect(socket) });
    const timer = setTimeout(() => done(new Unreachable(`the agent at ${socket} did not answer within ${timeoutMs} ms`)), timeoutMs);
    session.on('error', (err: NodeJS.ErrnoException) => done(new Unreachable(`cannot reach the agent at ${socket} (${err.code ?? err.message}): is \`corral agent\` running?`)));
    const body = encodeCniRequest(req);
    const frame = Buffer.alloc(5 + body.length);
    frame.writeUInt32BE(body.length, 1);
    body.copy(frame, 5);
    const stream = session.request({ ':method': 'POST', ':path': '/corral.v1.Agent/Cni', 'content-type': 'application/grpc', te: 'trailers' });
    const chunks: Buffer[] = [];
    let status: string | undefined;
    let message = '';
    stream.on('response', (h) => {
      if (h['grpc-status'] !== undefined) status = String(h['grpc-status']);
    });
    stream.on('trailers', (t) => {
      status = String(t['grpc-status'] ?? status ?? '');
      message = decodeURIComponent(String(t['grpc-message'] ?? ''));
    });
    stream.on('data', (d: Buffer) => chunks.push(d));
    stream.on('error', (err) => done(new Unreachable(`cannot reach the agent at ${socket} (${err.message}): is \`corral agent\` running?`)));
    stream.on('end', () => {
      if (status !== '0') return done(new Error(`agent call failed (gRPC status ${status}): ${message}`));
      const all = Buffer.concat(chunks);
      if (all.length < 5) return done(new Error('agent sent an empty reply'));
      done(null, decodeCniReply(all.subarray(5, 5 + all.readUInt32BE(1))));
    });
    stream.end(frame);
  });
}
