// One pino logger per process, to stderr (stdout belongs to command output and CNI results).
// Parts running in one process (`corral up`) log through children that add `component`.
// Synchronous writes: a line logged before a process writes its last words or exits is out
// before them (asynchronous pino could land after the one-line error a user reads).
// Human-readable lines (pino-pretty, in this thread) when stderr is a terminal, JSON lines
// otherwise (journald, files, log shippers); `--log-format` / CORRAL_LOG_FORMAT decides instead.
import { isatty } from 'node:tty';
import { pino, type Logger, type LoggerOptions } from 'pino';
import pretty from 'pino-pretty';

export const LOG_FORMATS = ['json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** The environment variable a daemon sets once it has decided, so its worker threads log alike. */
const FORMAT_ENV = 'CORRAL_LOG_FORMAT';

/**
 * Fields whose values are secrets wherever they appear in a log line (one level deep too):
 * passwords, tokens, private keys, credentials in headers. They are written as "[redacted]".
 */
const SECRET_KEYS = ['password', 'etcdPassword', 'token', 'privateKey', 'secret', 'authorization', 'cookie'];
const REDACT = [...SECRET_KEYS, ...SECRET_KEYS.map((k) => `*.${k}`), 'headers["proxy-authorization"]', '*.headers.authorization', '*.headers.cookie'];

/** "json" or "pretty" from a flag or CORRAL_LOG_FORMAT; undefined (decide by the terminal) when unset. Throws on anything else. */
export function parseLogFormat(text: string | undefined, what = '--log-format'): LogFormat | undefined {
  if (text === undefined || text === '') return undefined;
  if ((LOG_FORMATS as readonly string[]).includes(text)) return text as LogFormat;
  throw new RangeError(`${what} "${text}" is not json or pretty`);
}

/** The format this process logs in: the one asked for, else pretty on a terminal and JSON otherwise. */
export function logFormat(asked?: LogFormat): LogFormat {
  return asked ?? parseLogFormat(process.env[FORMAT_ENV], FORMAT_ENV) ?? (isatty(2) ? 'pretty' : 'json');
}

/** Fixes this process's format (and its worker threads', which inherit the environment). */
export function useLogFormat(format: LogFormat): void {
  process.env[FORMAT_ENV] = format;
}

export function makeLogger(name: string, level = 'info', format: LogFormat = logFormat()): Logger {
  const opts: LoggerOptions = { name: `corral-${name}`, level, base: { pid: process.pid }, redact: { paths: REDACT, censor: '[redacted]' } };
  if (format === 'pretty') {
    // One line per entry: time, level, the part (`corral up` runs three), the message, then the
    // fields. pino-pretty prints its logger's errorKey apart, on lines of their own: our `err`
    // fields (mostly a message) stay in the line, under a key nothing of ours logs.
    return pino({ ...opts, errorKey: 'error' }, pretty({
      destination: 2, sync: true, colorize: isatty(2), singleLine: true, translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'pid,hostname,name,component', messageFormat: '{if component}{component}: {end}{msg}', errorLikeObjectKeys: [],
    }));
  }
  return pino(opts, pino.destination({ dest: 2, sync: true }));
}
export type { Logger };
