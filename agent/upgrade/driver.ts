// The driver of an upgrade: the agent that started it (or the one a --finish or --rollback was
// asked of) moves the record from phase to phase once every host has reported its part. Its
// whole state is the record, so an agent restarted mid-way carries on from the phase it wrote;
// each traffic change is one registry revision together with the record that says so.
import type { Logger } from '../../api/log.js';
import { serviceKey, UPGRADE_ENDED, type Upgrade, type UpgradeReport } from '../../api/types.js';
import { addFigures } from '../../lb/gate.js';
import { judge, window } from './gate.js';
import type { Upgrades } from './upgrades.js';

const POLL_MS = 50;
/** How long hosts get to check an image or stop, start or remove containers. */
const HOST_ACTION_MS = 60_000;
/** How long after a step's time the driver waits for the LB figures of every host. */
const FIGURES_SLACK_MS = 10_000;

/** Early failure within a step, from this host's LB: looked at this often, once this many requests and 5xx are in. */
const EARLY_CHECK_MS = 500;
const EARLY_MIN_REQUESTS = 10;
const EARLY_MIN_ERRORS = 5;

type Wait = 'ok' | 'timeout' | 'moved';

export class Driver {
  private readonly running = new Set<string>();
  private stopped = false;

  constructor(private readonly up: Upgrades, private readonly log: Logger) {}

  stop(): void {
    this.stopped = true;
  }

  /** Drives the upgrade of "<ns>/<name>" until it ends or another agent takes it over. */
  run(k: string): void {
    if (this.running.has(k) || this.stopped) return;
    this.running.add(k);
    this.loop(k).catch((err: Error) => this.log.error({ upgrade: k, err: err.message }, 'upgrade driver failed; it resumes when the agent restarts'))
      .finally(() => this.running.delete(k));
  }

  private async loop(k: string): Promise<void> {
    while (!this.stopped) {
      const held = this.up.held(k);
      if (!held || held.u.driver !== this.up.node || UPGRADE_ENDED.has(held.u.phase)) return;
      if (!(await this.advance(held.u, held.mod))) await sleep(POLL_MS);
    }
  }

  /** Does one phase's waiting and writes the next phase; false when the record changed under it. */
  private async advance(u: Upgrade, mod: number): Promise<boolean> {
    switch (u.phase) {
      case 'checking': {
        const w = await this.until(u, () => this.hostsDone(u, u.hosts), HOST_ACTION_MS);
        if (w === 'moved') return false;
        const problems = w === 'timeout' ? [`no answer from ${this.silent(u, u.hosts).join(', ')} within ${HOST_ACTION_MS / 1000} s`] : this.errors(u, u.hosts);
        if (problems.length) return this.up.write({ ...u, phase: 'failed', reason: problems.join('; ') }, mod);
        return this.up.write({ ...u, phase: 'cloning' }, mod);
      }
      case 'cloning': {
        const w = await this.until(u, () => this.hostsDone(u, u.hosts), u.readyTimeoutMs);
        if (w === 'moved') return false;
        const problems = w === 'timeout' ? [`no clones reported by ${this.silent(u, u.hosts).join(', ')} within ${u.readyTimeoutMs / 1000} s`] : this.errors(u, u.hosts);
        if (problems.length) return this.rollBack(u, mod, problems.join('; '));
        const clones = this.clones(u);
        const h = await this.until(u, () => this.healthy(u, clones.map((c) => c.cloneId), u.toColor) === '', u.readyTimeoutMs);
        if (h === 'moved') return false;
        if (h === 'timeout') return this.rollBack(u, mod, `the clones were not healthy within ${u.readyTimeoutMs / 1000} s (${this.healthy(u, clones.map((c) => c.cloneId), u.toColor)}); they got no traffic`);
        return this.step(u, mod, 0);
      }
      case 'stepping': {
        const hosts = [...this.up.deps.catalog.hosts.keys()];
        // Meanwhile this host's own LB is watched: a new color failing plainly ends the step at once.
        const t0 = Date.now();
        const baseline = await this.up.localFigures(u).catch(() => undefined);
        let early = '';
        let earlyGate = '';
        let checked = t0;
        const clones = this.clones(u).map((c) => c.cloneId);
        const w = await this.until(u, () => early !== '' || this.figuresIn(u, hosts), u.stepMs + FIGURES_SLACK_MS, async () => {
          // A clone that stops or turns unhealthy under traffic fails the step like a 5xx would.
          const lost = this.healthy(u, clones, u.toColor);
          if (lost) {
            early = `a clone failed at step ${u.step + 1}/${u.steps.length} (${u.toColor} ${u.steps[u.step]}%): ${lost}`;
            return;
          }
          if (!baseline || Date.now() - checked < EARLY_CHECK_MS) return;
          checked = Date.now();
          const now = await this.up.localFigures(u).catch(() => undefined);
          if (!now) return;
          const figures = window(baseline, now);
          const to = figures.find((f) => f.color === u.toColor);
          if (!to || to.requests < EARLY_MIN_REQUESTS || to.errors < EARLY_MIN_ERRORS) return;
          const v = judge(u, u.step, figures, []);
          if (!v.pass) earlyGate = v.figures;
          if (!v.pass) early = `${v.reason} (seen early by ${this.up.node}'s LB, ${((Date.now() - t0) / 1000).toFixed(1)} s into the step)`;
        });
        if (w === 'moved') return false;
        if (early) return this.rollBack({ ...u, gate: earlyGate }, mod, early);
        const reports = this.reportsOf(u).filter((r) => r.phase === 'stepping' && r.step === u.step);
        const missing = hosts.filter((h) => !reports.some((r) => r.node === h && r.done && !r.error));
        const verdict = judge(u, u.step, addFigures(reports.map((r) => r.figures)), missing);
        this.log.info({ service: u.name, namespace: u.namespace, step: u.step + 1, pass: verdict.pass, figures: verdict.figures }, 'upgrade gate');
        if (!verdict.pass) return this.rollBack({ ...u, gate: verdict.figures }, mod, verdict.reason);
        if (u.step + 1 < u.steps.length) return this.step({ ...u, gate: verdict.figures }, mod, u.step + 1);
        return this.up.write({ ...u, phase: 'completing', gate: verdict.figures }, mod);
      }
      case 'completing':
      case 'rolling-back':
      case 'finishing': {
        const w = await this.until(u, () => this.hostsDone(u, u.hosts), HOST_ACTION_MS);
        if (w === 'moved') return false;
        const problems = w === 'timeout' ? [`no answer from ${this.silent(u, u.hosts).join(', ')} within ${HOST_ACTION_MS / 1000} s`] : this.errors(u, u.hosts);
        const next = u.phase === 'completing' ? 'completed' : u.phase === 'rolling-back' ? 'rolled-back' : 'finished';
        const reason = problems.length ? [u.reason, ...problems].filter(Boolean).join('; ') : u.reason;
        return this.up.write({ ...u, phase: next, reason }, mod);
      }
      case 'reverting': {
        const w = await this.until(u, () => this.hostsDone(u, u.hosts), HOST_ACTION_MS);
        if (w === 'moved') return false;
        const problems = w === 'timeout' ? [`no answer from ${this.silent(u, u.hosts).join(', ')}`] : this.errors(u, u.hosts);
        const old = this.clones(u).map((c) => c.oldId);
        const h = problems.length ? 'timeout' : await this.until(u, () => this.healthy(u, old, u.fromColor) === '', u.readyTimeoutMs);
        if (h === 'moved') return false;
        if (h === 'timeout') {
          const why = problems.length ? problems.join('; ') : this.healthy(u, old, u.fromColor);
          return this.up.write({ ...u, phase: 'completed', reason: `rollback failed, traffic stays on ${u.toColor}: ${u.fromColor}'s containers are not healthy again (${why})` }, mod);
        }
        const { ops, compares } = this.up.restoreColors(u);
        return this.up.write({ ...u, phase: 'rolling-back' }, mod, ops, compares);
      }
      default:
        return false;
    }
  }

  /** Traffic to step i's split and the record that says so, in one revision. */
  private step(u: Upgrade, mod: number, i: number): Promise<boolean> {
    const pct = u.steps[i]!;
    const active = pct >= 100 ? { [u.toColor]: 100 } : { [u.fromColor]: 100 - pct, [u.toColor]: pct };
    const { ops, compares } = this.up.setColors(u, active);
    return this.up.write({ ...u, phase: 'stepping', step: i, stepStartedMs: Date.now() }, mod, ops, compares);
  }

  /** Traffic back to the colors before the upgrade, and the record, in one revision; hosts then stop the clones. */
  private rollBack(u: Upgrade, mod: number, reason: string): Promise<boolean> {
    this.log.warn({ service: u.name, namespace: u.namespace, reason }, 'upgrade rolled back');
    const { ops, compares } = this.up.restoreColors(u);
    return this.up.write({ ...u, phase: 'rolling-back', reason }, mod, ops, compares);
  }

  private reportsOf(u: Upgrade): UpgradeReport[] {
    return [...(this.up.reports.get(serviceKey(u.namespace, u.name))?.values() ?? [])].filter((r) => r.id === u.id);
  }

  private answered(u: Upgrade, node: string): UpgradeReport | undefined {
    const r = this.up.reports.get(serviceKey(u.namespace, u.name))?.get(node);
    return r && r.id === u.id && r.phase === u.phase && (r.done || r.error) ? r : undefined;
  }

  private hostsDone(u: Upgrade, hosts: string[]): boolean {
    return hosts.every((h) => this.answered(u, h));
  }

  private silent(u: Upgrade, hosts: string[]): string[] {
    return hosts.filter((h) => !this.answered(u, h));
  }

  private errors(u: Upgrade, hosts: string[]): string[] {
    return hosts.map((h) => this.answered(u, h)?.error ?? '').filter(Boolean);
  }

  private clones(u: Upgrade): UpgradeReport['clones'] {
    return u.hosts.flatMap((h) => this.up.reports.get(serviceKey(u.namespace, u.name))?.get(h)?.clones ?? []);
  }

  private figuresIn(u: Upgrade, hosts: string[]): boolean {
    const reports = this.reportsOf(u);
    return hosts.every((h) => reports.some((r) => r.node === h && r.phase === 'stepping' && r.step === u.step && (r.done || r.error)));
  }

  /** '' when every container is a healthy endpoint of the color, else what is not, in short. */
  private healthy(u: Upgrade, containerIds: string[], color: string): string {
    const eps = this.up.deps.catalog.endpointsOf(u.namespace, u.name).filter((e) => e.color === color && !e.draining);
    const not: string[] = [];
    for (const id of containerIds) {
      const ep = eps.find((e) => e.containerId === id);
      if (!ep) not.push(`${id.slice(0, 12)}: not running`);
      else if (!ep.healthy) not.push(`${ep.containerName || id.slice(0, 12)}: ${ep.healthReason || 'unhealthy'}`);
    }
    return not.join(', ');
  }

  private async until(u: Upgrade, ok: () => boolean, ms: number, tick?: () => Promise<void>): Promise<Wait> {
    const deadline = Date.now() + ms;
    for (;;) {
      const now = this.up.held(serviceKey(u.namespace, u.name))?.u;
      if (this.stopped || !now || now.id !== u.id || now.phase !== u.phase || now.step !== u.step || now.driver !== this.up.node) return 'moved';
      if (ok()) return 'ok';
      if (Date.now() > deadline) return 'timeout';
      await sleep(POLL_MS);
      await tick?.();
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

