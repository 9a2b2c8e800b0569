// Docker container labels -> an endpoint. The labels are the user-facing contract of SPEC.md
// ("Docker labels"); a wrong one yields a LabelError whose message is the one warning the agent
// logs for that container, naming the container, the label, the bad value and what is accepted.
import type { Endpoint } from '../../api/types.js';
import {
  balancePolicy, dockerEndpointId, dnsLabel, duration, HEALTH_DEFAULTS, httpHosts, httpPath, InvalidEndpoint, newEndpoint,
  port, positiveInt, proxyProtocol, tlsServerNames, type EndpointSpec,
} from '../endpoints.js';
import { DEFAULT_COLOR, DEFAULT_NAMESPACE } from '../../api/types.js';
import { EdgeLabelError, edgeLabels, isEdgeLabel, parseEdge } from '../../lb/middleware/labels.js';

export const LABEL = {
  service: 'corral.service',
  namespace: 'corral.namespace',
  port: 'corral.port',
  portName: 'corral.port-name',
  network: 'corral.network',
  httpHost: 'corral.http.host',
  httpPath: 'corral.http.path',
  color: 'corral.color',
  weight: 'corral.weight',
  healthPath: 'corral.health.path',
  healthInterval: 'corral.health.interval',
  healthTimeout: 'corral.health.timeout',
  healthRise: 'corral.health.rise',
  healthFall: 'corral.health.fall',
  healthTcp: 'corral.health.tcp',
  deploy: 'corral.deploy',
  drain: 'corral.drain',
  lbBalance: 'corral.lb.balance',
  tcpPort: 'corral.tcp.port',
  tlsSni: 'corral.tls.sni',
  proxyProtocol: 'corral.tcp.proxy-protocol',
} as const;

const KNOWN = new Set<string>(Object.values(LABEL));
const DEFAULT_PORT = 80;

/** The parts of `docker inspect` that labels need (dockerode's ContainerInspectInfo fits). */
export interface InspectedContainer {
  Id: string;
  Name: string;
  Config: { Labels?: Record<string, string> | null; ExposedPorts?: Record<string, unknown> | null };
  State?: { Health?: { Status: string } | null } | null;
  NetworkSettings?: { Networks?: Record<string, { IPAddress?: string; GlobalIPv6Address?: string }> | null } | null;
}

export class LabelError extends Error {
  constructor(
    readonly container: string,
    readonly label: string,
    readonly value: string,
    readonly accepted: string,
  ) {
    super(label
      ? `container ${container} is not registered: label ${label}="${value}" is not valid: ${accepted}`
      : `container ${container} is not registered: ${accepted}`);
  }
}

export function containerName(c: Pick<InspectedContainer, 'Id' | 'Name'>): string {
  return c.Name.replace(/^\//, '') || c.Id.slice(0, 12);
}

/** True when the container asks to be registered at all. */
export function isLabelled(labels: Record<string, string> | null | undefined): boolean {
  return !!labels && Object.prototype.hasOwnProperty.call(labels, LABEL.service);
}

/**
 * What the labels of one container say, or null when it has no `corral.service` label.
 * Throws LabelError for the first wrong label.
 */
export function endpointSpecFromContainer(c: InspectedContainer, node: string): EndpointSpec | null {
  const labels = c.Config.Labels ?? {};
  if (!isLabelled(labels)) return null;
  const name = containerName(c);
  const who = `"${name}" (${c.Id.slice(0, 12)})`;
  const get = (label: string): string | undefined => labels[label];

  for (const label of Object.keys(labels).sort()) {
    if (label.startsWith('corral.') && !KNOWN.has(label) && !isEdgeLabel(label)) {
      throw new LabelError(who, label, labels[label] ?? '', `unknown label (a typo?); Corral reads ${[...KNOWN].join(', ')} and the corral.http.* edge labels (README: Docker labels)`);
    }
  }

  // Edge labels (TLS by ACME, redirect, middlewares): checked here so a bad one is named at once.
  const edge = edgeLabels(labels);
  try {
    parseEdge(edge);
  } catch (err) {
    if (err instanceof EdgeLabelError) throw new LabelError(who, err.label, err.value, err.accepted);
    throw err;
  }
  try {
    const spec: EndpointSpec = {
      id: dockerEndpointId(node, c.Id),
      service: dnsLabel(LABEL.service, get(LABEL.service) ?? ''),
      namespace: opt(get(LABEL.namespace), (v) => dnsLabel(LABEL.namespace, v)) ?? DEFAULT_NAMESPACE,
      address: address(c, get(LABEL.network), who),
      port: opt(get(LABEL.port), (v) => port(LABEL.port, v)) ?? defaultPort(c),
      portName: opt(get(LABEL.portName), (v) => dnsLabel(LABEL.portName, v)) ?? 'http',
      color: opt(get(LABEL.color), (v) => dnsLabel(LABEL.color, v)) ?? DEFAULT_COLOR,
      weight: opt(get(LABEL.weight), (v) => positiveInt(LABEL.weight, v, 1000)) ?? 1,
      origin: 'docker',
      node,
      httpHosts: opt(get(LABEL.httpHost), (v) => httpHosts(LABEL.httpHost, v)) ?? [],
      httpPath: opt(get(LABEL.httpPath), (v) => httpPath(LABEL.httpPath, v)) ?? '/',
      healthCheck: healthCheck(get),
      deploy: opt(get(LABEL.deploy), deploy) ?? 'manual',
      drainMs: opt(get(LABEL.drain), (v) => duration(LABEL.drain, v)) ?? undefined,
      lbBalance: opt(get(LABEL.lbBalance), (v) => balancePolicy(LABEL.lbBalance, v)),
      edge,
      ...tcpRouting(get),
      containerId: c.Id,
      containerName: name,
    };
    // Without a Corral check, a Docker HEALTHCHECK decides (SPEC: healthy while Docker says so).
    const dockerHealth = c.State?.Health?.Status;
    if (!spec.healthCheck && dockerHealth && dockerHealth !== 'none') {
      spec.healthy = dockerHealth === 'healthy';
      spec.healthReason = `docker health: ${dockerHealth}`;
    }
    return spec;
  } catch (err) {
    if (err instanceof InvalidEndpoint) throw new LabelError(who, err.field, err.value, err.accepted);
    throw err;
  }
}

/** The endpoint for a container, or null when it is not labelled; throws LabelError. */
export function endpointFromContainer(c: InspectedContainer, node: string): Endpoint | null {
  const spec = endpointSpecFromContainer(c, node);
  if (!spec) return null;
  try {
    return newEndpoint(spec);
  } catch (err) {
    // newEndpoint names plain fields; everything it checks came from a label already validated.
    if (err instanceof InvalidEndpoint) throw new LabelError(`"${containerName(c)}" (${c.Id.slice(0, 12)})`, `corral.${err.field}`, err.value, err.accepted);
    throw err;
  }
}

function opt<T>(value: string | undefined, parse: (v: string) => T): T | undefined {
  return value === undefined ? undefined : parse(value);
}

function defaultPort(c: InspectedContainer): number {
  const tcp = Object.keys(c.Config.ExposedPorts ?? {}).filter((p) => !p.includes('/') || p.endsWith('/tcp'));
  if (tcp.length !== 1) return DEFAULT_PORT;
  const n = Number(tcp[0]!.split('/')[0]);
  return Number.isInteger(n) && n >= 1 && n <= 65535 ? n : DEFAULT_PORT;
}

function address(c: InspectedContainer, wanted: string | undefined, who: string): string {
  const networks = Object.entries(c.NetworkSettings?.Networks ?? {});
  const ipOf = (n: { IPAddress?: string; GlobalIPv6Address?: string }): string => n.IPAddress || n.GlobalIPv6Address || '';
  const withAddress = networks.filter(([, n]) => ipOf(n) !== '');
  if (wanted !== undefined) {
    const hit = withAddress.find(([name]) => name === wanted.trim());
    if (hit) return ipOf(hit[1]);
    const names = withAddress.map(([n]) => n);
    throw new InvalidEndpoint(LABEL.network, wanted, names.length
      ? `the name of one of the container's networks with an address: ${names.join(', ')}`
      : 'the name of a network the container is attached to, and it has no address on any');
  }
  const first = withAddress[0];
  if (!first) {
    throw new LabelError(who, '', '', 'it has no IP address on any network (network mode host, none or container:…); run it on a bridge or user-defined network');
  }
  return ipOf(first[1]);
}

function bool(label: string, value: string): boolean {
  const v = value.trim().toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(v)) return true;
  if (['false', '0', 'no', 'off', ''].includes(v)) return false;
  throw new InvalidEndpoint(label, value, 'true or false');
}

function positiveDuration(label: string, value: string): number {
  const ms = duration(label, value);
  if (ms < 1) throw new InvalidEndpoint(label, value, 'a duration above zero such as 500ms, 2s or 1m');
  return ms;
}

function deploy(value: string): string {
  const v = value.trim().toLowerCase();
  if (v !== 'manual' && v !== 'auto') throw new InvalidEndpoint(LABEL.deploy, value, 'manual or auto');
  return v;
}

/** corral.tcp.port, corral.tls.sni, corral.tcp.proxy-protocol: a PROXY header needs one of the two routes. */
function tcpRouting(get: (label: string) => string | undefined): Pick<EndpointSpec, 'tcpPort' | 'tlsSni' | 'proxyProtocol'> {
  const tcpPort = opt(get(LABEL.tcpPort), (v) => port(LABEL.tcpPort, v));
  const tlsSni = opt(get(LABEL.tlsSni), (v) => tlsServerNames(LABEL.tlsSni, v));
  const rawPp = get(LABEL.proxyProtocol);
  const pp = opt(rawPp, (v) => proxyProtocol(LABEL.proxyProtocol, v));
  if (pp && tcpPort === undefined && tlsSni === undefined) {
    throw new InvalidEndpoint(LABEL.proxyProtocol, rawPp!, `used only with ${LABEL.tcpPort} or ${LABEL.tlsSni} (it applies to TCP and TLS routes), and neither is set`);
  }
  return { tcpPort, tlsSni, proxyProtocol: pp };
}

function healthCheck(get: (label: string) => string | undefined): EndpointSpec['healthCheck'] {
  const tcp = opt(get(LABEL.healthTcp), (v) => bool(LABEL.healthTcp, v)) ?? false;
  const rawPath = get(LABEL.healthPath);
  if (tcp && rawPath !== undefined) {
    throw new InvalidEndpoint(LABEL.healthPath, rawPath, `not set together with ${LABEL.healthTcp}=true (a TCP check only connects); remove one of the two`);
  }
  const path = opt(rawPath, (v) => httpPath(LABEL.healthPath, v));
  const intervalMs = opt(get(LABEL.healthInterval), (v) => positiveDuration(LABEL.healthInterval, v)) ?? HEALTH_DEFAULTS.intervalMs;
  const timeoutMs = opt(get(LABEL.healthTimeout), (v) => positiveDuration(LABEL.healthTimeout, v)) ?? HEALTH_DEFAULTS.timeoutMs;
  const rise = opt(get(LABEL.healthRise), (v) => positiveInt(LABEL.healthRise, v, 100)) ?? HEALTH_DEFAULTS.rise;
  const fall = opt(get(LABEL.healthFall), (v) => positiveInt(LABEL.healthFall, v, 100)) ?? HEALTH_DEFAULTS.fall;
  if (!tcp && path === undefined) {
    // Tuning without a check is a mistake the user would not notice: say so.
    for (const label of [LABEL.healthInterval, LABEL.healthTimeout, LABEL.healthRise, LABEL.healthFall]) {
      const v = get(label);
      if (v !== undefined) throw new InvalidEndpoint(label, v, `used only with ${LABEL.healthPath} or ${LABEL.healthTcp}=true, and neither is set`);
    }
    return null;
  }
  return { path: path ?? '', tcp, intervalMs, timeoutMs, rise, fall };
}
