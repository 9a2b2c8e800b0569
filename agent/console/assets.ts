// The page's files (page/): embedded in the bundle by scripts/build.mjs, read from the source tree
// otherwise (tests that import the agent), as api/version.ts does with the version.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';

/** Where the console lives on the admin listener. */
export const CONSOLE_PREFIX = '/console';

declare const __CORRAL_CONSOLE_PAGE__: Record<string, string> | undefined;

export interface Asset { type: string; body: Buffer; etag: string }

const TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
};

function files(): Record<string, string> {
  if (typeof __CORRAL_CONSOLE_PAGE__ === 'object') return __CORRAL_CONSOLE_PAGE__;
  const dir = new URL('./page/', import.meta.url);
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir)) out[name] = readFileSync(new URL(name, dir), 'utf8');
  return out;
}

/** Path -> file: index.html at /console/, the others by name. */
export function consoleAssets(): Map<string, Asset> {
  const out = new Map<string, Asset>();
  for (const [name, text] of Object.entries(files())) {
    const type = TYPES[name.slice(name.lastIndexOf('.') + 1)];
    if (!type) continue;
    const body = Buffer.from(text);
    const asset = { type, body, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` };
    out.set(name === 'index.html' ? `${CONSOLE_PREFIX}/` : `${CONSOLE_PREFIX}/${name}`, asset);
  }
  return out;
}
