// `corral upgrade <service> --image <image>`: asks the agent to clone the service onto a new image
// and move traffic in gated canary steps (agent/upgrade/), then prints its progress until it ends:
// one line per change on the terminal, one JSON event per line with --json. --detach returns once
// it is under way (the agent carries it on); `--finish`, `--rollback` and `--watch` act on the
// service's upgrade.
import { grpc, type agentClient } from '../api/grpc.js';
import { DEFAULT_NAMESPACE, type UpgradeEvent, type UpgradeRequest } from '../api/types.js';
import { duration } from '../agent/endpoints.js';
import { type FlagSpec, type Parsed, UsageError } from './flags.js';

type Client = ReturnType<typeof agentClient>;

export const UPGRADE_FLAGS: FlagSpec[] = [
  { name: 'image', help: 'upgrade: the new image (it must be on every host that runs the service already)' },
  { name: 'steps', help: 'upgrade: percent of traffic on the new color, step by step (default 10,50,100)' },
  { name: 'step-time', help: 'upgrade: how long each step runs before its gate (default 30s)' },
  { name: 'max-error-rate', help: 'upgrade: 5xx share of the new color\'s answers a step may have (default 1%)' },
  { name: 'max-p99', help: 'upgrade: bound on the new color\'s p99 upstream time, in ms (default none)' },
  { name: 'max-p99-ratio', help: 'upgrade: bound on the new color\'s p99 over the old color\'s (default none)' },
  { name: 'ready-timeout', help: 'upgrade: how long the clones get to become healthy (default 2m)' },
  { name: 'finish', boolean: true, help: 'upgrade: remove the old containers of a completed upgrade' },
  { name: 'rollback', boolean: true, help: 'upgrade: stop an upgrade under way, or return a completed one to the old containers' },
  { name: 'watch', boolean: true, help: 'upgrade: follow the service\'s upgrade' },
  { name: 'detach', boolean: true, help: 'upgrade: return once it is under way; the agent carries it on (`--watch` follows it)' },
];

/** Phases that end an upgrade well (exit 0); the others that end it are failures (exit 1). */
const GOOD_END = new Set(['completed', 'finished']);

function durationFlag(p: Parsed, name: string): number {
  const v = p.flags.get(name);
  if (v === undefined) return 0;
  try {
    return duration(`--${name}`, v);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/** "1%", "0.5%" or "0.01" -> a fraction. */
function rate(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(%?)$/.exec(text.trim());
  const v = m ? Number(m[1]) / (m[2] ? 100 : 1) : NaN;
  if (!(v >= 0 && v <= 1)) throw new UsageError(`--max-error-rate "${text}" is not a share such as 1% or 0.01`);
  return v;
}

export function upgradeRequest(p: Parsed): UpgradeRequest {
  const [service, ...extra] = p.args;
  if (!service || extra.length) throw new UsageError(`usage: corral ${upgradeCommand.usage}`);
  const f = p.flags;
  const acts = ['finish', 'rollback', 'watch'].filter((a) => p.bools.has(a));
  if (acts.length > 1) throw new UsageError(`--${acts.join(' and --')} do not go together`);
  const action = acts[0] ?? 'start';
  if (action === 'start' && !f.has('image')) throw new UsageError(`corral upgrade ${service} needs --image <image> (or --finish, --rollback, --watch)`);
  if (action !== 'start' && f.has('image')) throw new UsageError(`--image starts an upgrade; it does not go with --${action}`);
  let steps: number[] = [];
  if (f.has('steps')) {
    steps = f.get('steps')!.split(',').map((s) => Number(s.trim().replace(/%$/, '')));
    if (steps.some((s, i) => !Number.isInteger(s) || s < 1 || s > 100 || (i > 0 && s <= steps[i - 1]!)) || steps.at(-1) !== 100 || steps.length > 20) {
      throw new UsageError(`--steps "${f.get('steps')}" is not rising whole percentages ending at 100 (for example 10,50,100)`);
    }
  }
  const p99 = f.has('max-p99') ? Number(f.get('max-p99')!.replace(/ms$/, '')) : 0;
  if (!(Number.isInteger(p99) && p99 >= 0)) throw new UsageError(`--max-p99 "${f.get('max-p99')}" is not a whole number of ms`);
  const ratio = f.has('max-p99-ratio') ? Number(f.get('max-p99-ratio')) : 0;
  if (!(ratio >= 0 && ratio <= 1000)) throw new UsageError(`--max-p99-ratio "${f.get('max-p99-ratio')}" is not a number such as 2`);
  const stepMs = durationFlag(p, 'step-time');
  if (f.has('step-time') && stepMs < 100) throw new UsageError('--step-time must be at least 100ms');
  return {
    service, namespace: f.get('namespace') ?? DEFAULT_NAMESPACE, action, image: f.get('image') ?? '', color: f.get('color') ?? '',
    steps, stepMs, maxErrorRate: f.has('max-error-rate') ? rate(f.get('max-error-rate')!) : 0.01,
    maxP99Ms: p99, maxP99Ratio: ratio, readyTimeoutMs: durationFlag(p, 'ready-timeout'), detach: p.bools.has('detach'),
  };
}

export const upgradeCommand = {
  usage: 'upgrade <service> --image <image> [-n ns] [--color c] [--steps 10,50,100] [--step-time 30s] [--max-error-rate 1%] [--max-p99 ms | --max-p99-ratio 2] [--ready-timeout 2m] [--detach] [--json] | upgrade <service> --finish | --rollback | --watch',
  async run(p: Parsed, c: Client): Promise<void> {
    const req = upgradeRequest(p);
    const json = p.bools.has('json');
    let last: UpgradeEvent | undefined;
    let lastLine = '';
    await new Promise<void>((resolve, reject) => {
      const call = (c as unknown as { Upgrade(r: UpgradeRequest): grpc.ClientReadableStream<UpgradeEvent> }).Upgrade(req);
      call.on('data', (ev: UpgradeEvent) => {
        last = ev;
        if (json) process.stdout.write(JSON.stringify(ev) + '\n');
        else if (ev.line !== lastLine) process.stdout.write(`${new Date(Number(ev.ms)).toISOString().slice(11, 19)} ${req.service}: ${ev.line}\n`);
        lastLine = ev.line;
      });
      call.on('error', reject);
      call.on('end', resolve);
      // Ctrl-C leaves the upgrade to the agent: say how to follow it.
      process.once('SIGINT', () => {
        call.cancel();
        process.stderr.write(`corral: the upgrade goes on in the agent; \`corral upgrade ${req.service} --watch\` follows it, \`--rollback\` stops it\n`);
        process.exit(130);
      });
    });
    const u = last?.upgrade;
    if (!u || req.detach || req.action === 'watch' && !last?.final) return;
    if (req.action === 'rollback' ? u.phase !== 'rolled-back' : !GOOD_END.has(u.phase)) throw new Error(`upgrade of ${req.service} ${u.phase}: ${u.reason || 'see `corral upgrade ' + req.service + ' --watch`'}`);
  },
};
