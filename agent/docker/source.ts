// Docker containers -> endpoints. On every (re)connect: list running containers and sync them
// as this node's "docker" endpoints; then follow the container event stream and apply each
// change through the EndpointSink, in order. Docker being away is a state, not a crash: retry
// with capped backoff, say so once, and say once when it is back.
import Docker from 'dockerode';
import type { Logger } from '../../api/log.js';
import type { Endpoint } from '../../api/types.js';
import { dockerEndpointId } from '../endpoints.js';
import type { EndpointSink } from '../sink.js';
import { containerName, endpointFromContainer, isLabelled, LABEL, LabelError } from './labels.js';

export interface DockerSourceOptions {
  socketPath: string;
  node: string;
  sink: EndpointSink;
  log: Logger;
  /** Backoff between reconnect attempts: starts at retryMinMs, doubles, capped at retryMaxMs. */
  retryMinMs?: number;
  retryMaxMs?: number;
}

/** One line of GET /events. */
interface DockerEvent {
  Type?: string;
  Action?: string;
  Actor?: { ID?: string; Attributes?: Record<string, string> };
}

/** What we registered for a running container. */
interface Registered {
  endpointId: string;
  /** Docker's HEALTHCHECK decides health (no Corral check on the endpoint). */
  dockerHealth: boolean;
  draining: boolean;
}

// Signals that end a container's main process; others (HUP, USR1, WINCH) reload or resize.
const STOP_SIGNALS = new Set(['2', '3', '9', '15', 'SIGINT', 'SIGQUIT', 'SIGKILL', 'SIGTERM', 'INT', 'QUIT', 'KILL', 'TERM']);
const ORIGIN = 'docker';

export class DockerSource {
  /** True while the event stream is open and the last sync succeeded. */
  connected = false;
  /** Why Docker is not connected, for `corral status`; undefined while connected. */
  lastError: string | undefined;

  private readonly docker: Docker;
  private readonly sink: EndpointSink;
  private readonly log: Logger;
  private readonly node: string;
  private readonly retryMinMs: number;
  private readonly retryMaxMs: number;
  private running = false;
  private generation = 0;
  private retryDelay: number;
  private retryTimer: NodeJS.Timeout | undefined;
  private abort: AbortController | undefined;
  private stream: NodeJS.ReadableStream | undefined;
  private announcedRetry = false;
  private everConnected = false;
  private queue: Promise<void> = Promise.resolve();
  private readonly registered = new Map<string, Registered>();
  private readonly warned = new Set<string>();

  constructor(private readonly opts: DockerSourceOptions) {
    this.docker = new Docker({ socketPath: opts.socketPath });
    this.sink = opts.sink;
    this.log = opts.log;
    this.node = opts.node;
    this.retryMinMs = opts.retryMinMs ?? 250;
    this.retryMaxMs = opts.retryMaxMs ?? 5000;
    this.retryDelay = this.retryMinMs;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    void this.connect();
  }

  stop(): void {
    this.running = false;
    this.generation++;
    this.connected = false;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.closeStream();
  }

  /** Resolves once every event received so far has been applied (for tests and shutdown). */
  idle(): Promise<void> {
    return this.queue;
  }

  private async connect(): Promise<void> {
    const gen = ++this.generation;
    this.retryTimer = undefined;
    const abort = new AbortController();
    this.abort = abort;
    let stream: NodeJS.ReadableStream;
    try {
      stream = (await this.docker.getEvents({ filters: { type: ['container'] }, abortSignal: abort.signal })) as NodeJS.ReadableStream;
    } catch (err) {
      this.lost(gen, err);
      return;
    }
    if (gen !== this.generation) {
      (stream as NodeJS.ReadableStream & { destroy?: () => void }).destroy?.();
      return;
    }
    this.stream = stream;
    // Sync first, then the events that arrived after subscribing (none are lost in between).
    this.enqueue(() => this.resync(gen));
    let buffered = '';
    stream.on('data', (chunk: Buffer | string) => {
      buffered += chunk.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        if (!line) continue;
        let ev: DockerEvent;
        try {
          ev = JSON.parse(line) as DockerEvent;
        } catch {
          continue;
        }
        this.enqueue(() => (gen === this.generation ? this.apply(ev) : Promise.resolve()));
      }
    });
    stream.once('end', () => this.lost(gen, new Error('Docker closed the event stream')));
    stream.once('close', () => this.lost(gen, new Error('Docker closed the event stream')));
    stream.once('error', (err: Error) => this.lost(gen, err));
  }

  private async resync(gen: number): Promise<void> {
    try {
      const list = await this.docker.listContainers({ filters: { label: [LABEL.service] } });
      const endpoints: Endpoint[] = [];
      const registered = new Map<string, Registered>();
      for (const summary of list) {
        const built = await this.build(summary.Id);
        if (built) {
          endpoints.push(built.endpoint);
          registered.set(summary.Id, built.registered);
        }
      }
      if (gen !== this.generation) return;
      await this.sink.sync(ORIGIN, endpoints);
      this.registered.clear();
      for (const [id, r] of registered) this.registered.set(id, r);
      this.connected = true;
      this.lastError = undefined;
      this.retryDelay = this.retryMinMs;
      if (this.announcedRetry || !this.everConnected) {
        this.log.info({ socket: this.opts.socketPath, endpoints: endpoints.length }, this.everConnected ? 'connected to Docker again; containers re-synced' : 'watching Docker containers');
      }
      this.announcedRetry = false;
      this.everConnected = true;
    } catch (err) {
      this.lost(gen, err);
    }
  }

  private async apply(ev: DockerEvent): Promise<void> {
    if (ev.Type !== 'container' || !ev.Action || !ev.Actor?.ID) return;
    const id = ev.Actor.ID;
    const attrs = ev.Actor.Attributes ?? {};
    const action = ev.Action;
    const known = this.registered.get(id);
    if (action === 'destroy') this.warned.delete(id);
    if (!known && !isLabelled(attrs)) return;

    try {
      if (action === 'start' || action === 'unpause' || (action === 'rename' && known)) {
        await this.upsert(id);
      } else if (action === 'kill' || action === 'stop') {
        if (!known || known.draining) return;
        if (action === 'kill' && !STOP_SIGNALS.has(attrs.signal ?? '15')) return;
        known.draining = true;
        await this.sink.remove(known.endpointId);
      } else if (action === 'die' || action === 'destroy' || action === 'oom') {
        if (!known) return;
        this.registered.delete(id);
        await this.sink.remove(known.endpointId, { immediate: true });
      } else if (action === 'pause') {
        if (known) await this.sink.setHealth(known.endpointId, false, 'container paused');
      } else if (action.startsWith('health_status')) {
        const status = action.slice(action.indexOf(':') + 1).trim();
        if (known?.dockerHealth && !known.draining) await this.sink.setHealth(known.endpointId, status === 'healthy', `docker health: ${status}`);
      }
    } catch (err) {
      this.log.warn({ container: id.slice(0, 12), event: action, err: (err as Error).message }, 'could not apply a Docker event');
    }
  }

  private async upsert(id: string): Promise<void> {
    const built = await this.build(id);
    if (!built) return;
    await this.sink.upsert(built.endpoint);
    this.registered.set(id, built.registered);
  }

  /** Inspect one container and build its endpoint; undefined when it is gone, not running, unlabelled or mislabelled. */
  private async build(id: string): Promise<{ endpoint: Endpoint; registered: Registered } | undefined> {
    let info: Docker.ContainerInspectInfo;
    try {
      info = await this.docker.getContainer(id).inspect();
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return undefined;
      throw err;
    }
    if (!info.State.Running) return undefined;
    let endpoint: Endpoint | null;
    try {
      endpoint = endpointFromContainer(info, this.node);
    } catch (err) {
      if (!(err instanceof LabelError)) throw err;
      if (!this.warned.has(id)) {
        this.warned.add(id);
        this.log.warn({ container: containerName(info), label: err.label || undefined, value: err.label ? err.value : undefined, accepted: err.accepted }, err.message);
      }
      return undefined;
    }
    if (!endpoint) return undefined;
    if (info.State.Paused) {
      endpoint.healthy = false;
      endpoint.healthReason = 'container paused';
    }
    const dockerHealth = !endpoint.healthCheck && !!info.State.Health && info.State.Health.Status !== 'none';
    return { endpoint, registered: { endpointId: dockerEndpointId(this.node, id), dockerHealth, draining: false } };
  }

  private enqueue(task: () => Promise<void>): Promise<void> {
    this.queue = this.queue.then(task, task).catch((err: Error) => {
      this.log.warn({ err: err.message }, 'Docker source task failed');
    });
    return this.queue;
  }

  private lost(gen: number, err: unknown): void {
    if (gen !== this.generation || !this.running) return;
    this.generation++;
    this.closeStream();
    this.connected = false;
    this.lastError = describe(err, this.opts.socketPath);
    if (!this.announcedRetry) {
      this.announcedRetry = true;
      this.log.warn({ socket: this.opts.socketPath, err: this.lastError }, `${this.everConnected ? 'lost Docker' : 'cannot reach Docker'}; retrying every ${this.retryMaxMs / 1000}s at most until it answers`);
    }
    const delay = this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, this.retryMaxMs);
    this.retryTimer = setTimeout(() => void this.connect(), delay);
    this.retryTimer.unref();
  }

  private closeStream(): void {
    this.abort?.abort();
    this.abort = undefined;
    const s = this.stream as (NodeJS.ReadableStream & { destroy?: () => void }) | undefined;
    this.stream = undefined;
    s?.removeAllListeners('data');
    s?.on('error', () => undefined); // aborting may surface one more error: it is expected
    s?.destroy?.();
  }
}

function describe(err: unknown, socket: string): string {
  const e = err as { code?: string; message?: string; statusCode?: number };
  if (e.code === 'ENOENT') return `no Docker socket at ${socket}`;
  if (e.code === 'ECONNREFUSED') return `Docker is not listening on ${socket}`;
  if (e.code === 'EACCES') return `no permission to open ${socket}`;
  return e.message ?? String(err);
}
