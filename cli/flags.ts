// Flag parsing for `corral`: --name value, --name=value, short aliases, booleans, and a
// CORRAL_<NAME> environment variable for every flag. Bad usage throws UsageError (exit 2).

export class UsageError extends Error {}

export interface FlagSpec {
  name: string;               // "dns-listen"
  short?: string;             // "n"
  boolean?: boolean;
  /** May be given more than once: every value is kept in Parsed.lists, in order. */
  repeat?: boolean;
  help: string;
}

export interface Parsed {
  flags: Map<string, string>;
  bools: Set<string>;
  /** Every value of a repeatable flag, in order. */
  lists: Map<string, string[]>;
  args: string[];
}

export function envName(flag: string): string {
  return `CORRAL_${flag.toUpperCase().replace(/-/g, '_')}`;
}

export function parseFlags(argv: string[], specs: FlagSpec[], env: NodeJS.ProcessEnv = process.env): Parsed {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short!, s]));
  const flags = new Map<string, string>();
  const bools = new Set<string>();
  const lists = new Map<string, string[]>();
  const args: string[] = [];
  for (const s of specs) {
    const e = env[envName(s.name)];
    if (e === undefined) continue;
    if (s.boolean) {
      if (['1', 'true', 'yes'].includes(e.toLowerCase())) bools.add(s.name);
    } else flags.set(s.name, e);
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      args.push(...argv.slice(i + 1));
      break;
    }
    let spec: FlagSpec | undefined;
    let inline: string | undefined;
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
      inline = eq >= 0 ? a.slice(eq + 1) : undefined;
      spec = byName.get(name);
      if (!spec) throw new UsageError(`unknown flag --${name}; see \`corral help\``);
    } else if (/^-[a-zA-Z]$/.test(a)) {
      spec = byShort.get(a.slice(1));
      if (!spec) throw new UsageError(`unknown flag ${a}; see \`corral help\``);
    } else {
      args.push(a);
      continue;
    }
    if (spec.boolean) {
      if (inline === undefined || ['1', 'true', 'yes'].includes(inline)) bools.add(spec.name);
      else bools.delete(spec.name);
      continue;
    }
    const value = inline ?? argv[++i];
    if (value === undefined) throw new UsageError(`--${spec.name} needs a value`);
    flags.set(spec.name, value);
    if (spec.repeat) lists.set(spec.name, [...(lists.get(spec.name) ?? []), value]);
  }
  return { flags, bools, lists, args };
}
