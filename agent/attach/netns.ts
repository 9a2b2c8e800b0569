// Netlink sockets inside another network namespace. The `netlink` package opens its socket in
// the calling thread's namespace and has no setns, so the main thread switches into the target
// namespace with setns(2) (through koffi, a prebuilt FFI), opens the socket, and switches back,
// all synchronously: no other JavaScript runs in between, and a socket keeps the namespace it
// was created in. No `ip` process, no helper process per ADD.
import { closeSync, openSync } from 'node:fs';
import { createRtNetlink, type RtNetlinkSocket } from 'netlink';
import { libc } from '../../api/libc.js';

const CLONE_NEWNET = 0x40000000;

let setnsFn: ((fd: number, nstype: number) => number) | undefined;
let hostFd: number | undefined;

function setns(): (fd: number, nstype: number) => number {
  if (!setnsFn) {
    setnsFn = libc().func<(fd: number, nstype: number) => number>('int setns(int fd, int nstype)');
    // The namespace this process lives in, to come back to.
    hostFd = openSync('/proc/self/ns/net', 'r');
  }
  return setnsFn;
}

export class NetnsGone extends Error {}

/** An rtnetlink socket in the namespace at `path` (a bind mount such as /run/netns/x or /proc/<pid>/ns/net). */
export function rtnetlinkIn(path: string): RtNetlinkSocket {
  const fn = setns();
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new NetnsGone(`network namespace ${path} cannot be opened: ${(err as Error).message}`);
  }
  try {
    if (fn(fd, CLONE_NEWNET) !== 0) throw new NetnsGone(`${path} is not a network namespace (setns failed)`);
    try {
      return createRtNetlink();
    } finally {
      if (fn(hostFd!, CLONE_NEWNET) !== 0) {
        // Staying in a container's namespace would send every later socket there: fail hard.
        process.stderr.write('corral: cannot return to the host network namespace after setns; exiting\n');
        process.exit(70);
      }
    }
  } finally {
    closeSync(fd);
  }
}

/** An rtnetlink socket in this process's own namespace. */
export function rtnetlinkHere(): RtNetlinkSocket {
  return createRtNetlink();
}

/** Opens the namespace file and returns its fd (for IFLA_NET_NS_FD); the caller closes it. */
export function openNetns(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (err) {
    throw new NetnsGone(`network namespace ${path} cannot be opened: ${(err as Error).message}`);
  }
}
