// The product version, from package.json (one level above both api/ and the dist/ bundle).
import { readFileSync } from 'node:fs';

function read(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0-unknown';
  }
}

export const VERSION = read();
