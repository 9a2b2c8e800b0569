// Docker's defaults for this host (`--docker-daemon-json`): with them, a plain `docker run` puts a
// container on Corral's network: Docker's default bridge (`bip`) takes its addresses from the
// upper half of this host's block (the agent's IPAM keeps to the lower half), so every host routes
// to it over the mesh; `dns`/`dns-search`/`dns-opts` make Corral DNS the resolver of every
// container (Docker's embedded DNS on other networks forwards to it), `mtu` the overlay's;
// `ip-masq: false` because Docker's masquerade would rewrite their traffic to other hosts (the
// agent masquerades it to non-cluster addresses instead). Merged into daemon.json: keys the user
// set to something else are kept (and reported), a file that does not parse is never written.
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { IPv4, IPv4CidrRange } from 'ip-num';
import type { Logger } from '../../api/log.js';

export type DockerDefaults = Record<string, unknown>;

/** The half of `block` Docker gets (the upper one); the agent's IPAM keeps to the other. */
export function dockerRange(block: string): string {
  const b = IPv4CidrRange.fromCidr(block);
  const len = Number(b.cidrPrefix.getValue());
  const half = (b.getLast().getValue() - b.getFirst().getValue() + 1n) / 2n;
  return `${IPv4.fromNumber(b.getFirst().getValue() + half).toString()}/${len + 1}`;
}

/**
 * What daemon.json should hold for this host: Docker's default bridge (docker0) on the upper half
 * of the block. No `default-address-pools`: Docker skips every pool that overlaps a route, and the
 * cluster CIDR is routed to the overlay, so networks Docker makes itself stay on its usual ranges
 * (local to the host); Compose projects use the Corral network driver for their default network.
 */
export function dockerDefaults(o: { block: string; mtu: number; dnsDomain: string }): DockerDefaults {
  const b = IPv4CidrRange.fromCidr(o.block);
  const len = Number(b.cidrPrefix.getValue());
  if (len > 28) throw new Error(`block ${o.block} is too small to share with Docker (a /28 or larger is needed)`);
  const size = b.getLast().getValue() - b.getFirst().getValue() + 1n;
  const half = b.getFirst().getValue() + size / 2n;
  const gateway = IPv4.fromNumber(b.getFirst().getValue() + 1n).toString();
  return {
    bip: `${IPv4.fromNumber(half + 1n).toString()}/${len + 1}`,
    mtu: o.mtu,
    dns: [gateway],
    'dns-search': [`default.${o.dnsDomain}`, o.dnsDomain],
    'dns-opts': ['ndots:2'],
    'ip-masq': false,
  };
}

export class DaemonJsonError extends Error {}

export interface MergeResult {
  /** Keys written (absent before, or ours from an earlier run of another block/MTU). */
  changed: string[];
  /** Keys the user set to another value: left as they are. */
  kept: Array<{ key: string; theirs: unknown; ours: unknown }>;
}

const MARK = 'corral.managed-keys';

/**
 * Merges `defaults` into the daemon.json at `path` (made when absent). A key the user set is
 * kept; a key an agent wrote before (listed in `<path>.corral`) is updated (a new block or MTU).
 * Written whole (temp file + rename) only when something changes. Throws DaemonJsonError,
 * writing nothing, when the file is not a JSON object.
 */
export function mergeDaemonJson(path: string, defaults: DockerDefaults): MergeResult {
  let cur: Record<string, unknown> = {};
  if (existsSync(path)) {
    const text = readFileSync(path, 'utf8');
    if (text.trim()) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        throw new DaemonJsonError(`${path} is not valid JSON (${(err as Error).message}): fix it by hand; Corral left it as it is and did not set Docker's defaults`);
      }
      if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new DaemonJsonError(`${path} is not a JSON object: fix it by hand; Corral left it as it is and did not set Docker's defaults`);
      cur = parsed as Record<string, unknown>;
    }
  }
  // Which keys are ours is remembered beside them in a file next to daemon.json: dockerd
  // refuses unknown keys in daemon.json itself.
  const markFile = `${path}.corral`;
  let ours = new Set<string>();
  try {
    ours = new Set((JSON.parse(readFileSync(markFile, 'utf8')) as { [MARK]?: string[] })[MARK] ?? []);
  } catch {
    // first run, or the mark was removed: every present key is the user's
  }
  const result: MergeResult = { changed: [], kept: [] };
  const next = { ...cur };
  for (const [key, value] of Object.entries(defaults)) {
    const same = JSON.stringify(cur[key]) === JSON.stringify(value);
    if (same) {
      continue;
    }
    if (key in cur && !ours.has(key)) {
      result.kept.push({ key, theirs: cur[key], ours: value });
      continue;
    }
    next[key] = value;
    ours.add(key);
    result.changed.push(key);
  }
  if (result.changed.length) {
    writeFileSync(`${path}.tmp`, JSON.stringify(next, null, 2) + '\n');
    renameSync(`${path}.tmp`, path);
    writeFileSync(markFile, JSON.stringify({ [MARK]: [...ours].sort() }) + '\n');
  }
  return result;
}

/** The agent at start: merge, and say in one line what changed and whether dockerd needs a restart. */
export function applyDockerDefaults(path: string, o: { block: string; mtu: number; dnsDomain: string }, log: Logger): MergeResult | undefined {
  try {
    const r = mergeDaemonJson(path, dockerDefaults(o));
    for (const k of r.kept) log.warn({ file: path, key: k.key, yours: k.theirs, corral: k.ours }, 'daemon.json sets this key already: kept yours, so Docker\'s containers may not all be on Corral\'s network');
    if (r.changed.length) log.warn({ file: path, changed: r.changed }, 'Docker defaults written: restart dockerd to apply them (containers started before keep their old network)');
    else log.info({ file: path }, 'Docker defaults already in place');
    return r;
  } catch (err) {
    log.error({ file: path, err: (err as Error).message }, 'Docker defaults not set');
    return undefined;
  }
}

/** Whether `address` is in Docker's half of `block` (an allocation made there before --docker-daemon-json was set). */
export function inDockerHalf(block: string, address: string): boolean {
  return IPv4CidrRange.fromCidr(dockerRange(block)).contains(IPv4CidrRange.fromCidr(`${address}/32`));
}
