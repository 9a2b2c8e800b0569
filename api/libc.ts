// libc through koffi (a prebuilt FFI) for the few syscalls Node does not expose: setns(2) for
// netlink sockets in another namespace (agent/attach/netns.ts), recvmmsg/sendmmsg and friends
// for batched DNS (dns/batch.ts), SO_REUSEPORT listeners for the LB's threads (lb/threads.ts).
// Loaded once per thread; each caller declares the functions it uses.
import { createRequire } from 'node:module';

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
