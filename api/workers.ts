// Worker threads for a daemon that serves from several threads of one process (DNS's UDP
// threads, the LB's serving threads). The main thread keeps the agent watch and the admin
// endpoint; the pool starts the threads (each reports ready once it serves), hands every watch
// event to every thread and resolves only when all have applied it (the agent is acked then, so
// `corral status` never shows a revision one thread does not serve yet), asks every thread a
// question with a timeout (status, metrics: mergedMetrics adds theirs up), and stops them. A
// component's module says what its threads do with serveWorker() and starts them with
// WorkerPool.start() from the same module.
// In api/ because dns/ and lb/ both run on it, and components share code only through api/.
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { isMainThread, parentPort, Worker, workerData, type WorkerOptions } from 'node:worker_threads';
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue, type Registry } from 'prom-client';
import { compactEvent, Interner, slimEvent, type EndpointFields } from './compact.js';
import type { Logger } from './log.js';
import type { WatchEvent } from './types.js';

/** A thread's prom-client registry as JSON (what crosses to the main thread at scrape time). */
export type JsonMetrics = Array<MetricObjectWithValues<MetricValue<string>>>;

/** How long a question may take before the thread is skipped. */
const ASK_TIMEOUT_MS = 2_000;
/** How long a stop may take beyond its grace time. */
const STOP_SLACK_MS = 5_000;
/** Every pool's threads answer this one themselves (WorkerPool.heaps). */
const HEAP_QUESTION = '@heap';

/** node started with --expose-gc (not the flag collect() sets later for its own use). */
const EXPOSED_GC = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)].some((a) => a === '--expose-gc' || a === '--expose_gc');

/** This thread's V8 heap; live bytes only when node runs with --expose-gc (a measurement: collect first). */
export function heapNow(): { usedBytes: number; totalBytes: number } {
  if (EXPOSED_GC) (globalThis as { gc?: () => void }).gc?.();
  const h = getHeapStatistics();
  return { usedBytes: h.used_heap_size, totalBytes: h.total_heap_size };
}

/** Quiet time after a burst of record changes before its garbage is collected. */
const IDLE_COLLECT_MS = 10_000;
/** Changes (endpoints and other records put or deleted) that make a burst. */
const BURST_CHANGES = 1_000;

let fullGc: (() => void) | null | undefined;

/**
 * One full collection in this thread, once the watch stream has been quiet for IDLE_COLLECT_MS
 * after at least BURST_CHANGES changes: applying a burst (a snapshot, thousands of registrations)
 * leaves each thread's heap several times its live size, and V8's memory reducer gives it back
 * minutes later or, on a process that keeps a little activity going, not at all (`corral up`
 * stayed at 690 MB for minutes after 50,000 registrations with ~260 MB live). The pause is the
 * collection's (tens of ms with 50,000 endpoints), once per burst.
 */
class IdleCollector {
  private changes = 0;
  private timer: NodeJS.Timeout | undefined;

  note(ev: WatchEvent): void {
    this.changes += ev.endpoints.length + ev.deletedEndpoints.length + ev.services.length + ev.deletedServices.length +
      (ev.allocations?.length ?? 0) + (ev.deletedAllocations?.length ?? 0) + ev.hosts.length + ev.deletedHosts.length;
    if (this.changes < BURST_CHANGES) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.changes = 0;
      collect();
    }, IDLE_COLLECT_MS);
    this.timer.unref();
  }
}

function collect(): void {
  if (fullGc === undefined) {
    try {
      // The gc function of a context made after --expose-gc; without it, nothing is collected early.
      setFlagsFromString('--expose-gc');
      fullGc = runInNewContext('gc') as () => void;
    } catch {
      fullGc = null;
    }
  }
  fullGc?.();
}

/** This thread's collector (module state: one per thread, shared by every pool on it). */
const idle = new IdleCollector();

/** What a component's threads answer, by name: functions of at most one argument. */
export type Questions<Q> = { [K in keyof Q]: (arg: never) => unknown };
type Arg<F> = F extends (...args: infer A) => unknown ? A : never;
type Reply<F> = F extends (...args: never[]) => infer R ? Awaited<R> : never;

/** One worker thread's side: what serveWorker's start() returns. */
export interface WorkerThread<Q> {
  /** Applies a watch event (in order; the pool is told once this returns). */
  apply(ev: WatchEvent): void;
  answers: Q;
  /** Stops serving, letting work in flight finish for up to graceMs. */
  stop(graceMs: number): Promise<void>;
}

/** Starts one thread (default `new Worker`); tests pass one that runs the TypeScript source. */
export type SpawnWorker = (script: URL, options: WorkerOptions) => Worker;

export interface PoolOptions<Setup> {
  /** Whose threads, for log lines: "DNS", "LB". */
  name: string;
  /** The module that calls serveWorker(kind, …) at its top level (its own import.meta.url). */
  script: URL;
  kind: string;
  /** One per worker thread, cloned into it; threads are numbered 1..n (0 is the main thread). */
  setups: Setup[];
  log: Logger;
  spawn?: SpawnWorker;
  /** When start fails: the setups no thread was started with (what they hold is the caller's to free). */
  onAbandoned?(setups: Setup[]): void;
  /** The endpoint fields the threads read: only these cross to them (api/compact.ts). Default: all. */
  fields?: EndpointFields;
}

interface Envelope<Setup> {
  kind: string;
  thread: number;
  setup: Setup;
  /** The endpoint fields the pool sends (PoolOptions.fields). */
  fields?: EndpointFields;
}

type ToWorker =
  | { t: 'event'; seq: number; ev: WatchEvent }
  | { t: 'ask'; id: number; name: string; arg: unknown }
  | { t: 'stop'; id: number; graceMs: number };

type FromWorker =
  | { t: 'ready' }
  | { t: 'applied'; seq: number }
  | { t: 'answer'; id: number; answer?: unknown; error?: string };

interface Thread {
  worker: Worker;
  thread: number;
  /** Sequence number of the last watch event it applied. */
  applied: number;
  alive: boolean;
}

const spawnWorker: SpawnWorker = (script, options) => new Worker(script, options);

/** The main thread's side. */
export class WorkerPool<Setup, Q extends Questions<Q>> {
  private readonly threads: Thread[] = [];
  private readonly asking = new Map<number, (m: FromWorker | null) => void>();
  private readonly waiting: Array<{ seq: number; resolve: () => void }> = [];
  private nextId = 1;
  private seq = 0;
  /** Sequence number of the first snapshot, once one has been sent. */
  private snapshotSeq = 0;

  private constructor(private readonly name: string, private readonly log: Logger, private readonly fields: EndpointFields | undefined) {}

  /** Starts one thread per setup, one after the other; resolves once each is ready, or rejects when one cannot start. */
  static async start<Setup, Q extends Questions<Q>>(o: PoolOptions<Setup>): Promise<WorkerPool<Setup, Q>> {
    const pool = new WorkerPool<Setup, Q>(o.name, o.log, o.fields);
    const spawn = o.spawn ?? spawnWorker;
    let i = 0;
    try {
      for (; i < o.setups.length; i++) {
        const thread = i + 1;
        const worker = spawn(o.script, { workerData: { kind: o.kind, thread, setup: o.setups[i]!, fields: o.fields } satisfies Envelope<Setup> });
        const state: Thread = { worker, thread, applied: 0, alive: true };
        pool.threads.push(state);
        await new Promise<void>((resolve, reject) => {
          const onMessage = (m: FromWorker) => {
            if (m.t !== 'ready') return;
            worker.off('message', onMessage);
            worker.off('error', reject);
            worker.off('exit', onExit);
            resolve();
          };
          const onExit = (code: number) => reject(new Error(`${o.name} worker thread ${thread} exited (${code}) while starting`));
          worker.on('message', onMessage);
          worker.once('error', reject);
          worker.once('exit', onExit);
        });
        worker.on('message', (m: FromWorker) => pool.onMessage(state, m));
        worker.on('error', (err) => o.log.error({ err: err.message, thread }, `${o.name} worker thread failed; the other threads keep serving`));
        worker.once('exit', () => {
          state.alive = false;
          pool.settle();
        });
        // The daemon's own servers keep the process alive; a thread never should on its own.
        worker.unref();
      }
    } catch (err) {
      o.onAbandoned?.(o.setups.slice(i + 1));
      await Promise.all(pool.threads.map((s) => s.worker.terminate().catch(() => 0)));
      throw err;
    }
    return pool;
  }

  get size(): number {
    return this.threads.length;
  }

  /** Sends an event to every thread; resolves when every live thread has applied it. */
  apply(ev: WatchEvent): Promise<void> {
    const seq = ++this.seq;
    if (ev.snapshot && this.snapshotSeq === 0) this.snapshotSeq = seq;
    idle.note(ev);
    // Fields the threads never read are not copied to each of them.
    const sent = this.fields ? slimEvent(ev, this.fields) : ev;
    for (const s of this.threads) if (s.alive) s.worker.postMessage({ t: 'event', seq, ev: sent } satisfies ToWorker);
    return new Promise<void>((resolve) => {
      this.waiting.push({ seq, resolve });
      this.settle();
    });
  }

  /** Every live thread has applied a snapshot. */
  get ready(): boolean {
    return this.snapshotSeq > 0 && this.threads.every((s) => !s.alive || s.applied >= this.snapshotSeq);
  }

  /** Asks every live thread; the answers of those that answered in time, in thread order. */
  ask<K extends keyof Q & string>(name: K, ...arg: Arg<Q[K]>): Promise<Array<Reply<Q[K]>>> {
    return this.askEach(name, () => arg[0] as Arg<Q[K]>[0]);
  }

  /** Like ask, with an argument of its own for each thread (made only for live ones). */
  async askEach<K extends keyof Q & string>(name: K, argOf: (thread: number) => Arg<Q[K]>[0]): Promise<Array<Reply<Q[K]>>> {
    const replies = await Promise.all(this.live().map((s) => this.send(s, { t: 'ask', id: this.nextId++, name, arg: argOf(s.thread) }, ASK_TIMEOUT_MS)));
    return replies.flatMap((m) => (m?.t === 'answer' && m.error === undefined ? [m.answer as Reply<Q[K]>] : []));
  }

  /** Each live thread's V8 heap: used and committed bytes, in thread order. */
  async heaps(): Promise<Array<{ thread: number; usedBytes: number; totalBytes: number }>> {
    const live = this.live();
    const replies = await Promise.all(live.map((s) => this.send(s, { t: 'ask', id: this.nextId++, name: HEAP_QUESTION, arg: undefined }, ASK_TIMEOUT_MS)));
    return replies.flatMap((m, i) => (m?.t === 'answer' && m.error === undefined ? [{ thread: live[i]!.thread, ...(m.answer as { usedBytes: number; totalBytes: number }) }] : []));
  }

  /** Each thread stops (finishing its work for up to graceMs), then the threads are ended. */
  async close(graceMs = 0): Promise<void> {
    await Promise.all(this.live().map((s) => this.send(s, { t: 'stop', id: this.nextId++, graceMs }, graceMs + STOP_SLACK_MS)));
    await Promise.all(this.threads.map((s) => s.worker.terminate().catch(() => 0)));
    for (const s of this.threads) s.alive = false;
    for (const w of this.waiting.splice(0)) w.resolve();
  }

  private live(): Thread[] {
    return this.threads.filter((s) => s.alive);
  }

  private onMessage(s: Thread, m: FromWorker): void {
    if (m.t === 'applied') {
      s.applied = m.seq;
      this.settle();
      return;
    }
    if (m.t !== 'answer') return;
    if (m.error !== undefined) this.log.warn({ err: m.error, thread: s.thread }, `${this.name} worker thread could not answer`);
    const done = this.asking.get(m.id);
    if (done) done(m);
  }

  /** Resolves the waits that every live thread has caught up with (events apply in order). */
  private settle(): void {
    const low = Math.min(...this.threads.map((s) => (s.alive ? s.applied : Infinity)));
    while (this.waiting.length > 0 && this.waiting[0]!.seq <= low) this.waiting.shift()!.resolve();
  }

  private send(s: Thread, msg: Extract<ToWorker, { id: number }>, timeoutMs: number): Promise<FromWorker | null> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.log.warn({ question: msg.t === 'ask' ? msg.name : msg.t, thread: s.thread }, `${this.name} worker thread did not answer within ${timeoutMs} ms`);
        done(null);
      }, timeoutMs);
      const onExit = () => done(null);
      const done = (m: FromWorker | null) => {
        clearTimeout(timer);
        s.worker.off('exit', onExit);
        this.asking.delete(msg.id);
        resolve(m);
      };
      s.worker.once('exit', onExit);
      this.asking.set(msg.id, done);
      s.worker.postMessage(msg);
    });
  }
}

/**
 * In a worker thread a WorkerPool started for `kind`: builds the thread with start() and serves
 * the pool's messages. Anywhere else (the main thread, another component's threads) it does nothing.
 */
export function serveWorker<Setup, Q extends Questions<Q>>(kind: string, start: (setup: Setup, thread: number) => WorkerThread<Q> | Promise<WorkerThread<Q>>): void {
  const envelope = workerData as Envelope<Setup> | null;
  if (isMainThread || envelope?.kind !== kind) return;
  const port = parentPort!;
  // The thread's copy of each record is kept in one shape with shared strings (api/compact.ts).
  const intern = new Interner();
  // A start that throws ends the thread with an 'error' the pool's start() rejects with.
  void Promise.resolve(start(envelope.setup, envelope.thread)).then((t) => {
    const answers = t.answers as unknown as Record<string, (arg: unknown) => unknown>;
    port.on('message', (m: ToWorker) => {
      switch (m.t) {
        case 'event':
          idle.note(m.ev);
          t.apply(compactEvent(m.ev, intern, envelope.fields));
          port.postMessage({ t: 'applied', seq: m.seq } satisfies FromWorker);
          break;
        case 'ask':
          void Promise.resolve()
            .then(() => (m.name === HEAP_QUESTION ? heapNow() : answers[m.name]!(m.arg)))
            .then(
              (answer) => port.postMessage({ t: 'answer', id: m.id, answer } satisfies FromWorker),
              (err: Error) => port.postMessage({ t: 'answer', id: m.id, error: String(err?.message ?? err) } satisfies FromWorker),
            );
          break;
        case 'stop':
          void t.stop(m.graceMs).then(() => {
            port.postMessage({ t: 'answer', id: m.id } satisfies FromWorker);
            // Nothing is left to serve: let the thread's event loop end.
            port.close();
          });
          break;
      }
    });
    port.postMessage({ t: 'ready' } satisfies FromWorker);
  });
}

/**
 * /metrics over every thread, fetched at scrape time: each metric merges by its `aggregator`
 * (counters and histograms add up). Metrics only this thread has (Node's process metrics, the
 * main thread's own gauges) are kept as they are: 'omit' would drop process_start_time_seconds.
 */
export function mergedMetrics(own: Registry, theirs: () => Promise<JsonMetrics[]>): Pick<Registry, 'metrics' | 'contentType'> {
  return {
    contentType: own.contentType,
    async metrics() {
      const [mine, others] = await Promise.all([own.getMetricsAsJSON(), theirs()]);
      const shared = new Set(others.flatMap((t) => t.map((m) => m.name)));
      for (const m of mine) if (!shared.has(m.name)) (m as { aggregator: string }).aggregator = 'first';
      return AggregatorRegistry.aggregate([mine, ...others]).metrics();
    },
  };
}
