// Protobuf encoding of the agent's Watch replies, built once from corral.proto's own message
// descriptors (so it follows the .proto), instead of protobufjs's generated encoders. Why: under
// churn protobufjs's WatchEvent encoder falls into a V8 deoptimization loop (the code a snapshot
// made hot bails out again on every small delta, ~0.5 ms each time): that was most of an idle
// agent's CPU per endpoint change. Any protobuf decoder reads what this writes (proto3; default
// scalars are left out, as proto3 allows; repeated numbers are packed).

/** The parts of a DescriptorProto (as @grpc/proto-loader gives it) this encoder reads. */
export interface FieldDescriptor { name: string; number: number; label: string; type: string; typeName: string }
export interface MessageDescriptor { name: string; field: FieldDescriptor[]; nestedType: MessageDescriptor[]; options: { mapEntry?: boolean } | null }

type Encode = (w: Writer, v: unknown) => void;

/** A growable byte buffer with the few protobuf primitives the agent's messages use. */
export class Writer {
  buf = Buffer.allocUnsafe(256);
  len = 0;

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  /** An unsigned varint; numbers up to 2^53 (uint64 fields arrive as numbers: longs: Number). */
  varint(n: number): void {
    this.room(10);
    while (n > 0x7f) {
      this.buf[this.len++] = (n % 128) | 0x80;
      n = Math.floor(n / 128);
    }
    this.buf[this.len++] = n;
  }

  /** A signed 32/64-bit varint: negative numbers take ten bytes, as protobuf says. */
  signed(n: number): void {
    if (n >= 0) return this.varint(n);
    this.room(10);
    let lo = n >>> 0;
    let hi = Math.floor(n / 4294967296) >>> 0;
    for (let i = 0; i < 9; i++) {
      this.buf[this.len++] = (lo & 0x7f) | 0x80;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    this.buf[this.len++] = 1;
  }

  string(s: string): void {
    const n = Buffer.byteLength(s);
    this.varint(n);
    this.room(n);
    this.len += this.buf.write(s, this.len, 'utf8');
  }

  bytes(b: Uint8Array): void {
    this.varint(b.length);
    this.room(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  double(n: number): void {
    this.room(8);
    this.len = this.buf.writeDoubleLE(n, this.len);
  }

  float(n: number): void {
    this.room(4);
    this.len = this.buf.writeFloatLE(n, this.len);
  }

  /** Writes what fill writes, length-prefixed (its length is known only afterwards: the bytes move up by the prefix's size). */
  delimited(fill: () => void): void {
    this.room(5);
    const start = this.len;
    fill();
    const n = this.len - start;
    let size = 1;
    for (let x = n; x > 0x7f; x = Math.floor(x / 128)) size++;
    this.room(size);
    this.buf.copyWithin(start + size, start, this.len);
    let at = start;
    let x = n;
    for (; x > 0x7f; x = Math.floor(x / 128)) this.buf[at++] = (x % 128) | 0x80;
    this.buf[at] = x;
    this.len = start + size + n;
  }

  finish(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.len));
  }
}

const VARINT = 0;
const FIXED64 = 1;
const LEN = 2;
const FIXED32 = 5;

/** One scalar type: its wire type, whether proto3 leaves the value out, and how to write it. */
function scalar(type: string, what: string): { wire: number; empty: (v: unknown) => boolean; put: (w: Writer, v: unknown) => void } {
  const num = (v: unknown) => v === 0 || v === undefined || v === null;
  switch (type) {
    case 'TYPE_STRING': return { wire: LEN, empty: (v) => v === '' || v === undefined || v === null, put: (w, v) => w.string(v as string) };
    case 'TYPE_BYTES': return { wire: LEN, empty: (v) => !v || (v as Uint8Array).length === 0, put: (w, v) => w.bytes(v as Uint8Array) };
    case 'TYPE_BOOL': return { wire: VARINT, empty: (v) => !v, put: (w, v) => w.varint(v ? 1 : 0) };
    case 'TYPE_UINT32': case 'TYPE_UINT64': return { wire: VARINT, empty: num, put: (w, v) => w.varint(Number(v)) };
    case 'TYPE_INT32': case 'TYPE_INT64': case 'TYPE_ENUM': return { wire: VARINT, empty: num, put: (w, v) => w.signed(Number(v)) };
    case 'TYPE_DOUBLE': return { wire: FIXED64, empty: num, put: (w, v) => w.double(Number(v)) };
    case 'TYPE_FLOAT': return { wire: FIXED32, empty: num, put: (w, v) => w.float(Number(v)) };
    default: throw new Error(`${what}: protobuf type ${type} is not supported by api/wire.ts`);
  }
}

/**
 * The encoder of one message type. lookup resolves a field's typeName (relative, as proto-loader
 * gives it) against the message it appears in.
 */
export function encoderFor(desc: MessageDescriptor, lookup: (typeName: string, scope: MessageDescriptor) => MessageDescriptor, cache = new Map<MessageDescriptor, Encode>()): Encode {
  const known = cache.get(desc);
  if (known) return known;
  const parts: Encode[] = [];
  const encode: Encode = (w, v) => {
    for (const p of parts) p(w, v);
  };
  cache.set(desc, encode); // before the fields: a message may contain itself
  for (const f of desc.field) {
    const name = f.name;
    const repeated = f.label === 'LABEL_REPEATED';
    const what = `${desc.name}.${name}`;
    if (f.type === 'TYPE_MESSAGE' || f.type === 'TYPE_GROUP') {
      const sub = lookup(f.typeName, desc);
      const tag = (f.number << 3) | LEN;
      if (sub.options?.mapEntry) {
        const [kf, vf] = [sub.field.find((x) => x.number === 1)!, sub.field.find((x) => x.number === 2)!];
        const k = scalar(kf.type, `${what} key`);
        const ktag = (1 << 3) | k.wire;
        const vtag = (2 << 3) | (vf.type === 'TYPE_MESSAGE' ? LEN : scalar(vf.type, `${what} value`).wire);
        const putValue: (w: Writer, x: unknown) => void = vf.type === 'TYPE_MESSAGE'
          ? ((enc) => (w: Writer, x: unknown) => w.delimited(() => enc(w, x)))(encoderFor(lookup(vf.typeName, sub), lookup, cache))
          : scalar(vf.type, `${what} value`).put;
        parts.push((w, m) => {
          const map = (m as Record<string, Record<string, unknown> | undefined>)[name];
          if (!map) return;
          for (const key in map) {
            w.varint(tag);
            w.delimited(() => {
              w.varint(ktag);
              k.put(w, key);
              w.varint(vtag);
              putValue(w, map[key]);
            });
          }
        });
        continue;
      }
      const enc = encoderFor(sub, lookup, cache);
      parts.push(repeated
        ? (w, m) => {
          const list = (m as Record<string, unknown[] | undefined>)[name];
          if (!list) return;
          for (const x of list) {
            w.varint(tag);
            w.delimited(() => enc(w, x));
          }
        }
        : (w, m) => {
          const x = (m as Record<string, unknown>)[name];
          if (x === null || x === undefined) return;
          w.varint(tag);
          w.delimited(() => enc(w, x));
        });
      continue;
    }
    const s = scalar(f.type, what);
    if (repeated && s.wire !== LEN) {
      // Packed, proto3's default for repeated numbers.
      const tag = (f.number << 3) | LEN;
      parts.push((w, m) => {
        const list = (m as Record<string, unknown[] | undefined>)[name];
        if (!list || list.length === 0) return;
        w.varint(tag);
        w.delimited(() => {
          for (const x of list) s.put(w, x);
        });
      });
    } else if (repeated) {
      const tag = (f.number << 3) | LEN;
      parts.push((w, m) => {
        const list = (m as Record<string, unknown[] | undefined>)[name];
        if (!list) return;
        for (const x of list) {
          w.varint(tag);
          s.put(w, x);
        }
      });
    } else {
      const tag = (f.number << 3) | s.wire;
      parts.push((w, m) => {
        const x = (m as Record<string, unknown>)[name];
        if (s.empty(x)) return;
        w.varint(tag);
        s.put(w, x);
      });
    }
  }
  return encode;
}
