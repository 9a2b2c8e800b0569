// Listening sockets for the LB's threads: one per thread on the same port with SO_REUSEPORT (the
// kernel spreads new connections over them), made through libc (api/libc.ts) because Node's
// listen cannot set SO_REUSEPORT; each thread's server then takes its descriptor over.
import { lookup } from 'node:dns/promises';
import { isIP, type Server } from 'node:net';
import { AF_INET, AF_INET6, errnoName, sockaddr, SOCKADDR_IN6, syscalls, syscallsError } from '../api/libc.js';
import { parseHostPort } from '../api/options.js';

const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const SO_REUSEPORT = 15;
const IPPROTO_IPV6 = 41;
const IPV6_V6ONLY = 26;
/** Node's default backlog for server.listen. */
const BACKLOG = 511;

/** Listening sockets, one per thread, all on one port. */
export interface SharedListeners {
  fds: number[];
  port: number;
}

/**
 * `count` listening TCP sockets on "ADDR:PORT" with SO_REUSEPORT (empty ADDR: all addresses,
 * IPv6 and IPv4 when the host has IPv6, like Node's listen). Port 0 picks one port for all.
 * Throws with the reason (`unsupported` set when koffi or SO_REUSEPORT is missing: the caller
 * serves on one thread instead).
 */
export async function reusePortListeners(listen: string, count: number, what: string): Promise<SharedListeners> {
  const sys = syscalls();
  if (!sys) throw Object.assign(new Error(`cannot make SO_REUSEPORT sockets: ${syscallsError()}`), { unsupported: true });
  const { host, port } = parseHostPort(listen, what);
  let candidates: Array<{ family: number; address: string }>;
  if (host === '') candidates = [{ family: AF_INET6, address: '::' }, { family: AF_INET, address: '0.0.0.0' }];
  else if (isIP(host)) candidates = [{ family: isIP(host) === 6 ? AF_INET6 : AF_INET, address: host }];
  else {
    const a = await lookup(host);
    candidates = [{ family: a.family === 6 ? AF_INET6 : AF_INET, address: a.address }];
  }
  const fds: number[] = [];
  const fail = (msg: string, extra: object = {}): never => {
    for (const fd of fds) sys.close(fd);
    throw Object.assign(new Error(msg), extra);
  };
  const one = Buffer.alloc(4);
  one.writeInt32LE(1);
  const zero = Buffer.alloc(4);
  let family = 0;
  let address = '';
  for (const c of candidates) {
    const fd = sys.socket(c.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
      sys.close(fd);
      ({ family, address } = c);
      break;
    }
  }
  if (family === 0) fail(`${what} ${listen}: socket() failed (${errnoName(sys.errno())})`);
  let bound = port;
  for (let i = 0; i < count; i++) {
    const fd = sys.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) fail(`${what} ${listen}: socket() failed (${errnoName(sys.errno())})`);
    fds.push(fd);
    if (sys.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, one, 4) < 0) fail(`${what}: SO_REUSEADDR failed (${errnoName(sys.errno())})`);
    if (sys.setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, one, 4) < 0) fail(`${what}: SO_REUSEPORT failed (${errnoName(sys.errno())})`, { unsupported: true });
    // All addresses means IPv4 too, as Node's own listen does on "::".
    if (family === AF_INET6 && address === '::' && sys.setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, zero, 4) < 0) fail(`${what}: IPV6_V6ONLY failed (${errnoName(sys.errno())})`);
    const sa = sockaddr(family, address, bound);
    if (sys.bind(fd, sa, sa.length) < 0) {
      const e = errnoName(sys.errno());
      fail(`listen ${e} ${address}:${bound} (${what} ${listen})`, { code: e });
    }
    if (sys.listen(fd, BACKLOG) < 0) fail(`${what}: listen() failed (${errnoName(sys.errno())})`);
    if (i === 0) {
      const out = Buffer.alloc(SOCKADDR_IN6);
      const len = Buffer.alloc(4);
      len.writeUInt32LE(out.length);
      if (sys.getsockname(fd, out, len) < 0) fail(`${what}: getsockname() failed (${errnoName(sys.errno())})`);
      bound = out.readUInt16BE(2);
    }
  }
  return { fds, port: bound };
}

/** Closes descriptors no server has taken over (a start that failed half-way). */
export function closeFds(fds: number[]): void {
  const sys = syscalls();
  for (const fd of fds) sys?.close(fd);
}

/** Serve `server` on an already listening descriptor; the server owns (and closes) it from here. */
export function listenFd(server: Server, fd: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ fd }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
