// One pino logger per process, to stderr (stdout belongs to command output and CNI results).
// Parts running in one process (`corral up`) log through children that add `component`.
import { pino, type Logger } from 'pino';

export function makeLogger(name: string, level = 'info'): Logger {
  return pino({ name: `corral-${name}`, level, base: { pid: process.pid } }, pino.destination(2));
}
export type { Logger };
