// Drives a CNI plugin binary exactly as a runtime does: CNI_* environment, config on stdin,
// result or error JSON on stdout, no CA bundle in the environment.
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';

export const CORRAL_CNI = resolve('dist/corral-cni.mjs');
export const REFERENCE_PLUGINS = '/usr/lib/cni';

export interface CniRun { code: number; out: any; stdout: string; stderr: string; ms: number }

export function runPlugin(bin: string, env: Record<string, string | undefined>, stdin: string | object, opts: { timeoutMs?: number } = {}): Promise<CniRun> {
  const e: NodeJS.ProcessEnv = { PATH: process.env.PATH, CNI_PATH: REFERENCE_PLUGINS };
  for (const [k, v] of Object.entries(env)) if (v !== undefined) e[k] = v;
  const cmd = bin.endsWith('.mjs') ? process.execPath : bin;
  const args = bin.endsWith('.mjs') ? [bin] : [];
  const t0 = performance.now();
  return new Promise((res, rej) => {
    const c = spawn(cmd, args, { env: e, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d));
    c.stderr.on('data', (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => c.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    c.once('error', rej);
    c.once('close', (code) => {
      clearTimeout(timer);
      let out: any;
      try {
        out = stdout.trim() ? JSON.parse(stdout) : undefined;
      } catch {
        out = undefined;
      }
      res({ code: code ?? -1, out, stdout, stderr, ms: performance.now() - t0 });
    });
    c.stdin.end(typeof stdin === 'string' ? stdin : JSON.stringify(stdin));
  });
}

/** corral-cni with a verb and the usual variables. */
export function corralCni(command: string, vars: { containerId?: string; netns?: string; ifname?: string; args?: string }, conf: string | object): Promise<CniRun> {
  return runPlugin(CORRAL_CNI, { CNI_COMMAND: command, CNI_CONTAINERID: vars.containerId, CNI_NETNS: vars.netns, CNI_IFNAME: vars.ifname, CNI_ARGS: vars.args }, conf);
}
