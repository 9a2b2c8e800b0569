// TLS termination: certificates from a directory, one pair per Host, chosen by SNI.
//   <dir>/web.example.com.crt + .key   for web.example.com
//   <dir>/_.example.com.crt + .key     for *.example.com (a file name cannot hold "*")
// Exact names win over wildcards; a client without SNI gets the first certificate by name.
// The directory is watched: a changed, added or removed pair is used by new connections within
// a second, without a restart (Traefik does the same for its file provider). A change that leaves
// a bad pair (or no pair at all) is refused as a whole and the previous set stays in use.
import { readdirSync, readFileSync, watch, type FSWatcher } from 'node:fs';
import { join } from 'node:path';
import { createSecureContext, type SecureContext } from 'node:tls';

/** Waits this long after the last change before reading the directory (a pair is two writes). */
const SETTLE_MS = 300;

/** One consistent set of certificates. */
interface CertSet {
  exact: Map<string, SecureContext>;
  wildcard: Map<string, SecureContext>;
  fallback: SecureContext | undefined;
  /** The fallback's files: the server's own certificate, for clients that send no SNI. */
  fallbackPair: { cert: Buffer; key: Buffer } | undefined;
  names: string[];
}

export type ReloadResult = { ok: true; names: string[] } | { ok: false; error: string };

/** Reads every <name>.crt that has a <name>.key beside it; throws one line naming a bad pair. */
function readSet(dir: string): CertSet {
  const set: CertSet = { exact: new Map(), wildcard: new Map(), fallback: undefined, fallbackPair: undefined, names: [] };
  let files: string[];
  try {
    files = readdirSync(dir).sort();
  } catch (err) {
    throw new Error(`--tls-cert-dir ${dir}: ${(err as Error).message}`);
  }
  const have = new Set(files);
  for (const f of files) {
    if (!f.endsWith('.crt')) continue;
    const base = f.slice(0, -4);
    if (!have.has(`${base}.key`)) throw new Error(`--tls-cert-dir ${dir}: ${f} has no ${base}.key beside it`);
    let ctx: SecureContext;
    let pair: { cert: Buffer; key: Buffer };
    try {
      pair = { cert: readFileSync(join(dir, f)), key: readFileSync(join(dir, `${base}.key`)) };
      ctx = createSecureContext(pair);
    } catch (err) {
      throw new Error(`--tls-cert-dir ${dir}: cannot use ${f} with ${base}.key: ${(err as Error).message}`);
    }
    const name = base.toLowerCase();
    if (name.startsWith('_.')) set.wildcard.set(name.slice(2), ctx);
    else set.exact.set(name, ctx);
    set.names.push(name.startsWith('_.') ? `*.${name.slice(2)}` : name);
    if (set.fallback === undefined) {
      set.fallback = ctx;
      set.fallbackPair = pair;
    }
  }
  return set;
}

export class CertificateStore {
  private set: CertSet;
  private watcher: FSWatcher | undefined;
  private settle: NodeJS.Timeout | undefined;

  private constructor(readonly dir: string) {
    this.set = readSet(dir);
  }

  /** Loads the directory; throws one line naming a bad pair. */
  static load(dir: string): CertificateStore {
    return new CertificateStore(dir);
  }

  get names(): string[] {
    return this.set.names;
  }

  get size(): number {
    return this.set.names.length;
  }

  /** cert + key for the TLS server's own context: what a client without SNI gets (SNICallback only runs with SNI). */
  defaultPair(): { cert: Buffer; key: Buffer } | Record<string, never> {
    return this.set.fallbackPair ?? {};
  }

  /** Reads the directory again; the new set replaces the old only when every pair loads and there is at least one. */
  reload(): ReloadResult {
    let next: CertSet;
    try {
      next = readSet(this.dir);
    } catch (err) {
      return { ok: false, error: (err as Error).message };
    }
    if (next.names.length === 0) return { ok: false, error: `--tls-cert-dir ${this.dir}: no <host>.crt + <host>.key pair${this.set.names.length ? ' left' : ' yet'}` };
    this.set = next;
    return { ok: true, names: next.names };
  }

  /** Reloads after changes in the directory settle; `done` hears every attempt. */
  watch(done: (r: ReloadResult) => void): void {
    if (this.watcher) return;
    try {
      this.watcher = watch(this.dir, { persistent: false }, () => {
        clearTimeout(this.settle);
        this.settle = setTimeout(() => done(this.reload()), SETTLE_MS);
        this.settle.unref();
      });
    } catch (err) {
      done({ ok: false, error: `--tls-cert-dir ${this.dir}: cannot watch for changes (${(err as Error).message}); certificates change on restart only` });
      return;
    }
    this.watcher.on('error', () => undefined);
  }

  close(): void {
    clearTimeout(this.settle);
    this.watcher?.close();
    this.watcher = undefined;
  }

  /** The context for an SNI server name. */
  contextFor(servername: string): SecureContext | undefined {
    const set = this.set;
    const name = servername.toLowerCase();
    const hit = set.exact.get(name);
    if (hit) return hit;
    let dot = name.indexOf('.');
    while (dot >= 0) {
      const w = set.wildcard.get(name.slice(dot + 1));
      if (w) return w;
      dot = name.indexOf('.', dot + 1);
    }
    return set.fallback;
  }

  /** For https.createServer: SNI picks the context. */
  readonly sniCallback = (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void): void => {
    cb(null, this.contextFor(servername));
  };
}
