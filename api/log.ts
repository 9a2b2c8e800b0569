// One pino logger per process, to stderr (stdout belongs to command output and CNI results).
// Parts running in one process (`corral up`) log through children that add `component`.
// Synchronous writes: a line logged before a process writes its last words or exits is out
// before them (asynchronous pino could land after the one-line error a user reads).
import { pino, type Logger } from 'pino';

export function makeLogger(name: string, level = 'info'): Logger {
  return pino({ name: `corral-${name}`, level, base: { pid: process.pid } }, pino.destination({ dest: 2, sync: true }));
}
export type { Logger };
