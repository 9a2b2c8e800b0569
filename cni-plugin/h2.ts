// A minimal HTTP/2 client (h2c, prior knowledge, RFC 9113 + HPACK RFC 7541) for one request per
// connection, on node:net. Loading node:http2 costs about 10 ms of every container start; this
// file is what the plugin needs of it: frames, flow control for the request body, SETTINGS/PING
// answers, and an HPACK decoder (static + dynamic table, Huffman) for the response and trailers.
// Built-ins come through process.getBuiltinModule so the bundle has no `import` and Node runs it
// as a plain script (an ESM parse and module loader cost about 6 ms more per start).

const { connect } = process.getBuiltinModule('node:net');

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
const DATA = 0, HEADERS = 1, RST_STREAM = 3, SETTINGS = 4, PING = 6, GOAWAY = 7, WINDOW_UPDATE = 8, CONTINUATION = 9;
const END_STREAM = 0x1, ACK = 0x1, END_HEADERS = 0x4, PADDED = 0x8, PRIORITY = 0x20;
const STREAM = 1;
/** What we let the server send before it must wait: replies are small, so it never has to. */
const RECEIVE_WINDOW = 1 << 24;

export type Headers = Map<string, string>;

export interface H2Response {
  headers: Headers;
  body: Buffer;
  /** Empty for a trailers-only answer (everything is then in `headers`). */
  trailers: Headers;
}

/** The transport failed (nothing listening, connection reset, timeout): the peer may be down. */
export class H2Unreachable extends Error {}

function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}

function hpackInt(prefixBits: number, first: number, n: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (n < max) return [first | n];
  const out = [first | max];
  n -= max;
  while (n >= 128) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return out;
}

/** Every field as "literal without indexing, new name", no Huffman: nothing to keep in step with. */
export function encodeHeaders(fields: Array<[string, string]>): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of fields) {
    const n = Buffer.from(name);
    const v = Buffer.from(value);
    parts.push(Buffer.from([0, ...hpackInt(7, 0, n.length)]), n, Buffer.from(hpackInt(7, 0, v.length)), v);
  }
  return Buffer.concat(parts);
}

const STATIC: Array<[string, string]> = [
  [':authority', ''], [':method', 'GET'], [':method', 'POST'], [':path', '/'], [':path', '/index.html'], [':scheme', 'http'],
  [':scheme', 'https'], [':status', '200'], [':status', '204'], [':status', '206'], [':status', '304'], [':status', '400'],
  [':status', '404'], [':status', '500'], ['accept-charset', ''], ['accept-encoding', 'gzip, deflate'], ['accept-language', ''],
  ['accept-ranges', ''], ['accept', ''], ['access-control-allow-origin', ''], ['age', ''], ['allow', ''], ['authorization', ''],
  ['cache-control', ''], ['content-disposition', ''], ['content-encoding', ''], ['content-language', ''], ['content-length', ''],
  ['content-location', ''], ['content-range', ''], ['content-type', ''], ['cookie', ''], ['date', ''], ['etag', ''], ['expect', ''],
  ['expires', ''], ['from', ''], ['host', ''], ['if-match', ''], ['if-modified-since', ''], ['if-none-match', ''], ['if-range', ''],
  ['if-unmodified-since', ''], ['last-modified', ''], ['link', ''], ['location', ''], ['max-forwards', ''], ['proxy-authenticate', ''],
  ['proxy-authorization', ''], ['range', ''], ['referer', ''], ['refresh', ''], ['retry-after', ''], ['server', ''], ['set-cookie', ''],
  ['strict-transport-security', ''], ['transfer-encoding', ''], ['user-agent', ''], ['vary', ''], ['via', ''], ['www-authenticate', ''],
];

// RFC 7541 Appendix B code lengths of symbols 0..256 (EOS), as chr(60 + length). The code is
// canonical (codes ascend by length, then symbol), so the lengths alone rebuild it.
const HUFFMAN_LENGTHS =
  'ISXXXXXXXTZXXZXXXXXXXXZXXXXXXXXXBFFHIBDGFFDGDBBBAAABBBBBBBCDKBHFIBCCCCCCCCCCCCCCCCCCCCCCDCDIOIJBKABABABBBACCBBBABCBAABCCCCCKGJIX' +
  'PRPPRRRSRSSSSSTSTTRSTSSSSQRSRSSTRQPRRSSQSRRTQRSSQQRQSRSSPRRRSRRSVVPORSRUVVVWWVTUOQVWWVWTQQVVXWWWPTPQRQQSRRUUTTVSVWVVWWWWWXWWWWWVZ';

let huffman: { first: number[]; count: number[]; offset: number[]; symbols: number[] } | undefined;

function huffmanTable(): NonNullable<typeof huffman> {
  if (huffman) return huffman;
  const lens = [...HUFFMAN_LENGTHS].map((c) => c.charCodeAt(0) - 60);
  const symbols = lens.map((_, s) => s).sort((a, b) => lens[a]! - lens[b]! || a - b);
  const count = new Array<number>(31).fill(0);
  for (const l of lens) count[l]!++;
  const first = new Array<number>(31).fill(0);
  const offset = new Array<number>(31).fill(0);
  let code = 0;
  let index = 0;
  for (let l = 1; l <= 30; l++) {
    first[l] = code;
    offset[l] = index;
    code = (code + count[l]!) * 2;
    index += count[l]!;
  }
  return (huffman = { first, count, offset, symbols });
}

function huffmanDecode(b: Buffer): string {
  const t = huffmanTable();
  const out: number[] = [];
  let code = 0;
  let len = 0;
  for (const byte of b) {
    for (let bit = 7; bit >= 0; bit--) {
      code = code * 2 + ((byte >> bit) & 1);
      len++;
      const i = code - t.first[len]!;
      if (i < t.count[len]!) {
        const sym = t.symbols[t.offset[len]! + i]!;
        if (sym === 256) throw new Error('HPACK: EOS inside a Huffman string');
        out.push(sym);
        code = 0;
        len = 0;
      } else if (len >= 30) throw new Error('HPACK: bad Huffman code');
    }
  }
  // Padding: fewer than 8 bits, all ones (a prefix of EOS).
  if (len > 7 || code !== 2 ** len - 1) throw new Error('HPACK: bad Huffman padding');
  return Buffer.from(out).toString('latin1');
}

/** Decodes header blocks of one connection (the dynamic table lives across blocks). */
export class HpackDecoder {
  private readonly dynamic: Array<[string, string]> = [];
  private size = 0;
  private maxSize = 4096;

  decode(b: Buffer): Headers {
    const out: Headers = new Map();
    let i = 0;
    const int = (prefixBits: number): number => {
      const max = (1 << prefixBits) - 1;
      let n = b[i++]! & max;
      if (n < max) return n;
      let shift = 0;
      for (;;) {
        if (i >= b.length) throw new Error('HPACK: truncated integer');
        const x = b[i++]!;
        n += (x & 0x7f) * 2 ** shift;
        shift += 7;
        if (x < 0x80) return n;
      }
    };
    const str = (): string => {
      const huff = (b[i]! & 0x80) !== 0;
      const len = int(7);
      if (i + len > b.length) throw new Error('HPACK: truncated string');
      const raw = b.subarray(i, i + len);
      i += len;
      return huff ? huffmanDecode(raw) : raw.toString('latin1');
    };
    const entry = (index: number): [string, string] => {
      const e = index <= STATIC.length ? STATIC[index - 1] : this.dynamic[index - STATIC.length - 1];
      if (!e || index === 0) throw new Error(`HPACK: no table entry ${index}`);
      return e;
    };
    const add = (name: string, value: string) => {
      const prev = out.get(name);
      out.set(name, prev === undefined ? value : `${prev},${value}`);
    };
    while (i < b.length) {
      const x = b[i]!;
      if (x & 0x80) {
        const [name, value] = entry(int(7));
        add(name, value);
      } else if (x & 0x40) {
        const index = int(6);
        const name = index ? entry(index)[0] : str();
        const value = str();
        add(name, value);
        this.insert(name, value);
      } else if (x & 0x20) {
        this.maxSize = int(5);
        this.evict();
      } else {
        const index = int(4);
        const name = index ? entry(index)[0] : str();
        add(name, str());
      }
    }
    return out;
  }

  private insert(name: string, value: string): void {
    this.dynamic.unshift([name, value]);
    this.size += 32 + Buffer.byteLength(name) + Buffer.byteLength(value);
    this.evict();
  }

  private evict(): void {
    while (this.size > this.maxSize && this.dynamic.length) {
      const [n, v] = this.dynamic.pop()!;
      this.size -= 32 + Buffer.byteLength(n) + Buffer.byteLength(v);
    }
  }
}

/**
 * One POST on a fresh connection to the unix socket `socket` (h2c, prior knowledge). Resolves
 * once the stream ends; rejects with H2Unreachable when the transport fails or times out.
 */
export function h2Post(socket: string, path: string, fields: Array<[string, string]>, body: Buffer, timeoutMs: number): Promise<H2Response> {
  return new Promise((resolve, reject) => {
    const conn = connect(socket);
    const hpack = new HpackDecoder();
    let settled = false;
    const finish = (err: Error | null, res?: H2Response) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      conn.destroy();
      if (err) reject(err);
      else resolve(res!);
    };
    const timer = setTimeout(() => finish(new H2Unreachable(`no answer within ${timeoutMs} ms`)), timeoutMs);
    conn.once('error', (err: NodeJS.ErrnoException) => finish(new H2Unreachable(err.code ?? err.message)));
    conn.once('close', () => finish(new H2Unreachable('the connection closed before the answer')));

    // Send side: the request body goes out as the peer's flow-control windows allow.
    let connWindow = 65535;
    let initialWindow = 65535;
    let streamWindow = 65535;
    let maxFrame = 16384;
    let sent = 0;
    const pump = () => {
      while (sent < body.length) {
        const n = Math.min(body.length - sent, maxFrame, connWindow, streamWindow);
        if (n <= 0) return;
        const last = sent + n === body.length;
        conn.write(frame(DATA, last ? END_STREAM : 0, STREAM, body.subarray(sent, sent + n)));
        sent += n;
        connWindow -= n;
        streamWindow -= n;
      }
    };
    const settings = Buffer.alloc(12);
    settings.writeUInt16BE(2, 0); // ENABLE_PUSH = 0
    settings.writeUInt32BE(0, 2);
    settings.writeUInt16BE(4, 6); // INITIAL_WINDOW_SIZE
    settings.writeUInt32BE(RECEIVE_WINDOW, 8);
    const connUpdate = Buffer.alloc(4);
    connUpdate.writeUInt32BE(RECEIVE_WINDOW - 65535);
    conn.write(Buffer.concat([
      PREFACE,
      frame(SETTINGS, 0, 0, settings),
      frame(WINDOW_UPDATE, 0, 0, connUpdate),
      frame(HEADERS, END_HEADERS | (body.length ? 0 : END_STREAM), STREAM, encodeHeaders(fields)),
    ]));
    pump();

    // Receive side.
    let buf: Buffer = Buffer.alloc(0);
    let block: Buffer[] | undefined;         // a header block waiting for CONTINUATION
    let blockEnds = false;
    let headers: Headers | undefined;
    let trailers: Headers = new Map();
    const data: Buffer[] = [];
    const endOfStream = () => finish(null, { headers: headers ?? new Map(), body: Buffer.concat(data), trailers });
    const headerBlock = (b: Buffer) => {
      const h = hpack.decode(b);
      if (!headers) headers = h;
      else trailers = h;
      if (blockEnds) endOfStream();
    };
    const unpad = (flags: number, p: Buffer): Buffer => {
      if (!(flags & PADDED)) return p;
      return p.subarray(1, p.length - p[0]!);
    };
    const onFrame = (type: number, flags: number, stream: number, p: Buffer) => {
      switch (type) {
        case SETTINGS:
          if (flags & ACK) return;
          for (let o = 0; o + 6 <= p.length; o += 6) {
            const id = p.readUInt16BE(o);
            const v = p.readUInt32BE(o + 2);
            if (id === 4) {
              streamWindow += v - initialWindow;
              initialWindow = v;
            } else if (id === 5) maxFrame = v;
          }
          conn.write(frame(SETTINGS, ACK, 0, Buffer.alloc(0)));
          pump();
          return;
        case WINDOW_UPDATE:
          if (stream === 0) connWindow += p.readUInt32BE(0) & 0x7fffffff;
          else if (stream === STREAM) streamWindow += p.readUInt32BE(0) & 0x7fffffff;
          pump();
          return;
        case PING:
          if (!(flags & ACK)) conn.write(frame(PING, ACK, 0, p));
          return;
        case GOAWAY:
          return finish(new Error(`the agent closed the HTTP/2 connection (GOAWAY code ${p.readUInt32BE(4)}${p.length > 8 ? `: ${p.subarray(8).toString()}` : ''})`));
        case RST_STREAM:
          if (stream === STREAM) finish(new Error(`the agent reset the call (HTTP/2 error code ${p.readUInt32BE(0)})`));
          return;
        case HEADERS: {
          if (stream !== STREAM) return;
          let q = unpad(flags, p);
          if (flags & PRIORITY) q = q.subarray(5);
          blockEnds = (flags & END_STREAM) !== 0;
          if (flags & END_HEADERS) headerBlock(q);
          else block = [q];
          return;
        }
        case CONTINUATION:
          if (!block) throw new Error('HTTP/2: CONTINUATION without HEADERS');
          block.push(p);
          if (flags & END_HEADERS) {
            const all = Buffer.concat(block);
            block = undefined;
            headerBlock(all);
          }
          return;
        case DATA:
          if (stream !== STREAM) return;
          data.push(unpad(flags, p));
          if (flags & END_STREAM) endOfStream();
          return;
        default:
          return;  // PRIORITY, PUSH_PROMISE (disabled), unknown types: ignored as the RFC says
      }
    };
    conn.on('data', (d: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      try {
        while (buf.length >= 9 && !settled) {
          const len = buf.readUIntBE(0, 3);
          if (buf.length < 9 + len) break;
          const p = buf.subarray(9, 9 + len);
          const type = buf[3]!;
          const flags = buf[4]!;
          const stream = buf.readUInt32BE(5) & 0x7fffffff;
          buf = buf.subarray(9 + len);
          onFrame(type, flags, stream, p);
        }
      } catch (err) {
        finish(new Error(`malformed HTTP/2 from the agent: ${(err as Error).message}`));
      }
    });
  });
}
