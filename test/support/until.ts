// Polling for a condition in tests: resolves with the first value `fn` returns that is not
// undefined (errors count as "not yet"), or fails naming what it waited for.
export async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
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
