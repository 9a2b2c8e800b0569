// Batched UDP for every thread (server.ts, workers.ts): recvmmsg(2)/sendmmsg(2) through koffi
// on the thread's own dup(2) of an IPv4 listener's descriptor, instead of Node's
// one-datagram-at-a-time dgram path. The descriptor shares O_NONBLOCK with the main thread's
// socket, so readiness comes from poll(2) run off the event loop (a koffi async call on libuv's
// thread pool) on the socket and an eventfd (to wake it for close); then recvmmsg(MSG_DONTWAIT)
// drains up to BATCH datagrams per call, each is answered by the same UdpAnswerer (DnsServer),
// and the replies go out in one sendmmsg. Replies that wait for an upstream go out later with
// sendto(2).
import type { Socket as UdpSocket } from 'node:dgram';
import { AF_INET, SOCKADDR_IN, syscalls, syscallsError, writeSockaddr, type Syscalls } from '../api/libc.js';

const BATCH = 64;
/** Receive slot: a query larger than this (MSG_TRUNC) is dropped; no real DNS query is. */
const SLOT = 4096;
/** Send slot: a reply is at most --dns-udp-size (≤ 4096) or a FORMERR/TC echo of the question + OPT. */
const OUT_SLOT = 4096 + 512;
const MMSG = 64; // sizeof(struct mmsghdr) on LP64: msghdr (56) + msg_len (4) + padding
const IOV = 16;
const NAME = SOCKADDR_IN;
const MSG_DONTWAIT = 0x40;
const MSG_TRUNC = 0x20;
const EAGAIN = 11;
const EINTR = 4;
const POLLIN = 1;
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
/** poll timeout: only a backstop, close() wakes the poll through the eventfd. */
const POLL_MS = 1000;

/** Where a reply that waited for an upstream goes (a dgram socket, or a batch's sendto). */
export interface UdpSender {
  send(out: Buffer, port: number, address: string): void;
}

/** Who answers a datagram (DnsServer): the one thing a batch needs of the server. */
export interface UdpAnswerer {
  /**
   * The reply to one UDP query if it is ready now; null when it is dropped or waits for an
   * upstream (then `later` sends it). `msg` may be reused by the caller once this returns.
   */
  answerUdp(msg: Buffer, client: string, port: number, later: UdpSender): Buffer | null;
}

/** dup(2): the workers need descriptors of their own, so closing one never closes another's. */
export function dup(fd: number): number {
  const s = syscalls();
  if (!s) throw new Error(syscallsError());
  const d = s.dup(fd);
  if (d < 0) throw new Error(`dup(${fd}) failed: too many open files?`);
  return d;
}

/** The state under a bound dgram socket (no public getter; `_handle` is deprecated). */
function udpHandle(sock: UdpSocket): { fd?: number; recvStop?: () => number } | undefined {
  const state = Object.getOwnPropertySymbols(sock).find((s) => s.description === 'state symbol');
  return state ? (sock as unknown as Record<symbol, { handle?: { fd?: number; recvStop?: () => number } }>)[state]?.handle : undefined;
}

/** The descriptor under a bound dgram socket. */
export function udpFd(sock: UdpSocket): number {
  const fd = udpHandle(sock)?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('cannot find the descriptor of a UDP socket to share with worker threads');
  return fd;
}

/**
 * Serves a bound IPv4 dgram socket in batches on this thread: Node stops reading it (the socket
 * stays open, and owns its descriptor) and a BatchedUdp reads a dup of it. Null if Node's
 * internals or the syscalls are not there (the caller keeps Node's reading).
 */
export function batchDgram(sock: UdpSocket, server: UdpAnswerer, onError: (msg: string) => void): { batch: BatchedUdp | null; why: string } {
  const handle = udpHandle(sock);
  if (typeof handle?.fd !== 'number' || handle.fd < 0 || typeof handle.recvStop !== 'function') return { batch: null, why: 'cannot find the descriptor of the UDP socket' };
  const why = probeBatch(handle.fd);
  if (why !== '') return { batch: null, why };
  const fd = dup(handle.fd);
  let batch: BatchedUdp;
  try {
    batch = new BatchedUdp(fd, server, onError);
  } catch (err) {
    syscalls()?.close(fd);
    return { batch: null, why: (err as Error).message };
  }
  handle.recvStop.call(handle);
  batch.start();
  return { batch, why: '' };
}

let support: string | undefined;

/** '' when batching works here (koffi, libc and the kernel's recvmmsg/sendmmsg, tried once on a scratch socket), else why not. */
export function batchSupport(): string {
  if (support !== undefined) return support;
  const s = syscalls();
  if (!s) return (support = syscallsError());
  const fd = s.socket(AF_INET, 2 /* SOCK_DGRAM */ | 0o4000 /* SOCK_NONBLOCK */ | 0o2000000 /* SOCK_CLOEXEC */, 0);
  if (fd < 0) return (support = `socket failed (errno ${s.errno()})`);
  support = probeBatch(fd);
  s.close(fd);
  return support;
}

/** Checks that the kernel has recvmmsg/sendmmsg (vlen 0 receives nothing): '' or why not. */
export function probeBatch(fd: number): string {
  const s = syscalls();
  if (!s) return syscallsError();
  const vec = Buffer.alloc(MMSG);
  const addr = s.address(vec);
  if (s.recvmmsg(fd, addr, 0, MSG_DONTWAIT, null) < 0 && s.errno() !== EAGAIN) return `recvmmsg failed (errno ${s.errno()})`;
  if (s.sendmmsg(fd, addr, 0, MSG_DONTWAIT) < 0 && s.errno() !== EAGAIN) return `sendmmsg failed (errno ${s.errno()})`;
  return '';
}

/** One IPv4 UDP descriptor served in batches. Owns fd: closes it on close(). */
export class BatchedUdp {
  private readonly s: Syscalls;
  // Every buffer below is allocated once; the kernel reads and writes them through raw addresses.
  private readonly recvData = Buffer.allocUnsafeSlow(BATCH * SLOT);
  private readonly recvNames = Buffer.allocUnsafeSlow(BATCH * NAME);
  private readonly recvIov = Buffer.allocUnsafeSlow(BATCH * IOV);
  private readonly recvVec = Buffer.allocUnsafeSlow(BATCH * MMSG);
  private readonly sendData = Buffer.allocUnsafeSlow(BATCH * OUT_SLOT);
  private readonly sendNames = Buffer.allocUnsafeSlow(BATCH * NAME);
  private readonly sendIov = Buffer.allocUnsafeSlow(BATCH * IOV);
  private readonly sendVec = Buffer.allocUnsafeSlow(BATCH * MMSG);
  private readonly pollFds = Buffer.allocUnsafeSlow(16);
  private readonly one = Buffer.alloc(8);
  private readonly to = Buffer.alloc(NAME);
  private readonly recvVecAddr: number;
  private readonly sendVecAddr: number;
  private readonly pollAddr: number;
  /** Client address strings by IPv4 address as a 32-bit integer (the ACL and limiter key on strings). */
  private readonly names = new Map<number, string>();
  private readonly wake: number;
  private closed = false;
  /** recvmmsg errors in a row (other than EAGAIN). */
  private failures = 0;
  private polling = false;
  private onIdle: (() => void) | null = null;
  /** For replies that waited for an upstream. */
  readonly later = { send: (out: Buffer, port: number, address: string) => this.sendOne(out, port, address) };

  constructor(private readonly fd: number, private readonly server: UdpAnswerer, private readonly onError: (msg: string) => void) {
    const s = syscalls();
    if (!s) throw new Error(syscallsError());
    this.s = s;
    this.wake = s.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (this.wake < 0) throw new Error(`eventfd failed (errno ${s.errno()})`);
    this.recvData.fill(0);
    this.recvVec.fill(0);
    this.sendVec.fill(0);
    this.recvIov.fill(0);
    this.sendIov.fill(0);
    const dataAddr = s.address(this.recvData);
    const namesAddr = s.address(this.recvNames);
    const iovAddr = s.address(this.recvIov);
    const outAddr = s.address(this.sendData);
    const outNamesAddr = s.address(this.sendNames);
    const outIovAddr = s.address(this.sendIov);
    for (let i = 0; i < BATCH; i++) {
      writePtr(this.recvIov, i * IOV, dataAddr + i * SLOT);
      writePtr(this.recvIov, i * IOV + 8, SLOT);
      const m = i * MMSG;
      writePtr(this.recvVec, m, namesAddr + i * NAME); // msg_name
      this.recvVec.writeUInt32LE(NAME, m + 8); // msg_namelen (reset before every recvmmsg)
      writePtr(this.recvVec, m + 16, iovAddr + i * IOV); // msg_iov
      writePtr(this.recvVec, m + 24, 1); // msg_iovlen
      writePtr(this.sendIov, i * IOV, outAddr + i * OUT_SLOT);
      writePtr(this.sendVec, m, outNamesAddr + i * NAME);
      this.sendVec.writeUInt32LE(NAME, m + 8);
      writePtr(this.sendVec, m + 16, outIovAddr + i * IOV);
      writePtr(this.sendVec, m + 24, 1);
    }
    this.recvVecAddr = s.address(this.recvVec);
    this.sendVecAddr = s.address(this.sendVec);
    this.pollAddr = s.address(this.pollFds);
    // struct pollfd { int fd; short events; short revents; } × 2: the socket, then the eventfd.
    this.pollFds.writeInt32LE(fd, 0);
    this.pollFds.writeInt16LE(POLLIN, 4);
    this.pollFds.writeInt32LE(this.wake, 8);
    this.pollFds.writeInt16LE(POLLIN, 12);
  }

  start(): void {
    this.drain();
    this.arm();
  }

  /** Stops reading; resolves once the poll in flight (woken through the eventfd) has returned and fd is closed. */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    return new Promise((resolve) => {
      const done = () => {
        this.s.close(this.fd);
        this.s.close(this.wake);
        resolve();
      };
      if (!this.polling) return done();
      this.onIdle = done;
      this.one.writeBigUInt64LE(1n);
      this.s.write(this.wake, this.one, 8);
    });
  }

  private arm(): void {
    if (this.closed || this.failures >= 100) return;
    this.polling = true;
    this.s.poll.async(this.pollAddr, 2, POLL_MS, (err) => {
      this.polling = false;
      if (this.closed) {
        const idle = this.onIdle;
        this.onIdle = null;
        idle?.();
        return;
      }
      if (err) this.onError(String(err));
      this.drain();
      this.arm();
    });
  }

  /** Reads and answers until the socket has nothing more (or a bounded number of rounds, to let the event loop run). */
  private drain(): void {
    const s = this.s;
    for (let round = 0; round < 16 && !this.closed; round++) {
      const vec = this.recvVec;
      for (let i = 0; i < BATCH; i++) vec.writeUInt32LE(NAME, i * MMSG + 8);
      const n = s.recvmmsg(this.fd, this.recvVecAddr, BATCH, MSG_DONTWAIT, null);
      if (n <= 0) {
        if (n < 0) {
          const e = s.errno();
          // A descriptor that keeps failing would spin poll and recvmmsg: give up on it.
          if (e !== EAGAIN && e !== EINTR && ++this.failures <= 100) this.onError(`recvmmsg failed (errno ${e})${this.failures === 100 ? ': no longer reading this socket' : ''}`);
        }
        return;
      }
      this.failures = 0;
      this.answerBatch(n);
      if (n < BATCH) return;
    }
  }

  private answerBatch(n: number): void {
    const vec = this.recvVec;
    const names = this.recvNames;
    const data = this.recvData;
    const out = this.sendData;
    const outNames = this.sendNames;
    const outIov = this.sendIov;
    let j = 0;
    for (let i = 0; i < n; i++) {
      const m = i * MMSG;
      if (vec.readInt32LE(m + 48) & MSG_TRUNC) continue;
      if (vec.readUInt32LE(m + 8) !== NAME || names.readUInt16LE(i * NAME) !== AF_INET) continue;
      const len = vec.readUInt32LE(m + 56);
      const a = i * NAME;
      const port = (names[a + 2]! << 8) | names[a + 3]!;
      const ip = names.readUInt32BE(a + 4);
      let client = this.names.get(ip);
      if (client === undefined) {
        client = `${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`;
        if (this.names.size >= 65536) this.names.clear();
        this.names.set(ip, client);
      }
      const reply = this.server.answerUdp(data.subarray(i * SLOT, i * SLOT + len), client, port, this.later);
      if (reply === null) continue;
      if (reply.length > OUT_SLOT) {
        this.sendOne(reply, port, client);
        continue;
      }
      out.set(reply, j * OUT_SLOT);
      outIov.writeUInt32LE(reply.length, j * IOV + 8);
      const b = j * NAME;
      for (let k = 0; k < NAME; k++) outNames[b + k] = names[a + k]!;
      j++;
    }
    let sent = 0;
    while (sent < j) {
      const r = this.s.sendmmsg(this.fd, this.sendVecAddr + sent * MMSG, j - sent, MSG_DONTWAIT);
      if (r > 0) sent += r;
      else {
        // The first of the rest failed (a full send buffer: UDP may drop): skip it, send the others.
        const e = this.s.errno();
        if (e !== EAGAIN && e !== EINTR) this.onError(`sendmmsg failed (errno ${e})`);
        if (e !== EINTR) sent++;
      }
    }
  }

  private sendOne(out: Buffer, port: number, address: string): void {
    if (this.closed) return;
    if (address.includes(':')) return; // IPv4 sockets only
    writeSockaddr(this.to, AF_INET, address, port);
    this.s.sendto(this.fd, out, out.length, MSG_DONTWAIT, this.to, NAME);
  }
}

function writePtr(b: Buffer, off: number, v: number): void {
  b.writeUInt32LE(v % 0x1_0000_0000, off);
  b.writeUInt32LE(Math.floor(v / 0x1_0000_0000), off + 4);
}
