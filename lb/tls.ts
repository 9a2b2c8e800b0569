// TLS termination: certificates from a directory, one pair per Host, chosen by SNI.
//   <dir>/web.example.com.crt + .key   for web.example.com
//   <dir>/_.example.com.crt + .key     for *.example.com (a file name cannot hold "*")
// Exact names win over wildcards; a client without SNI gets the first certificate by name.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createSecureContext, type SecureContext } from 'node:tls';

export class CertificateStore {
  private readonly exact = new Map<string, SecureContext>();
  private readonly wildcard = new Map<string, SecureContext>();
  private fallback: SecureContext | undefined;
  readonly names: string[] = [];

  /** Loads every <name>.crt that has a <name>.key beside it; throws one line naming a bad pair. */
  static load(dir: string): CertificateStore {
    const store = new CertificateStore();
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
      try {
        ctx = createSecureContext({ cert: readFileSync(join(dir, f)), key: readFileSync(join(dir, `${base}.key`)) });
      } catch (err) {
        throw new Error(`--tls-cert-dir ${dir}: cannot use ${f} with ${base}.key: ${(err as Error).message}`);
      }
      const name = base.toLowerCase();
      if (name.startsWith('_.')) store.wildcard.set(name.slice(2), ctx);
      else store.exact.set(name, ctx);
      store.names.push(name.startsWith('_.') ? `*.${name.slice(2)}` : name);
      store.fallback ??= ctx;
    }
    return store;
  }

  get size(): number {
    return this.names.length;
  }

  /** The context for an SNI server name. */
  contextFor(servername: string): SecureContext | undefined {
    const name = servername.toLowerCase();
    const hit = this.exact.get(name);
    if (hit) return hit;
    let dot = name.indexOf('.');
    while (dot >= 0) {
      const w = this.wildcard.get(name.slice(dot + 1));
      if (w) return w;
      dot = name.indexOf('.', dot + 1);
    }
    return this.fallback;
  }

  /** For https.createServer: SNI picks the context. */
  readonly sniCallback = (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void): void => {
    cb(null, this.contextFor(servername));
  };
}
