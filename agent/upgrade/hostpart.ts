// What each host does for an upgrade, phase by phase, and reports in its own record
// (/corral/upgrade-reports/<node>/<ns>/<name>): check the image, clone its containers of the old
// color, count its LB's figures over each canary step, stop the old containers or the clones,
// remove or restart the old ones. Each action is safe to run again (an agent restarted mid-way).
import type { Logger } from '../../api/log.js';
import { serviceKey, type ColorFigures, type Upgrade, type UpgradeReport } from '../../api/types.js';
import { window } from './gate.js';
import type { Upgrades } from './upgrades.js';

/** Grace for `docker stop` of a container whose endpoint is gone from the registry already. */
const STOP_GRACE_S = 2;
/** Phases in which a host with containers of the service acts. */
const ACTING = new Set(['checking', 'cloning', 'completing', 'rolling-back', 'finishing', 'reverting']);

export class HostPart {
  /** "<id>|<phase>|<step>" this process has acted on. */
  private readonly acted = new Set<string>();
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Per service, the action under way (actions run one after another). */
  private readonly queue = new Map<string, Promise<void>>();
  private stopped = false;

  constructor(private readonly up: Upgrades, private readonly log: Logger) {}

  stop(): void {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }

  private mine(u: Upgrade): UpgradeReport | undefined {
    const r = this.up.reports.get(serviceKey(u.namespace, u.name))?.get(this.up.node);
    return r && r.id === u.id ? r : undefined;
  }

  review(u: Upgrade): void {
    if (this.stopped) return;
    const cur = this.mine(u);
    const tag = `${u.id}|${u.phase}|${u.phase === 'stepping' ? u.step : ''}`;
    if (this.acted.has(tag)) return;
    if (u.phase === 'stepping') {
      if (cur?.phase === 'stepping' && cur.step === u.step && cur.done) return;
      this.acted.add(tag);
      void this.measure(u);
      return;
    }
    if (!ACTING.has(u.phase) || !u.hosts.includes(this.up.node)) return;
    if (cur?.phase === u.phase && (cur.done || cur.error)) return;
    this.acted.add(tag);
    // One action at a time per service: a rollback asked while this host still clones stops the clones it made.
    const k = serviceKey(u.namespace, u.name);
    const next = (this.queue.get(k) ?? Promise.resolve()).then(() => this.act(u)).catch((err: Error) => this.log.warn({ service: u.name, namespace: u.namespace, phase: u.phase, err: err.message }, 'upgrade: reporting this host\'s part failed'));
    this.queue.set(k, next);
    void next.then(() => { if (this.queue.get(k) === next) this.queue.delete(k); });
  }

  private base(u: Upgrade): UpgradeReport {
    const cur = this.mine(u);
    return { node: this.up.node, namespace: u.namespace, name: u.name, id: u.id, phase: u.phase, done: false, error: '', clones: cur?.clones ?? [], step: cur?.step ?? -1, figures: cur?.figures ?? [] };
  }

  private async act(u: Upgrade): Promise<void> {
    const r = this.base(u);
    const cloner = this.up.cloner;
    try {
      if (!cloner) throw new Error(`host ${this.up.node} runs no Docker (--docker-socket ""): it cannot clone, stop or start containers`);
      switch (u.phase) {
        case 'checking': {
          r.error = await cloner.imageProblem(u.image, this.up.node);
          break;
        }
        case 'cloning': {
          const old = this.up.deps.catalog.endpointsOf(u.namespace, u.name)
            .filter((e) => e.node === this.up.node && e.color === u.fromColor && e.origin === 'docker' && !e.draining && e.containerId)
            .sort((a, b) => a.containerName.localeCompare(b.containerName));
          // All at once, like `docker run`s in parallel: the first step waits for the slowest clone.
          r.clones = await Promise.all(old.map(async (ep) => {
            const c = await cloner.clone(ep.containerId, u.image, u.fromColor, u.toColor);
            this.log.info({ service: u.name, from: ep.containerName, clone: c.cloneName, image: u.image }, 'upgrade: container cloned');
            return c;
          }));
          break;
        }
        case 'completing':
          await Promise.all(r.clones.map((c) => cloner.stop(c.oldId, this.grace(u, c.oldId))));
          break;
        case 'rolling-back':
          await Promise.all(r.clones.map((c) => cloner.stop(c.cloneId, this.grace(u, c.cloneId))));
          break;
        case 'finishing':
          await Promise.all(r.clones.map((c) => cloner.remove(c.oldId)));
          break;
        case 'reverting':
          await Promise.all(r.clones.map((c) => cloner.start(c.oldId)));
          break;
      }
      r.done = r.error === '';
    } catch (err) {
      r.error = `host ${this.up.node}: ${(err as Error).message}`;
    }
    if (r.error) this.log.warn({ service: u.name, namespace: u.namespace, phase: u.phase, err: r.error }, 'upgrade: this host\'s part failed');
    await this.up.report(r);
  }

  /**
   * `docker stop`'s grace for a container that gets no new requests (its color's share went to 0
   * a revision ago): its endpoint's drain time (label corral.drain), in which in-flight requests finish.
   */
  private grace(u: Upgrade, containerId: string): number {
    const ep = this.up.deps.catalog.endpointsOf(u.namespace, u.name).find((e) => e.containerId === containerId);
    return ep ? Math.max(1, Math.ceil(ep.drainMs / 1000)) : STOP_GRACE_S;
  }

  /** Counts this host's LB figures over one step and reports them. */
  private async measure(u: Upgrade): Promise<void> {
    let before: ColorFigures[] | undefined;
    let error = '';
    try {
      before = await this.up.localFigures(u);
    } catch (err) {
      error = (err as Error).message;
    }
    const t = setTimeout(() => {
      this.timers.delete(t);
      void (async () => {
        let figures: ColorFigures[] = [];
        if (before) {
          try {
            figures = window(before, await this.up.localFigures(u));
          } catch (err) {
            error = (err as Error).message;
          }
        }
        // The upgrade moved on meanwhile (rolled back by request): this host's report says that phase now.
        const now = this.up.held(serviceKey(u.namespace, u.name))?.u;
        if (this.stopped || !now || now.id !== u.id || now.phase !== 'stepping' || now.step !== u.step) return;
        await this.up.report({ ...this.base(u), phase: 'stepping', step: u.step, figures, done: true, error });
      })().catch((err: Error) => this.log.warn({ service: u.name, err: err.message }, 'upgrade: reporting the LB figures failed'));
    }, u.stepMs);
    this.timers.add(t);
  }
}
