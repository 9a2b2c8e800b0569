// The embedded registry: one process owns it; its state lives in <state dir> as a snapshot plus a
// write-ahead log of the transactions after it. A transaction is applied to memory at once (so
// the next one's compares see it), appended to the log, and acknowledged after an fdatasync;
// transactions that arrive while a sync is in flight share the next one (group commit). When the
// log outgrows the snapshot it is compacted into a new snapshot, written a slice at a time.
import {
  closeSync, existsSync, fdatasync, fdatasyncSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, statSync,
  unlinkSync, write, writeSync,
} from 'node:fs';
import { open as openAsync, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { makeLogger, type Logger } from '../../api/log.js';
import type { Compare, KeyValue, KvBatch, KvEvent, RangeResult, Registry, RegistryHealth, TxnOp } from './registry.js';
import { RegistryError } from './registry.js';

interface Stored {
  /** The value as packValue keeps it in memory (unpackValue gives it back exactly). */
  packed: string;
  modRevision: number;
}

/**
 * What records repeat, most of their bytes: field names (and a few common values) of the agent's
 * JSON records. In memory each becomes one control character (\x01..\x1f, which JSON text never
 * holds unescaped): an endpoint record of ~460 bytes is kept in ~200. Longest first, so one that
 * starts with another wins. Disk and readers see the value as written.
 */
const TOKENS = [
  '","containerName":"', '],"proxyProtocol":"', ',"healthReason":"', '","namespace":"', '","httpHosts":[', '","healthCheck":', ',"containerId":"',
  'no health check', '],"httpPath":"', '","service":"', '","address":"', ',"lbBalance":"', '","draining":', '","drainMs":', ',"portName":"',
  '","tcpPort":', '","origin":"', '","weight":', ',"tlsSni":[', ',"healthy":', '","color":"', ',"deploy":"', '","node":"', ',"port":', '{"id":"',
  'default', 'manual', 'false', 'true', 'null', 'http',
];
const CODE = new Map(TOKENS.map((t, i) => [t, String.fromCharCode(i + 1)]));
const PACK = new RegExp(TOKENS.map((t) => t.replace(/[[\]{}()*+?.\\^$|]/g, '\\$&')).join('|'), 'g');
const UNPACK = /[\x01-\x1f]/g;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f]/;

/** A value as kept in memory: tokens replaced; a value that holds control characters itself is kept as is, after a \x00. */
export function packValue(v: string): string {
  if (CONTROL.test(v)) return `\x00${v}`;
  return v.replace(PACK, (t) => CODE.get(t)!);
}

export function unpackValue(p: string): string {
  if (p.charCodeAt(0) === 0) return p.slice(1);
  return p.replace(UNPACK, (c) => TOKENS[c.charCodeAt(0) - 1]!);
}

/** The single-file format of releases before the log; read once and migrated. */
interface LegacyFile {
  format: 'corral-registry/1';
  revision: number;
  kvs: Record<string, { value: string; modRevision: number }>;
}

/** The snapshot's first line; then one `[key, value, modRevision]` line per key. */
interface SnapshotHeader {
  format: 'corral-registry/2';
  revision: number;
  keys: number;
}

/** One log line after its checksum: the changes one transaction made. */
interface LogRecord {
  revision: number;
  ops: Array<{ put: string; value: string } | { delete: string }>;
}

interface Watcher {
  prefix: string;
  onBatch: (b: KvBatch) => void;
}

/** A transaction applied to memory and waiting for its log record to be synced (or a reply that waits for those before it). */
interface Pending {
  batch?: KvBatch;
  /** What the keys held before, to roll back if the write fails. */
  undo?: Array<[string, Stored | undefined]>;
  record: string;
  /** What a watcher threw when it was given this batch. */
  watcherError?: Error;
  resolve: () => void;
  reject: (err: Error) => void;
}

/** Where the registry says what it did at open (a migration, a torn record dropped) or could not do. */
export interface RegistryLog {
  info(fields: object, msg: string): void;
  warn(fields: object, msg: string): void;
}

export interface EmbeddedOptions {
  /** The log is compacted once it is larger than 4× the snapshot and this (default 8 MiB)... */
  logMinBytes?: number;
  /** ...or larger than this, whatever the snapshot (default 64 MiB). */
  logMaxBytes?: number;
  log?: RegistryLog | Logger;
}

/** How many past batches a late watcher can resume from. */
const HISTORY = 4096;
/** Keys serialized per slice of a snapshot written in the background (~10 ms of the event loop). */
const SNAPSHOT_SLICE = 2000;

export const SNAPSHOT_FILE = 'registry.snapshot';
export const LEGACY_FILE = 'registry.json';
const LOG_RE = /^registry-(\d{16})\.log$/;
export const logFileName = (after: number) => `registry-${String(after).padStart(16, '0')}.log`;

export class EmbeddedRegistry implements Registry {
  readonly kind = 'embedded';
  /** Syncs of the log and snapshots written since open (what group commit and compaction save). */
  readonly stats = { logSyncs: 0, compactions: 0 };
  private readonly dir: string;
  private readonly log: RegistryLog;
  private readonly logMinBytes: number;
  private readonly logMaxBytes: number;
  /** The latest revision in memory, including transactions not yet synced. */
  private revision = 0;
  /** The latest revision on disk: what watchers have seen and readers may see. */
  private durable = 0;
  private readonly kvs = new Map<string, Stored>();
  private readonly history: KvBatch[] = [];
  private readonly watchers = new Set<Watcher>();
  private queue: Pending[] = [];
  private flushing: Promise<void> | undefined;
  private compacting: Promise<void> | undefined;
  private logFd = -1;
  private logFile = '';
  private logBytes = 0;
  private snapshotBytes = 0;
  /** Set when a failed write could not be undone on disk: nothing more is accepted. */
  private broken = '';
  private brokenSinceMs = 0;
  private closed = false;

  constructor(stateDir: string, opts: EmbeddedOptions = {}) {
    this.dir = stateDir;
    this.logMinBytes = opts.logMinBytes ?? 8 * 2 ** 20;
    this.logMaxBytes = opts.logMaxBytes ?? 64 * 2 ** 20;
    this.log = opts.log ?? makeLogger('agent').child({ part: 'registry' });
  }

  async open(): Promise<void> {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const snapshot = join(this.dir, SNAPSHOT_FILE);
    const legacy = join(this.dir, LEGACY_FILE);
    if (existsSync(`${snapshot}.tmp`)) unlinkSync(`${snapshot}.tmp`); // a compaction cut short
    let migrate = false;
    if (existsSync(snapshot)) {
      this.snapshotBytes = this.loadSnapshot(snapshot);
      if (existsSync(legacy)) unlinkSync(legacy); // migrated; the process stopped before removing it
    } else if (existsSync(legacy)) {
      this.loadLegacy(legacy);
      migrate = true;
    }
    // Logs wholly covered by the snapshot (a compaction stopped before deleting them) go.
    const logs = readdirSync(this.dir).filter((f) => LOG_RE.test(f)).sort();
    const covered = (i: number) => i + 1 < logs.length && Number(LOG_RE.exec(logs[i + 1]!)![1]) <= this.revision;
    const live = logs.filter((_, i) => !covered(i));
    for (const f of logs) if (!live.includes(f)) unlinkSync(join(this.dir, f));
    live.forEach((f, i) => this.replay(f, i === live.length - 1));
    this.durable = this.revision;
    if (migrate) {
      this.snapshotBytes = writeSnapshotSync(this.dir, this.revision, this.kvs);
      unlinkSync(legacy);
      fsyncDir(this.dir);
      this.log.info({ file: legacy, revision: this.revision, keys: this.kvs.size, snapshot }, 'registry migrated to a snapshot and a write-ahead log; the old file is removed');
    }
    const last = live[live.length - 1];
    if (last && !migrate) {
      this.logFile = join(this.dir, last);
      this.logFd = openSync(this.logFile, 'r+');
      this.logBytes = statSync(this.logFile).size;
    } else {
      this.startLog(this.revision);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.watchers.clear();
    await this.flushing;
    await this.compacting;
    if (this.logFd >= 0) closeSync(this.logFd);
    this.logFd = -1;
  }

  async range(prefix: string): Promise<RangeResult> {
    for (;;) {
      const kvs: KeyValue[] = [];
      for (const [key, s] of this.kvs) {
        if (key.startsWith(prefix)) kvs.push({ key, value: unpackValue(s.packed), modRevision: s.modRevision });
      }
      kvs.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      const result = { revision: this.revision, kvs };
      // What was read includes transactions not synced yet: answer once they are.
      try {
        await this.afterPending();
        return result;
      } catch {
        // They were rolled back: read again.
      }
    }
  }

  async txn(ops: TxnOp[], compares: Compare[] = []): Promise<number | null> {
    if (this.closed) throw new RegistryError('the embedded registry is closed');
    if (this.broken) throw new RegistryError(this.broken);
    for (const c of compares) {
      if ((this.kvs.get(c.key)?.modRevision ?? 0) !== c.modRevision) {
        await this.afterPending();
        return null;
      }
    }
    const events: KvEvent[] = [];
    const next = this.revision + 1;
    const undo: Array<[string, Stored | undefined]> = [];
    for (const op of ops) {
      if ('put' in op) {
        const old = this.kvs.get(op.put);
        const packed = packValue(op.value);
        if (old && old.packed === packed) continue;
        undo.push([op.put, old]);
        this.kvs.set(op.put, { packed, modRevision: next });
        events.push({ type: 'put', key: op.put, value: op.value });
      } else {
        const old = this.kvs.get(op.delete);
        if (!old) continue;
        undo.push([op.delete, old]);
        this.kvs.delete(op.delete);
        events.push({ type: 'delete', key: op.delete });
      }
    }
    if (events.length === 0) {
      const rev = this.revision;
      await this.afterPending();
      return rev;
    }
    this.revision = next;
    const batch: KvBatch = { revision: next, events };
    await new Promise<void>((resolve, reject) => this.enqueue({ batch, undo, record: encodeRecord(batch), resolve, reject }));
    return next;
  }

  watch(prefix: string, fromRevision: number, onBatch: (b: KvBatch) => void, onReset: () => void): () => void {
    const w: Watcher = { prefix, onBatch };
    if (fromRevision < this.durable) {
      const oldest = this.history[0]?.revision ?? this.durable + 1;
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
    if (this.broken) return { connected: false, error: this.broken, sinceMs: this.brokenSinceMs };
    return { connected: true, error: '', sinceMs: Date.now() };
  }

  // ---- the log ----

  /** Resolves when everything accepted so far is on disk; rejects if it was rolled back. */
  private afterPending(): Promise<void> {
    if (!this.flushing) return Promise.resolve();
    return new Promise((resolve, reject) => this.enqueue({ record: '', resolve, reject }));
  }

  private enqueue(p: Pending): void {
    this.queue.push(p);
    this.flushing ??= this.flush();
  }

  /** Writes and syncs the queue, batch after batch, until it is empty (one sync per batch). */
  private async flush(): Promise<void> {
    // Transactions made before the event loop turns (continuations of the ones just answered
    // included) join the first batch.
    await new Promise((resolve) => setImmediate(resolve));
    while (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
      const text = batch.map((p) => p.record).join('');
      if (text) {
        const buf = Buffer.from(text);
        try {
          await writeAll(this.logFd, buf, this.logBytes);
          await datasync(this.logFd);
        } catch (err) {
          this.rollBack(batch, err as Error);
          continue;
        }
        this.stats.logSyncs++;
        this.logBytes += buf.length;
      }
      for (const p of batch) if (p.batch) p.watcherError = this.publish(p.batch);
      for (const p of batch) {
        if (p.watcherError) p.reject(p.watcherError);
        else p.resolve();
      }
      if (!this.compacting && !this.closed && this.logBytes > Math.min(this.logMaxBytes, Math.max(this.logMinBytes, 4 * this.snapshotBytes))) {
        this.compacting = this.compact().finally(() => (this.compacting = undefined));
      }
    }
    this.flushing = undefined;
  }

  /** Makes a synced batch visible: history, then every watcher; returns what a watcher threw. */
  private publish(batch: KvBatch): Error | undefined {
    this.durable = batch.revision;
    this.history.push(batch);
    if (this.history.length > HISTORY) this.history.shift();
    let thrown: Error | undefined;
    for (const w of this.watchers) {
      try {
        deliver(w, batch);
      } catch (err) {
        // Stored all the same; the transaction's caller hears of it, the other watchers and the
        // transactions after it are not held up.
        thrown ??= err as Error;
      }
    }
    return thrown;
  }

  /**
   * A failed write: this batch and everything queued behind it (computed on top of it) is undone
   * in memory and rejected; the log is cut back to its last synced record.
   */
  private rollBack(batch: Pending[], err: Error): void {
    const failed = [...batch, ...this.queue];
    this.queue = [];
    for (let i = failed.length - 1; i >= 0; i--) {
      const undo = failed[i]!.undo ?? [];
      for (let j = undo.length - 1; j >= 0; j--) {
        const [k, v] = undo[j]!;
        if (v) this.kvs.set(k, v);
        else this.kvs.delete(k);
      }
    }
    this.revision = this.durable;
    let what = 'nothing was stored; try again';
    try {
      ftruncateSync(this.logFd, this.logBytes);
      fdatasyncSync(this.logFd);
    } catch (err2) {
      this.brokenSinceMs = Date.now();
      this.broken = `the registry log ${this.logFile} could not be written (${err.message}) nor cut back to its last good record (${(err2 as Error).message}); free or fix the disk under ${this.dir}, then restart corral`;
      what = 'no more writes are accepted until corral restarts';
    }
    const e = new RegistryError(`cannot write the registry log ${this.logFile}: ${err.message}; ${what}`);
    for (const p of failed) p.reject(e);
  }

  /** A new, empty log for the transactions after `after`, made durable before anything is acknowledged from it. */
  private startLog(after: number): void {
    const file = join(this.dir, logFileName(after));
    const fd = openSync(file, 'w', 0o600);
    fsyncDir(this.dir);
    if (this.logFd >= 0) closeSync(this.logFd);
    this.logFd = fd;
    this.logFile = file;
    this.logBytes = 0;
  }

  /**
   * Starts a new log, then writes the state as of its start into a new snapshot in slices, so
   * the event loop (and group commit into the new log) keeps running meanwhile. Called between
   * two batches: nothing is in flight, the queue holds transactions not yet written.
   */
  private async compact(): Promise<void> {
    const revision = this.durable;
    const state = new Map(this.kvs);
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const undo = this.queue[i]!.undo ?? [];
      for (let j = undo.length - 1; j >= 0; j--) {
        const [k, v] = undo[j]!;
        if (v) state.set(k, v);
        else state.delete(k);
      }
    }
    try {
      this.startLog(revision);
      this.snapshotBytes = await writeSnapshot(this.dir, revision, state);
      for (const f of readdirSync(this.dir)) {
        const m = LOG_RE.exec(f);
        if (m && Number(m[1]) < revision) await unlink(join(this.dir, f));
      }
      await fsyncDirAsync(this.dir);
      this.stats.compactions++;
    } catch (err) {
      // The logs stay, so nothing is lost; the next compaction writes a snapshot of everything.
      this.log.warn({ dir: this.dir, err: (err as Error).message }, 'cannot write a registry snapshot; the log keeps growing until one can be written (check the disk)');
    }
  }

  // ---- recovery ----

  private loadSnapshot(file: string): number {
    const buf = readFileSync(file);
    const damaged = (why: string) =>
      new RegistryError(`registry snapshot ${file} is damaged (${why}); restore the state dir ${this.dir} from a backup, or move it away to start empty`);
    let off = 0;
    const line = () => {
      const nl = buf.indexOf(10, off);
      if (nl < 0) return undefined;
      const s = buf.toString('utf8', off, nl);
      off = nl + 1;
      return s;
    };
    let header: SnapshotHeader;
    try {
      header = JSON.parse(line() ?? '') as SnapshotHeader;
    } catch (err) {
      throw damaged(`its header is not JSON: ${(err as Error).message}`);
    }
    if (header.format !== 'corral-registry/2' || typeof header.revision !== 'number') throw damaged('its header is not a corral-registry/2 header');
    for (let i = 0; i < header.keys; i++) {
      const l = line();
      if (l === undefined) throw damaged(`it ends after ${i} of ${header.keys} keys`);
      let kv: [string, string, number];
      try {
        kv = JSON.parse(l) as [string, string, number];
      } catch (err) {
        throw damaged(`key ${i + 1} is not JSON: ${(err as Error).message}`);
      }
      this.kvs.set(kv[0], { packed: packValue(kv[1]), modRevision: kv[2] });
    }
    if (off !== buf.length) throw damaged(`it has more than the ${header.keys} keys its header counts`);
    this.revision = header.revision;
    return buf.length;
  }

  private loadLegacy(file: string): void {
    let data: LegacyFile;
    try {
      data = JSON.parse(readFileSync(file, 'utf8')) as LegacyFile;
    } catch (err) {
      throw new RegistryError(`registry file ${file} is not valid JSON (${(err as Error).message}); restore it from a backup or move it away to start empty`);
    }
    if (data.format !== 'corral-registry/1' || typeof data.revision !== 'number') {
      throw new RegistryError(`registry file ${file} has an unknown format; move it away to start empty`);
    }
    this.revision = data.revision;
    for (const [k, v] of Object.entries(data.kvs)) this.kvs.set(k, { packed: packValue(v.value), modRevision: v.modRevision });
  }

  /** Applies one log file's records after the current revision; the last file may end in a torn record, which is cut off. */
  private replay(name: string, isLast: boolean): void {
    const file = join(this.dir, name);
    const after = Number(LOG_RE.exec(name)![1]);
    if (after > this.revision) {
      throw new RegistryError(`registry log ${file} starts after revision ${after} but the state before it ends at revision ${this.revision}: a log file is missing; restore the state dir ${this.dir} from a backup`);
    }
    const buf = readFileSync(file);
    let off = 0;
    while (off < buf.length) {
      const nl = buf.indexOf(10, off);
      const rec = nl < 0 ? undefined : decodeRecord(buf, off, nl);
      if (!rec) {
        if (isLast && !hasRecordAfter(buf, nl < 0 ? buf.length : nl + 1)) {
          this.log.warn({ file, offset: off, bytes: buf.length - off, revision: this.revision }, 'registry log ends in a torn record (a crash during a write, never acknowledged); dropped it');
          const fd = openSync(file, 'r+');
          try {
            ftruncateSync(fd, off);
            fsyncSync(fd);
          } finally {
            closeSync(fd);
          }
          return;
        }
        throw new RegistryError(
          `registry log ${file} is damaged at byte ${off} (after revision ${this.revision}) and records follow it, so it is not a torn write: ` +
            `restore the state dir ${this.dir} from a backup, or keep the state up to revision ${this.revision} with \`truncate -s ${off} ${file}\`` +
            (isLast ? '' : ' and removing the logs after it') + ' and restart',
        );
      }
      off = nl + 1;
      if (rec.revision <= this.revision) continue; // already in the snapshot
      if (rec.revision !== this.revision + 1) {
        throw new RegistryError(`registry log ${file} jumps from revision ${this.revision} to ${rec.revision} at byte ${off}: records are missing; restore the state dir ${this.dir} from a backup`);
      }
      for (const op of rec.ops) {
        if ('put' in op) this.kvs.set(op.put, { packed: packValue(op.value), modRevision: rec.revision });
        else this.kvs.delete(op.delete);
      }
      this.revision = rec.revision;
    }
  }
}

function deliver(w: Watcher, b: KvBatch): void {
  const events = b.events.filter((e) => e.key.startsWith(w.prefix));
  if (events.length > 0) w.onBatch({ revision: b.revision, events });
}

/** `<crc32 of the JSON, 8 hex digits> <JSON>\n`: a torn or damaged record never passes for a whole one. */
function encodeRecord(b: KvBatch): string {
  const rec: LogRecord = { revision: b.revision, ops: b.events.map((e) => (e.type === 'put' ? { put: e.key, value: e.value } : { delete: e.key })) };
  const json = JSON.stringify(rec);
  return `${crc32(json).toString(16).padStart(8, '0')} ${json}\n`;
}

function decodeRecord(buf: Buffer, start: number, end: number): LogRecord | undefined {
  if (end - start < 10 || buf[start + 8] !== 0x20) return undefined;
  const body = buf.subarray(start + 9, end);
  if (crc32(body) !== parseInt(buf.toString('latin1', start, start + 8), 16)) return undefined;
  try {
    const rec = JSON.parse(body.toString('utf8')) as LogRecord;
    return typeof rec.revision === 'number' && Array.isArray(rec.ops) ? rec : undefined;
  } catch {
    return undefined;
  }
}

function hasRecordAfter(buf: Buffer, off: number): boolean {
  while (off < buf.length) {
    const nl = buf.indexOf(10, off);
    if (nl < 0) return false;
    if (decodeRecord(buf, off, nl)) return true;
    off = nl + 1;
  }
  return false;
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

async function fsyncDirAsync(dir: string): Promise<void> {
  const fh = await openAsync(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** pwrite(2) of all of buf at position, off the event loop (a short write continues where it stopped). */
function writeAll(fd: number, buf: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (off: number) => {
      if (off === buf.length) return resolve();
      write(fd, buf, off, buf.length - off, position + off, (err, n) => (err ? reject(err) : step(off + n)));
    };
    step(0);
  });
}

function datasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

function snapshotHeader(revision: number, keys: number): string {
  const h: SnapshotHeader = { format: 'corral-registry/2', revision, keys };
  return JSON.stringify(h) + '\n';
}

/** The whole snapshot at once (migration, at open). */
function writeSnapshotSync(dir: string, revision: number, kvs: Map<string, Stored>): number {
  const file = join(dir, SNAPSHOT_FILE);
  const fd = openSync(`${file}.tmp`, 'w', 0o600);
  let bytes = 0;
  try {
    let text = snapshotHeader(revision, kvs.size);
    for (const [k, s] of kvs) text += JSON.stringify([k, unpackValue(s.packed), s.modRevision]) + '\n';
    bytes = writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(`${file}.tmp`, file);
  fsyncDir(dir);
  return bytes;
}

/** temp file written a slice at a time, synced, renamed over the snapshot, directory synced. */
async function writeSnapshot(dir: string, revision: number, kvs: Map<string, Stored>): Promise<number> {
  const file = join(dir, SNAPSHOT_FILE);
  const fh: FileHandle = await openAsync(`${file}.tmp`, 'w', 0o600);
  let bytes = 0;
  try {
    const put = async (text: string) => {
      const buf = Buffer.from(text);
      await fh.writeFile(buf);
      bytes += buf.length;
    };
    await put(snapshotHeader(revision, kvs.size));
    let text = '';
    let n = 0;
    for (const [k, s] of kvs) {
      text += JSON.stringify([k, unpackValue(s.packed), s.modRevision]) + '\n';
      if (++n % SNAPSHOT_SLICE === 0) {
        await put(text);
        text = '';
      }
    }
    if (text) await put(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(`${file}.tmp`, file);
  await fsyncDirAsync(dir);
  return bytes;
}
