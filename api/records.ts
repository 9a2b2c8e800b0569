// One schema per registry record kind, shared by the writers (the agent builds records that pass
// it) and the readers (the catalog serves only records that pass it). Records come from other
// hosts: treat them as untrusted input, like packets and labels. A check returns the record with
// defaults filled in for fields that older writers left out, or the first field that is wrong.
import { isIP } from 'node:net';
import { IPv4CidrRange } from 'ip-num';
import { ipv6Groups } from './ipv6.js';
import { DEFAULT_COLOR, UPGRADE_PHASES, type Allocation, type ColorFigures, type Endpoint, type HealthCheck, type Host, type HostStatus, type Service, type Upgrade, type UpgradeClone, type UpgradePhase, type UpgradeReport } from './types.js';

/** Largest value the catalog parses, per kind (a Host record stays well under 2 KB). */
export const MAX_RECORD_BYTES = { endpoint: 16_384, service: 8_192, host: 2_048, status: 2_048, allocation: 2_048, block: 512, upgrade: 8_192, upgradeReport: 65_536 } as const;
export type RecordKind = keyof typeof MAX_RECORD_BYTES;

export class InvalidRecord extends Error {
  constructor(readonly field: string, readonly problem: string) {
    super(`${field}: ${problem}`);
  }
}

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const HOSTNAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;
/** Node names: hostnames as `hostname` prints them (letters, digits, ".", "_", "-"). */
const NODE = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;
const WG_KEY = /^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/;

type Obj = Record<string, unknown>;

function object(v: unknown, field: string): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidRecord(field, 'not a JSON object');
  return v as Obj;
}

function str(o: Obj, field: string, max: number, opt?: { dflt?: string; re?: RegExp; what?: string }): string {
  const v = o[field] ?? opt?.dflt;
  if (typeof v !== 'string') throw new InvalidRecord(field, v === undefined ? 'missing' : `not a string (${typeof v})`);
  if (v.length > max) throw new InvalidRecord(field, `${v.length} characters, at most ${max}`);
  if (opt?.re && !(opt.dflt !== undefined && v === opt.dflt) && !opt.re.test(v)) throw new InvalidRecord(field, `"${v.slice(0, 80)}" is not ${opt.what}`);
  return v;
}

function int(o: Obj, field: string, min: number, max: number, dflt?: number): number {
  const v = o[field] ?? dflt;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new InvalidRecord(field, v === undefined ? 'missing' : 'not a whole number');
  if (v < min || v > max) throw new InvalidRecord(field, `${v} is outside ${min}..${max}`);
  return v;
}

function bool(o: Obj, field: string, dflt?: boolean): boolean {
  const v = o[field] ?? dflt;
  if (typeof v !== 'boolean') throw new InvalidRecord(field, v === undefined ? 'missing' : 'not true or false');
  return v;
}

function label(o: Obj, field: string, dflt?: string): string {
  return str(o, field, 63, { dflt, re: LABEL, what: 'a DNS label (a-z, 0-9, "-")' });
}

function node(o: Obj, field: string): string {
  return str(o, field, 253, { re: NODE, what: 'a host name' });
}

function ip(o: Obj, field: string, opt: { empty?: boolean } = {}): string {
  const v = str(o, field, 45, opt.empty ? { dflt: '' } : {});
  if (v === '' && opt.empty) return v;
  const problem = addressProblem(v);
  if (problem) throw new InvalidRecord(field, `"${v}" ${problem}`);
  return v;
}

/**
 * Why a text is not an address another host can be sent to ('' when it is): not an IP address,
 * the unspecified address (the LB would connect to itself), or one with a zone (meaningless on
 * another host).
 */
export function addressProblem(v: string): string {
  if (!isIP(v)) return 'is not an IPv4 or IPv6 address';
  if (v.includes('%')) return 'has a zone (%…), which means nothing on another host';
  if (v === '0.0.0.0' || (isIP(v) === 6 && ipv6Groups(v).every((g) => g === 0))) return 'is the unspecified address';
  return '';
}

/** A dotted IPv4 address (isIP said so) as its 32-bit number. */
function ipv4Number(address: string): number {
  let n = 0;
  for (const part of address.split('.')) n = n * 256 + Number(part);
  return n;
}

function wgKey(o: Obj, field: string): string {
  return str(o, field, 44, { dflt: '', re: WG_KEY, what: 'a WireGuard key (44 characters of base64, 32 bytes)' });
}

/** The cluster CIDR that blocks and allocations must fall inside. */
export class RecordRules {
  private readonly cluster: IPv4CidrRange;
  /** The cluster CIDR's first and last address as numbers: an address check per record without ip-num's big numbers. */
  private readonly first: number;
  private readonly last: number;

  constructor(readonly clusterCidr: string) {
    this.cluster = IPv4CidrRange.fromCidr(clusterCidr);
    this.first = Number(this.cluster.getFirst().getValue());
    this.last = Number(this.cluster.getLast().getValue());
  }

  /** A CIDR inside the cluster CIDR, as its canonical string. */
  block(v: string, field: string): IPv4CidrRange {
    let r: IPv4CidrRange;
    try {
      r = IPv4CidrRange.fromCidr(v);
    } catch {
      throw new InvalidRecord(field, `"${v.slice(0, 80)}" is not an IPv4 CIDR`);
    }
    if (r.toCidrString() !== v) throw new InvalidRecord(field, `"${v}" is not a network address (${r.toCidrString()} is)`);
    if (!this.cluster.contains(r)) throw new InvalidRecord(field, `${v} is outside the cluster CIDR ${this.clusterCidr}`);
    return r;
  }

  inCluster(address: string): boolean {
    if (isIP(address) !== 4) return false;
    const n = ipv4Number(address);
    return n >= this.first && n <= this.last;
  }

  endpoint(v: unknown): Endpoint {
    const o = object(v, 'record');
    const hc = o.healthCheck === null || o.healthCheck === undefined ? null : healthCheck(object(o.healthCheck, 'healthCheck'));
    const hosts = o.httpHosts ?? [];
    if (!Array.isArray(hosts) || hosts.length > 32) throw new InvalidRecord('httpHosts', 'not a list of at most 32 host names');
    for (const h of hosts) if (typeof h !== 'string' || h.length > 253 || !HOSTNAME.test(h)) throw new InvalidRecord('httpHosts', `"${String(h).slice(0, 80)}" is not a host name`);
    const lbBalance = str(o, 'lbBalance', 32, { dflt: '' });
    const edge = edgeMap(o.edge);
    const tlsSni = o.tlsSni ?? [];
    if (!Array.isArray(tlsSni) || tlsSni.length > 32) throw new InvalidRecord('tlsSni', 'not a list of at most 32 server names');
    for (const h of tlsSni) if (typeof h !== 'string' || h.length > 253 || !HOSTNAME.test(h)) throw new InvalidRecord('tlsSni', `"${String(h).slice(0, 80)}" is not a server name`);
    const tcpPort = int(o, 'tcpPort', 0, 65535, 0);
    const proxyProtocol = str(o, 'proxyProtocol', 8, { dflt: '', re: /^v2$/, what: 'v2 or empty' });
    if (proxyProtocol && tcpPort === 0 && tlsSni.length === 0) throw new InvalidRecord('proxyProtocol', 'set without tcpPort or tlsSni (it applies to TCP and TLS routes only)');
    return {
      id: str(o, 'id', 512, { re: /^[\x21-\x7e]+$/, what: 'an id of printable characters' }),
      service: label(o, 'service'),
      namespace: label(o, 'namespace'),
      address: ip(o, 'address'),
      port: int(o, 'port', 1, 65535),
      portName: label(o, 'portName', 'http'),
      color: label(o, 'color', DEFAULT_COLOR),
      weight: int(o, 'weight', 1, 1000, 1),
      healthy: bool(o, 'healthy'),
      healthReason: str(o, 'healthReason', 1024, { dflt: '' }),
      origin: str(o, 'origin', 32, { re: /^[a-z0-9-]+$/, what: 'an origin name' }),
      node: node(o, 'node'),
      httpHosts: hosts as string[],
      httpPath: str(o, 'httpPath', 1024, { dflt: '/', re: /^\/[^\s?#]*$/, what: 'a path prefix starting with "/"' }),
      healthCheck: hc,
      deploy: str(o, 'deploy', 16, { dflt: 'manual', re: /^(manual|auto)$/, what: 'manual or auto' }),
      drainMs: int(o, 'drainMs', 0, 3_600_000, 10_000),
      containerId: str(o, 'containerId', 256, { dflt: '' }),
      containerName: str(o, 'containerName', 256, { dflt: '' }),
      draining: bool(o, 'draining', false),
      lbBalance,
      ...(edge ? { edge } : {}),
      tcpPort,
      tlsSni: tlsSni as string[],
      proxyProtocol,
    };
  }

  service(v: unknown): Service {
    const o = object(v, 'record');
    return { namespace: label(o, 'namespace'), name: label(o, 'name'), active: colors(o, 'active'), previous: colors(o, 'previous') };
  }

  host(v: unknown): Host {
    const o = object(v, 'record');
    const block = str(o, 'block', 18, { dflt: '' });
    if (block) this.block(block, 'block');
    return {
      name: node(o, 'name'),
      block,
      underlay: ip(o, 'underlay', { empty: true }),
      publicKey: wgKey(o, 'publicKey'),
      nextPublicKey: wgKey(o, 'nextPublicKey'),
      version: str(o, 'version', 64, { dflt: '' }),
      wgPort: int(o, 'wgPort', 0, 65535, 0),
      mtu: int(o, 'mtu', 0, 65535, 0),
      overlay: str(o, 'overlay', 16, { dflt: '', re: /^(kernel|wireguard-go)$/, what: 'kernel or wireguard-go' }),
    };
  }

  status(v: unknown): HostStatus {
    const o = object(v, 'record');
    return {
      name: node(o, 'name'),
      appliedRevision: int(o, 'appliedRevision', 0, Number.MAX_SAFE_INTEGER),
      reportedMs: int(o, 'reportedMs', 0, Number.MAX_SAFE_INTEGER),
      version: str(o, 'version', 64, { dflt: '' }),
      peers: int(o, 'peers', 0, 1_000_000, 0),
      handshaken: int(o, 'handshaken', 0, 1_000_000, 0),
      stale: int(o, 'stale', 0, 1_000_000, 0),
      worstPeer: str(o, 'worstPeer', 253, { dflt: '', re: NODE, what: 'a host name' }),
      worstHandshakeMs: int(o, 'worstHandshakeMs', 0, Number.MAX_SAFE_INTEGER, 0),
    };
  }

  allocation(v: unknown): Allocation {
    const o = object(v, 'record');
    const address = ip(o, 'address');
    if (!this.inCluster(address)) throw new InvalidRecord('address', `${address} is outside the cluster CIDR ${this.clusterCidr}`);
    return {
      address,
      namespace: label(o, 'namespace'),
      containerId: str(o, 'containerId', 256, { dflt: '' }),
      ifname: str(o, 'ifname', 64, { dflt: '' }),
      node: node(o, 'node'),
      sinceMs: int(o, 'sinceMs', 0, Number.MAX_SAFE_INTEGER, 0),
      name: str(o, 'name', 253, { dflt: '' }),
    };
  }

  /** `corral upgrade`'s record (/corral/upgrades/<ns>/<name>): written by an agent, read by every agent. */
  upgrade(v: unknown): Upgrade {
    const o = object(v, 'record');
    const steps = o.steps;
    if (!Array.isArray(steps) || steps.length < 1 || steps.length > 20) throw new InvalidRecord('steps', 'not a list of 1 to 20 percentages');
    let last = 0;
    for (const s of steps) {
      if (typeof s !== 'number' || !Number.isInteger(s) || s <= last || s > 100) throw new InvalidRecord('steps', 'not whole percentages rising from 1 to 100');
      last = s;
    }
    if (last !== 100) throw new InvalidRecord('steps', 'the last step is not 100');
    const hosts = o.hosts ?? [];
    if (!Array.isArray(hosts) || hosts.length > 10_000 || hosts.some((h) => typeof h !== 'string' || !NODE.test(h))) throw new InvalidRecord('hosts', 'not a list of host names');
    const phase = str(o, 'phase', 16);
    if (!(UPGRADE_PHASES as readonly string[]).includes(phase)) throw new InvalidRecord('phase', `"${phase}" is not one of ${UPGRADE_PHASES.join(', ')}`);
    return {
      namespace: label(o, 'namespace'),
      name: label(o, 'name'),
      id: str(o, 'id', 64, { re: /^[a-z0-9-]+$/, what: 'an id (a-z, 0-9, "-")' }),
      image: str(o, 'image', 512, { re: /^[\x21-\x7e]+$/, what: 'an image reference' }),
      fromColor: label(o, 'fromColor'),
      toColor: label(o, 'toColor'),
      original: colors(o, 'original'),
      steps: steps as number[],
      stepMs: int(o, 'stepMs', 100, 86_400_000),
      maxErrorRate: fraction(o, 'maxErrorRate'),
      maxP99Ms: int(o, 'maxP99Ms', 0, 3_600_000, 0),
      maxP99Ratio: number(o, 'maxP99Ratio', 0, 1000),
      readyTimeoutMs: int(o, 'readyTimeoutMs', 100, 86_400_000),
      driver: node(o, 'driver'),
      phase: phase as UpgradePhase,
      step: int(o, 'step', -1, steps.length - 1),
      startedMs: int(o, 'startedMs', 0, Number.MAX_SAFE_INTEGER),
      stepStartedMs: int(o, 'stepStartedMs', 0, Number.MAX_SAFE_INTEGER, 0),
      reason: str(o, 'reason', 1024, { dflt: '' }),
      gate: str(o, 'gate', 1024, { dflt: '' }),
      hosts: hosts as string[],
    };
  }

  /** One host's part of an upgrade (/corral/upgrade-reports/<node>/<ns>/<name>). */
  upgradeReport(v: unknown): UpgradeReport {
    const o = object(v, 'record');
    const clones = o.clones ?? [];
    if (!Array.isArray(clones) || clones.length > 1000) throw new InvalidRecord('clones', 'not a list of at most 1000 clones');
    const figures = o.figures ?? [];
    if (!Array.isArray(figures) || figures.length > 64) throw new InvalidRecord('figures', 'not a list of at most 64 colors');
    return {
      node: node(o, 'node'),
      namespace: label(o, 'namespace'),
      name: label(o, 'name'),
      id: str(o, 'id', 64, { re: /^[a-z0-9-]+$/, what: 'an id (a-z, 0-9, "-")' }),
      phase: str(o, 'phase', 16, { re: /^[a-z-]+$/, what: 'a phase' }),
      done: bool(o, 'done', false),
      error: str(o, 'error', 1024, { dflt: '' }),
      clones: clones.map((c, i): UpgradeClone => {
        const x = object(c, `clones[${i}]`);
        const id = (f: string) => str(x, f, 128, { re: /^[a-f0-9]*$/, what: 'a container id' });
        const name = (f: string) => str(x, f, 256, { dflt: '' });
        return { oldId: id('oldId'), oldName: name('oldName'), cloneId: id('cloneId'), cloneName: name('cloneName') };
      }),
      step: int(o, 'step', -1, 19, -1),
      figures: figures.map((f, i): ColorFigures => {
        const x = object(f, `figures[${i}]`);
        const b = x.buckets ?? [];
        if (!Array.isArray(b) || b.length > 64 || b.some((n) => typeof n !== 'number' || !Number.isInteger(n) || n < 0)) throw new InvalidRecord(`figures[${i}].buckets`, 'not a list of at most 64 counts');
        return { color: label(x, 'color'), requests: int(x, 'requests', 0, Number.MAX_SAFE_INTEGER), errors: int(x, 'errors', 0, Number.MAX_SAFE_INTEGER), buckets: b as number[] };
      }),
    };
  }

  blockLease(v: unknown): { block: string; node: string; sinceMs: number } {
    const o = object(v, 'record');
    const block = str(o, 'block', 18);
    this.block(block, 'block');
    return { block, node: node(o, 'node'), sinceMs: int(o, 'sinceMs', 0, Number.MAX_SAFE_INTEGER, 0) };
  }
}

/** An endpoint's edge labels: at most 32 `corral.http.*` names to printable values (the LB parses them). */
function edgeMap(v: unknown): Record<string, string> | undefined {
  if (v === undefined || v === null) return undefined;
  const o = object(v, 'edge');
  const entries = Object.entries(o);
  if (entries.length > 32) throw new InvalidRecord('edge', `${entries.length} labels, at most 32`);
  const out: Record<string, string> = {};
  for (const [k, val] of entries) {
    if (!/^corral\.http\.[\x21-\x7e]{1,120}$/.test(k)) throw new InvalidRecord('edge', `"${k.slice(0, 80)}" is not a corral.http.* label name`);
    if (typeof val !== 'string' || val.length > 1024 || !/^[\x20-\x7e\t]*$/.test(val)) throw new InvalidRecord(`edge.${k}`, 'not a printable value of at most 1024 characters');
    out[k] = val;
  }
  return entries.length ? out : undefined;
}

function healthCheck(o: Obj): HealthCheck | null {
  const hc: HealthCheck = {
    path: str(o, 'path', 1024, { dflt: '' }),
    tcp: bool(o, 'tcp', false),
    intervalMs: int(o, 'intervalMs', 100, 3_600_000),
    timeoutMs: int(o, 'timeoutMs', 10, 3_600_000),
    rise: int(o, 'rise', 1, 100),
    fall: int(o, 'fall', 1, 100),
  };
  if (hc.path && !hc.path.startsWith('/')) throw new InvalidRecord('healthCheck.path', `"${hc.path.slice(0, 80)}" does not start with "/"`);
  return hc.tcp || hc.path ? hc : null;
}

function number(o: Obj, field: string, min: number, max: number): number {
  const v = o[field] ?? 0;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new InvalidRecord(field, 'not a number');
  if (v < min || v > max) throw new InvalidRecord(field, `${v} is outside ${min}..${max}`);
  return v;
}

function fraction(o: Obj, field: string): number {
  return number(o, field, 0, 1);
}

function colors(o: Obj, field: string): Record<string, number> {
  const m = object(o[field] ?? {}, field);
  const out: Record<string, number> = {};
  const entries = Object.entries(m);
  if (entries.length > 64) throw new InvalidRecord(field, `${entries.length} colors, at most 64`);
  for (const [c, w] of entries) {
    if (!LABEL.test(c)) throw new InvalidRecord(field, `color "${c.slice(0, 80)}" is not a DNS label`);
    if (typeof w !== 'number' || !Number.isInteger(w) || w < 0 || w > 100) throw new InvalidRecord(`${field}.${c}`, 'not a whole number from 0 to 100');
    out[c] = w;
  }
  return out;
}

/** Who wrote a record, as far as the record says (for warnings); '' when it does not say. */
export function writerOf(v: unknown): string {
  if (typeof v !== 'object' || v === null) return '';
  const o = v as Obj;
  const w = typeof o.node === 'string' ? o.node : typeof o.name === 'string' ? o.name : '';
  return NODE.test(w) ? w : '';
}
