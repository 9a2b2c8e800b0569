// Worker threads for daemons run inside the test process (runDns, runLb with threads). Node cannot
// load the TypeScript source in a worker by itself, so each thread is started through tsx. The
// main thread's messages to the threads can be delayed or held, to show what waits for every
// thread (the ack of a revision) without a test hook in the daemons.
import { Worker } from 'node:worker_threads';
import type { SpawnWorker } from '../../api/workers.js';

export interface SourceThreads {
  /** For runDns/runLb's spawnWorker. */
  spawn: SpawnWorker;
  /** From now on, messages to the threads wait until release() (in order). */
  hold(): void;
  release(): void;
}

/**
 * Threads from the TypeScript source. With lagMs, every message from the main thread (watch
 * events among them) reaches a thread that much later, in order: a thread that applies late.
 */
export function sourceThreads(o: { lagMs?: number } = {}): SourceThreads {
  const lagMs = o.lagMs ?? 0;
  let held = false;
  const queued: Array<() => void> = [];
  const later = (deliver: () => void) => (lagMs > 0 ? setTimeout(deliver, lagMs) : deliver());
  return {
    spawn(script, options) {
      const boot = `import('tsx/esm/api').then(({ tsImport }) => tsImport(${JSON.stringify(script.href)}, ${JSON.stringify(import.meta.url)}));`;
      const worker = new Worker(boot, { ...options, eval: true });
      const post = worker.postMessage.bind(worker);
      worker.postMessage = (message: unknown) => {
        const deliver = () => post(message);
        if (held) queued.push(deliver);
        else later(deliver);
      };
      return worker;
    },
    hold() {
      held = true;
    },
    release() {
      held = false;
      for (const deliver of queued.splice(0)) later(deliver);
    },
  };
}
