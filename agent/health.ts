// Active health checks of this node's endpoints: HTTP GET (2xx/3xx passes) or TCP connect,
// every intervalMs; `rise` passes in a row make an endpoint healthy, `fall` failures unhealthy.
// Results go to the sink only when the verdict changes; one probe at a time per endpoint.
import { connect } from 'node:net';
import { Agent, request } from 'undici';
import type { Logger } from '../api/log.js';
import type { Endpoint, HealthCheck } from '../api/types.js';
import type { EndpointSink } from './sink.js';

interface Probe {
  ep: Endpoint;
  key: string;
  check: HealthCheck;
  url: string;
  timer: NodeJS.Timeout | undefined;
  abort: AbortController | undefined;
  passes: number;
  fails: number;
  /** The last verdict sent to the sink; undefined until the first one. */
  verdict: boolean | undefined;
  reason: string;
  stopped: boolean;
}

interface Result { ok: boolean; detail: string }

export class HealthChecker {
  private readonly probes = new Map<string, Probe>();
  // No keep-alive: a probe must open a fresh connection, as a new client would.
  private http = new Agent({ pipelining: 0 });

  /** `onResult`: told of every probe's result (metrics). */
  constructor(private readonly sink: EndpointSink, private readonly log: Logger, private readonly onResult?: (ok: boolean) => void) {}

  /** Start (or keep) checking one endpoint; calling it again with the same check keeps its state. */
  track(ep: Endpoint): void {
    const check = ep.healthCheck;
    if (!check || (!check.tcp && !check.path)) {
      this.untrack(ep.id);
      return;
    }
    const key = `${ep.address}|${ep.port}|${check.tcp}|${check.path}|${check.intervalMs}|${check.timeoutMs}|${check.rise}|${check.fall}`;
    const old = this.probes.get(ep.id);
    if (old && old.key === key) {
      old.ep = ep;
      // The record was replaced (re-upsert) with another health than our verdict: restate it.
      if (old.verdict !== undefined && ep.healthy !== old.verdict) this.report(old);
      return;
    }
    if (old) this.untrack(ep.id);
    const host = ep.address.includes(':') ? `[${ep.address}]` : ep.address;
    const probe: Probe = {
      ep, key, check, url: `http://${host}:${ep.port}${check.path || '/'}`,
      timer: undefined, abort: undefined, passes: 0, fails: 0, verdict: undefined, reason: '', stopped: false,
    };
    this.probes.set(ep.id, probe);
    this.schedule(probe, 0);
  }

  untrack(id: string): void {
    const probe = this.probes.get(id);
    if (!probe) return;
    this.probes.delete(id);
    probe.stopped = true;
    if (probe.timer) clearTimeout(probe.timer);
    probe.abort?.abort();
  }

  /** Ids being checked, for status pages and tests. */
  tracked(): string[] {
    return [...this.probes.keys()];
  }

  /** Stop every probe. The checker stays usable: the agent calls this before reloading the registry. */
  stop(): void {
    for (const id of [...this.probes.keys()]) this.untrack(id);
    // A fresh client for later probes: a closed one fails every request with UND_ERR_DESTROYED.
    const old = this.http;
    this.http = new Agent({ pipelining: 0 });
    void old.close().catch(() => undefined);
  }

  private schedule(probe: Probe, delayMs: number): void {
    probe.timer = setTimeout(() => void this.runProbe(probe), delayMs);
    probe.timer.unref();
  }

  private async runProbe(probe: Probe): Promise<void> {
    probe.timer = undefined;
    if (probe.stopped) return;
    const started = Date.now();
    const abort = new AbortController();
    probe.abort = abort;
    const result = probe.check.tcp ? await this.tcp(probe, abort.signal) : await this.httpGet(probe, abort.signal);
    probe.abort = undefined;
    if (probe.stopped) return;
    this.onResult?.(result.ok);
    const { check } = probe;
    if (result.ok) {
      probe.fails = 0;
      probe.passes++;
      if (probe.passes >= check.rise && probe.verdict !== true) {
        probe.verdict = true;
        probe.reason = `${result.detail} (${probe.passes} in a row)`;
        this.report(probe);
      }
    } else {
      probe.passes = 0;
      probe.fails++;
      if (probe.fails >= check.fall && probe.verdict !== false) {
        probe.verdict = false;
        probe.reason = `${result.detail} (${probe.fails} in a row)`;
        this.report(probe);
      }
    }
    this.schedule(probe, Math.max(0, check.intervalMs - (Date.now() - started)));
  }

  private report(probe: Probe): void {
    const healthy = probe.verdict === true;
    this.log.info({ endpoint: probe.ep.id, service: probe.ep.service, address: `${probe.ep.address}:${probe.ep.port}`, healthy, reason: probe.reason }, healthy ? 'endpoint healthy' : 'endpoint unhealthy');
    this.sink.setHealth(probe.ep.id, healthy, probe.reason).catch((err: Error) => {
      this.log.warn({ endpoint: probe.ep.id, err: err.message }, 'could not record a health check result');
    });
  }

  private async httpGet(probe: Probe, signal: AbortSignal): Promise<Result> {
    const { check } = probe;
    const what = `HTTP GET ${check.path || '/'}`;
    const timer = setTimeout(() => probe.abort?.abort(), check.timeoutMs);
    try {
      const res = await request(probe.url, {
        method: 'GET', dispatcher: this.http, signal,
        headersTimeout: check.timeoutMs, bodyTimeout: check.timeoutMs,
        headers: { 'user-agent': 'corral-health/1', connection: 'close' },
      });
      await res.body.dump().catch(() => undefined);
      const ok = res.statusCode >= 200 && res.statusCode < 400;
      return { ok, detail: `${what}: ${res.statusCode}` };
    } catch (err) {
      if (signal.aborted) return { ok: false, detail: `${what}: no answer within ${check.timeoutMs}ms` };
      return { ok: false, detail: `${what}: ${errorText(err)}` };
    } finally {
      clearTimeout(timer);
    }
  }

  private tcp(probe: Probe, signal: AbortSignal): Promise<Result> {
    const { check, ep } = probe;
    return new Promise((resolve) => {
      const socket = connect({ host: ep.address, port: ep.port });
      let done = false;
      const finish = (r: Result): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        socket.destroy();
        resolve(r);
      };
      const onAbort = (): void => finish({ ok: false, detail: 'TCP connect: check stopped' });
      const timer = setTimeout(() => finish({ ok: false, detail: `TCP connect: no answer within ${check.timeoutMs}ms` }), check.timeoutMs);
      signal.addEventListener('abort', onAbort);
      socket.once('connect', () => finish({ ok: true, detail: 'TCP connect: ok' }));
      socket.once('error', (err) => finish({ ok: false, detail: `TCP connect: ${errorText(err)}` }));
    });
  }
}

function errorText(err: unknown): string {
  const e = err as { code?: string; cause?: { code?: string; message?: string }; message?: string };
  return e.cause?.code ?? e.code ?? e.cause?.message ?? e.message ?? String(err);
}
