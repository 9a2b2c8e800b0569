// The agent's side of the watch stream: DNS, LB and the CLI each get a snapshot or a resume, then
// every event cut to the record kinds they serve (xDS-style), and acknowledge what they applied.
// A short history lets a consumer that reconnects resume from its last revision instead of
// taking the whole registry again.
import type { Logger } from '../api/log.js';
import type { ComponentStatus, RecordKindName, WatchEvent, WatchRequest } from '../api/types.js';
import { emptyEvent, RECORD_KINDS } from '../api/types.js';
import type { WatchHandlers, WatchStream } from '../api/watch.js';

/** Recent events kept for consumers that reconnect. */
const HISTORY = 4096;

interface Component { applied: number; watchers: number; kinds: readonly RecordKindName[] }

export class Watchers {
  /** Events after floor, in order. */
  private readonly history: WatchEvent[] = [];
  private floor = 0;
  /** The newest revision that carried records of each kind. */
  private readonly lastRevisionOf = new Map<RecordKindName, number>();
  private readonly subscribers = new Set<(ev: WatchEvent) => void>();
  private readonly components = new Map<string, Component>();
  /** The revision of the last event sent: the catalog may be ahead by events still being batched (agent.ts BATCH_MS). */
  private sent = 0;

  /**
   * @param current the catalog: its snapshot and revision.
   * @param resume for a consumer older than the history (this agent restarted, it did not): one
   *   delta from its revision to the current one, or null when that cannot be known.
   */
  constructor(
    private readonly current: { snapshot(): WatchEvent },
    private readonly resume?: (fromRevision: number) => Promise<WatchEvent | null>,
  ) {}

  /** A fresh snapshot was loaded at revision: history before it is gone. */
  reset(revision: number): void {
    this.history.length = 0;
    this.floor = revision;
    this.sent = revision;
    for (const k of RECORD_KINDS) this.lastRevisionOf.set(k, revision);
  }

  broadcast(ev: WatchEvent): void {
    this.sent = ev.revision;
    if (!ev.snapshot) {
      this.history.push(ev);
      if (this.history.length > HISTORY) this.floor = this.history.shift()!.revision;
      for (const k of RECORD_KINDS) if (carries(ev, k)) this.lastRevisionOf.set(k, ev.revision);
    }
    for (const fn of this.subscribers) fn(ev);
  }

  /**
   * A watch: the first events (a snapshot, or the deltas after fromRevision when the history still
   * holds them, closed by one at the current revision), then every later event, each cut to the
   * asked kinds; events with nothing of those kinds are not sent.
   */
  watch(req: WatchRequest, send: (ev: WatchEvent) => void): () => void {
    const kinds = kindsOf(req.kinds);
    const from = req.fromRevision ?? 0;
    const now = this.sent;
    const fn = (ev: WatchEvent) => {
      const cut = only(ev, kinds);
      if (cut) send(cut);
    };
    if (from > 0 && from >= this.floor && from <= now) {
      let last = 0;
      for (const ev of this.history) {
        if (ev.revision <= from) continue;
        fn(ev);
        last = ev.revision;
      }
      if (last !== now) send(emptyEvent(now, false));
    } else if (from > 0 && from < this.floor && this.resume) {
      return this.resumed(from, fn, send, kinds);
    } else {
      send(only(this.current.snapshot(), kinds)!);
    }
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  /**
   * A consumer older than the history: events that arrive while its delta is worked out wait, then
   * follow it (those the delta already covers are dropped); a snapshot when no delta can be made.
   */
  private resumed(from: number, fn: (ev: WatchEvent) => void, send: (ev: WatchEvent) => void, kinds: readonly RecordKindName[]): () => void {
    const waiting: WatchEvent[] = [];
    let live = false;
    let closed = false;
    const relay = (ev: WatchEvent) => (live ? fn(ev) : waiting.push(ev));
    this.subscribers.add(relay);
    const start = (delta: WatchEvent | null) => {
      if (closed) return;
      const first = delta ?? this.current.snapshot();
      send(only(first, kinds) ?? emptyEvent(first.revision, false));
      for (const ev of waiting) if (ev.revision > first.revision) fn(ev);
      waiting.length = 0;
      live = true;
    };
    this.resume!(from).then(start, () => start(null));
    return () => {
      closed = true;
      this.subscribers.delete(relay);
    };
  }

  /**
   * A watch for a consumer in this process (`corral up`'s DNS and LB): the catalog's own event
   * objects, no encoding, acknowledged as the socket's consumers acknowledge. Consumers must not
   * change what they receive: the catalog and every other consumer hold the same objects.
   */
  local(component: string, handlers: WatchHandlers, log?: Logger): WatchStream {
    let unsubscribe: (() => void) | undefined;
    const stream = {
      revision: 0,
      connected: false,
      start: (): void => {
        if (unsubscribe) return;
        this.watching(component, 1, handlers.kinds);
        stream.connected = true;
        handlers.onConnected?.(true);
        unsubscribe = this.watch({ component, kinds: handlers.kinds ?? [], fromRevision: stream.revision }, (ev) => {
          let applied: unknown;
          try {
            applied = handlers.onEvent(ev);
          } catch (err) {
            // The agent goes on; the consumer shows the revision it is stuck at in `corral status`.
            log?.error({ err, component, revision: ev.revision }, 'a watch event could not be applied');
            return;
          }
          stream.revision = ev.revision;
          if (applied instanceof Promise) applied.then(() => this.ack(component, ev.revision), () => {});
          else this.ack(component, ev.revision);
        });
      },
      close: (): void => {
        if (!unsubscribe) return;
        unsubscribe();
        unsubscribe = undefined;
        this.watching(component, -1);
        stream.connected = false;
        handlers.onConnected?.(false);
      },
    };
    return stream;
  }

  ack(component: string, revision: number): void {
    const c = this.component(component);
    c.applied = Math.max(c.applied, revision);
  }

  watching(component: string, delta: 1 | -1, kinds?: string[]): void {
    const c = this.component(component);
    c.watchers = Math.max(0, c.watchers + delta);
    if (delta > 0) c.kinds = kindsOf(kinds);
  }

  /** What each watching component (the CLI aside) has applied, for `corral status`. */
  status(): ComponentStatus[] {
    return [...this.components].filter(([name]) => name !== 'cli').map(([component, c]) => ({ component, appliedRevision: this.applied(c), connected: c.watchers > 0 }));
  }

  private component(name: string): Component {
    let c = this.components.get(name);
    if (!c) this.components.set(name, (c = { applied: 0, watchers: 0, kinds: RECORD_KINDS }));
    return c;
  }

  /**
   * What a component has applied, as a registry revision: one that has applied every event of its
   * kinds serves the current revision, although revisions of other kinds never reach it.
   */
  private applied(c: Component): number {
    let relevant = 0;
    for (const k of c.kinds) relevant = Math.max(relevant, this.lastRevisionOf.get(k) ?? 0);
    return c.applied >= relevant ? Math.max(c.applied, this.sent) : c.applied;
  }
}

function kindsOf(kinds: string[] | undefined): readonly RecordKindName[] {
  if (!kinds || kinds.length === 0) return RECORD_KINDS;
  return RECORD_KINDS.filter((k) => kinds.includes(k));
}

function carries(ev: WatchEvent, k: RecordKindName): boolean {
  switch (k) {
    case 'endpoints': return ev.endpoints.length > 0 || ev.deletedEndpoints.length > 0;
    case 'services': return ev.services.length > 0 || ev.deletedServices.length > 0;
    case 'hosts': return ev.hosts.length > 0 || ev.deletedHosts.length > 0;
    case 'allocations': return ev.allocations.length > 0 || ev.deletedAllocations.length > 0;
  }
}

/** The event cut to these kinds; undefined for a delta that carries none of them. */
function only(ev: WatchEvent, kinds: readonly RecordKindName[]): WatchEvent | undefined {
  if (kinds.length === RECORD_KINDS.length) return ev;
  if (!ev.snapshot && !kinds.some((k) => carries(ev, k))) return undefined;
  // A delta of only these kinds goes out as it is: every stream then shares its one encoding.
  if (!ev.snapshot && RECORD_KINDS.every((k) => kinds.includes(k) || !carries(ev, k))) return ev;
  const out = emptyEvent(ev.revision, ev.snapshot);
  if (kinds.includes('endpoints')) [out.endpoints, out.deletedEndpoints] = [ev.endpoints, ev.deletedEndpoints];
  if (kinds.includes('services')) [out.services, out.deletedServices] = [ev.services, ev.deletedServices];
  if (kinds.includes('hosts')) [out.hosts, out.deletedHosts] = [ev.hosts, ev.deletedHosts];
  if (kinds.includes('allocations')) [out.allocations, out.deletedAllocations] = [ev.allocations, ev.deletedAllocations];
  return out;
}
