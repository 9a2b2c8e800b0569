// The chunked transfer coding (RFC 9112 7.1), decoded incrementally as bytes arrive: payload spans
// go to a sink (zero-copy, ranges of the buffer that arrived), the framing is checked strictly
// (hex sizes of at most 15 digits, whitespace after a size only before a `;` extension, CRLF after
// every size line and every chunk's data, no bare LF, no control characters in extensions, every
// trailer line a field line `token ":" value`, like llhttp) and trailers are read and dropped.
// The proxy re-encodes what it forwards, so the framing on the other side is always its own.
import { TCHAR } from './head.js';

export interface ChunkSink {
  /** Payload bytes buf[start, end). */
  chunkData(buf: Buffer, start: number, end: number): void;
}

const S_SIZE = 0; // first hex digit of a size line
const S_SIZE_MORE = 1; // more hex digits, or `;`, whitespace or CR
const S_SIZE_WS = 2; // whitespace after the size: only more of it or `;` may follow (BWS before an extension)
const S_EXT = 3; // chunk extension, up to CR
const S_SIZE_LF = 4;
const S_DATA = 5;
const S_DATA_CR = 6;
const S_DATA_LF = 7;
const S_TRAILER = 8; // start of a trailer line (CR: the end)
const S_TRAILER_NAME = 9; // the field name of a trailer line, up to its colon
const S_TRAILER_VALUE = 10;
const S_TRAILER_LF = 11;
const S_END_LF = 12;
const S_DONE = 13;

const HEX = new Int8Array(256).fill(-1);
for (let i = 0; i < 10; i++) HEX[48 + i] = i;
for (let i = 0; i < 6; i++) {
  HEX[65 + i] = 10 + i;
  HEX[97 + i] = 10 + i;
}

/** Longest size line (with extensions) or trailer section accepted. */
const MAX_LINE = 8 * 1024;

export const CHUNKED_MORE = -1;
export const CHUNKED_ERROR = -2;

export class ChunkedDecoder {
  private state = S_SIZE;
  private size = 0;
  private digits = 0;
  /** Bytes of the current size line or of the whole trailer section. */
  private lineBytes = 0;
  private last = false;
  /** Payload bytes decoded since reset(). */
  total = 0;
  reason = '';

  constructor(private readonly sink: ChunkSink) {}

  reset(): void {
    this.state = S_SIZE;
    this.size = 0;
    this.digits = 0;
    this.lineBytes = 0;
    this.last = false;
    this.total = 0;
    this.reason = '';
  }

  get done(): boolean {
    return this.state === S_DONE;
  }

  /**
   * Decodes buf[pos, end). Returns the index just after the body when it ended (the rest belongs
   * to the next message), CHUNKED_MORE when every byte was used and more are needed, or
   * CHUNKED_ERROR (this.reason says why).
   */
  decode(buf: Buffer, pos: number, end = buf.length): number {
    let i = pos;
    while (i < end) {
      const c = buf[i]!;
      switch (this.state) {
        case S_SIZE: {
          const h = HEX[c]!;
          if (h < 0) return this.fail('invalid chunk size');
          this.size = h;
          this.digits = 1;
          this.lineBytes = 1;
          this.state = S_SIZE_MORE;
          i++;
          break;
        }
        case S_SIZE_MORE: {
          const h = HEX[c]!;
          if (h >= 0) {
            if (++this.digits > 15) return this.fail('chunk size too large');
            this.size = this.size * 16 + h;
          } else if (c === 13) {
            this.state = S_SIZE_LF;
          } else if (c === 59 /* ; */) {
            this.state = S_EXT;
          } else if (c === 32 || c === 9) {
            this.state = S_SIZE_WS;
          } else {
            return this.fail('invalid chunk size');
          }
          this.lineBytes++;
          i++;
          break;
        }
        case S_SIZE_WS:
          // `5 \r\n` or `5 x` is refused (llhttp too): a size is followed by CRLF or an extension.
          if (c === 59 /* ; */) this.state = S_EXT;
          else if (c !== 32 && c !== 9) return this.fail('whitespace after a chunk size');
          if (++this.lineBytes > MAX_LINE) return this.fail('chunk extension too long');
          i++;
          break;
        case S_EXT:
          // Extensions are dropped; only characters that cannot reframe anything are allowed.
          if (c === 13) this.state = S_SIZE_LF;
          else if ((c < 32 && c !== 9) || c === 127) return this.fail('invalid chunk extension');
          if (++this.lineBytes > MAX_LINE) return this.fail('chunk extension too long');
          i++;
          break;
        case S_SIZE_LF:
          if (c !== 10) return this.fail('chunk size line not ended by CRLF');
          i++;
          if (this.size === 0) {
            this.last = true;
            this.lineBytes = 0;
            this.state = S_TRAILER;
          } else {
            this.state = S_DATA;
          }
          break;
        case S_DATA: {
          const n = Math.min(this.size, end - i);
          this.sink.chunkData(buf, i, i + n);
          this.total += n;
          this.size -= n;
          i += n;
          if (this.size === 0) this.state = S_DATA_CR;
          break;
        }
        case S_DATA_CR:
          if (c !== 13) return this.fail('chunk data longer than its size');
          this.state = S_DATA_LF;
          i++;
          break;
        case S_DATA_LF:
          if (c !== 10) return this.fail('chunk data not ended by CRLF');
          this.state = S_SIZE;
          i++;
          break;
        case S_TRAILER:
          // A trailer line is a field line (RFC 9112 7.1.2): a request line or anything else after
          // the last chunk is refused, not dropped as a trailer (llhttp refuses it too).
          if (c === 13) this.state = S_END_LF;
          else if (TCHAR[c] === 1) this.state = S_TRAILER_NAME;
          else return this.fail('invalid trailer');
          if (++this.lineBytes > MAX_LINE) return this.fail('trailers too long');
          i++;
          break;
        case S_TRAILER_NAME:
          if (c === 58 /* : */) this.state = S_TRAILER_VALUE;
          else if (TCHAR[c] !== 1) return this.fail('invalid trailer');
          if (++this.lineBytes > MAX_LINE) return this.fail('trailers too long');
          i++;
          break;
        case S_TRAILER_VALUE:
          if (c === 13) this.state = S_TRAILER_LF;
          else if ((c < 32 && c !== 9) || c === 127) return this.fail('invalid trailer');
          if (++this.lineBytes > MAX_LINE) return this.fail('trailers too long');
          i++;
          break;
        case S_TRAILER_LF:
          if (c !== 10) return this.fail('trailer not ended by CRLF');
          this.state = S_TRAILER;
          i++;
          break;
        case S_END_LF:
          if (c !== 10) return this.fail('chunked body not ended by CRLF');
          this.state = S_DONE;
          return i + 1;
        default:
          return i; // S_DONE: nothing more belongs to this body
      }
    }
    return this.state === S_DONE ? i : CHUNKED_MORE;
  }

  /** True when the last chunk (size 0) has been seen, even if its trailers have not ended. */
  get lastChunk(): boolean {
    return this.last;
  }

  private fail(reason: string): number {
    this.reason = reason;
    return CHUNKED_ERROR;
  }
}

/** `<hex size>\r\n` for a chunk of n bytes; sizes repeat, so a small cache saves the formatting. */
const sizeLines: string[] = [];
export function chunkSizeLine(n: number): string {
  if (n < 4096) return (sizeLines[n] ??= `${n.toString(16)}\r\n`);
  return `${n.toString(16)}\r\n`;
}

export const LAST_CHUNK = '0\r\n\r\n';
