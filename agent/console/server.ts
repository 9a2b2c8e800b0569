// The web console on the agent's admin listener: the page (/console), its live feed
// (/console/events, Server-Sent Events fed by the agent's watch) and its actions
// (POST /console/actions/switch|weight|rollback|drain, with the token), and a service's endpoints
// (/console/endpoints?service=<ns>/<name>). One watch subscription keeps the view's rows current
// and serves every open page; each event is encoded once and written to all of them.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../../api/log.js';
import type { EndpointReply, HostStatus, ServiceReply, StatusReply, WatchEvent, WatchRequest } from '../../api/types.js';
import { DEFAULT_NAMESPACE } from '../../api/types.js';
import { NotFound } from '../api.js';
import { ColorError } from '../colors.js';
import { InvalidEndpoint } from '../endpoints.js';
import { PermissionDenied } from '../registry/registry.js';
import { CONSOLE_PREFIX, consoleAssets, type Asset } from './assets.js';
import { refuseActor, refuseReader, type Refusal } from './guard.js';
import { loadOrCreateToken } from './token.js';
import { ConsoleView, type CatalogView } from './view.js';

/** What the console needs from the agent (agent/agent.ts). */
export interface ConsoleAgent {
  readonly node: string;
  readonly catalog: CatalogView;
  readonly endpoints: { remove(id: string): Promise<void> };
  watch(req: WatchRequest, send: (ev: WatchEvent) => void): () => void;
  status(): StatusReply;
  followStatusReports(onChange: (reports: HostStatus[], gone: string[]) => void): () => void;
  switchColor(req: { service: string; namespace: string; color: string }): Promise<ServiceReply>;
  weight(req: { service: string; namespace: string; weights: Record<string, number> }): Promise<ServiceReply>;
  rollback(req: { service: string; namespace: string }): Promise<ServiceReply>;
}

/**
 * How often this host's own state (registry health, peers' handshakes) is looked at while a page
 * is open; sent only when it changed. Components' applied revisions are also looked at per event.
 */
const SELF_EVERY_MS = 2_000;
/** Status reports changed within this long go out as one event (1,000 hosts may each write one a minute). */
const REPORTS_BATCH_MS = 1_000;
/** A page that reads slower than events come is dropped (its EventSource reconnects and gets a fresh snapshot). */
const MAX_BACKLOG = 16 << 20;
const MAX_BODY = 16 << 10;
const KEEPALIVE_MS = 25_000;

const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

class HttpError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
  }
}

export class Console {
  readonly token: string;
  private readonly view: ConsoleView;
  private readonly assets: Map<string, Asset>;
  private readonly clients = new Set<ServerResponse>();
  private readonly unwatch: () => void;
  private timers: NodeJS.Timeout[] = [];
  /** The last payloads sent, to send only what changed. */
  private selfJson = '';
  /** Every host's status report, encoded, while a page is open; and what changed since the last send. */
  private readonly reports = new Map<string, string>();
  private readonly reportsChanged = new Set<string>();
  private reportsTimer: NodeJS.Timeout | undefined;
  private selfSoon: NodeJS.Immediate | undefined;
  private unfollowReports: (() => void) | undefined;
  private snapshotCache: { revision: number; text: string } | undefined;

  constructor(private readonly agent: ConsoleAgent, stateDir: string, private readonly log: Logger) {
    this.token = loadOrCreateToken(stateDir, (msg) => log.warn(msg));
    this.view = new ConsoleView(agent.catalog);
    this.assets = consoleAssets();
    this.unwatch = agent.watch({ component: 'console', kinds: ['endpoints', 'services', 'hosts'] }, (ev) => this.onEvent(ev));
    // Rows are encoded once, soon after start (tens of µs a service), so even the first page opened finds them ready.
    setImmediate(() => this.view.snapshotJson()).unref();
  }

  close(): void {
    for (const res of this.clients) res.end();
    this.clients.clear();
    this.stopFeed();
    this.unwatch();
  }

  /** Every request under /console. */
  handle(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0]!;
    if (path.startsWith(`${CONSOLE_PREFIX}/actions/`)) return this.action(req, res, path.slice(CONSOLE_PREFIX.length + 9));
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      req.resume();
      return refuse(res, { code: 405, text: `method not allowed: ${path} answers GET and HEAD only (actions are POST /console/actions/...)\n`, headers: { allow: 'GET, HEAD' } });
    }
    const refusal = refuseReader(req);
    if (refusal) return refuse(res, refusal);
    if (path === `${CONSOLE_PREFIX}/events`) return this.subscribe(req, res);
    if (path === `${CONSOLE_PREFIX}/endpoints`) return this.endpoints(req, res);
    // The page's relative place: /console/ (a browser keeps the #token across the redirect).
    if (path === CONSOLE_PREFIX) return void res.writeHead(302, { location: `${CONSOLE_PREFIX}/` }).end();
    const asset = this.assets.get(path);
    if (!asset) return refuse(res, { code: 404, text: 'not found: the console is at /console/\n' });
    if (req.headers['if-none-match'] === asset.etag) {
      res.writeHead(304, { etag: asset.etag }).end();
      return;
    }
    res.writeHead(200, { 'content-type': asset.type, 'content-length': asset.body.length, etag: asset.etag, 'cache-control': 'no-cache', ...SECURITY_HEADERS });
    res.end(req.method === 'HEAD' ? undefined : asset.body);
  }

  // ---- the live feed ----

  private subscribe(req: IncomingMessage, res: ServerResponse): void {
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no', ...SECURITY_HEADERS });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    res.socket?.setNoDelay(true);
    if (this.clients.size === 0) this.startFeed();
    const hello = JSON.stringify({ node: this.agent.node, serverNowMs: Date.now() });
    res.write(`retry: 1000\n\n${sse('hello', hello)}${this.snapshotEvent()}${sse('self', this.selfJson)}${sse('reports', `{"whole":true,"reports":[${[...this.reports.values()].join(',')}],"gone":[]}`)}`);
    this.clients.add(res);
    res.on('close', () => {
      this.clients.delete(res);
      if (this.clients.size === 0) this.stopFeed();
    });
  }

  /** A service's endpoints, when the page opens it: `{"revision":…,"endpoints":[EndpointRow…]}`. */
  private endpoints(req: IncomingMessage, res: ServerResponse): void {
    const key = new URL(req.url ?? '/', 'http://x').searchParams.get('service') ?? '';
    if (!/^[^/]+\/[^/]+$/.test(key)) return refuse(res, { code: 400, text: 'bad request: name the service as ?service=<namespace>/<name>\n' });
    const body = JSON.stringify({ revision: this.agent.catalog.revision, endpoints: this.view.endpointsOf(key) });
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store', ...SECURITY_HEADERS }).end(req.method === 'HEAD' ? undefined : body);
  }

  /** Timers that only run while a page is open. */
  private startFeed(): void {
    this.refreshSelf();
    this.unfollowReports = this.agent.followStatusReports((reports, gone) => this.onReports(reports, gone));
    this.timers = [
      setInterval(() => this.refreshSelf(), SELF_EVERY_MS),
      setInterval(() => this.broadcast(': keepalive\n\n'), KEEPALIVE_MS),
    ];
  }

  private stopFeed(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.unfollowReports?.();
    this.unfollowReports = undefined;
    clearTimeout(this.reportsTimer);
    this.reportsTimer = undefined;
    if (this.selfSoon) clearImmediate(this.selfSoon);
    this.selfSoon = undefined;
    this.reports.clear();
    this.reportsChanged.clear();
    this.selfJson = '';
    this.snapshotCache = undefined;
  }

  /** Every watch event: the view follows it always (cheaply); open pages get what it changed. */
  private onEvent(ev: WatchEvent): void {
    const changed = this.view.note(ev);
    if (this.clients.size === 0) return;
    if (ev.snapshot) {
      this.broadcast(this.snapshotEvent());
    } else {
      const delta = this.view.deltaJson(ev, changed);
      if (delta) this.broadcast(sse('delta', delta));
    }
    // After the other consumers of this event (the mesh applies it after the watchers): their applied revisions.
    this.selfSoon ??= setImmediate(() => {
      this.selfSoon = undefined;
      this.refreshSelf();
    });
  }

  /** Pages opened at one revision share one encoding. */
  private snapshotEvent(): string {
    const rev = this.agent.catalog.revision;
    if (this.snapshotCache?.revision !== rev) this.snapshotCache = { revision: rev, text: sse('snapshot', this.view.snapshotJson()) };
    return this.snapshotCache.text;
  }

  /** This host: registry revision and health, what each component applied, the peers and their handshakes. */
  private refreshSelf(): void {
    const s = this.agent.status();
    const json = JSON.stringify({
      node: s.node, version: s.version, registry: s.registry, revision: s.revision, appliedRevision: s.appliedRevision,
      // sinceMs is the last success while connected (it moves every call): the page needs it only when stale.
      registryConnected: s.registryConnected, registryError: s.registryError, registrySinceMs: s.registryConnected ? 0 : s.registrySinceMs,
      overlay: s.overlay, block: s.block, dockerConnected: s.dockerConnected, dockerError: s.dockerError,
      components: s.components,
      // Bytes move all the time: only what the page shows, so an idle mesh sends nothing.
      peers: s.peers.map((p) => ({ host: p.host, endpoint: p.endpoint, lastHandshakeMs: p.lastHandshakeMs })),
      problems: s.problems,
    });
    if (json === this.selfJson) return;
    this.selfJson = json;
    this.broadcast(sse('self', json));
  }

  /** Status reports as hosts write them: kept encoded, sent to open pages at most once a second. */
  private onReports(reports: HostStatus[], gone: string[]): void {
    for (const st of reports) {
      const json = JSON.stringify({ name: st.name, appliedRevision: st.appliedRevision, reportedMs: st.reportedMs, version: st.version, peers: st.peers, handshaken: st.handshaken, stale: st.stale, worstPeer: st.worstPeer, worstHandshakeMs: st.worstHandshakeMs });
      if (this.reports.get(st.name) === json) continue;
      this.reports.set(st.name, json);
      this.reportsChanged.add(st.name);
    }
    for (const name of gone) if (this.reports.delete(name)) this.reportsChanged.add(name);
    if (this.reportsChanged.size === 0 || this.reportsTimer) return;
    this.reportsTimer = setTimeout(() => {
      this.reportsTimer = undefined;
      const rows: string[] = [];
      const left: string[] = [];
      for (const name of this.reportsChanged) {
        const row = this.reports.get(name);
        if (row) rows.push(row);
        else left.push(name);
      }
      this.reportsChanged.clear();
      this.broadcast(sse('reports', `{"whole":false,"reports":[${rows.join(',')}],"gone":${JSON.stringify(left)}}`));
    }, REPORTS_BATCH_MS);
  }

  private broadcast(text: string): void {
    for (const res of this.clients) {
      if (res.writableLength > MAX_BACKLOG) {
        this.log.warn({ backlog: res.writableLength }, 'console: a page reads its events too slowly; closing its stream (it reconnects with a fresh snapshot)');
        res.destroy();
        continue;
      }
      res.write(text);
    }
  }

  // ---- actions ----

  private action(req: IncomingMessage, res: ServerResponse, name: string): void {
    if (req.method !== 'POST') {
      req.resume();
      return refuse(res, { code: 405, text: `method not allowed: console actions are POST with a JSON body\n`, headers: { allow: 'POST' } });
    }
    const refusal = refuseActor(req, this.token);
    if (refusal) return refuse(res, refusal, true);
    if (!/^application\/json(\s*;.*)?$/i.test(req.headers['content-type'] ?? '')) {
      return refuse(res, { code: 415, text: 'unsupported media type: send the action as Content-Type: application/json\n' }, true);
    }
    readBody(req).then(
      async (body) => {
        const reply = await this.run(name, body);
        res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify(reply) + '\n');
      },
    ).catch((err: unknown) => {
      const code = err instanceof HttpError ? err.code : err instanceof NotFound ? 404 : err instanceof InvalidEndpoint ? 400 : err instanceof ColorError ? 409 : err instanceof PermissionDenied ? 403 : 500;
      const message = err instanceof Error ? err.message : String(err);
      if (code === 500) this.log.error({ err, action: name }, 'console action failed');
      if (!res.headersSent) res.writeHead(code, { 'content-type': 'application/json', 'cache-control': 'no-store', ...(code === 413 ? { connection: 'close' } : {}) }).end(JSON.stringify({ error: message }) + '\n');
    });
  }

  private async run(name: string, body: unknown): Promise<ServiceReply | EndpointReply> {
    const o = body as Record<string, unknown>;
    const namespace = () => (o.namespace === undefined || o.namespace === '' ? DEFAULT_NAMESPACE : text(o, 'namespace'));
    let reply: ServiceReply | EndpointReply;
    switch (name) {
      case 'switch':
        reply = await this.agent.switchColor({ service: text(o, 'service'), namespace: namespace(), color: text(o, 'color') });
        break;
      case 'weight': {
        const w = o.weights;
        if (typeof w !== 'object' || w === null || Array.isArray(w) || Object.keys(w).length === 0) throw new HttpError(400, 'bad request: "weights" must be an object of color to weight, e.g. {"blue": 90, "green": 10}');
        const weights: Record<string, number> = {};
        for (const [c, v] of Object.entries(w)) {
          if (typeof v !== 'number') throw new HttpError(400, `bad request: the weight of "${c.slice(0, 63)}" must be a number from 0 to 100`);
          weights[c] = v;
        }
        reply = await this.agent.weight({ service: text(o, 'service'), namespace: namespace(), weights });
        break;
      }
      case 'rollback':
        reply = await this.agent.rollback({ service: text(o, 'service'), namespace: namespace() });
        break;
      case 'drain':
        reply = await this.drain(text(o, 'id'));
        break;
      default:
        throw new HttpError(404, `no console action "${name.slice(0, 40)}": switch, weight, rollback or drain`);
    }
    this.log.info({ action: name, service: o.service, namespace: o.namespace, color: o.color, weights: o.weights, id: o.id, revision: reply.revision }, 'console action');
    return reply;
  }

  /** This host's endpoint stops getting new requests and leaves after its drain time (as a stopping container does). */
  private async drain(id: string): Promise<EndpointReply> {
    const ep = this.agent.catalog.endpoints.get(id);
    if (!ep) throw new NotFound(`no endpoint ${id} in the registry (it may have left already)`);
    if (ep.node !== this.agent.node) throw new HttpError(409, `endpoint ${ep.address}:${ep.port} of ${ep.service} belongs to host ${ep.node}: drain it in that host's console`);
    await this.agent.endpoints.remove(id);
    return { revision: this.agent.catalog.revision, endpoint: this.agent.catalog.endpoints.get(id) ?? null };
  }
}

function sse(event: string, data: string): string {
  return `event: ${event}\ndata: ${data}\n\n`;
}

/** A refusal as one plain-text line; `unread`: the request's body was not read, so the connection closes. */
function refuse(res: ServerResponse, r: Refusal, unread = false): void {
  res.writeHead(r.code, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store', ...(unread ? { connection: 'close' } : {}), ...r.headers }).end(r.text);
}

function text(o: Record<string, unknown>, field: string): string {
  const v = o[field];
  if (typeof v !== 'string' || v === '' || v.length > 512) throw new HttpError(400, `bad request: "${field}" must be a non-empty string`);
  return v;
}

function readBody(req: IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > MAX_BODY) {
      req.resume();
      reject(new HttpError(413, `content too large: an action's body is at most ${MAX_BODY} bytes`));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (d: Buffer) => {
      size += d.length;
      if (size > MAX_BODY) {
        // Read on and drop the rest: the answer goes out whole, then the connection closes.
        req.removeAllListeners('data');
        req.resume();
        reject(new HttpError(413, `content too large: an action's body is at most ${MAX_BODY} bytes`));
        return;
      }
      chunks.push(d);
    });
    req.on('error', reject);
    req.on('end', () => {
      try {
        const v: unknown = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
        resolve(v);
      } catch (err) {
        reject(new HttpError(400, `bad request: the body is not a JSON object (${(err as Error).message})`));
      }
    });
  });
}
