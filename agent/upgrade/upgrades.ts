// `corral upgrade` in the agent: the upgrade records and every host's reports, read from the
// registry like any record (untrusted: through api/records.ts), what this host does for each
// phase (hostpart.ts), the driver of the upgrades this agent runs (driver.ts), and the API
// entry: start, finish, rollback, watch, with progress as a stream of events.
import { randomBytes } from 'node:crypto';
import Docker from 'dockerode';
import type { Logger } from '../../api/log.js';
import { InvalidRecord, MAX_RECORD_BYTES } from '../../api/records.js';
import { activeColors } from '../../api/traffic.js';
import { DEFAULT_NAMESPACE, serviceKey, UPGRADE_ENDED, type ColorFigures, type Upgrade, type UpgradeEvent, type UpgradeReport, type UpgradeRequest } from '../../api/types.js';
import { NotFound } from '../api.js';
import { type Catalog, keys, UPGRADE, UPGRADE_REPORT } from '../catalog.js';
import { ColorError } from '../colors.js';
import type { Commit } from '../endpoint-writer.js';
import { dnsLabel, InvalidEndpoint } from '../endpoints.js';
import type { KvBatch, RangeResult, TxnOp } from '../registry/registry.js';
import { Cloner } from './clone.js';
import { Driver } from './driver.js';
import { describe } from './describe.js';
import { HostPart } from './hostpart.js';

const UPGRADES = UPGRADE;
const REPORTS = UPGRADE_REPORT;
export const upgradeKeys = {
  upgrade: (ns: string, name: string) => `${UPGRADES}${ns}/${name}`,
  report: (node: string, ns: string, name: string) => `${REPORTS}${node}/${ns}/${name}`,
};

/** Defaults of `corral upgrade` (README.md). */
export const UPGRADE_DEFAULTS = { steps: [10, 50, 100], stepMs: 30_000, maxErrorRate: 0.01, readyTimeoutMs: 120_000 } as const;

export interface UpgradeDeps {
  catalog: Catalog;
  commit: Commit;
  node: string;
  dockerSocket: string;
  /** host:port of this host's LB admin endpoint (its /gate). */
  lbAdmin: string;
  log: Logger;
}

interface Held { u: Upgrade; mod: number }

export class Upgrades {
  /** "<ns>/<name>" -> the upgrade record and its modRevision. */
  readonly records = new Map<string, Held>();
  /** "<ns>/<name>" -> node -> that host's report. */
  readonly reports = new Map<string, Map<string, UpgradeReport>>();
  private readonly listeners = new Map<string, Set<(ev: UpgradeEvent) => void>>();
  /** Keys whose record was not valid, reported once each. */
  private readonly problems = new Map<string, string>();
  readonly cloner: Cloner | undefined;
  private readonly host: HostPart;
  private readonly driver: Driver;
  private started = false;

  constructor(readonly deps: UpgradeDeps) {
    this.cloner = deps.dockerSocket ? new Cloner(new Docker({ socketPath: deps.dockerSocket })) : undefined;
    this.host = new HostPart(this, deps.log.child({ part: 'upgrade' }));
    this.driver = new Driver(this, deps.log.child({ part: 'upgrade' }));
  }

  get node(): string {
    return this.deps.node;
  }

  /** The registry read whole (start, or after a cancelled watch). */
  load(r: RangeResult): void {
    this.records.clear();
    this.reports.clear();
    this.problems.clear();
    for (const kv of r.kvs) if (kv.key.startsWith(UPGRADES) || kv.key.startsWith(REPORTS)) this.put(kv.key, kv.value, kv.modRevision);
    if (this.started) for (const k of this.records.keys()) this.review(k);
  }

  /** A registry batch, after the catalog applied it. */
  onBatch(b: KvBatch): void {
    const touched = new Set<string>();
    for (const e of b.events) {
      if (!e.key.startsWith(UPGRADES) && !e.key.startsWith(REPORTS)) continue;
      const k = e.type === 'put' ? this.put(e.key, e.value, b.revision) : this.drop(e.key);
      if (k) touched.add(k);
    }
    if (this.started) for (const k of touched) this.review(k);
  }

  /** Once the agent serves: carry on with what the registry says is under way. */
  start(): void {
    this.started = true;
    for (const k of this.records.keys()) this.review(k);
  }

  stop(): void {
    this.started = false;
    this.driver.stop();
    this.host.stop();
  }

  private review(k: string): void {
    const held = this.records.get(k);
    if (!held) return;
    this.emit(k, { ms: Date.now(), line: describe(held.u), upgrade: held.u, final: UPGRADE_ENDED.has(held.u.phase) });
    this.host.review(held.u);
    if (held.u.driver === this.node && !UPGRADE_ENDED.has(held.u.phase)) this.driver.run(k);
  }

  private put(key: string, value: string, mod: number): string | undefined {
    const report = key.startsWith(REPORTS);
    try {
      const kind = report ? 'upgradeReport' : 'upgrade';
      if (value.length > MAX_RECORD_BYTES[kind]) throw new InvalidRecord('record', `${value.length} bytes, at most ${MAX_RECORD_BYTES[kind]}`);
      let parsed: unknown;
      try {
        parsed = JSON.parse(value);
      } catch {
        throw new InvalidRecord('record', 'not JSON');
      }
      if (report) {
        const r = this.deps.catalog.rules.upgradeReport(parsed);
        if (key !== upgradeKeys.report(r.node, r.namespace, r.name)) throw new InvalidRecord('node', `the key ${key} does not name this report (${r.node}, ${r.namespace}/${r.name})`);
        const k = serviceKey(r.namespace, r.name);
        let m = this.reports.get(k);
        if (!m) this.reports.set(k, (m = new Map()));
        m.set(r.node, r);
        this.problems.delete(key);
        return k;
      }
      const u = this.deps.catalog.rules.upgrade(parsed);
      if (key !== upgradeKeys.upgrade(u.namespace, u.name)) throw new InvalidRecord('name', `the key ${key} does not name this upgrade (${u.namespace}/${u.name})`);
      const k = serviceKey(u.namespace, u.name);
      this.records.set(k, { u, mod });
      this.problems.delete(key);
      return k;
    } catch (caught) {
      // Whatever another writer put there, the watch goes on: the record is not used, and said so.
      const err = caught instanceof InvalidRecord ? caught : new InvalidRecord('record', (caught as Error).message ?? String(caught));
      this.drop(key);
      if (this.problems.get(key) !== err.message) {
        this.problems.set(key, err.message);
        this.deps.log.warn({ key, field: err.field, problem: err.problem }, 'upgrade record not used: it is invalid');
      }
      return undefined;
    }
  }

  private drop(key: string): string | undefined {
    if (key.startsWith(REPORTS)) {
      const [node, ns, name] = key.slice(REPORTS.length).split('/');
      const k = serviceKey(ns ?? '', name ?? '');
      this.reports.get(k)?.delete(node ?? '');
      return undefined;
    }
    const k = key.slice(UPGRADES.length);
    this.records.delete(k);
    return undefined;
  }

  /** Invalid upgrade records, for `corral status`. */
  problemLines(): string[] {
    return [...this.problems].map(([k, p]) => `${k}: ${p}`);
  }

  /** Upgrades under way, one line each, for `corral status`. */
  lines(): string[] {
    return [...this.records.values()].filter((h) => !UPGRADE_ENDED.has(h.u.phase)).map((h) => `${h.u.name}.${h.u.namespace}: ${describe(h.u)}`);
  }

  /** An upgrade of the service is under way (it moves the service's traffic). */
  underWay(ns: string, name: string): boolean {
    const h = this.records.get(serviceKey(ns, name));
    return h !== undefined && !UPGRADE_ENDED.has(h.u.phase);
  }

  list(match: (ns: string, name: string) => boolean): Upgrade[] {
    return [...this.records.values()].filter((h) => match(h.u.namespace, h.u.name)).map((h) => h.u);
  }

  emit(k: string, ev: UpgradeEvent): void {
    for (const l of this.listeners.get(k) ?? []) l(ev);
  }

  /** The record (with its modRevision) of a service, if any. */
  held(k: string): Held | undefined {
    return this.records.get(k);
  }

  /**
   * Writes the record as one revision with `ops` (a service record's colors), guarded by the
   * record's modRevision and `compares`; false when someone changed it meanwhile.
   */
  async write(u: Upgrade, mod: number, ops: TxnOp[] = [], compares: Array<{ key: string; modRevision: number }> = []): Promise<boolean> {
    const key = upgradeKeys.upgrade(u.namespace, u.name);
    const rev = await this.deps.commit([{ put: key, value: JSON.stringify(u) }, ...ops], [{ key, modRevision: mod }, ...compares]);
    return rev !== null;
  }

  async report(r: UpgradeReport): Promise<void> {
    await this.deps.commit([{ put: upgradeKeys.report(r.node, r.namespace, r.name), value: JSON.stringify(r) }]);
  }

  // ---- the API ----

  /**
   * Starts, finishes, rolls back or watches an upgrade; `send` gets its progress until it ends
   * (or, detached, until it is under way). Returns the unsubscribe.
   */
  async request(req: UpgradeRequest, send: (ev: UpgradeEvent) => void, end: () => void): Promise<() => void> {
    const ns = dnsLabel('namespace', req.namespace || DEFAULT_NAMESPACE);
    const name = dnsLabel('service', req.service);
    const k = serviceKey(ns, name);
    let u: Upgrade;
    switch (req.action) {
      case 'start': u = await this.begin(ns, name, req); break;
      case 'finish': u = await this.change(k, name, ns, 'finish'); break;
      case 'rollback': u = await this.change(k, name, ns, 'rollback'); break;
      case 'watch': {
        const held = this.records.get(k);
        if (!held) throw new NotFound(`no upgrade of ${name} in namespace ${ns}; start one with \`corral upgrade ${name} --image <image>\``);
        u = held.u;
        break;
      }
      default: throw new InvalidEndpoint('action', req.action, 'start, finish, rollback or watch');
    }
    let done = false;
    const listener = (ev: UpgradeEvent) => {
      if (done || ev.upgrade?.id !== u.id) return;
      send(ev);
      if (ev.final || req.detach) finish();
    };
    const finish = () => {
      if (done) return;
      done = true;
      this.listeners.get(k)?.delete(listener);
      end();
    };
    let set = this.listeners.get(k);
    if (!set) this.listeners.set(k, (set = new Set()));
    set.add(listener);
    const now = this.records.get(k)?.u ?? u;
    listener({ ms: Date.now(), line: describe(now), upgrade: now, final: UPGRADE_ENDED.has(now.phase) && req.action !== 'start' });
    return finish;
  }

  private async begin(ns: string, name: string, req: UpgradeRequest): Promise<Upgrade> {
    const k = serviceKey(ns, name);
    const held = this.records.get(k);
    if (held && !UPGRADE_ENDED.has(held.u.phase)) {
      throw new ColorError(`an upgrade of ${name} in namespace ${ns} is under way (${describe(held.u)}); wait for it, or \`corral upgrade ${name} --rollback\``);
    }
    if (!req.image || !/^[\x21-\x7e]{1,512}$/.test(req.image)) throw new InvalidEndpoint('image', req.image, 'an image reference (--image repo:tag)');
    const eps = this.deps.catalog.endpointsOf(ns, name);
    if (eps.length === 0) throw new NotFound(`no service ${name} in namespace ${ns}; see \`corral services\``);
    const svc = this.deps.catalog.services.get(k);
    const active = activeColors(svc, eps);
    if (active.size !== 1) throw new ColorError(`service ${name} serves ${[...active].map(([c, w]) => `${c}=${w}`).join(' ') || 'no color'}; an upgrade starts from one active color (\`corral switch ${name} <color>\` first)`);
    const from = [...active.keys()][0]!;
    const to = dnsLabel('color', req.color || (from === 'blue' ? 'green' : from === 'green' ? 'blue' : ''));
    if (!to) throw new InvalidEndpoint('color', '', `a color for the new containers (--color): the active one is "${from}", and only blue and green have a default`);
    if (to === from) throw new InvalidEndpoint('color', to, `a color other than the active one (${from})`);
    const fromEps = eps.filter((e) => e.color === from && !e.draining);
    const notContainer = fromEps.find((e) => e.origin !== 'docker');
    if (notContainer) throw new ColorError(`endpoint ${notContainer.address}:${notContainer.port} of ${name} (color ${from}) is not a Docker container (origin ${notContainer.origin}); only containers can be cloned`);
    if (fromEps.length === 0) throw new ColorError(`service ${name} has no running endpoint of its active color ${from} to clone`);
    const toEps = eps.filter((e) => e.color === to);
    if (toEps.length) throw new ColorError(`service ${name} already has endpoints of color ${to} (${toEps.map((e) => e.containerName || e.address).join(', ')}); remove them or pick another color with --color`);
    const steps = req.steps.length ? req.steps : [...UPGRADE_DEFAULTS.steps];
    const u: Upgrade = {
      namespace: ns, name, id: `${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`, image: req.image, fromColor: from, toColor: to,
      original: Object.fromEntries(active), steps, stepMs: req.stepMs || UPGRADE_DEFAULTS.stepMs,
      maxErrorRate: Math.min(1, Math.max(0, req.maxErrorRate)),
      maxP99Ms: req.maxP99Ms, maxP99Ratio: req.maxP99Ratio, readyTimeoutMs: req.readyTimeoutMs || UPGRADE_DEFAULTS.readyTimeoutMs,
      driver: this.node, phase: 'checking', step: -1, startedMs: Date.now(), stepStartedMs: 0, reason: '', gate: '',
      hosts: [...new Set(fromEps.map((e) => e.node))].sort(),
    };
    try {
      this.deps.catalog.rules.upgrade(JSON.parse(JSON.stringify(u)));
    } catch (err) {
      if (err instanceof InvalidRecord) throw new InvalidEndpoint(err.field, '', err.problem);
      throw err;
    }
    if (!(await this.write(u, held?.mod ?? 0))) throw new ColorError(`another upgrade of ${name} in namespace ${ns} started meanwhile; see \`corral upgrade ${name} --watch\``);
    this.deps.log.info({ service: name, namespace: ns, image: u.image, from, to, steps: u.steps, hosts: u.hosts }, 'upgrade started');
    return u;
  }

  private async change(k: string, name: string, ns: string, what: 'finish' | 'rollback'): Promise<Upgrade> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const held = this.records.get(k);
      if (!held) throw new NotFound(`no upgrade of ${name} in namespace ${ns}`);
      const u = held.u;
      let next: Upgrade;
      let ops: TxnOp[] = [];
      let compares: Array<{ key: string; modRevision: number }> = [];
      if (what === 'finish') {
        if (u.phase !== 'completed') throw new ColorError(`the upgrade of ${name} is ${u.phase}, not completed: --finish removes the old containers only after a completed upgrade`);
        next = { ...u, phase: 'finishing', driver: this.node };
      } else if (u.phase === 'completed') {
        next = { ...u, phase: 'reverting', driver: this.node, reason: 'rolled back by request' };
      } else if (UPGRADE_ENDED.has(u.phase)) {
        throw new ColorError(`the upgrade of ${name} is ${u.phase}: nothing to roll back`);
      } else if (u.phase === 'rolling-back' || u.phase === 'reverting') {
        return u;
      } else {
        ({ ops, compares } = this.restoreColors(u));
        next = { ...u, phase: 'rolling-back', driver: this.node, reason: 'rolled back by request' };
      }
      if (await this.write(next, held.mod, ops, compares)) return next;
    }
    throw new ColorError(`the upgrade of ${name} kept changing under this command; try again`);
  }

  /** The service record's colors set back to what they were before the upgrade: ops and compares of one transaction. */
  restoreColors(u: Upgrade): { ops: TxnOp[]; compares: Array<{ key: string; modRevision: number }> } {
    return this.setColors(u, u.original);
  }

  setColors(u: Upgrade, active: Record<string, number>): { ops: TxnOp[]; compares: Array<{ key: string; modRevision: number }> } {
    const key = keys.service(u.namespace, u.name);
    const svc = this.deps.catalog.services.get(serviceKey(u.namespace, u.name)) ?? { namespace: u.namespace, name: u.name, active: u.original, previous: {} };
    if (JSON.stringify(svc.active) === JSON.stringify(active)) return { ops: [], compares: [] };
    const next = { ...svc, active, previous: svc.active };
    return { ops: [{ put: key, value: JSON.stringify(next) }], compares: [{ key, modRevision: this.deps.catalog.modRevisions.get(key) ?? 0 }] };
  }

  /** This host's LB's per-color figures for the service (lb/gate.ts, its admin endpoint's /gate). */
  async localFigures(u: Upgrade): Promise<ColorFigures[]> {
    const url = `http://${this.deps.lbAdmin}/gate?service=${encodeURIComponent(serviceKey(u.namespace, u.name))}`;
    let res: Response;
    try {
      res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    } catch (err) {
      throw new Error(`no LB figures from host ${this.node}: ${url}: ${(err as Error).message} (is \`corral lb\` running, and --lb-admin its admin address?)`);
    }
    if (res.status !== 200) throw new Error(`no LB figures from host ${this.node}: ${url} answered ${res.status}`);
    const body = (await res.json()) as ColorFigures[];
    if (!Array.isArray(body)) throw new Error(`no LB figures from host ${this.node}: ${url} did not answer a list`);
    return body;
  }
}
