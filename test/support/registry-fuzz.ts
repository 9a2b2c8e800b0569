// Hostile registry records for tests: a seeded generator of mutated Endpoint, Service, Host,
// Allocation and block-lease records (and of valid ones), as etcd txn operations. The same seed
// gives the same records, so a failure is reproduced by its seed.
//
// Network hygiene: every address that could pass validation is on loopback (127.0.0.0/8, ::1) or
// inside the cluster CIDR, and no record names the node under test, so its agent never health
// checks a fuzzed endpoint; names come from pools that never hold the services a test serves.

/** mulberry32: small, fast, and the same sequence for the same seed on every machine. */
export class Prng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
}

export type Kind = 'endpoint' | 'service' | 'host' | 'allocation' | 'block';
export const PREFIX: Record<Kind, string> = {
  endpoint: '/corral/endpoints/',
  service: '/corral/services/',
  host: '/corral/hosts/',
  allocation: '/corral/allocations/',
  block: '/corral/blocks/',
};
const KINDS: Kind[] = ['endpoint', 'service', 'host', 'allocation', 'block'];

/** The fuzzed peer: records of the per-host kinds live under its prefix (/corral/<kind>/<node>/). */
export const PEER = 'fuzz-peer-1';
export function home(kind: Kind): string {
  return kind === 'endpoint' || kind === 'allocation' || kind === 'block' ? `${PREFIX[kind]}${PEER}/` : PREFIX[kind];
}

const WG_KEY = 'FAKEkeyFAKEkeyFAKEkeyFAKEkeyFAKEkeyFAKEkeyA=';

/** A valid record of each kind (fuzzed namespaces and nodes only). */
export function validEndpoint(id: string, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id, service: 'fz', namespace: 'fuzz', address: '127.0.66.1', port: 8080, portName: 'http', color: 'blue', weight: 1,
    healthy: true, healthReason: 'no health check', origin: 'manual', node: 'fuzz-peer-1', httpHosts: ['fz.fuzz.test'], httpPath: '/',
    healthCheck: null, deploy: 'manual', drainMs: 10000, containerId: '', containerName: '', draining: false, lbBalance: '', ...over,
  };
}
export function validService(namespace: string, name: string): Record<string, unknown> {
  return { namespace, name, active: { blue: 100 }, previous: { green: 100 } };
}
export function validHost(name: string, block: string): Record<string, unknown> {
  return { name, block, underlay: '', publicKey: WG_KEY, nextPublicKey: '', version: '0.1.0', wgPort: 51820, mtu: 1420, overlay: 'wireguard-go' };
}
export function validAllocation(address: string): Record<string, unknown> {
  return { address, namespace: 'fuzz', containerId: 'c0ffee', ifname: 'eth0', node: 'fuzz-peer-1', sinceMs: 1, name: 'fz-ctr' };
}
export function validLease(block: string, node: string): Record<string, unknown> {
  return { block, node, sinceMs: 1 };
}

const NAMES = ['fz', 'fz-a', 'constructor', 'prototype', '__proto__', 'tostring', 'hasownproperty', 'x', 'a-b', 'z9'];
const NAMESPACES = ['fuzz', 'fuzz2', 'constructor', '__proto__', 'prototype', 'fz-ns'];
const NODES = ['fuzz-peer-1', 'fuzz-peer-2', 'constructor', '__proto__', 'h.with.dots', 'h_under'];
const HOST_NAMES = ['fz.fuzz.test', '*.fuzz.test', 'a.fuzz.test', 'constructor.fuzz.test'];
/** Blocks that overlap the node under test's (10.42.0.0/24), a fuzzed peer's (10.42.7.0/24), or everything. */
const BLOCKS = ['10.42.0.0/24', '10.42.0.0/23', '10.42.0.0/16', '10.42.7.0/24', '10.42.7.128/25', '10.42.6.0/23', '0.0.0.0/0', '10.42.9.0/24', '10.42.0.0/8', '10.43.0.0/24', '10.42.7.0/33', '10.42.7.1/24'];
const ADDRESSES = ['127.0.66.1', '127.0.66.2', '::1', '10.42.7.9', '10.42.0.77', '127.1', '0127.0.0.1', '1.2.3', '::ffff:127.0.0.1', '10.42.7.256', '-1.0.0.0', ''];
const WEIRD_STRINGS = [
  '', ' ', '\u0000', '\u0000\u0001\u001f\u007f', '\r\n\t', 'é', 'Ωmega', '\u202e\u202d', '\ud83d\ude00', '\ud800', '\udfff', '\ufeff',
  '%s%n%x', '../../etc/passwd', '<script>', '"', '\\', '/', '//', '.', '..', '*', '*.', '-', 'a'.repeat(64), 'A', 'NaN', 'Infinity',
  '-0', '1e400', 'null', 'true', '0x10', '__proto__', 'constructor', 'prototype', 'toString', 'valueOf',
];
/** Raw JSON number tokens, some only writable as text (JSON.stringify cannot make 1e400). */
const NUMBER_TOKENS = ['0', '-0', '-1', '1.5', '0.1', '65535', '65536', '4294967296', '9007199254740993', '1e21', '1e400', '-1e400', '1E2', '5e-324', '1e-400', '100', '101', '1000', '1001', '3600001'];
const PROTO_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf'];

/** A record's text: JSON, except that a placeholder string may stand for a raw token. */
const RAW = '\u0000RAW:';

export interface FuzzOp {
  key: string;
  /** undefined: a delete. */
  value?: Buffer;
}

export interface GeneratedRecord {
  key: string;
  value: Buffer;
  /** True when the generator meant it to be valid (a valid record under a random key). */
  valid: boolean;
}

export class RecordFuzzer {
  readonly rng: Prng;
  private n = 0;
  constructor(readonly seed: number) {
    this.rng = new Prng(seed);
  }

  /** A key of this kind: mostly from a bounded pool (so the registry's size stays bounded), sometimes odd. */
  junkKey(kind: Kind): string {
    const r = this.rng;
    if (r.chance(0.9)) return `${home(kind)}fz${r.int(3000)}`;
    const odd = [
      '', '/', 'fz/deeper/still', 'constructor', '__proto__', 'fuzz/constructor', 'fuzz/fz', '10.42.7.0_24', '0.0.0.0_0', '10.42.0.0_23',
      '10.42.7.9', '::1', 'é\u0000\u007f', 'x'.repeat(1000), '..', 'fuzz', '%00', ' ',
    ];
    return (r.chance(0.5) ? home(kind) : PREFIX[kind]) + r.pick(odd);
  }

  /** A valid record under a new key: an endpoint of its own service, an allocation, a service. */
  valid(): GeneratedRecord {
    const r = this.rng;
    const i = this.n++;
    const which = r.int(10);
    if (which < 7) {
      const id = `fv-${this.seed}-${i}`;
      const ep = validEndpoint(id, {
        service: `fv${i}`, namespace: 'fuzzv', address: `127.77.${(i >> 8) & 255}.${(i & 255) || 1}`, port: 1 + r.int(65535),
        color: r.pick(['blue', 'default', 'constructor', 'x']), weight: 1 + r.int(1000), httpHosts: r.chance(0.5) ? [`fv${i}.fuzz.test`] : [],
        healthReason: r.pick(WEIRD_STRINGS), containerName: r.pick(WEIRD_STRINGS), httpPath: r.pick(['/', '/a', '/é', '/%00', '/a/b/']),
      });
      return { key: home('endpoint') + id, value: Buffer.from(JSON.stringify(ep)), valid: true };
    }
    if (which < 9) {
      const address = `10.42.${100 + r.int(100)}.${1 + r.int(254)}`;
      return { key: home('allocation') + address, value: Buffer.from(JSON.stringify(validAllocation(address))), valid: true };
    }
    const name = `fvs${i}`;
    return { key: `${PREFIX.service}fuzzv/${name}`, value: Buffer.from(JSON.stringify(validService('fuzzv', name))), valid: true };
  }

  /** A mutated record of a random kind, under a pooled or odd key. */
  junk(): GeneratedRecord {
    const r = this.rng;
    const kind = r.pick(KINDS);
    const key = this.junkKey(kind);
    const id = key.slice(key.startsWith(home(kind)) ? home(kind).length : PREFIX[kind].length);
    return { key, value: this.mutate(kind, id), valid: false };
  }

  /** A junk value to put over a valid record's key (then restored). */
  overwrite(kind: Kind): Buffer {
    return this.mutate(kind, 'x');
  }

  private base(kind: Kind, id: string): Record<string, unknown> {
    const r = this.rng;
    switch (kind) {
      case 'endpoint': return validEndpoint(r.chance(0.7) ? id : `${id}-other`);
      case 'service': return validService(r.pick(NAMESPACES), r.pick(NAMES));
      case 'host': return validHost(r.chance(0.5) ? id : r.pick(NODES), r.pick(BLOCKS));
      case 'allocation': return validAllocation(r.chance(0.5) ? id : r.pick(ADDRESSES));
      case 'block': return validLease(r.pick(BLOCKS), r.pick(NODES));
    }
  }

  mutate(kind: Kind, id: string): Buffer {
    const r = this.rng;
    const roll = r.int(100);
    if (roll < 8) return this.wholeValue();
    if (roll < 11) return this.bytes();
    if (roll < 13) return Buffer.from(this.deep());
    const rec = this.base(kind, id);
    const edits = 1 + r.int(3);
    for (let e = 0; e < edits; e++) this.editField(rec);
    let text = JSON.stringify(rec);
    text = text.replace(/"\\u0000RAW:([^"]*)"/g, '$1');
    if (r.chance(0.03)) text = text.slice(0, r.int(text.length)); // truncated
    if (r.chance(0.02)) text += r.pick([' trailing', '}', ',', '\u0000']);
    return Buffer.from(text);
  }

  private editField(rec: Record<string, unknown>): void {
    const r = this.rng;
    const fields = Object.keys(rec);
    const f = r.chance(0.1) ? r.pick(PROTO_KEYS) : r.pick(fields);
    const roll = r.int(12);
    if (roll === 0) delete rec[f];
    else rec[f] = this.value(f);
  }

  /** A value for a field: of the wrong type, out of range, odd, or right. */
  private value(field: string): unknown {
    const r = this.rng;
    switch (r.int(14)) {
      case 0: return null;
      case 1: return RAW + r.pick(NUMBER_TOKENS);
      case 2: return r.pick(WEIRD_STRINGS);
      case 3: return r.pick([true, false]);
      case 4: return [];
      case 5: return r.pick([[1, 2], ['fz.fuzz.test'], [null], [{}], Array.from({ length: 40 }, (_, i) => `h${i}.fuzz.test`)]);
      case 6: return { [r.pick(PROTO_KEYS)]: r.pick([1, 'x', null, { polluted: true }]) };
      case 7: return r.chance(0.2) ? this.hugeString() : r.pick(['x', 'é', '-']).repeat(60 + r.int(2000)); // over most limits
      case 8: return field === 'httpHosts' ? [r.pick(HOST_NAMES)] : r.pick(field === 'block' ? BLOCKS : field === 'address' || field === 'underlay' ? ADDRESSES : field === 'node' || field === 'name' ? NODES : NAMES);
      case 9: return r.pick(NAMESPACES);
      case 10: return { blue: RAW + r.pick(NUMBER_TOKENS), [r.pick(NAMES)]: 100, [r.pick(PROTO_KEYS)]: 50 };
      case 11: return JSON.parse(this.deep(50 + r.int(500)));
      case 12: return String.fromCharCode(...Array.from({ length: 1 + r.int(40) }, () => r.int(0x10000)));
      default: return RAW + String(r.int(200_000) - 100_000);
    }
  }

  /** A string of 1,000 to 60,000 characters (up to 360 KB as JSON), over most fields' limits. */
  private hugeString(): string {
    const r = this.rng;
    return r.pick(['a', 'é', '\u0000', '-', '.', '\ud83d\ude00']).repeat(1000 + r.int(59_000));
  }

  private wholeValue(): Buffer {
    const r = this.rng;
    return Buffer.from(r.pick([
      'null', 'true', 'false', '0', '-1', '1e400', '"str"', '[]', '{}', '[{}]', '""', '[null]', '{"__proto__":{"polluted":true}}',
      '{"constructor":{"prototype":{"polluted":true}}}', ' ', '', '\ufeff{}', 'NaN', 'Infinity', 'undefined', '{"a":1,"a":2}',
    ]));
  }

  private bytes(): Buffer {
    const r = this.rng;
    const b = Buffer.alloc(1 + r.int(600));
    for (let i = 0; i < b.length; i++) b[i] = r.int(256);
    return b;
  }

  private deep(depth = 100 + this.rng.int(20_000)): string {
    return this.rng.chance(0.5) ? '['.repeat(depth) + ']'.repeat(depth) : '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);
  }
}
