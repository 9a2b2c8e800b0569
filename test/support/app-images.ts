// Images for upgrade tests and benchmarks, made offline from the busybox test image: httpd on
// :8080 serving /w, /w/cgi-bin/app answering "v<version>" (or 500 when broken), /w/health unless sick.
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEST_IMAGE, type Dockerd } from './dockerd.js';

/** `exitAfterS`: httpd in the background and the container's process ends after that many seconds (a crash under traffic). */
export async function makeAppImage(docker: Dockerd, tag: string, o: { version: string; broken?: boolean; sick?: boolean; exitAfterS?: number }): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'corral-app-image-'));
  try {
    mkdirSync(join(dir, 'w', 'cgi-bin'), { recursive: true });
    const app = o.broken
      ? '#!/bin/sh\nprintf "Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nbroken\\n"\n'
      : `#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\nv${o.version}\\n"\n`;
    writeFileSync(join(dir, 'w', 'cgi-bin', 'app'), app);
    chmodSync(join(dir, 'w', 'cgi-bin', 'app'), 0o755);
    if (!o.sick) writeFileSync(join(dir, 'w', 'health'), 'ok\n');
    const name = `mk-${tag.replace(/[:/]/g, '-')}`;
    await docker.exec(['create', '--name', name, TEST_IMAGE, 'true']);
    await docker.exec(['cp', `${join(dir, 'w')}/.`, `${name}:/w`]);
    const cmd = o.exitAfterS ? `["sh", "-c", "httpd -p 8080 -h /w && sleep ${o.exitAfterS}"]` : '["httpd", "-f", "-p", "8080", "-h", "/w"]';
    await docker.exec(['commit', '--change', `CMD ${cmd}`, name, tag]);
    await docker.exec(['rm', name]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** wrk's summary: requests, non-2xx/3xx answers, socket errors of every kind. */
export interface WrkResult { requests: number; non2xx: number; socketErrors: number; raw: string }

export function parseWrk(raw: string): WrkResult {
  const num = (re: RegExp) => Number(re.exec(raw)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(raw);
  return {
    requests: num(/(\d+) requests in/),
    non2xx: num(/Non-2xx or 3xx responses: (\d+)/),
    socketErrors: sock ? sock.slice(1).reduce((n, x) => n + Number(x), 0) : 0,
    raw,
  };
}
