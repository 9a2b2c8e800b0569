// libc through koffi (a prebuilt FFI) for the few syscalls Node does not expose: setns(2) for
// netlink sockets in another namespace (agent/attach/netns.ts), recvmmsg/sendmmsg and friends
// for batched DNS (dns/batch.ts), SO_REUSEPORT listeners for the LB's threads (lb/listeners.ts).
// One loader and one table of the calls, loaded once per thread; sockaddr() builds the address
// structs the socket calls take.
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { ipv6Groups } from './ipv6.js';

const require = createRequire(import.meta.url);

export interface Libc {
  /** A libc function from its C declaration, e.g. `int dup(int fd)`. */
  func<F>(declaration: string): F;
  /** errno after the last call through koffi. */
  errno(): number;
  /** The address of a buffer's memory, for structs that point into it. */
  address(b: Buffer): number;
}

let loaded: Libc | undefined;

/** libc, or an error saying why not (koffi missing, no libc.so.6): callers fall back or report it. */
export function libc(): Libc {
  if (loaded) return loaded;
  const koffi = require('koffi') as typeof import('koffi');
  const lib = koffi.load('libc.so.6');
  loaded = {
    func: <F>(declaration: string) => lib.func(declaration) as unknown as F,
    errno: () => koffi.errno(),
    address: (b: Buffer) => Number(koffi.address(b)),
  };
  return loaded;
}

/** The socket calls Corral makes through koffi (pointers to preallocated structs as integers). */
export interface Syscalls {
  socket(domain: number, type: number, protocol: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, len: number): number;
  bind(fd: number, addr: Buffer, len: number): number;
  listen(fd: number, backlog: number): number;
  getsockname(fd: number, addr: Buffer, len: Buffer): number;
  dup(fd: number): number;
  close(fd: number): number;
  recvmmsg(fd: number, vec: number, vlen: number, flags: number, timeout: null): number;
  sendmmsg(fd: number, vec: number, vlen: number, flags: number): number;
  sendto(fd: number, buf: Buffer, len: number, flags: number, addr: Buffer, addrlen: number): number;
  /** Run off the event loop: `poll.async(...)` on libuv's thread pool. */
  poll: { async(fds: number, nfds: number, timeout: number, cb: (err: unknown, r: number) => void): void };
  eventfd(init: number, flags: number): number;
  write(fd: number, buf: Buffer, len: number): number;
  errno(): number;
  address(b: Buffer): number;
}

let table: Syscalls | null | undefined;
let tableError = '';

/**
 * The table, or null when koffi, libc or a struct layout we know is missing (syscallsError()
 * says why). The constants and struct layouts used with it are Linux's on x64 and arm64.
 */
export function syscalls(): Syscalls | null {
  if (table !== undefined) return table;
  try {
    if (process.platform !== 'linux' || (process.arch !== 'x64' && process.arch !== 'arm64')) throw new Error(`no struct layout for ${process.platform}/${process.arch}`);
    const c = libc();
    const f = (decl: string) => c.func<unknown>(decl);
    table = {
      socket: f('int socket(int domain, int type, int protocol)'),
      setsockopt: f('int setsockopt(int fd, int level, int name, void *value, uint32_t len)'),
      bind: f('int bind(int fd, void *addr, uint32_t len)'),
      listen: f('int listen(int fd, int backlog)'),
      getsockname: f('int getsockname(int fd, void *addr, void *len)'),
      dup: f('int dup(int fd)'),
      close: f('int close(int fd)'),
      recvmmsg: f('int recvmmsg(int fd, uintptr_t vec, unsigned int vlen, int flags, void *timeout)'),
      sendmmsg: f('int sendmmsg(int fd, uintptr_t vec, unsigned int vlen, int flags)'),
      sendto: f('intptr_t sendto(int fd, void *buf, size_t len, int flags, void *addr, uint32_t addrlen)'),
      poll: f('int poll(uintptr_t fds, unsigned long nfds, int timeout)'),
      eventfd: f('int eventfd(unsigned int initval, int flags)'),
      write: f('intptr_t write(int fd, void *buf, size_t len)'),
      errno: c.errno,
      address: c.address,
    } as Syscalls;
  } catch (err) {
    tableError = (err as Error).message;
    table = null;
  }
  return table;
}

/** Why syscalls() is null. */
export function syscallsError(): string {
  return tableError;
}

/** "EADDRINUSE" for its number, for error messages. */
export function errnoName(e: number): string {
  return Object.entries(osConstants.errno).find(([, v]) => v === e)?.[0] ?? `errno ${e}`;
}

export const AF_INET = 2;
export const AF_INET6 = 10;
/** sizeof(struct sockaddr_in), sizeof(struct sockaddr_in6). */
export const SOCKADDR_IN = 16;
export const SOCKADDR_IN6 = 28;

/** struct sockaddr_in / sockaddr_in6 for an address literal and port. */
export function sockaddr(family: number, address: string, port: number): Buffer {
  const b = Buffer.alloc(family === AF_INET ? SOCKADDR_IN : SOCKADDR_IN6);
  writeSockaddr(b, family, address, port);
  return b;
}

/** Writes sockaddr() into b (zeroed first), for callers that reuse one buffer. */
export function writeSockaddr(b: Buffer, family: number, address: string, port: number): void {
  b.fill(0);
  b.writeUInt16LE(family, 0);
  b.writeUInt16BE(port, 2);
  if (family === AF_INET) {
    const parts = address.split('.');
    for (let i = 0; i < 4; i++) b[4 + i] = Number(parts[i]);
    return;
  }
  const groups = ipv6Groups(address);
  for (let i = 0; i < 8; i++) b.writeUInt16BE(groups[i]!, 8 + i * 2);
}
