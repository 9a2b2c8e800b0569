// A registry that times its calls (range, txn) for the agent's metrics and passes everything
// else through: the agent, its mesh and its color changes all call the registry through it.
import type { Logger } from '../../api/log.js';
import type { Compare, KvBatch, RangeResult, Registry, RegistryHealth, TxnOp } from './registry.js';

/** Told of every call: which, whether it succeeded, and how long it took. */
export type RegistryCallObserver = (op: 'range' | 'txn', ok: boolean, seconds: number) => void;

export class MeasuredRegistry implements Registry {
  readonly maintain?: (node: string, log: Logger) => void;
  readonly keysAt?: (prefix: string, revision: number) => Promise<Set<string> | null>;

  constructor(private readonly inner: Registry, private readonly observe: RegistryCallObserver) {
    if (inner.maintain) this.maintain = (node, log) => inner.maintain!(node, log);
    if (inner.keysAt) this.keysAt = (prefix, revision) => this.timed('range', inner.keysAt!(prefix, revision));
  }

  get kind(): string {
    return this.inner.kind;
  }

  open(): Promise<void> {
    return this.inner.open();
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  range(prefix: string): Promise<RangeResult> {
    return this.timed('range', this.inner.range(prefix));
  }

  txn(ops: TxnOp[], compares?: Compare[]): Promise<number | null> {
    return this.timed('txn', this.inner.txn(ops, compares));
  }

  watch(prefix: string, fromRevision: number, onBatch: (b: KvBatch) => void, onReset: () => void): () => void {
    return this.inner.watch(prefix, fromRevision, onBatch, onReset);
  }

  health(): RegistryHealth {
    return this.inner.health();
  }

  private async timed<T>(op: 'range' | 'txn', call: Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      const r = await call;
      this.observe(op, true, (performance.now() - started) / 1000);
      return r;
    } catch (err) {
      this.observe(op, false, (performance.now() - started) / 1000);
      throw err;
    }
  }
}
