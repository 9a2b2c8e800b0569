// The fleet simulator: many Corral hosts in one process, each running the agent's own mesh code
// (agent/mesh.ts) on its own etcd registry (agent/registry/etcd.ts: its own lease, so its records
// live and die with it) with an in-memory device (fake-device.ts), plus endpoint records written
// the way agents write them and endpoint churn. Measured with meter.ts on etcd itself.
//
// One Catalog for the whole fleet, fed by one watch of /corral/, and every host's Mesh gets
// onEvent for each of its events: the catalog is a pure function of the registry's revisions,
// so every host would hold the same one; 1,000 copies of 50,000 endpoints (~50M objects) would
// not fit in one process, and 1,000 watches of /corral/ would measure this process, not etcd.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { IPv4CidrRange } from 'ip-num';
import { pino, type Logger } from 'pino';
import { defaultOptions, MESH_DEFAULTS, type DaemonOptions } from '../../api/options.js';
import type { WatchEvent } from '../../api/types.js';
import { blockKey, type BlockLease } from '../../agent/blocks.js';
import { Catalog, keys, PREFIX, type Problem } from '../../agent/catalog.js';
import { initialService } from '../../agent/colors.js';
import { newEndpoint } from '../../agent/endpoints.js';
import { Mesh } from '../../agent/mesh.js';
import { EtcdRegistry } from '../../agent/registry/etcd.js';
import type { TxnOp } from '../../agent/registry/registry.js';
import { MemoryHostNet, type FakeWireGuardDevice } from './fake-device.js';

export interface FleetOptions {
  /** etcd client endpoints, host:port. */
  endpoints: string[];
  /** Large enough for one /24 per host (a /12 holds 4,096). */
  clusterCidr?: string;
  leaseTtlS?: number;
  /** Services; endpoints are spread over them and over the hosts. */
  services?: number;
  /** Each registry opens its own Etcd3 client, as an agent does (default: one shared client). */
  ownClients?: boolean;
  /**
   * Hand the meshes one event per turn of the event loop (the last one, marked as carrying hosts
   * when any did) instead of one per revision. Mesh.sync reads the catalog, not the event, so the
   * peers come out the same; it spares the simulator N meshes × O(N) syncs per revision, which
   * at 1,000 hosts is this process's CPU, not the protocol's (see the report on Mesh.onEvent).
   */
  coalesceEvents?: boolean;
  /** Host i holds block i + blockOffset of the cluster CIDR: the first ones left to real agents sharing the registry. */
  blockOffset?: number;
  /**
   * Hand the meshes the catalog's events (default). Off: hosts join, keep their lease, Host record
   * and status reports, but their devices do not follow the fleet (N meshes × N peers per event is
   * this process's CPU, not the protocol's; at 5,000 hosts it does not fit in one process).
   */
  deliverEvents?: boolean;
  /** Endpoints carry an HTTP route (`<service>.fleet.test`), so every service is a route in each LB. */
  httpRoutes?: boolean;
}

/** Warnings and errors the simulated hosts logged (info and below are dropped). */
export interface FleetLog { warnings: number; errors: number; last: string[] }

const SIM_CIDR = '10.64.0.0/12';

/** Host i's name, block and underlay: fixed per i, so a host's records can be compared across fleet sizes. */
export function simName(i: number): string {
  return `sim-${String(i).padStart(4, '0')}`;
}

export class SimHost {
  registry: EtcdRegistry | undefined;
  mesh: Mesh | undefined;
  readonly net = new MemoryHostNet();
  /** Endpoint ids this host registered (ephemeral on its lease). */
  readonly endpointIds: string[] = [];
  running = false;

  constructor(readonly fleet: Fleet, readonly index: number, readonly name: string, readonly block: string, readonly underlay: string, private readonly stateDir: string) {}

  get device(): FakeWireGuardDevice {
    return this.net.fake;
  }

  /** Opens its registry session, holds its block, brings its mesh up (peers, Host record, first status report). */
  async join(): Promise<void> {
    const f = this.fleet;
    this.registry = new EtcdRegistry({ endpoints: f.o.endpoints, leaseTtlS: f.o.leaseTtlS ?? 10, ...(f.o.ownClients ? {} : { client: f.client }) });
    await this.registry.open();
    // The block, held the way agent/blocks.ts holds it (a compare-and-put of its lease record),
    // at a place fixed by the host's number: leaseBlock then finds it (see the report on leaseBlock).
    const lease: BlockLease = { block: this.block, node: this.name, sinceMs: Date.now() };
    if ((await this.registry.txn([{ put: blockKey(this.name, this.block), value: JSON.stringify(lease) }], [{ key: blockKey(this.name, this.block), modRevision: 0 }])) === null) {
      const held = (await this.registry.range(blockKey(this.name, this.block))).kvs[0];
      if (held && (JSON.parse(held.value) as BlockLease).node !== this.name) throw new Error(`${this.block} is leased to another host: ${held.value}`);
    }
    const opts: DaemonOptions = {
      ...defaultOptions(),
      registry: `etcd://${f.o.endpoints.join(',')}`,
      stateDir: this.stateDir,
      runDir: this.stateDir,
      nodeName: this.name,
      clusterCidr: f.clusterCidr,
      mesh: { ...MESH_DEFAULTS, overlay: 'wireguard-go', wgInterface: 'wg-sim', underlayAddress: this.underlay, leaseTtlS: f.o.leaseTtlS ?? 10 },
    };
    this.mesh = new Mesh(this.registry, f.catalog, opts, f.log.child({ host: this.name }), this.net);
    // As in the agent: the mesh gets events from before its start() returns.
    f.meshes.add(this.mesh);
    await this.mesh.start();
    this.running = true;
  }

  /** Stops like a host that goes away: its lease is no longer kept alive, its records leave after the TTL. */
  async leave(): Promise<void> {
    this.running = false;
    if (this.mesh) {
      this.fleet.meshes.delete(this.mesh);
      await this.mesh.stop();
    }
    await this.registry?.close();
  }

  /** Registers endpoints as `corral register` does: one ephemeral record each, with the service's record if it is new. */
  async register(specs: Array<{ id: string; service: string; address: string; withService: boolean }>, concurrency = 8): Promise<void> {
    let next = 0;
    const routes = this.fleet.o.httpRoutes;
    const worker = async () => {
      while (next < specs.length) {
        const s = specs[next++]!;
        const ep = newEndpoint({ id: s.id, service: s.service, address: s.address, port: 8080, origin: 'manual', node: this.name, ...(routes ? { httpHosts: [`${s.service}.fleet.test`] } : {}) });
        const ops: TxnOp[] = [{ put: keys.endpoint(ep.node, ep.id), value: JSON.stringify(ep), ephemeral: true }];
        if (s.withService) ops.push({ put: keys.service(ep.namespace, ep.service), value: JSON.stringify(initialService(ep.namespace, ep.service, ep.color)) });
        await this.registry!.txn(ops);
        this.endpointIds.push(ep.id);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
  }
}

export class Fleet {
  readonly client: Etcd3;
  readonly catalog: Catalog;
  readonly meshes = new Set<Mesh>();
  readonly hosts: SimHost[] = [];
  readonly problems: Problem[] = [];
  readonly logged: FleetLog = { warnings: 0, errors: 0, last: [] };
  readonly log: Logger;
  readonly clusterCidr: string;
  /** The observer's registry: the one watch of /corral/ that feeds the catalog. */
  private readonly observer: EtcdRegistry;
  private unwatch: (() => void) | undefined;
  private readonly dir = mkdtempSync(join(tmpdir(), 'corral-fleet-'));
  private churnTimer: NodeJS.Timeout | undefined;
  churned = 0;
  churnErrors = 0;

  constructor(readonly o: FleetOptions) {
    this.clusterCidr = o.clusterCidr ?? SIM_CIDR;
    // A deadline on unary calls only: one on streams (as EtcdRegistry's own client has, see the
    // report) cuts every keep-alive and watch stream of the fleet at once, and the pool's backoff
    // after that many failures outlasts the leases.
    this.client = new Etcd3({ hosts: o.endpoints.map((h) => `http://${h}`), defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 30_000 }) });
    this.catalog = new Catalog(this.clusterCidr, (p) => this.problems.push(p));
    this.observer = new EtcdRegistry({ endpoints: o.endpoints, client: this.client });
    const logged = this.logged;
    this.log = pino({ level: 'warn', base: null }, {
      write(line: string) {
        const level = (JSON.parse(line) as { level: number }).level;
        if (level >= 50) logged.errors++;
        else logged.warnings++;
        logged.last.push(line.trim());
        if (logged.last.length > 50) logged.last.shift();
      },
    });
  }

  async start(): Promise<void> {
    await this.observer.open();
    this.deliver(this.catalog.load(await this.observer.range(PREFIX)));
    this.watch();
  }

  private watch(): void {
    this.unwatch = this.observer.watch(PREFIX, this.catalog.revision, (b) => this.deliver(this.catalog.apply(b)), () => {
      this.unwatch?.();
      this.reload();
    });
  }

  /** Reads /corral/ whole and watches on; a read that fails (an etcd member just lost) is tried again. */
  private reload(): void {
    this.observer.range(PREFIX).then((r) => {
      this.deliver(this.catalog.load(r));
      this.watch();
    }, () => {
      if (!this.closed) setTimeout(() => this.reload(), 1000);
    });
  }

  /** Coalesced delivery: the latest event, and whether any event since the last delivery changed hosts. */
  private pending: { ev: WatchEvent; hosts: boolean } | undefined;

  private deliver(ev: WatchEvent): void {
    if (this.o.deliverEvents === false) return;
    if (!this.o.coalesceEvents || ev.snapshot) {
      for (const m of this.meshes) m.onEvent(ev);
      return;
    }
    const hosts = ev.hosts.length > 0 || ev.deletedHosts.length > 0;
    if (this.pending) {
      this.pending = { ev, hosts: this.pending.hosts || hosts };
      return;
    }
    this.pending = { ev, hosts };
    setImmediate(() => {
      const p = this.pending!;
      this.pending = undefined;
      // An event that changed hosts makes the mesh sync with the catalog, whichever hosts it names.
      const out = p.hosts && !p.ev.hosts.length && !p.ev.deletedHosts.length ? { ...p.ev, deletedHosts: ['(coalesced)'] } : p.ev;
      for (const m of this.meshes) m.onEvent(out);
    });
  }

  /** A new simulated host (not joined yet); host i always gets the same name, block and underlay. */
  host(i = this.hosts.length): SimHost {
    const base = IPv4CidrRange.fromCidr(this.clusterCidr).getFirst().getValue();
    const block = IPv4CidrRange.fromCidr(`${intToIp(Number(base) + (i + (this.o.blockOffset ?? 0)) * 256)}/24`).toCidrString();
    const h = new SimHost(this, i, simName(i), block, `198.18.${(i >> 8) & 255}.${i & 255}`, mkdtempSync(join(this.dir, `${simName(i)}-`)));
    this.hosts.push(h);
    return h;
  }

  /** Joins that failed and were made again (see join). */
  joinRetries = 0;

  /**
   * Hosts join, `concurrency` at a time (Infinity: all at once). A host whose join fails (etcd
   * too busy to answer in time) leaves and joins again after 2–5 s, up to `retries` times, as an
   * agent whose start fails exits and is started again by its service manager.
   */
  async join(hosts: SimHost[], concurrency = Infinity, retries = 0): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < hosts.length) {
        const h = hosts[next++]!;
        for (let attempt = 0; ; attempt++) {
          try {
            await h.join();
            break;
          } catch (err) {
            if (attempt >= retries) throw err;
            this.joinRetries++;
            await h.leave().catch(() => {});
            await new Promise((r) => setTimeout(r, 2000 + Math.random() * 3000));
          }
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, hosts.length) }, worker));
  }

  running(): SimHost[] {
    return this.hosts.filter((h) => h.running);
  }

  /** Whether every running host's device has a peer for every other running host and the `others` (real agents) on the registry, and no more. */
  converged(others = 0): boolean {
    const run = this.running();
    return run.every((h) => h.device.peerCount === run.length - 1 + others);
  }

  /**
   * `total` endpoints in `services` services, spread round-robin over the running hosts, each
   * written by its host on its lease (the first endpoint of a service writes the service too).
   */
  async registerEndpoints(total: number, services: number, concurrency = 32): Promise<void> {
    const run = this.running();
    const per = new Map<SimHost, Array<{ id: string; service: string; address: string; withService: boolean }>>();
    for (let e = 0; e < total; e++) {
      const h = run[e % run.length]!;
      const k = Math.floor(e / run.length);
      if (k > 250) throw new Error(`${total} endpoints on ${run.length} hosts: more than 250 per host's /24`);
      const address = intToIp(Number(IPv4CidrRange.fromCidr(h.block).getFirst().getValue()) + 2 + k);
      const service = `svc-${e % services}`;
      const list = per.get(h) ?? [];
      list.push({ id: `manual:default:${service}:${address}:8080`, service, address, withService: e < services });
      per.set(h, list);
    }
    const work = [...per];
    let next = 0;
    const worker = async () => {
      while (next < work.length) {
        const [h, specs] = work[next++]!;
        await h.register(specs, 4);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.floor(concurrency / 4)) }, worker));
  }

  /**
   * Endpoint churn at `perSecond` changes/s: mostly health flips (a put of the record with
   * healthy toggled, as the health checker writes), one in five a re-registration (delete, then put).
   */
  startChurn(perSecond: number): void {
    if (perSecond <= 0) return;
    let owed = 0;
    let last = Date.now();
    let n = 0;
    this.churnTimer = setInterval(() => {
      const now = Date.now();
      owed += ((now - last) * perSecond) / 1000;
      last = now;
      const run = this.running().filter((h) => h.endpointIds.length);
      while (owed >= 1 && run.length) {
        owed--;
        const h = run[Math.floor(Math.random() * run.length)]!;
        const id = h.endpointIds[Math.floor(Math.random() * h.endpointIds.length)]!;
        const cur = this.catalog.endpoints.get(id);
        if (!cur) continue;
        const reRegister = n++ % 5 === 4;
        const ep = { ...cur, healthy: reRegister ? cur.healthy : !cur.healthy, healthReason: cur.healthy ? 'GET / answered 500' : 'GET / answered 200' };
        const value = JSON.stringify(ep);
        const write = reRegister
          ? h.registry!.txn([{ delete: keys.endpoint(h.name, id) }]).then(() => h.registry!.txn([{ put: keys.endpoint(h.name, id), value, ephemeral: true }]))
          : h.registry!.txn([{ put: keys.endpoint(h.name, id), value, ephemeral: true }]);
        write.then(() => this.churned++, () => this.churnErrors++);
      }
    }, 20);
  }

  stopChurn(): void {
    clearInterval(this.churnTimer);
    this.churnTimer = undefined;
  }

  private closed = false;

  async close(): Promise<void> {
    this.closed = true;
    this.stopChurn();
    await Promise.allSettled(this.running().map((h) => h.leave()));
    this.unwatch?.();
    await this.observer.close();
    this.client.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** Polls until cond holds (bounded); fails naming what it waited for and the last detail. */
export async function eventually(what: string, cond: () => boolean | Promise<boolean>, timeoutMs: number, detail: () => string = () => ''): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await Promise.resolve().then(cond).catch(() => false)) return Date.now() - t0;
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms ${detail()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

