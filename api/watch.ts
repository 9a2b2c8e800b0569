// The client side of the agent's watch stream, as DNS, LB and the CLI use it: a snapshot, then
// deltas, each tagged with the registry revision, carrying only the record kinds asked for.
// Reconnects with backoff and asks to resume after the last revision it saw: the agent then sends
// only what changed since (when it still has it), else a fresh snapshot, so consumers must
// replace (not merge) on snapshot=true.
//
// One seam, two sources: AgentWatch reads the agent's gRPC socket (`corral dns`, `corral lb`);
// in `corral up` the agent runs in the same process and hands its events over directly
// (agent/watchers.ts), so DNS and LB share the agent's records instead of decoding copies.
import type { Logger } from 'pino';
import { agentClient, grpc, unary } from './grpc.js';
import type { RecordKindName, WatchEvent } from './types.js';

/**
 * Acks to the agent at most this often while events keep coming (what `corral status` shows may
 * lag by as much): each is a unary call, which costs the agent as much as ten watch messages.
 */
const ACK_EVERY_MS = 500;

export interface WatchHandlers {
  /**
   * Apply one event to the data plane. Called in order; snapshot=true replaces everything.
   * A returned promise delays the ack until it resolves (data planes that apply asynchronously,
   * such as the LB's worker threads, so `corral status` never reports a revision too early);
   * any other return value is ignored.
   */
  onEvent(ev: WatchEvent): unknown;
  /** Connection state changes, for readiness. */
  onConnected?(connected: boolean): void;
  /** The record kinds this consumer serves from (default: all); no event carries the others. */
  kinds?: RecordKindName[];
}

/** A running watch, whatever feeds it. */
export interface WatchStream {
  start(): void;
  close(): void;
  /** The last revision handed to onEvent. */
  readonly revision: number;
  readonly connected: boolean;
}

/** Opens a watch for a component: the agent's socket, or the agent in this process. */
export type WatchSource = (component: string, handlers: WatchHandlers, log?: Logger) => WatchStream;

/** The agent's gRPC socket as a WatchSource. */
export function socketWatch(socketPath: string): WatchSource {
  return (component, handlers, log) => new AgentWatch(socketPath, component, handlers, log);
}

export class AgentWatch implements WatchStream {
  private client: ReturnType<typeof agentClient>;
  private call: grpc.ClientReadableStream<WatchEvent> | undefined;
  private closed = false;
  private backoffMs = 100;
  private retryTimer: NodeJS.Timeout | undefined;
  private warned = false;
  revision = 0;
  connected = false;
  private acking = false;
  private acked = 0;
  private ackWanted = 0;
  private lastAckMs = 0;
  private ackTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly socketPath: string,
    private readonly component: string,
    private readonly handlers: WatchHandlers,
    private readonly log?: Logger,
  ) {
    this.client = agentClient(socketPath);
  }

  start(): void {
    this.closed = false;
    this.open();
  }

  private open(): void {
    if (this.closed) return;
    // A new stream may reach a new agent, which knows no ack yet.
    this.acked = 0;
    this.ackWanted = 0;
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    const call = this.client.Watch({ component: this.component, kinds: this.handlers.kinds ?? [], fromRevision: this.revision }) as grpc.ClientReadableStream<WatchEvent>;
    this.call = call;
    call.on('data', (ev: WatchEvent) => {
      if (!this.connected) {
        this.connected = true;
        this.backoffMs = 100;
        if (this.warned) this.log?.info({ socket: this.socketPath }, 'connected to the agent again');
        this.warned = false;
        this.handlers.onConnected?.(true);
      }
      const applied = this.handlers.onEvent(ev);
      this.revision = ev.revision;
      // Tell the agent what this component has applied, for `corral status`.
      if (!(applied instanceof Promise)) this.ack(ev.revision);
      else applied.then(() => this.call === call && this.ack(ev.revision), () => {});
    });
    const retry = (err?: Error) => {
      if (this.call !== call) return;
      this.call = undefined;
      if (this.connected) this.handlers.onConnected?.(false);
      this.connected = false;
      if (this.closed) return;
      if (!this.warned) {
        this.warned = true;
        this.log?.warn(
          { socket: this.socketPath, err: err?.message },
          'cannot watch the agent; serving the last state and retrying with backoff (is `corral agent` running?)',
        );
      }
      this.retryTimer = setTimeout(() => this.open(), this.backoffMs);
      // At most 1 s: a restarted agent is watched again within a second of serving (a local socket).
      this.backoffMs = Math.min(this.backoffMs * 2, 1_000);
    };
    call.on('error', (err) => retry(err));
    call.on('end', () => retry());
  }

  /**
   * One Ack in flight at most, carrying the newest applied revision, and at most one per
   * ACK_EVERY_MS: under churn the agent gets a few acks a second, not one per event; after a
   * quiet spell the first goes at once, so `corral status` shows a lone change applied at once.
   */
  private ack(revision: number): void {
    if (revision <= this.acked) return;
    this.ackWanted = Math.max(this.ackWanted, revision);
    if (this.acking || this.ackTimer) return;
    const wait = this.lastAckMs + ACK_EVERY_MS - Date.now();
    if (wait > 0) {
      this.ackTimer = setTimeout(() => {
        this.ackTimer = undefined;
        this.sendAck();
      }, wait);
      this.ackTimer.unref();
      return;
    }
    this.sendAck();
  }

  private sendAck(): void {
    if (this.closed) return;
    const r = this.ackWanted;
    this.acking = true;
    this.lastAckMs = Date.now();
    void unary(this.client, 'Ack', { component: this.component, revision: r }, 5_000).then(
      () => (this.acked = Math.max(this.acked, r)),
      () => {},
    ).finally(() => {
      this.acking = false;
      if (this.ackWanted > r) this.ack(this.ackWanted);
    });
  }

  close(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    clearTimeout(this.ackTimer);
    this.call?.cancel();
    this.call = undefined;
    this.client.close();
  }
}
