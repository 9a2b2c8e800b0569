// One pino logger per process, to stderr (stdout belongs to command output and CNI results).
import { pino, type Logger } from 'pino';

export function makeLogger(component: string, level = 'info'): Logger {
  return pino({ name: `corral-${component}`, level, base: { component } }, pino.destination(2));
}
export type { Logger };
