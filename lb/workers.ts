// More than one core for HTTP inside one `corral lb` process (--lb-threads): each worker thread
// runs a whole serving stack of its own (stack.ts) on its own SO_REUSEPORT listening sockets
// (listeners.ts), so nothing is shared on the hot path. The main thread keeps the agent watch
// and the admin endpoint, forwards every watch event through the pool (api/workers.ts) and acks
// a revision only once every thread has applied it.
import { LB_FIELDS } from '../api/compact.js';
import { makeLogger, type Logger } from '../api/log.js';
import type { LbOptions } from '../api/options.js';
import type { ColorFigures } from '../api/types.js';
import { serveWorker, WorkerPool, type JsonMetrics, type SpawnWorker, type WorkerThread } from '../api/workers.js';
import { closeFds, listenFd } from './listeners.js';
import { LbThread, type ThreadStats } from './stack.js';

const KIND = 'corral-lb-worker';

interface Setup {
  opts: LbOptions;
  logLevel: string;
  httpFd: number;
  httpsFd: number; // -1: no HTTPS
}

/** What the main thread asks a worker. */
interface LbThreadAnswers {
  stats(): ThreadStats;
  /** Its registry as prom-client JSON, for AggregatorRegistry.aggregate. */
  metrics(): Promise<JsonMetrics>;
  /** One service's gate figures per color (gate.ts), "<ns>/<name>". */
  gate(service: string): ColorFigures[];
}

export type LbWorkers = WorkerPool<Setup, LbThreadAnswers>;

/**
 * Starts one worker per descriptor pair (threads 1..n); resolves once each listens, or rejects
 * when one cannot start (descriptors no thread was started with are closed).
 */
export function startLbWorkers(opts: LbOptions, logLevel: string, http: number[], https: number[], log: Logger, spawn?: SpawnWorker): Promise<LbWorkers> {
  const setups = http.map((httpFd, i): Setup => ({ opts, logLevel, httpFd, httpsFd: https[i] ?? -1 }));
  return WorkerPool.start<Setup, LbThreadAnswers>({
    name: 'LB', kind: KIND, script: new URL(import.meta.url), setups, log, spawn, fields: LB_FIELDS,
    onAbandoned: (rest) => closeFds(rest.flatMap((s) => (s.httpsFd >= 0 ? [s.httpFd, s.httpsFd] : [s.httpFd]))),
  });
}

/** A worker thread's life: its own stack on its own listening sockets, fed by the main thread. */
async function lbThread(setup: Setup, thread: number): Promise<WorkerThread<LbThreadAnswers>> {
  const log = makeLogger('lb', setup.logLevel).child({ component: 'lb', thread });
  const t = new LbThread(thread, setup.opts, log, false);
  await listenFd(t.proxy.server, setup.httpFd);
  if (setup.httpsFd >= 0) {
    const https = t.https(log);
    if (https) await listenFd(https, setup.httpsFd);
  }
  return {
    apply: (ev) => t.apply(ev),
    answers: {
      stats: () => t.stats(),
      metrics: () => t.metrics.registry.getMetricsAsJSON(),
      gate: (service) => t.gate.figures(service),
    },
    stop: (graceMs) => t.close(graceMs),
  };
}

serveWorker(KIND, lbThread);
