// The product version: set by the bundler from package.json; from the source tree, read there.
import { readFileSync } from 'node:fs';

declare const __CORRAL_VERSION__: string | undefined;

function read(): string {
  if (typeof __CORRAL_VERSION__ === 'string') return __CORRAL_VERSION__;
  try {
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0-unknown';
  }
}

export const VERSION = read();
