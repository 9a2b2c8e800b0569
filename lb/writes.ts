// One whole head (or a head with the body that came along) written straight to a plain socket's
// libuv handle, the way net.Socket's own write reaches it, without the Writable around it: no
// WriteWrap object, nextTick and state bookkeeping per write when the kernel takes the bytes at
// once, which it nearly always does for a few hundred bytes (measured: ~0.7 µs of CPU per write
// less, two writes per proxied HTTP/1.1 request). Used only when nothing waits in the socket's
// Writable, so bytes stay in order; when the kernel does not take all of it, libuv queues the
// rest and writes it first (its queue is in front of any later write), and the Writable's own
// backpressure covers the writes after it. Without the binding (a Node that drops
// `process.binding('stream_wrap')`), every write goes through socket.write.
import type { Socket } from 'node:net';
import { getSystemErrorName } from 'node:util';

/** What libuv's write request carries back from Node's stream_wrap binding. */
interface WriteReq {
  oncomplete: ((this: WriteReq, status: number) => void) | null;
  /** The bytes of a write still queued (kept alive until it completes). */
  buffer: Buffer | null;
  socket: Socket | null;
}

interface StreamWrap {
  WriteWrap: new () => WriteReq;
  streamBaseState: Int32Array;
  kLastWriteWasAsync: number;
}

interface Handle {
  writeBuffer(req: WriteReq, data: Buffer): number;
  writeLatin1String(req: WriteReq, data: string): number;
}

function load(): StreamWrap | undefined {
  try {
    const b = (process as unknown as { binding(name: string): StreamWrap }).binding('stream_wrap');
    return typeof b.WriteWrap === 'function' && b.streamBaseState !== undefined && typeof b.kLastWriteWasAsync === 'number' ? b : undefined;
  } catch {
    return undefined;
  }
}

const binding = load();

function writeError(status: number): Error {
  let code = 'EIO';
  try {
    code = getSystemErrorName(status);
  } catch {
    // not a known errno: EIO
  }
  return Object.assign(new Error(`write ${code}`), { code, errno: status, syscall: 'write' });
}

/** A write libuv finished later: let go of the bytes; a failure destroys the socket, as net.Socket does. */
function queuedDone(this: WriteReq, status: number): void {
  const socket = this.socket;
  this.socket = null;
  this.buffer = null;
  if (status < 0 && socket !== null && !socket.destroyed) socket.destroy(writeError(status));
}

function failed(socket: Socket, status: number): void {
  if (!socket.destroyed) socket.destroy(writeError(status));
}

/** The request object of the next write; replaced once a write keeps it (libuv queued part of it). */
let req: WriteReq | undefined = binding !== undefined ? new binding.WriteWrap() : undefined;

/**
 * Writes `data` (a Buffer, or a latin1 string) on a socket (TLS ones and unconnected ones go through socket.write). Returns what
 * socket.write would say about backpressure: false only when the socket's Writable is full.
 */
export function writeWhole(socket: Socket, data: Buffer | string): boolean {
  const handle = (socket as unknown as { _handle: Handle | null })._handle;
  if (req === undefined || handle === null || socket.connecting || socket.writableLength !== 0 || !socket.writable || (socket as { encrypted?: boolean }).encrypted === true) {
    return typeof data === 'string' ? socket.write(data, 'latin1') : socket.write(data);
  }
  const r = req;
  const err = typeof data === 'string' ? handle.writeLatin1String(r, data) : handle.writeBuffer(r, data);
  if (err !== 0) {
    // As net.Socket: the socket fails on a later tick, not inside the caller's write.
    process.nextTick(failed, socket, err);
    return false;
  }
  if (binding!.streamBaseState[binding!.kLastWriteWasAsync] !== 0) {
    // libuv keeps this request until the rest is written: a new one for the next write.
    r.socket = socket;
    if (typeof data !== 'string') r.buffer = data; // a string's bytes were copied by the binding
    r.oncomplete = queuedDone;
    req = new binding!.WriteWrap();
  }
  return true;
}
