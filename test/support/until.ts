// Polling for a condition in tests, the one way every test waits for state it cannot be told
// about: a bounded wait that fails naming what it waited for, never a fixed sleep.

export interface UntilOptions {
  /** Give up after this long (default 15 s: generous, so a busy CI machine does not fail it). */
  ms?: number;
  /** Wait this long between tries (default 200 ms). */
  everyMs?: number;
  /** More to say when it gives up, e.g. a daemon's log. */
  detail?: () => string | Promise<string>;
}

/**
 * Resolves with the first value `fn` returns that is neither undefined nor false; an error
 * counts as "not yet". Past `ms`, fails naming what it waited for and the last error.
 */
export async function until<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, o: UntilOptions = {}): Promise<T> {
  const ms = o.ms ?? 15_000;
  const deadline = Date.now() + ms;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const last = lastError === undefined ? '' : ` (last error: ${(lastError as Error).message ?? String(lastError)})`;
      throw new Error(`timed out after ${ms} ms waiting for ${what}${last}${o.detail ? `\n${await o.detail()}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, o.everyMs ?? 200));
  }
}

/**
 * Polls `fn` every `everyMs` until `ok` accepts its value, and resolves with that value; past
 * `ms`, fails naming what it waited for, the last value, and whatever `detail` adds (daemon logs).
 */
export async function untilOk<T>(
  what: string,
  fn: () => Promise<T>,
  ok: (v: T) => boolean,
  o: { ms: number; everyMs: number; detail?: () => string | Promise<string> },
): Promise<T> {
  const end = Date.now() + o.ms;
  for (;;) {
    const last = await fn();
    if (ok(last)) return last;
    if (Date.now() > end) throw new Error(`${what}: last value ${JSON.stringify(last)}${o.detail ? `\n${await o.detail()}` : ''}`);
    await new Promise((r) => setTimeout(r, o.everyMs));
  }
}
