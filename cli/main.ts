// `corral`: one executable for the daemons and the commands. Exit 0 ok, 1 failed, 2 bad usage.
import { VERSION } from '../api/version.js';
import { CLIENT_FLAGS, commands, runCommand } from './commands.js';
import { DAEMON_FLAGS, daemonOptions, logFormatFlag, runDaemons } from './daemons.js';
import { ETCD_INIT_FLAGS, ETCD_INIT_USAGE, runEtcdInit } from './etcd-init.js';
import { parseFlags, UsageError } from './flags.js';

const HELP = `corral ${VERSION}: container networking, DNS service discovery and an L7 load balancer

Daemons (foreground until SIGINT/SIGTERM):
  corral up                  agent + dns + lb with the embedded registry (the single-host stack)
  corral agent | dns | lb    each part on its own

Commands:
${Object.values(commands).map((c) => `  corral ${c.usage}`).join('\n')}
  corral version
  corral ${ETCD_INIT_USAGE}

Daemon flags (each also as CORRAL_<FLAG> in the environment, e.g. CORRAL_DNS_LISTEN):
${DAEMON_FLAGS.map((f) => `  --${f.name.padEnd(16)} ${f.help}`).join('\n')}

Command flags:
${CLIENT_FLAGS.map((f) => `  ${(f.short ? `-${f.short}, --${f.name}` : `    --${f.name}`).padEnd(20)} ${f.help}`).join('\n')}
`;

/** `corral <command> --help`: its usage and the flags it reads (the common ones and its own). */
function commandHelp(cmd: string): string {
  const own = `${cmd}: `;
  const flags = CLIENT_FLAGS.filter((f) => !/^[a-z-]+: /.test(f.help) || f.help.startsWith(own) || f.help.includes(`; ${own}`));
  return `usage: corral ${commands[cmd]!.usage}\n\nFlags (each also as CORRAL_<FLAG> in the environment):\n${flags
    .map((f) => `  ${(f.short ? `-${f.short}, --${f.name}` : `    --${f.name}`).padEnd(22)} ${f.help.startsWith(own) ? f.help.slice(own.length) : f.help}`)
    .join('\n')}\n`;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === 'help' || cmd === '--help' || cmd === '-h') {
    process.stdout.write(HELP);
    return cmd ? 0 : 2;
  }
  if (cmd === 'version' || cmd === '--version') {
    const p = parseFlags(rest, [{ name: 'json', boolean: true, help: '' }]);
    process.stdout.write(p.bools.has('json') ? JSON.stringify({ version: VERSION }) + '\n' : `corral ${VERSION}\n`);
    return 0;
  }
  if (cmd === 'up' || cmd === 'agent' || cmd === 'dns' || cmd === 'lb') {
    const p = parseFlags(rest, DAEMON_FLAGS);
    if (p.args.length) throw new UsageError(`corral ${cmd} takes no arguments, got "${p.args.join(' ')}"`);
    const opts = daemonOptions(p);
    return runDaemons(cmd === 'up' ? ['agent', 'dns', 'lb'] : [cmd], opts, logFormatFlag(p));
  }
  if (cmd === 'etcd-init') {
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(`usage: corral ${ETCD_INIT_USAGE}\n\nFlags:\n${ETCD_INIT_FLAGS.map((f) => `  --${f.name.padEnd(20)} ${f.help}`).join('\n')}\n`);
      return 0;
    }
    return runEtcdInit(parseFlags(rest, ETCD_INIT_FLAGS));
  }
  if (cmd in commands) {
    const dashdash = rest.indexOf('--');
    if (rest.slice(0, dashdash < 0 ? undefined : dashdash).some((a) => a === '--help' || a === '-h')) {
      process.stdout.write(commandHelp(cmd));
      return 0;
    }
    return runCommand(cmd, parseFlags(rest, CLIENT_FLAGS));
  }
  throw new UsageError(`unknown command "${cmd}"; see \`corral help\``);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof UsageError) {
      process.stderr.write(`corral: ${err.message}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`corral: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    }
  },
);
