// A minimal gRPC unary client for the one call the plugin makes (corral.v1.Agent/Cni), over the
// HTTP/2 client in h2.ts, with CniRequest/CniReply encoded by hand. Still gRPC on the wire; it
// spares every container start the load of @grpc/grpc-js, proto-loader and node:http2 (README.md).
import type { CniReply, CniRequest } from '../api/types.js';
import { h2Post, H2Unreachable } from './h2.js';

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
export async function callCni(socket: string, req: CniRequest, timeoutMs: number): Promise<CniReply> {
  const body = encodeCniRequest(req);
  const msg = Buffer.alloc(5 + body.length);
  msg.writeUInt32BE(body.length, 1);
  body.copy(msg, 5);
  let res;
  try {
    res = await h2Post(socket, '/corral.v1.Agent/Cni', [
      [':method', 'POST'], [':scheme', 'http'], [':path', '/corral.v1.Agent/Cni'], [':authority', 'localhost'],
      ['content-type', 'application/grpc'], ['te', 'trailers'],
    ], msg, timeoutMs);
  } catch (err) {
    if (err instanceof H2Unreachable) throw new Unreachable(`cannot reach the agent at ${socket} (${err.message}): is \`corral agent\` running?`);
    throw err;
  }
  // A trailers-only answer (an error) carries the status in the headers.
  const status = res.trailers.get('grpc-status') ?? res.headers.get('grpc-status');
  const message = res.trailers.get('grpc-message') ?? res.headers.get('grpc-message') ?? '';
  if (status !== '0') {
    const http = res.headers.get(':status');
    throw new Error(`agent call failed (${status === undefined ? `HTTP ${http}, no gRPC status` : `gRPC status ${status}`}): ${decodeURIComponent(message)}`);
  }
  if (res.body.length < 5 || res.body[0] !== 0) throw new Error('agent sent an empty or compressed reply');
  return decodeCniReply(res.body.subarray(5, 5 + res.body.readUInt32BE(1)));
}
