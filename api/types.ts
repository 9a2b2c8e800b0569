// TypeScript view of api/corral.proto (proto-loader with camelCase field names, longs as
// numbers, defaults filled in). Keep in step with the .proto: it is the source of truth.

export interface HealthCheck {
  path: string;
  tcp: boolean;
  intervalMs: number;
  timeoutMs: number;
  rise: number;
  fall: number;
}

export type EndpointOrigin = 'docker' | 'manual' | 'cni';

export interface Endpoint {
  id: string;
  service: string;
  namespace: string;
  address: string;
  port: number;
  portName: string;
  color: string;
  weight: number;
  healthy: boolean;
  healthReason: string;
  origin: EndpointOrigin | string;
  node: string;
  httpHosts: string[];
  httpPath: string;
  healthCheck: HealthCheck | null;
  deploy: string;
  drainMs: number;
  containerId: string;
  containerName: string;
  draining: boolean;
  /**
   * Balancing policy this endpoint asks the LB to use for its service (label `corral.lb.balance`,
   * `corral register --lb-balance`). '' — and absent, in records written before the field
   * existed — means "the LB's --lb-balance".
   */
  lbBalance?: string;
  /**
   * The route's edge labels (`corral.http.tls`, `.redirect`, `.hsts`, middlewares; full label names
   * -> values, lb/middleware/labels.ts). Absent or {} (records written before the field): none.
   */
  edge?: Record<string, string>;
  /**
   * TCP routing (lb/tcp/): the LB port that forwards raw connections to this endpoint (label
   * `corral.tcp.port`); 0 or absent: none, or, with `tlsSni`, the LB's HTTPS port.
   */
  tcpPort?: number;
  /** TLS routed by SNI without terminating it (label `corral.tls.sni`); empty or absent: none. */
  tlsSni?: string[];
  /** PROXY protocol header sent to this endpoint on TCP/TLS routes: 'v2', or '' (none). */
  proxyProtocol?: string;
}

/** The LB's balancing policies (`--lb-balance`, label `corral.lb.balance`). */
export const BALANCE_POLICIES = ['round-robin', 'least-request'] as const;
export type BalancePolicy = (typeof BALANCE_POLICIES)[number];

/** True for a policy name the LB knows (records may carry others, from newer agents). */
export function isBalancePolicy(value: unknown): value is BalancePolicy {
  return value === 'round-robin' || value === 'least-request';
}

export interface Service {
  namespace: string;
  name: string;
  active: Record<string, number>;
  previous: Record<string, number>;
}

/**
 * One host of the cluster, as every peer must know it. Written only when one of these fields
 * changes: liveness is the registry lease, and per-peer state lives in HostStatus.
 */
export interface Host {
  name: string;
  block: string;
  underlay: string;
  publicKey: string;
  version: string;
  wgPort: number;
  nextPublicKey: string;
  mtu: number;
  overlay: string;
}

/**
 * A host's report of how it is doing, outside the watched records (nobody's data plane acts on
 * it): what it has applied and a summary of its peers. Fixed size, whatever the fleet's size.
 */
export interface HostStatus {
  name: string;
  appliedRevision: number;
  reportedMs: number;
  version: string;
  peers: number;
  handshaken: number;
  stale: number;
  /** The peer with the oldest handshake ('' when none), and that handshake (0 = never). */
  worstPeer: string;
  worstHandshakeMs: number;
}

export interface PeerStatus {
  host: string;
  endpoint: string;
  lastHandshakeMs: number;
  rxBytes: number;
  txBytes: number;
  publicKey: string;
}

export interface RotateKeysReply { previousPublicKey: string; publicKey: string; revision: number; unconfirmed: string[] }

export interface Allocation {
  address: string;
  namespace: string;
  containerId: string;
  ifname: string;
  node: string;
  sinceMs: number;
  name: string;
}

/** Record kinds a watcher can ask for. */
export const RECORD_KINDS = ['endpoints', 'services', 'hosts', 'allocations'] as const;
export type RecordKindName = (typeof RECORD_KINDS)[number];

/** kinds empty: every kind. fromRevision > 0: resume after it if the agent still has the history. */
export interface WatchRequest { component: string; kinds?: string[]; fromRevision?: number }

export interface WatchEvent {
  revision: number;
  snapshot: boolean;
  endpoints: Endpoint[];
  services: Service[];
  hosts: Host[];
  deletedEndpoints: string[];
  deletedServices: string[];
  deletedHosts: string[];
  allocations: Allocation[];
  deletedAllocations: string[];
}

export interface AckRequest { component: string; revision: number }
export interface ListRequest { namespace: string; service: string }
export interface ListReply { revision: number; endpoints: Endpoint[]; services: Service[]; hosts: Host[]; allocations: Allocation[]; upgrades?: Upgrade[] }

export interface HostsRequest { host: string }
/** One host: its record, its last status report (null before the first), and this host's own view of it as a peer. */
export interface HostRow { host: Host; status: HostStatus | null; peer: PeerStatus | null }
export interface HostsReply {
  revision: number;
  node: string;
  rows: HostRow[];
  /** With a host named: that host's full peer list when it is this host (peers are read where they live). */
  peers: PeerStatus[];
  /** Records not served, and block conflicts, one line each. */
  problems: string[];
}

export interface RegisterRequest {
  service: string;
  namespace: string;
  address: string;
  port: number;
  color: string;
  httpHosts: string[];
  httpPath: string;
  weight: number;
  healthCheck: HealthCheck | null;
  portName: string;
  /** '' or absent: the LB's --lb-balance. */
  lbBalance?: string;
  /** corral.http.* edge labels (TLS by ACME, redirect, middlewares), checked as container labels are. */
  edge?: Record<string, string>;
  /**
  /** TCP/TLS routing, as in Endpoint; 0, empty or absent: none. */
  tcpPort?: number;
  tlsSni?: string[];
  proxyProtocol?: string;
}
export interface DeregisterRequest { service: string; namespace: string; address: string; port: number }
export interface EndpointReply { revision: number; endpoint: Endpoint | null }

export interface SwitchRequest { service: string; namespace: string; color: string }
export interface WeightRequest { service: string; namespace: string; weights: Record<string, number> }
export interface RollbackRequest { service: string; namespace: string }
export interface ServiceReply { revision: number; service: Service | null }

/** `corral upgrade` (api/corral.proto: Upgrade): one record per service, /corral/upgrades/<ns>/<name>. */
export const UPGRADE_PHASES = ['checking', 'cloning', 'stepping', 'completing', 'completed', 'rolling-back', 'rolled-back', 'failed', 'finishing', 'finished', 'reverting'] as const;
export type UpgradePhase = (typeof UPGRADE_PHASES)[number];
/** Phases in which nothing is left to do: a new upgrade of the service may start. */
export const UPGRADE_ENDED: ReadonlySet<string> = new Set(['completed', 'rolled-back', 'failed', 'finished']);

export interface Upgrade {
  namespace: string;
  name: string;
  id: string;
  image: string;
  fromColor: string;
  toColor: string;
  original: Record<string, number>;
  steps: number[];
  stepMs: number;
  maxErrorRate: number;
  maxP99Ms: number;
  maxP99Ratio: number;
  readyTimeoutMs: number;
  driver: string;
  phase: UpgradePhase;
  step: number;
  startedMs: number;
  stepStartedMs: number;
  reason: string;
  gate: string;
  hosts: string[];
}

export interface UpgradeClone { oldId: string; oldName: string; cloneId: string; cloneName: string }
export interface ColorFigures { color: string; requests: number; errors: number; buckets: number[] }
export interface UpgradeReport {
  node: string;
  namespace: string;
  name: string;
  id: string;
  phase: string;
  done: boolean;
  error: string;
  clones: UpgradeClone[];
  step: number;
  figures: ColorFigures[];
}

export interface UpgradeRequest {
  service: string;
  namespace: string;
  action: 'start' | 'finish' | 'rollback' | 'watch' | string;
  image: string;
  color: string;
  steps: number[];
  stepMs: number;
  maxErrorRate: number;
  maxP99Ms: number;
  maxP99Ratio: number;
  readyTimeoutMs: number;
  detach: boolean;
}
export interface UpgradeEvent { ms: number; line: string; upgrade: Upgrade | null; final: boolean }

export interface ComponentStatus { component: string; appliedRevision: number; connected: boolean }
export interface StatusReply {
  node: string;
  version: string;
  registry: string;
  revision: number;
  appliedRevision: number;
  components: ComponentStatus[];
  dockerConnected: boolean;
  dockerError: string;
  services: number;
  endpoints: number;
  healthyEndpoints: number;
  registryConnected: boolean;
  registryError: string;
  registrySinceMs: number;
  overlay: string;
  peers: PeerStatus[];
  block: string;
  publicKey: string;
  /** Registry records this agent does not serve (invalid, or conflicting), one line each. */
  problems: string[];
  /** Upgrades in progress, one line each (absent from agents before `corral upgrade`). */
  upgrades?: string[];
}

export interface CniRequest { command: string; containerId: string; netns: string; ifname: string; args: string; config: Buffer }
export interface CniReply { result: Buffer; code: number; msg: string; details: string }
export interface IpamGcReply { freed: Allocation[] }

/** The namespace of a service or container that names none (SPEC: "Namespace defaults to `default`"). */
export const DEFAULT_NAMESPACE = 'default';
/** The deployment color of an endpoint that names none. */
export const DEFAULT_COLOR = 'default';

/** "<ns>/<name>": how a service is named in deltas and indexes. */
export function serviceKey(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}

/** A WatchEvent with nothing in it, to fill. */
export function emptyEvent(revision: number, snapshot: boolean): WatchEvent {
  return { revision, snapshot, endpoints: [], services: [], hosts: [], deletedEndpoints: [], deletedServices: [], deletedHosts: [], allocations: [], deletedAllocations: [] };
}
