// The embedded registry: one process owns it, state lives in <state dir>/registry.json,
// rewritten atomically (temp file, fsync, rename) before a transaction is acknowledged.
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Compare, KeyValue, KvBatch, KvEvent, RangeResult, Registry, RegistryHealth, TxnOp } from './registry.js';
import { RegistryError } from './registry.js';

interface Stored {
  value: string;
  modRevision: number;
}

interface FileFormat {
  format: 'corral-registry/1';
  revision: number;
  kvs: Record<string, Stored>;
}

interface Watcher {
  prefix: string;
  onBatch: (b: KvBatch) => void;
}

/** How many past batches a late watcher can resume from. */
const HISTORY = 4096;

export class EmbeddedRegistry implements Registry {
  readonly kind = 'embedded';
  private readonly file: string;
  private revision = 0;
  private readonly kvs = new Map<string, Stored>();
  private readonly history: KvBatch[] = [];
  private readonly watchers = new Set<Watcher>();

  constructor(stateDir: string) {
    this.file = join(stateDir, 'registry.json');
  }

  async open(): Promise<void> {
    mkdirSync(dirname(this.file), { recursive: true, mode: 0o700 });
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    let data: FileFormat;
    try {
      data = JSON.parse(text) as FileFormat;
    } catch (err) {
      throw new RegistryError(`registry file ${this.file} is not valid JSON (${(err as Error).message}); restore it from a backup or move it away to start empty`);
    }
    if (data.format !== 'corral-registry/1' || typeof data.revision !== 'number') {
      throw new RegistryError(`registry file ${this.file} has an unknown format; move it away to start empty`);
    }
    this.revision = data.revision;
    for (const [k, v] of Object.entries(data.kvs)) this.kvs.set(k, v);
  }

  async close(): Promise<void> {
    this.watchers.clear();
  }

  async range(prefix: string): Promise<RangeResult> {
    const kvs: KeyValue[] = [];
    for (const [key, s] of this.kvs) {
      if (key.startsWith(prefix)) kvs.push({ key, value: s.value, modRevision: s.modRevision });
    }
    kvs.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return { revision: this.revision, kvs };
  }

  async txn(ops: TxnOp[], compares: Compare[] = []): Promise<number | null> {
    for (const c of compares) {
      if ((this.kvs.get(c.key)?.modRevision ?? 0) !== c.modRevision) return null;
    }
    const events: KvEvent[] = [];
    const next = this.revision + 1;
    const undo: Array<[string, Stored | undefined]> = [];
    for (const op of ops) {
      if ('put' in op) {
        const old = this.kvs.get(op.put);
        if (old && old.value === op.value) continue;
        undo.push([op.put, old]);
        this.kvs.set(op.put, { value: op.value, modRevision: next });
        events.push({ type: 'put', key: op.put, value: op.value });
      } else {
        const old = this.kvs.get(op.delete);
        if (!old) continue;
        undo.push([op.delete, old]);
        this.kvs.delete(op.delete);
        events.push({ type: 'delete', key: op.delete });
      }
    }
    if (events.length === 0) return this.revision;
    try {
      this.persist(next);
    } catch (err) {
      for (const [k, v] of undo.reverse()) {
        if (v) this.kvs.set(k, v);
        else this.kvs.delete(k);
      }
      throw new RegistryError(`cannot write the registry to ${this.file}: ${(err as Error).message}`);
    }
    this.revision = next;
    const batch: KvBatch = { revision: next, events };
    this.history.push(batch);
    if (this.history.length > HISTORY) this.history.shift();
    for (const w of this.watchers) deliver(w, batch);
    return next;
  }

  watch(prefix: string, fromRevision: number, onBatch: (b: KvBatch) => void, onReset: () => void): () => void {
    const w: Watcher = { prefix, onBatch };
    if (fromRevision < this.revision) {
      const oldest = this.history[0]?.revision ?? this.revision + 1;
      if (fromRevision + 1 < oldest) {
        queueMicrotask(onReset);
        return () => {};
      }
      for (const b of this.history) if (b.revision > fromRevision) deliver(w, b);
    }
    this.watchers.add(w);
    return () => {
      this.watchers.delete(w);
    };
  }

  health(): RegistryHealth {
    return { connected: true, error: '', sinceMs: Date.now() };
  }

  private persist(revision: number): void {
    const data: FileFormat = { format: 'corral-registry/1', revision, kvs: Object.fromEntries(this.kvs) };
    const tmp = `${this.file}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, JSON.stringify(data));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.file);
  }
}

function deliver(w: Watcher, b: KvBatch): void {
  const events = b.events.filter((e) => e.key.startsWith(w.prefix));
  if (events.length > 0) w.onBatch({ revision: b.revision, events });
}
