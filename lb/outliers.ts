// Passive health (outlier detection, like Envoy's and HAProxy's `observe layer7`): this LB takes
// an origin out of its own balancing after consecutive connection failures or 5xx answers, and
// puts it back when one probe of its own passes. Local to this LB process: the registry's shared
// health (the agent's active checks) is not touched, so one LB's bad path does not take an
// endpoint away from every host.
import { connect } from 'node:net';
import type { Logger } from 'pino';
import { Agent, request } from 'undici';
import type { Endpoint } from '../api/types.js';
import type { PeerState } from './balancer.js';

export interface OutlierOptions {
  /** Connection failures (refused, reset, timed out) in a row that eject an origin. */
  connectFailures: number;
  /** 5xx answers in a row that eject an origin. */
  serverErrors: number;
  /** Probe period while ejected. */
  probeIntervalMs: number;
  probeTimeoutMs: number;
}

export const OUTLIER_DEFAULTS: OutlierOptions = { connectFailures: 3, serverErrors: 5, probeIntervalMs: 1_000, probeTimeoutMs: 1_000 };

export type EjectionReason = 'connect' | '5xx';

/** Told on every ejection and return, for metrics. */
export interface OutlierObserver {
  ejected(ep: Endpoint, reason: EjectionReason): void;
  returned(ep: Endpoint): void;
}

class OriginHealth implements PeerState {
  active = 0;
  ejected = false;
  connectFails = 0;
  serverErrors = 0;
  timer: NodeJS.Timeout | undefined = undefined;
  reason: EjectionReason = 'connect';
  constructor(
    readonly origin: string,
    public endpoint: Endpoint,
  ) {}
}

export class PassiveHealth {
  private readonly origins = new Map<string, OriginHealth>();
  private readonly http = new Agent({ pipelining: 0 });
  private closed = false;

  constructor(
    private readonly opts: OutlierOptions = OUTLIER_DEFAULTS,
    private readonly observer?: OutlierObserver,
    private readonly log?: Logger,
  ) {}

  /** The state of an origin (a PeerStateOf for the balancers). */
  readonly stateOf = (origin: string, endpoint: Endpoint): PeerState => {
    let s = this.origins.get(origin);
    if (s === undefined) this.origins.set(origin, (s = new OriginHealth(origin, endpoint)));
    else s.endpoint = endpoint;
    return s;
  };

  get ejectedCount(): number {
    let n = 0;
    for (const s of this.origins.values()) if (s.ejected) n++;
    return n;
  }

  /** An upstream answered with `code` (its headers arrived). */
  answered(state: PeerState, code: number): void {
    const s = state as OriginHealth;
    s.connectFails = 0;
    if (code >= 500 && code !== 501 && code !== 505) {
      if (++s.serverErrors >= this.opts.serverErrors) this.eject(s, '5xx');
    } else if (s.serverErrors !== 0) {
      s.serverErrors = 0;
    }
  }

  /** A connection to the upstream failed (refused, reset, closed, timed out) before an answer. */
  connectFailed(state: PeerState): void {
    const s = state as OriginHealth;
    if (++s.connectFails >= this.opts.connectFailures) this.eject(s, 'connect');
  }

  /** The origin left the registry. */
  drop(origin: string): void {
    const s = this.origins.get(origin);
    if (!s) return;
    if (s.timer) clearTimeout(s.timer);
    this.origins.delete(origin);
  }

  close(): void {
    this.closed = true;
    for (const s of this.origins.values()) if (s.timer) clearTimeout(s.timer);
    this.origins.clear();
    void this.http.close().catch(() => undefined);
  }

  private eject(s: OriginHealth, reason: EjectionReason): void {
    if (s.ejected || this.closed) return;
    s.ejected = true;
    s.reason = reason;
    const ep = s.endpoint;
    this.log?.warn(
      { service: `${ep.namespace}/${ep.service}`, upstream: s.origin, reason, connectFailures: s.connectFails, serverErrors: s.serverErrors },
      'endpoint ejected by this load balancer; probing it until it answers',
    );
    this.observer?.ejected(ep, reason);
    this.schedule(s);
  }

  private schedule(s: OriginHealth): void {
    s.timer = setTimeout(() => void this.probe(s), this.opts.probeIntervalMs);
    s.timer.unref();
  }

  private async probe(s: OriginHealth): Promise<void> {
    s.timer = undefined;
    if (this.closed || this.origins.get(s.origin) !== s) return;
    const ok = await this.check(s);
    if (this.closed || this.origins.get(s.origin) !== s) return;
    if (!ok) {
      this.schedule(s);
      return;
    }
    s.ejected = false;
    s.connectFails = 0;
    s.serverErrors = 0;
    this.log?.info({ service: `${s.endpoint.namespace}/${s.endpoint.service}`, upstream: s.origin }, 'ejected endpoint answers again; back in balancing');
    this.observer?.returned(s.endpoint);
  }

  /** After 5xx: an HTTP GET of the endpoint's health path (or /) must not be 5xx. After connect failures: a TCP connect. */
  private async check(s: OriginHealth): Promise<boolean> {
    const ep = s.endpoint;
    const timeout = this.opts.probeTimeoutMs;
    if (s.reason === '5xx' || (ep.healthCheck?.path && !ep.healthCheck.tcp)) {
      try {
        const res = await request(`${s.origin}${ep.healthCheck?.path || '/'}`, {
          dispatcher: this.http, headersTimeout: timeout, bodyTimeout: timeout,
          headers: { 'user-agent': 'corral-lb-probe/1', connection: 'close' },
          signal: AbortSignal.timeout(timeout),
        });
        await res.body.dump().catch(() => undefined);
        return res.statusCode < 500;
      } catch {
        return false;
      }
    }
    return new Promise<boolean>((resolve) => {
      const socket = connect({ host: ep.address, port: ep.port });
      const done = (ok: boolean) => {
        clearTimeout(timer);
        socket.destroy();
        resolve(ok);
      };
      const timer = setTimeout(() => done(false), timeout);
      socket.once('connect', () => done(true));
      socket.once('error', () => done(false));
    });
  }
}
