// Building and validating Endpoint records, whatever their origin (Docker labels, `corral
// register`, CNI). Every rejection names the field, the bad value and what is accepted.
import { addressProblem } from '../api/records.js';
import { BALANCE_POLICIES, DEFAULT_COLOR, DEFAULT_NAMESPACE, isBalancePolicy, type BalancePolicy, type Endpoint, type HealthCheck } from '../api/types.js';

export class InvalidEndpoint extends Error {
  constructor(readonly field: string, readonly value: string, readonly accepted: string) {
    super(`${field}="${value}" is not valid: ${accepted}`);
  }
}

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const HOSTNAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

export function dnsLabel(field: string, value: string): string {
  const v = value.trim().toLowerCase();
  if (!LABEL.test(v)) throw new InvalidEndpoint(field, value, 'a DNS label: a-z, 0-9 and "-", 1-63 characters, not starting or ending with "-"');
  return v;
}

export function port(field: string, value: string | number): number {
  const n = typeof value === 'number' ? value : /^\d+$/.test(value.trim()) ? Number(value) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InvalidEndpoint(field, String(value), 'a port number from 1 to 65535');
  return n;
}

export function positiveInt(field: string, value: string | number, max: number): number {
  const n = typeof value === 'number' ? value : /^\d+$/.test(value.trim()) ? Number(value) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > max) throw new InvalidEndpoint(field, String(value), `a whole number from 1 to ${max}`);
  return n;
}

/** "10s", "500ms", "1m", "2" (seconds) -> milliseconds. */
export function duration(field: string, value: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(value.trim());
  if (!m) throw new InvalidEndpoint(field, value, 'a duration such as 500ms, 2s or 1m');
  const n = Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 'm' ? 60_000 : 1000);
  if (n > 3_600_000) throw new InvalidEndpoint(field, value, 'a duration of at most 1h');
  return Math.round(n);
}

export function httpHosts(field: string, value: string): string[] {
  const out: string[] = [];
  for (const raw of value.split(',')) {
    const h = raw.trim().toLowerCase();
    if (!h) continue;
    if (h.length > 253 || !HOSTNAME.test(h)) throw new InvalidEndpoint(field, value, 'comma-separated host names such as web.example.com or *.example.com');
    out.push(h);
  }
  return out;
}

export function httpPath(field: string, value: string): string {
  const v = value.trim() || '/';
  if (!v.startsWith('/') || /[\s?#]/.test(v)) throw new InvalidEndpoint(field, value, 'a path prefix starting with "/" without spaces, "?" or "#"');
  return v;
}

/** A load-balancing policy name (`corral.lb.balance`, `--lb-balance`), case and spaces ignored. */
export function balancePolicy(field: string, value: string): BalancePolicy {
  const v = value.trim().toLowerCase();
  if (!isBalancePolicy(v)) throw new InvalidEndpoint(field, value, BALANCE_POLICIES.join(' or '));
  return v;
}

/** The PROXY protocol version sent on TCP/TLS routes (`corral.tcp.proxy-protocol`): v2, or off. */
export function proxyProtocol(field: string, value: string): string {
  const v = value.trim().toLowerCase();
  if (v === 'v2' || v === '2') return 'v2';
  if (v === '' || v === 'off' || v === 'false' || v === 'none') return '';
  throw new InvalidEndpoint(field, value, 'v2 (a PROXY protocol v2 header before the client\'s bytes) or off');
}

/** TLS server names for SNI routing (`corral.tls.sni`): like http hosts, `*.example.com` allowed. */
export function tlsServerNames(field: string, value: string): string[] {
  const out: string[] = [];
  for (const raw of value.split(',')) {
    const h = raw.trim().toLowerCase().replace(/\.$/, '');
    if (!h) continue;
    if (h.length > 253 || !HOSTNAME.test(h)) throw new InvalidEndpoint(field, value, 'comma-separated TLS server names such as db.example.com or *.example.com');
    out.push(h);
  }
  if (out.length === 0) throw new InvalidEndpoint(field, value, 'at least one TLS server name such as db.example.com');
  if (out.length > 32) throw new InvalidEndpoint(field, value, 'at most 32 server names');
  return out;
}

export function address(field: string, value: string): string {
  const v = value.trim();
  if (addressProblem(v)) throw new InvalidEndpoint(field, value, 'an IPv4 or IPv6 address other hosts can reach (not 0.0.0.0 or ::, no %zone)');
  return v;
}

export const HEALTH_DEFAULTS = { intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 2 } as const;
export const DRAIN_DEFAULT_MS = 10_000;

/** What an origin knows about an endpoint; newEndpoint fills the rest with the SPEC defaults. */
export interface EndpointSpec {
  id: string;
  service: string;
  namespace?: string;
  address: string;
  port: number;
  portName?: string;
  color?: string;
  weight?: number;
  origin: string;
  node: string;
  httpHosts?: string[];
  httpPath?: string;
  healthCheck?: HealthCheck | null;
  deploy?: string;
  drainMs?: number;
  containerId?: string;
  containerName?: string;
  /** Balancing policy the endpoint asks for; unset: the LB's --lb-balance. */
  lbBalance?: BalancePolicy;
  /** corral.http.* edge labels, already checked (lb/middleware/labels.ts); unset or {}: none. */
  edge?: Record<string, string>;
  /** TCP/TLS routing (lb/tcp/): LB port, SNI names, PROXY protocol ('v2' or ''). */
  tcpPort?: number;
  tlsSni?: string[];
  proxyProtocol?: string;
  /** Initial health: true unless an active check must pass first. */
  healthy?: boolean;
  healthReason?: string;
}

export function newEndpoint(s: EndpointSpec): Endpoint {
  const hasCheck = !!s.healthCheck && (s.healthCheck.tcp || s.healthCheck.path !== '');
  return {
    id: s.id,
    service: dnsLabel('service', s.service),
    namespace: dnsLabel('namespace', s.namespace || DEFAULT_NAMESPACE),
    address: address('address', s.address),
    port: port('port', s.port),
    portName: dnsLabel('port name', s.portName || 'http'),
    color: dnsLabel('color', s.color || DEFAULT_COLOR),
    weight: s.weight === undefined ? 1 : positiveInt('weight', s.weight, 1000),
    healthy: s.healthy ?? !hasCheck,
    healthReason: s.healthReason ?? (hasCheck ? 'waiting for the first health check' : 'no health check'),
    origin: s.origin,
    node: s.node,
    httpHosts: s.httpHosts ?? [],
    httpPath: s.httpPath ?? '/',
    healthCheck: hasCheck ? s.healthCheck! : null,
    deploy: s.deploy ?? 'manual',
    drainMs: s.drainMs ?? DRAIN_DEFAULT_MS,
    containerId: s.containerId ?? '',
    containerName: s.containerName ?? '',
    draining: false,
    lbBalance: s.lbBalance ? balancePolicy('lb balance', s.lbBalance) : '',
    ...(s.edge && Object.keys(s.edge).length ? { edge: s.edge } : {}),
    ...tcpRouting(s),
  };
}

/** The TCP/TLS routing fields, checked together: a PROXY header needs a TCP or TLS route. */
function tcpRouting(s: EndpointSpec): Pick<Endpoint, 'tcpPort' | 'tlsSni' | 'proxyProtocol'> {
  const tcpPort = s.tcpPort ? port('tcp port', s.tcpPort) : 0;
  const tlsSni = s.tlsSni?.length ? tlsServerNames('tls sni', s.tlsSni.join(',')) : [];
  const pp = s.proxyProtocol ? proxyProtocol('proxy protocol', s.proxyProtocol) : '';
  if (pp && tcpPort === 0 && tlsSni.length === 0) throw new InvalidEndpoint('proxy protocol', s.proxyProtocol!, 'used only with a TCP port or TLS server names (it applies to TCP and TLS routes)');
  return { tcpPort, tlsSni, proxyProtocol: pp };
}

export function manualEndpointId(namespace: string, service: string, addr: string, p: number): string {
  return `manual:${namespace}:${service}:${addr}:${p}`;
}
export function dockerEndpointId(node: string, containerId: string): string {
  return `docker:${node}:${containerId}`;
}
