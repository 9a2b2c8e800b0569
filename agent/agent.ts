// The per-host agent: the only process that talks to the registry. It turns Docker containers
// and `corral register` calls into endpoints (through its EndpointWriter), health-checks its own
// endpoints, and serves the registry to DNS, LB and the CLI as a revisioned watch stream.
import { existsSync } from 'node:fs';
import type { Server as HttpServer } from 'node:http';
import { startAdmin } from '../api/admin.js';
import { DEFAULT_MTU } from '../api/cni.js';
import type { grpc } from '../api/grpc.js';
import type { Logger } from '../api/log.js';
import { ADMIN_DEFAULTS, localAddress, type DaemonOptions } from '../api/options.js';
import type {
  Allocation, CniReply, CniRequest, DeregisterRequest, Endpoint, IpamGcReply, EndpointReply, HealthCheck, ListReply, ListRequest, RegisterRequest,
  RollbackRequest, RotateKeysReply, ServiceReply, StatusReply, SwitchRequest, UpgradeEvent, UpgradeRequest, WatchEvent, WeightRequest,
} from '../api/types.js';
import { DEFAULT_NAMESPACE, type Host, type HostsReply, type HostsRequest, type HostStatus, type WatchRequest } from '../api/types.js';
import { InvalidRecord } from '../api/records.js';
import { VERSION } from '../api/version.js';
import type { WatchHandlers, WatchStream } from '../api/watch.js';
import { NotFound, serveApi, type AgentOps } from './api.js';
import { ALLOC, BLOCK, Catalog, EP, keys, mergeEvents, PREFIX, STATUS } from './catalog.js';
import { leaseBlock } from './blocks.js';
import { Attachments } from './attachments.js';
import { applyDockerDefaults, dockerRange, inDockerHalf } from './docker/defaults.js';
import { DockerSource } from './docker/source.js';
import { DockerNetworkDriver } from './dockernet/driver.js';
import { liveEndpoints } from './dockernet/live.js';
import { DockerPlugin, pluginName } from './dockernet/plugin.js';
import { Console } from './console/server.js';
import { CONSOLE_PREFIX } from './console/assets.js';
import { Ipam } from './ipam.js';
import * as v from './endpoints.js';
import { AutoPromotion } from './promotion.js';
import { HealthChecker } from './health.js';
import { Mesh } from './mesh.js';
import { AgentMetrics } from './metrics.js';
import { Watchers } from './watchers.js';
import { ColorChanges } from './color-changes.js';
import { EndpointWriter, type Commit } from './endpoint-writer.js';
import { registryFor } from './registry/index.js';
import { acmeProblems } from '../lb/acme/report.js';
import { EdgeLabelError, isEdgeLabel, parseEdge } from '../lb/middleware/labels.js';
import { Upgrades } from './upgrade/upgrades.js';
import { MeasuredRegistry } from './registry/measured.js';
import { PermissionDenied, type Registry, type TxnOp } from './registry/registry.js';

interface RevisionWaiter { rev: number; resolve: () => void; timer: NodeJS.Timeout }

/**
 * Under churn, registry changes go to DNS, LB and the mesh at most this often (one merged event):
 * each message costs the agent and every consumer far more than the records in it. A change after
 * a quiet spell goes at once.
 */
const BATCH_MS = 10;

/** Problem lines in `corral status` and `corral hosts` (a registry full of junk must not make the reply huge). */
const PROBLEM_LINES = 100;

export class Agent implements AgentOps {
  readonly catalog: Catalog;
  private readonly watchers: Watchers;
  private readonly registry: Registry;
  /** What this node's sources say about its endpoints, written to the registry. */
  readonly endpoints: EndpointWriter;
  private readonly colors: ColorChanges;
  private readonly revisionWaiters = new Set<RevisionWaiter>();
  private readonly health: HealthChecker;
  private readonly promotion: AutoPromotion;
  /** `corral upgrade` (agent/upgrade/). */
  readonly upgrades: Upgrades;
  /** Set by stop(): nothing is retried after it. */
  private stopped = false;
  private docker: DockerSource | undefined;
  attachments: Attachments | undefined;
  private dockerNet: DockerNetworkDriver | undefined;
  private dockerPlugin: DockerPlugin | undefined;
  private grpcServer: grpc.Server | undefined;
  private admin: HttpServer | undefined;
  private console: Console | undefined;
  private unwatch: (() => void) | undefined;
  private mesh: Mesh | undefined;
  private readonly metrics: AgentMetrics;

  constructor(private readonly opts: DaemonOptions, private readonly log: Logger) {
    const m = opts.mesh;
    this.catalog = new Catalog(opts.clusterCidr, (p) => log.warn({ key: p.key, field: p.field, problem: p.problem, writer: p.writer || 'unknown' }, 'registry record not served: it is invalid or conflicts with an older one'));
    this.watchers = new Watchers(this.catalog, (from) => this.changesSince(from));
    this.metrics = new AgentMetrics({
      catalog: this.catalog,
      components: () => this.watchers.status(),
      registryHealth: () => this.registry.health(),
      ipam: () => this.attachments && { block: this.attachments.ipam.blockCidr, ...this.attachments.ipam.usage() },
      mesh: () => this.mesh && { peers: this.mesh.peerStatus(), appliedRevision: this.mesh.appliedRevision, keyRotations: this.mesh.keyRotations },
    });
    this.registry = new MeasuredRegistry(registryFor(opts.registry, opts.stateDir, {
      log: log.child({ part: 'registry' }),
      leaseTtlS: m.leaseTtlS,
      tls: m.etcdCa ? { ca: m.etcdCa, cert: m.etcdCert || undefined, key: m.etcdKey || undefined } : undefined,
      auth: m.etcdUser ? { user: m.etcdUser, passwordFile: m.etcdPasswordFile } : undefined,
    }), (op, ok, seconds) => this.metrics.registryCall(op, ok, seconds));
    const commit: Commit = (ops, compares) => this.commit(ops, compares);
    this.endpoints = new EndpointWriter(this.catalog, opts.nodeName, commit, log);
    this.colors = new ColorChanges(this.registry, this.catalog, commit, log);
    this.health = new HealthChecker(this.endpoints, log, (ok) => this.metrics.healthCheck(ok));
    this.promotion = new AutoPromotion(this, log);
    this.upgrades = new Upgrades({ catalog: this.catalog, commit, node: opts.nodeName, dockerSocket: opts.dockerSocket, lbAdmin: localAddress(opts.lbAdmin || ADMIN_DEFAULTS.lb), log });
  }

  get node(): string {
    return this.opts.nodeName;
  }

  async start(): Promise<void> {
    const t0 = performance.now();
    await this.registry.open();
    const first = await this.registry.range(PREFIX);
    const t1 = performance.now();
    this.loadFrom((await this.moveToHostPrefix(first)) ? await this.registry.range(PREFIX) : first);
    this.log.info({ records: first.kvs.length, revision: this.catalog.revision, readMs: Math.round(t1 - t0), loadMs: Math.round(performance.now() - t1), processMs: Math.round(t0) }, 'registry read');
    this.watchRegistry();
    this.registry.maintain?.(this.node, this.log.child({ part: 'registry' }));
    await this.cleanupAfterRestart();
    const block = await leaseBlock(this.registry, this.opts.clusterCidr, this.node);
    await this.startAttachments(block);
    const overlay = this.opts.mesh.overlay;
    if (overlay !== 'off' && (overlay !== 'auto' || this.registry.kind === 'etcd')) {
      this.mesh = new Mesh(this.registry, this.catalog, this.opts, this.log.child({ part: 'mesh' }));
      await this.mesh.start();
    } else {
      const host: Host = { name: this.node, block, underlay: '', publicKey: '', nextPublicKey: '', version: VERSION, wgPort: 0, mtu: 0, overlay: '' };
      await this.commit([{ put: keys.host(this.node), value: JSON.stringify(host), ephemeral: true }]);
    }
    this.grpcServer = await serveApi(this.opts.agentSocket, this, this.log);
    if (this.opts.dockerDaemonJson) applyDockerDefaults(this.opts.dockerDaemonJson, { block, mtu: this.mesh?.mtu || DEFAULT_MTU, dnsDomain: this.opts.dnsDomain }, this.log.child({ part: 'docker' }));
    await this.startDockerPlugin();
    this.console = this.startConsole();
    const web = this.console;
    this.admin = await startAdmin(this.opts.adminListen || ADMIN_DEFAULTS.agent, {
      metrics: this.metrics.registry,
      ready: () => this.grpcServer !== undefined,
      status: () => this.status(),
      ...(web ? { routes: { prefix: CONSOLE_PREFIX, handle: web.handle.bind(web) } } : {}),
    });
    if (this.opts.dockerSocket && existsSync(this.opts.dockerSocket)) {
      this.docker = new DockerSource({ socketPath: this.opts.dockerSocket, node: this.node, sink: this.endpoints, log: this.log });
      this.docker.start();
    } else if (this.opts.dockerSocket) {
      this.log.warn({ socket: this.opts.dockerSocket }, 'no Docker socket here: containers are not watched (start dockerd, or pass --docker-socket "" to silence this)');
    }
    this.upgrades.start();
    this.log.info({ socket: this.opts.agentSocket, registry: this.registry.kind, revision: this.catalog.revision, node: this.node, startMs: Math.round(performance.now()) }, 'agent ready');
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.docker?.stop();
    this.health.stop();
    this.promotion.stop();
    this.upgrades.stop();
    this.endpoints.close();
    this.unwatch?.();
    clearTimeout(this.flushTimer);
    await this.mesh?.stop();
    await this.dockerPlugin?.stop();
    await this.attachments?.close();
    const server = this.grpcServer;
    if (server) {
      // Watch streams (DNS, LB) never end by themselves: calls in flight get a second, then every stream is closed.
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 1000);
        server.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      });
      server.forceShutdown();
    }
    this.console?.close();
    await new Promise<void>((resolve) => (this.admin ? this.admin.close(() => resolve()) : resolve()));
    this.admin?.closeAllConnections();
    await this.registry.close();
  }

  // ---- registry view ----

  private loadFrom(r: Awaited<ReturnType<Registry['range']>>): WatchEvent {
    const ev = this.catalog.load(r);
    this.watchers.reset(ev.revision);
    this.metrics.applied(ev.revision);
    this.health.stop();
    for (const ep of ev.endpoints) this.trackHealth(ep);
    this.upgrades.load(r);
    this.promotion.review(ev);
    return ev;
  }

  /** Keys etcd held at a consumer's revision: DNS and LB usually ask for the same one, read once. */
  private keysThen: { from: number; keys: Promise<Set<string> | null | undefined> } | undefined;

  /**
   * A consumer that kept running while this agent restarted: the changes since its revision, from
   * the keys etcd held then (null: no such history, it takes a snapshot).
   */
  private async changesSince(from: number): Promise<WatchEvent | null> {
    const t0 = performance.now();
    if (this.keysThen?.from !== from) {
      const keys = this.registry.keysAt?.(PREFIX, from) ?? Promise.resolve(undefined);
      this.keysThen = { from, keys };
      // Kept while the first consumers reconnect, not for ever: 50,000 keys are megabytes.
      setTimeout(() => this.keysThen?.keys === keys && (this.keysThen = undefined), 10_000).unref();
    }
    const then = await this.keysThen.keys;
    if (!then) return null;
    const ev = this.catalog.since(from, then);
    this.log.info({ from, revision: this.catalog.revision, endpoints: ev?.endpoints.length, deletedEndpoints: ev?.deletedEndpoints.length, ms: Math.round(performance.now() - t0) }, ev ? 'a consumer resumed from its revision' : 'a consumer takes a snapshot: block leases changed since its revision');
    return ev;
  }

  private watchRegistry(): void {
    this.unwatch = this.registry.watch(
      PREFIX,
      this.catalog.revision,
      (batch) => {
        this.upgrades.onBatch(batch);
        // Every revision of one watch response arrives in one turn: they go out as one event,
        // with those of the next BATCH_MS when one went out just before (under churn).
        if (this.pending.push(this.catalog.apply(batch)) > 1 || this.flushTimer) return;
        const wait = this.flushedMs + BATCH_MS - performance.now();
        if (wait <= 0) queueMicrotask(() => this.flush());
        else this.flushTimer = setTimeout(() => this.flush(), wait);
      },
      () => {
        this.unwatch?.();
        this.log.warn({ revision: this.catalog.revision }, 'registry watch cancelled (its history was compacted away): reading the registry whole and watching again');
        this.reload();
      },
    );
  }

  /** Events applied to the catalog and not yet sent: the revisions of one watch response, or of BATCH_MS. */
  private pending: WatchEvent[] = [];
  private flushTimer: NodeJS.Timeout | undefined;
  private flushedMs = -Infinity;

  /** The pending events as one, to DNS, LB, the mesh and the rest: one message per watch response, not per revision. */
  private flush(): void {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const evs = this.pending;
    this.pending = [];
    if (evs.length === 0) return;
    this.flushedMs = performance.now();
    const ev = mergeEvents(evs);
    this.metrics.applied(ev.revision);
    for (const ep of ev.endpoints) this.trackHealth(ep);
    for (const id of ev.deletedEndpoints) this.health.untrack(id);
    this.promotion.review(ev);
    this.broadcast(ev);
    this.mesh?.onEvent(ev);
    for (const w of this.revisionWaiters) if (w.rev <= ev.revision) this.settle(w);
  }

  /** Reads the registry whole and watches on from there; a failed read (etcd unreachable) is tried again, not dropped with the watch. */
  private reload(): void {
    this.registry.range(PREFIX).then((r) => {
      this.flush(); // what the cancelled watch delivered goes out before the snapshot that replaces it
      const ev = this.loadFrom(r);
      this.broadcast(ev);
      this.mesh?.onEvent(ev);
      for (const w of this.revisionWaiters) if (w.rev <= ev.revision) this.settle(w);
      this.watchRegistry();
    }, (err: Error) => {
      if (this.stopped) return;
      this.log.warn({ err: err.message }, 'reading the registry after a cancelled watch failed; trying again in 1 s');
      setTimeout(() => this.reload(), 1000).unref();
    });
  }

  /**
   * A registry transaction whose result this agent has applied before it returns: replies carry
   * their own revision with either registry (etcd's watch delivers after the write acknowledges).
   */
  private async commit(ops: TxnOp[], compares?: Parameters<Registry['txn']>[1]): Promise<number | null> {
    for (const op of ops) {
      if (!('put' in op)) continue;
      try {
        this.catalog.check(op.put, op.value);
      } catch (err) {
        throw new Error(`refusing to write ${op.put}: ${(err as Error).message} (a bug in this agent: please report it)`);
      }
    }
    let rev: number | null;
    try {
      rev = await this.registry.txn(ops, compares);
    } catch (err) {
      // One line, and the agent goes on: the operation is refused, nothing else.
      if (err instanceof PermissionDenied) this.log.warn({ keys: err.keys, etcdUser: err.user }, err.message);
      throw err;
    }
    if (rev !== null && this.catalog.revision < rev) await this.applied(rev);
    return rev;
  }

  /** Resolves once the catalog has applied `rev` (or after 5 s: the reply then says the older state). */
  private applied(rev: number): Promise<void> {
    return new Promise((resolve) => {
      const w: RevisionWaiter = { rev, resolve, timer: setTimeout(() => this.settle(w), 5000) };
      this.revisionWaiters.add(w);
    });
  }

  private settle(w: RevisionWaiter): void {
    clearTimeout(w.timer);
    this.revisionWaiters.delete(w);
    w.resolve();
  }

  private trackHealth(ep: Endpoint): void {
    if (ep.node === this.node && ep.healthCheck && !ep.draining) this.health.track(ep);
    else this.health.untrack(ep.id);
  }

  private broadcast(ev: WatchEvent): void {
    this.watchers.broadcast(ev);
  }

  /**
   * Records this host wrote before keys had a prefix per host (`/corral/endpoints/<id>`,
   * `/corral/allocations/<address>`, `/corral/blocks/<net>_<len>`) move under its prefix, in one
   * transaction, before the catalog reads them: an upgraded host keeps its block, addresses and
   * endpoints. Other hosts' records of that layout are theirs to move when they upgrade.
   */
  private async moveToHostPrefix(r: Awaited<ReturnType<Registry['range']>>): Promise<boolean> {
    const ops: TxnOp[] = [];
    for (const kv of r.kvs) {
      const base = [EP, ALLOC, BLOCK].find((p) => kv.key.startsWith(p));
      if (!base || kv.key.includes('/', base.length)) continue;
      let node: unknown;
      try {
        node = (JSON.parse(kv.value) as { node?: unknown } | null)?.node;
      } catch {
        continue;
      }
      if (node !== this.node) continue;
      ops.push({ delete: kv.key }, { put: `${base}${this.node}/${kv.key.slice(base.length)}`, value: kv.value, ephemeral: base === EP });
    }
    if (ops.length === 0) return false;
    await this.registry.txn(ops);
    this.log.info({ records: ops.length / 2 }, 'moved this host\'s records under its own key prefix (the registry layout of this version)');
    return true;
  }

  /** Endpoints this node left draining, or Docker endpoints it can no longer see, go now. */
  private async cleanupAfterRestart(): Promise<void> {
    const ops: TxnOp[] = [];
    const dockerOff = !this.opts.dockerSocket;
    for (const ep of this.catalog.endpoints.values()) {
      if (ep.node !== this.node) continue;
      if (ep.draining || (dockerOff && ep.origin === 'docker')) ops.push({ delete: keys.endpoint(ep.node, ep.id) });
      // The rest move onto this run's registry session (etcd lease) so they leave with this host.
      else ops.push({ put: keys.endpoint(ep.node, ep.id), value: JSON.stringify(ep), ephemeral: true });
    }
    if (ops.length) await this.commit(ops);
  }

  // ---- attachments (CNI, IPAM) ----

  /** Opens this host's IPAM and makes the registry's Allocation records of this node match it. */
  private async startAttachments(block: string): Promise<void> {
    const dockerHalf = !!this.opts.dockerDaemonJson;
    const ipam = new Ipam(this.opts.stateDir, block, { dockerHalf });
    ipam.open();
    for (const r of dockerHalf ? ipam.list().filter((x) => inDockerHalf(block, x.address)) : []) {
      this.log.warn({ address: r.address, container: r.containerId }, 'an attachment from before --docker-daemon-json holds an address in Docker\'s half of the block: Docker may give it out again; restart that container');
    }
    const put = (a: Allocation): TxnOp => ({ put: keys.allocation(a.node, a.address), value: JSON.stringify(a) });
    // The mesh starts after IPAM but before the API serves an ADD: containers get its MTU.
    // At start every record is written again; a repair writes only what the catalog lacks.
    const reconcile = async (all: boolean) => {
      const ops: TxnOp[] = [];
      for (const a of this.catalog.allocations.values()) {
        if (a.node === this.node && !ipam.byAddr(a.address)) ops.push({ delete: keys.allocation(a.node, a.address) });
      }
      for (const r of ipam.list()) {
        const a = this.attachments!.allocation(r);
        const cur = this.catalog.allocations.get(a.address);
        if (all || !cur || cur.node !== a.node || cur.containerId !== a.containerId || cur.ifname !== a.ifname) ops.push(put(a));
      }
      if (ops.length) await this.commit(ops);
    };
    this.attachments = new Attachments(ipam, { node: this.node, clusterCidr: this.opts.clusterCidr, dnsDomain: this.opts.dnsDomain, overlayMtu: () => this.mesh?.mtu ?? 0, dockerRange: dockerHalf ? dockerRange(block) : '' }, {
      publish: async (a) => void (await this.commit([put(a)])),
      unpublish: async (address) => void (await this.commit([{ delete: keys.allocation(this.node, address) }])),
      repair: () => reconcile(false),
    }, this.log.child({ part: 'cni' }));
    await reconcile(true);
    await this.attachments.start();
  }

  /** The web console (agent/console/); without its token file it is not served, and the agent runs on. */
  private startConsole(): Console | undefined {
    try {
      return new Console(this, this.opts.stateDir, this.log.child({ part: 'console' }));
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'web console not served');
      return undefined;
    }
  }

  /** Docker's network + IPAM driver; a failure here leaves the rest of the agent running. */
  private async startDockerPlugin(): Promise<void> {
    const socket = this.opts.dockerPluginSocket;
    if (!socket) return;
    const log = this.log.child({ part: 'dockernet' });
    this.dockerNet = new DockerNetworkDriver(this.attachments!, this.opts.stateDir, log, pluginName(socket));
    const plugin = new DockerPlugin(socket, this.dockerNet, log);
    try {
      await plugin.start();
      this.dockerPlugin = plugin;
    } catch (err) {
      log.error({ err: (err as Error).message, socket }, 'Docker network driver not served');
    }
  }

  async cni(req: CniRequest): Promise<CniReply> {
    const started = performance.now();
    const reply = await this.attachments!.handle(req);
    this.metrics.cni(req.command, reply.code === 0, (performance.now() - started) / 1000);
    return reply;
  }

  async ipamGc(): Promise<IpamGcReply> {
    const freed = await this.attachments!.gcDead();
    if (this.dockerNet && this.opts.dockerSocket && existsSync(this.opts.dockerSocket)) {
      freed.push(...(await this.dockerNet.gc(await liveEndpoints(this.opts.dockerSocket, pluginName(this.opts.dockerPluginSocket)))));
    }
    return { freed: freed.map((r) => this.attachments!.allocation(r)) };
  }

  // ---- AgentOps (the gRPC API) ----

  watch(req: WatchRequest, send: (ev: WatchEvent) => void): () => void {
    return this.watchers.watch(req, send);
  }

  /** A watch for DNS or LB running in this process (`corral up`): see Watchers.local. */
  localWatch(component: string, handlers: WatchHandlers, log?: Logger): WatchStream {
    return this.watchers.local(component, handlers, log);
  }

  ack(component: string, revision: number): void {
    this.watchers.ack(component, revision);
  }

  watching(component: string, delta: 1 | -1, kinds?: string[]): void {
    this.watchers.watching(component, delta, kinds);
  }

  async list(req: ListRequest): Promise<ListReply> {
    await this.attachments?.recorded();   // an answered ADD/DEL shows in the list that follows it
    const match = (ns: string, name: string) => (!req.namespace || req.namespace === ns) && (!req.service || req.service === name);
    return {
      revision: this.catalog.revision,
      endpoints: [...this.catalog.endpoints.values()].filter((e) => match(e.namespace, e.service)),
      services: [...this.catalog.services.values()].filter((s) => match(s.namespace, s.name)),
      hosts: [...this.catalog.hosts.values()],
      allocations: [...this.catalog.allocations.values()],
      upgrades: this.upgrades.list(match),
    };
  }

  status(): StatusReply {
    let healthy = 0;
    for (const ep of this.catalog.endpoints.values()) if (ep.healthy && !ep.draining) healthy++;
    return {
      node: this.node,
      version: VERSION,
      registry: this.registry.kind,
      revision: this.catalog.revision,
      appliedRevision: this.mesh ? this.mesh.appliedRevision : this.catalog.revision,
      components: this.watchers.status(),
      dockerConnected: this.docker?.connected ?? false,
      dockerError: this.docker ? (this.docker.lastError ?? '') : this.opts.dockerSocket ? `no Docker socket at ${this.opts.dockerSocket}` : 'Docker disabled',
      services: this.catalog.services.size,
      endpoints: this.catalog.endpoints.size,
      healthyEndpoints: healthy,
      ...this.registryStatus(),
      // The LB of this host reports ACME failures beside it (lb/acme/report.ts).
      problems: [...acmeProblems(this.opts.stateDir), ...this.problemLines()],
      upgrades: this.upgrades.lines(),
    };
  }

  /** Records not served, one line each, the first PROBLEM_LINES by key and a count of the rest. */
  private problemLines(): string[] {
    const all = this.catalog.problems;
    const upgrades = this.upgrades.problemLines();
    const total = all.size + upgrades.length;
    const lines: string[] = [];
    for (const p of all.values()) {
      if (lines.length === PROBLEM_LINES) break;
      lines.push(`${p.key}: ${p.field}: ${p.problem} (written by ${p.writer || 'unknown'})`);
    }
    for (const line of upgrades) {
      if (lines.length === PROBLEM_LINES) break;
      lines.push(line);
    }
    lines.sort();
    if (total > PROBLEM_LINES) lines.push(`... and ${total - PROBLEM_LINES} more records not served (the agent's log names each once)`);
    return lines;
  }

  /** `corral hosts`: every host's record with its last status report, read on demand (nobody watches reports). */
  async hosts(req: HostsRequest): Promise<HostsReply> {
    const want = req.host || '';
    if (want && !this.catalog.hosts.has(want)) throw new NotFound(`no host ${want} in the registry; see \`corral hosts\``);
    const statuses = new Map<string, HostStatus>();
    const problems = this.problemLines();
    for (const kv of (await this.registry.range(want ? keys.status(want) : STATUS)).kvs) {
      if (want && kv.key !== keys.status(want)) continue;
      try {
        const st = this.catalog.status(kv.key, kv.value);
        statuses.set(st.name, st);
      } catch (err) {
        if (!(err instanceof InvalidRecord)) throw err;
        problems.push(`${kv.key}: ${err.message}`);
      }
    }
    const peers = new Map((this.mesh?.peerStatus() ?? []).map((p) => [p.host, p]));
    const rows = [...this.catalog.hosts.values()]
      .filter((h) => !want || h.name === want)
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((host) => ({ host, status: statuses.get(host.name) ?? null, peer: peers.get(host.name) ?? null }));
    return { revision: this.catalog.revision, node: this.node, rows, peers: want === this.node ? this.mesh?.peerStatus() ?? [] : [], problems };
  }

  /**
   * Every host's status report now, then the reports each later write changes (`gone`: hosts
   * whose report left): the web console's feed, read only while a page is open (nobody else
   * watches reports). A report that fails its schema is skipped (`corral hosts` names it).
   */
  followStatusReports(onChange: (reports: HostStatus[], gone: string[]) => void): () => void {
    let stopped = false;
    let unwatch: (() => void) | undefined;
    const parse = (key: string, value: string): HostStatus | undefined => {
      try {
        return this.catalog.status(key, value);
      } catch {
        return undefined;
      }
    };
    const follow = (): void => {
      this.registry.range(STATUS).then((r) => {
        if (stopped) return;
        onChange(r.kvs.map((kv) => parse(kv.key, kv.value)).filter((st): st is HostStatus => st !== undefined), []);
        unwatch = this.registry.watch(STATUS, r.revision, (b) => {
          const reports: HostStatus[] = [];
          const gone: string[] = [];
          for (const e of b.events) {
            const st = e.type === 'put' ? parse(e.key, e.value) : undefined;
            if (st) reports.push(st);
            else if (e.type === 'delete') gone.push(e.key.slice(STATUS.length));
          }
          if (reports.length || gone.length) onChange(reports, gone);
        }, () => {
          // Its history was compacted away: read them whole again.
          unwatch?.();
          if (!stopped) follow();
        });
      }, () => {
        if (!stopped) setTimeout(follow, 5_000).unref();
      });
    };
    follow();
    return () => {
      stopped = true;
      unwatch?.();
    };
  }

  private registryStatus(): Pick<StatusReply, 'registryConnected' | 'registryError' | 'registrySinceMs' | 'overlay' | 'peers' | 'block' | 'publicKey'> {
    const h = this.registry.health();
    return {
      registryConnected: h.connected,
      registryError: h.error,
      registrySinceMs: h.sinceMs,
      overlay: this.mesh?.kind ?? '',
      peers: this.mesh?.peerStatus() ?? [],
      block: this.mesh?.block ?? this.catalog.hosts.get(this.node)?.block ?? '',
      publicKey: this.mesh?.publicKey ?? '',
    };
  }

  async rotateKeys(): Promise<RotateKeysReply> {
    if (!this.mesh) throw new NotFound('this agent runs no WireGuard overlay (it starts with --registry etcd://… or --overlay wireguard-go|kernel); there is no key to rotate');
    return this.mesh.rotateKeys();
  }

  async register(req: RegisterRequest): Promise<EndpointReply> {
    const namespace = v.dnsLabel('namespace', req.namespace || DEFAULT_NAMESPACE);
    const service = v.dnsLabel('service', req.service);
    const address = v.address('address', req.address);
    const port = v.port('port', req.port);
    const ep = v.newEndpoint({
      id: v.manualEndpointId(namespace, service, address, port),
      service, namespace, address, port,
      portName: req.portName || undefined,
      color: req.color || undefined,
      weight: req.weight || undefined,
      origin: 'manual',
      node: this.node,
      httpHosts: req.httpHosts.flatMap((h) => v.httpHosts('http host', h)),
      httpPath: v.httpPath('http path', req.httpPath || '/'),
      healthCheck: healthCheckFrom(req.healthCheck),
      lbBalance: req.lbBalance ? v.balancePolicy('lb balance', req.lbBalance) : undefined,
      edge: checkedEdge(req.edge),
      tcpPort: req.tcpPort || undefined,
      tlsSni: req.tlsSni?.length ? v.tlsServerNames('tls sni', req.tlsSni.join(',')) : undefined,
      proxyProtocol: req.proxyProtocol || undefined,
    });
    await this.endpoints.upsert(ep);
    return { revision: this.catalog.revision, endpoint: this.catalog.endpoints.get(ep.id) ?? ep };
  }

  async deregister(req: DeregisterRequest): Promise<EndpointReply> {
    const namespace = req.namespace || DEFAULT_NAMESPACE;
    const id = v.manualEndpointId(namespace, req.service, req.address, req.port);
    const ep = this.catalog.endpoints.get(id);
    if (!ep) {
      throw new NotFound(`no registered endpoint ${req.address}:${req.port} of service ${req.service} in namespace ${namespace}; see \`corral endpoints ${req.service} -n ${namespace}\``);
    }
    await this.endpoints.remove(id);
    return { revision: this.catalog.revision, endpoint: this.catalog.endpoints.get(id) ?? null };
  }

  switchColor(req: SwitchRequest): Promise<ServiceReply> {
    return this.colors.switchColor(req);
  }

  weight(req: WeightRequest): Promise<ServiceReply> {
    return this.colors.weight(req);
  }

  rollback(req: RollbackRequest): Promise<ServiceReply> {
    return this.colors.rollback(req);
  }

  upgrading(namespace: string, service: string): boolean {
    return this.upgrades.underWay(namespace, service);
  }

  upgrade(req: UpgradeRequest, send: (ev: UpgradeEvent) => void, end: () => void): Promise<() => void> {
    return this.upgrades.request(req, send, end);
  }
}

function healthCheckFrom(hc: HealthCheck | null): HealthCheck | null {
  if (!hc || (!hc.tcp && !hc.path)) return null;
  if (hc.path && !hc.path.startsWith('/')) throw new v.InvalidEndpoint('health path', hc.path, 'a path starting with "/"');
  return {
    path: hc.tcp ? '' : hc.path,
    tcp: hc.tcp,
    intervalMs: hc.intervalMs || v.HEALTH_DEFAULTS.intervalMs,
    timeoutMs: hc.timeoutMs || v.HEALTH_DEFAULTS.timeoutMs,
    rise: hc.rise || v.HEALTH_DEFAULTS.rise,
    fall: hc.fall || v.HEALTH_DEFAULTS.fall,
  };
}

/** Edge labels of a Register request, checked as container labels are (lb/middleware/labels.ts). */
function checkedEdge(edge: Record<string, string> | undefined): Record<string, string> | undefined {
  if (!edge || Object.keys(edge).length === 0) return undefined;
  for (const [k, val] of Object.entries(edge)) if (!isEdgeLabel(k)) throw new v.InvalidEndpoint('edge', `${k}=${val}`, 'corral.http.* edge labels (README: Docker labels)');
  try {
    parseEdge(edge);
  } catch (err) {
    if (err instanceof EdgeLabelError) throw new v.InvalidEndpoint(err.label, err.value, err.accepted);
    throw err;
  }
  return Object.fromEntries(Object.entries(edge).sort(([a], [b]) => (a < b ? -1 : 1)));
}
