// Log lines as an operator sees them: human-readable on a terminal (a real pty, from `script`),
// JSON lines through a pipe (journald, files), `--log-format` / CORRAL_LOG_FORMAT to force
// either, a clear usage error for anything else, and secrets written as "[redacted]".
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CORRAL, childEnv } from './support/corral.js';

const dir = mkdtempSync(join(tmpdir(), 'corral-metrics-logs-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// An agent that cannot start (a registry it does not understand) logs one error line and exits 1: quick, and no port or state needed.
const failing = (extra: string[] = []) => [CORRAL, 'agent', '--registry', 'bogus://x', '--state-dir', dir, '--run-dir', dir, '--admin-listen', '127.0.0.1:0', '--docker-socket', '', '--docker-plugin-socket', '', ...extra];

function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (out += d));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, out }));
  });
}

/** The command on a real terminal: `script` gives it a pty for stdin, stdout and stderr. */
function onTerminal(args: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string }> {
  const quoted = [process.execPath, ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
  return run('script', ['-qfec', quoted, '/dev/null'], env);
}

const logLines = (out: string) => out.split(/\r?\n/).filter((l) => l.includes('cannot start'));

describe('log format', () => {
  it('writes human-readable lines when stderr is a terminal', async () => {
    const r = await onTerminal(failing());
    expect(r.code).toBe(1);
    const [line] = logLines(r.out);
    // eslint-disable-next-line no-control-regex
    expect(line?.replace(/\x1b\[[0-9;]*m/g, '')).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] ERROR: cannot start \{"err":"--registry \\"bogus:\/\/x\\" is not understood/);
  });

  it('writes JSON lines through a pipe', async () => {
    const r = await run(process.execPath, failing());
    expect(r.code).toBe(1);
    const [line] = logLines(r.out);
    expect(JSON.parse(line!)).toMatchObject({ level: 50, name: 'corral-agent', msg: 'cannot start' });
  });

  it('--log-format and CORRAL_LOG_FORMAT force either', async () => {
    const [json, pretty, env] = await Promise.all([
      onTerminal(failing(['--log-format', 'json'])),
      run(process.execPath, failing(['--log-format', 'pretty'])),
      run(process.execPath, failing(), { CORRAL_LOG_FORMAT: 'pretty' }),
    ]);
    expect(JSON.parse(logLines(json.out)[0]!)).toMatchObject({ msg: 'cannot start' });
    expect(logLines(pretty.out)[0]).toMatch(/^\[[\d:.]+\] ERROR: cannot start \{/);
    expect(logLines(env.out)[0]).toMatch(/^\[[\d:.]+\] ERROR: cannot start \{/);
  });

  it('refuses another format with a usage error', async () => {
    const r = await run(process.execPath, [CORRAL, 'up', '--log-format', 'xml']);
    expect(r.code).toBe(2);
    expect(r.out.trim()).toBe('corral: --log-format "xml" is not json or pretty');
  });

  it('never writes a secret: passwords, tokens and private keys are redacted in both formats', async () => {
    await Promise.all(['json', 'pretty'].map(async (format) => {
      const script = `import { makeLogger } from './api/log.ts';
        const log = makeLogger('agent', 'info', '${format}').child({ component: 'agent' });
        log.warn({ password: 'hunter2-a', etcd: { password: 'hunter2-b' }, token: 'tok-c', privateKey: 'wg-d', headers: { authorization: 'Bearer e' }, user: 'h1' }, 'login failed');`;
      const r = await run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script]);
      expect(r.out, r.out).toContain('login failed');
      expect(r.out).toContain('h1');
      expect(r.out).not.toMatch(/hunter2|tok-c|wg-d|Bearer e/);
      expect(r.out.match(/\[redacted\]/g)).toHaveLength(5);
    }));
  });
});
