// Endpoint records as a thread that keeps them for a long time holds them: a copy that crosses
// to a worker thread (structured clone) or arrives over the agent socket has a fresh string for
// every field of every record (~670 bytes an endpoint at 25 fields); what DNS and the LB keep per
// endpoint is one object of one shape whose repeated strings (service, namespace, color, ...) are
// shared, and only the fields the component reads (the rest hold shared constants).
// In api/ because dns/ and lb/ both use it.
import type { Endpoint, WatchEvent } from './types.js';

/** The fields a component reads; the others are not sent to its threads. */
export type EndpointFields = ReadonlyArray<keyof Endpoint>;

/** What DNS reads of an endpoint (dns/zone.ts, api/traffic.ts). */
export const DNS_FIELDS: EndpointFields = ['id', 'service', 'namespace', 'address', 'port', 'portName', 'color', 'weight', 'healthy', 'draining'];

/** What the LB reads (routes, balancers, passive health, TCP routes, edges): all but the agent's bookkeeping. */
export const LB_FIELDS: EndpointFields = [
  'id', 'service', 'namespace', 'address', 'port', 'portName', 'color', 'weight', 'healthy', 'httpHosts', 'httpPath', 'healthCheck',
  'drainMs', 'draining', 'lbBalance', 'edge', 'tcpPort', 'tlsSni', 'proxyProtocol',
];

const NO_STRINGS = Object.freeze([]) as unknown as string[];

/** An event whose endpoints carry only `fields` (what crosses to the threads): a new event, the given one is not changed. */
export function slimEvent(ev: WatchEvent, fields: EndpointFields): WatchEvent {
  if (ev.endpoints.length === 0) return ev;
  const endpoints = ev.endpoints.map((ep) => {
    const out: Record<string, unknown> = {};
    for (const f of fields) if (ep[f] !== undefined) out[f] = ep[f];
    return out as unknown as Endpoint;
  });
  return { ...ev, endpoints };
}

/** Past this many distinct strings the table starts over (services come and go; it must not only grow). */
const MAX_INTERNED = 200_000;

/** One thread's table of repeated strings (service names, namespaces, colors, hosts). */
export class Interner {
  private readonly strings = new Map<string, string>();
  private readonly lists = new Map<string, string[]>();

  s(x: string | undefined): string {
    if (x === undefined || x === '') return '';
    const have = this.strings.get(x);
    if (have !== undefined) return have;
    if (this.strings.size >= MAX_INTERNED) this.strings.clear();
    this.strings.set(x, x);
    return x;
  }

  /** A list of strings (hosts, SNI names), shared by every record with the same list; treat as read-only. */
  list(xs: string[] | undefined): string[] {
    if (xs === undefined || xs.length === 0) return NO_STRINGS;
    const key = xs.join('\n');
    const have = this.lists.get(key);
    if (have !== undefined) return have;
    if (this.lists.size >= MAX_INTERNED) this.lists.clear();
    const list = xs.map((x) => this.s(x));
    this.lists.set(key, list);
    return list;
  }

  /** Starts over (a snapshot replaced everything). */
  clear(): void {
    this.strings.clear();
    this.lists.clear();
  }
}

/**
 * One endpoint in the shape every compacted record has (V8 keeps one hidden class for them all):
 * the fields not in `fields` hold shared constants, repeated strings come from `intern`.
 */
export function compactEndpoint(ep: Endpoint, intern: Interner): Endpoint {
  return {
    id: ep.id,
    service: intern.s(ep.service),
    namespace: intern.s(ep.namespace),
    address: ep.address,
    port: ep.port ?? 0,
    portName: intern.s(ep.portName),
    color: intern.s(ep.color),
    weight: ep.weight ?? 0,
    healthy: ep.healthy ?? false,
    healthReason: intern.s(ep.healthReason),
    origin: intern.s(ep.origin),
    node: intern.s(ep.node),
    httpHosts: intern.list(ep.httpHosts),
    httpPath: intern.s(ep.httpPath),
    healthCheck: ep.healthCheck ?? null,
    deploy: intern.s(ep.deploy),
    drainMs: ep.drainMs ?? 0,
    containerId: ep.containerId ?? '',
    containerName: ep.containerName ?? '',
    draining: ep.draining ?? false,
    lbBalance: intern.s(ep.lbBalance),
    edge: ep.edge,
    tcpPort: ep.tcpPort ?? 0,
    tlsSni: intern.list(ep.tlsSni),
    proxyProtocol: intern.s(ep.proxyProtocol),
  };
}

/**
 * An endpoint as DNS keeps it: its DNS_FIELDS as own properties (one small object), every other
 * field read from the prototype (shared constants: DNS never reads them).
 */
class DnsEndpoint {
  readonly id: string;
  readonly service: string;
  readonly namespace: string;
  readonly address: string;
  readonly port: number;
  readonly portName: string;
  readonly color: string;
  readonly weight: number;
  readonly healthy: boolean;
  readonly draining: boolean;
  constructor(ep: Endpoint, intern: Interner) {
    this.id = ep.id;
    this.service = intern.s(ep.service);
    this.namespace = intern.s(ep.namespace);
    this.address = ep.address;
    this.port = ep.port ?? 0;
    this.portName = intern.s(ep.portName);
    this.color = intern.s(ep.color);
    this.weight = ep.weight ?? 0;
    this.healthy = ep.healthy ?? false;
    this.draining = ep.draining ?? false;
  }
}
type Unread = Omit<Endpoint, keyof DnsEndpoint>;
const UNREAD_BY_DNS: Unread = {
  healthReason: '', origin: '', node: '', httpHosts: NO_STRINGS, httpPath: '', healthCheck: null, deploy: '', drainMs: 0, containerId: '', containerName: '',
  lbBalance: '', edge: undefined, tcpPort: 0, tlsSni: NO_STRINGS, proxyProtocol: '',
};
Object.assign(DnsEndpoint.prototype, UNREAD_BY_DNS);

/** The event with its endpoints compacted (in place: the event is the thread's own copy); `fields` as the pool sent them. */
export function compactEvent(ev: WatchEvent, intern: Interner, fields?: EndpointFields): WatchEvent {
  if (ev.snapshot) intern.clear();
  const eps = ev.endpoints;
  if (fields === DNS_FIELDS || (fields !== undefined && fields.length === DNS_FIELDS.length && fields.every((f, i) => f === DNS_FIELDS[i]))) {
    for (let i = 0; i < eps.length; i++) eps[i] = new DnsEndpoint(eps[i]!, intern) as unknown as Endpoint;
  } else {
    for (let i = 0; i < eps.length; i++) eps[i] = compactEndpoint(eps[i]!, intern);
  }
  return ev;
}
