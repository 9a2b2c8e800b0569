// corral-cni: the CNI 1.1 plugin, a thin client of the agent. It checks the environment and
// config it can check alone (so a bad one is reported even with the agent down), relays the
// call to the agent over gRPC, and prints the result or a spec error as JSON on stdout.
// Start-up is most of its cost: no `import` of Node built-ins (see h2.ts), stdin read and
// stdout written synchronously without the stream machinery of process.stdin/stdout.
import { CNI_VERSIONS, CniCode, CniError, parseNetConf } from '../api/cni.js';
import { callCni, Unreachable } from './grpc.js';

const VERSION_ONLY = new Set(['VERSION']);
const COMMANDS = ['ADD', 'DEL', 'CHECK', 'GC', 'STATUS', 'VERSION'];

const { readFileSync, writeSync } = process.getBuiltinModule('node:fs');

function readStdin(): Promise<Buffer> {
  try {
    return Promise.resolve(readFileSync(0));
  } catch (err) {
    // A non-blocking stdin (EAGAIN) is read the evented way.
    if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      process.stdin.on('data', (d: Buffer) => chunks.push(d));
      process.stdin.on('end', () => resolve(Buffer.concat(chunks)));
      process.stdin.on('error', reject);
    });
  }
}

function write(text: string): void {
  const b = Buffer.from(text);
  for (let off = 0; off < b.length;) {
    try {
      off += writeSync(1, b, off);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    }
  }
}

function print(obj: unknown): void {
  write(JSON.stringify(obj) + '\n');
}

async function main(): Promise<number> {
  const env = process.env;
  const cmd = env.CNI_COMMAND ?? '';
  let version = '1.1.0';
  try {
    if (!cmd) throw new CniError(CniCode.badEnv, 'CNI_COMMAND is not set: this is a CNI plugin, run it from a container runtime (or set CNI_COMMAND=VERSION)');
    if (!COMMANDS.includes(cmd)) throw new CniError(CniCode.badEnv, `CNI_COMMAND "${cmd}" is not one of ${COMMANDS.join(', ')}`);
    const stdin = await readStdin();
    if (VERSION_ONLY.has(cmd)) {
      let asked = '';
      try {
        asked = String((JSON.parse(String(stdin) || '{}') as { cniVersion?: unknown }).cniVersion ?? '');
      } catch {
        // VERSION answers whatever stdin holds
      }
      print({ cniVersion: CNI_VERSIONS.includes(asked) ? asked : '1.1.0', supportedVersions: CNI_VERSIONS });
      return 0;
    }
    const conf = parseNetConf(stdin);
    version = conf.cniVersion;
    if ((cmd === 'GC' || cmd === 'STATUS') && version !== '1.1.0') throw new CniError(CniCode.incompatibleVersion, `${cmd} needs cniVersion 1.1.0, the config says ${version}`);
    const need = (name: string) => {
      if (!env[name]) throw new CniError(CniCode.badEnv, `${name} is not set: ${cmd} needs it`);
    };
    if (cmd === 'ADD' || cmd === 'CHECK') ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'].forEach(need);
    if (cmd === 'DEL') ['CNI_CONTAINERID', 'CNI_IFNAME'].forEach(need);
    let rep;
    try {
      rep = await callCni(conf.agentSocket, {
        command: cmd, containerId: env.CNI_CONTAINERID ?? '', netns: env.CNI_NETNS ?? '', ifname: env.CNI_IFNAME ?? '', args: env.CNI_ARGS ?? '', config: stdin,
      }, cmd === 'STATUS' ? 2000 : 30_000);
    } catch (err) {
      if (err instanceof Unreachable) {
        throw new CniError(cmd === 'STATUS' ? CniCode.notAvailable : CniCode.tryAgain, `${err.message}; try again once the agent is up`);
      }
      throw err;
    }
    if (rep.code !== 0) throw new CniError(rep.code, rep.msg, rep.details);
    if (cmd === 'ADD') write(rep.result.toString() + '\n');
    return 0;
  } catch (err) {
    const e = err instanceof CniError ? err : new CniError(CniCode.io, (err as Error).message);
    print({ cniVersion: version, code: e.code, msg: e.message, ...(e.details ? { details: e.details } : {}) });
    return 1;
  }
}

main().then((code) => {
  process.exitCode = code;
});
