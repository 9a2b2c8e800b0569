// Daemon options shared by `corral up | agent | dns | lb`. Every default is overridable by a
// flag and by a CORRAL_* environment variable (cli/flags.ts does the parsing).
import { hostname } from 'node:os';
import { join } from 'node:path';

export interface DaemonOptions {
  registry: string;           // "embedded" | "etcd://h1:2379,h2:2379"
  stateDir: string;
  runDir: string;
  agentSocket: string;        // default <runDir>/agent.sock
  nodeName: string;
  clusterCidr: string;
  dnsListen: string[];        // "ADDR:PORT"
  dnsDomain: string;
  dnsTtl: number;             // seconds
  dnsUpstream: string[];      // "ADDR[:PORT]"; empty = read /etc/resolv.conf
  dnsRateLimit: number;       // queries/s per client address (loopback exempt); 0 = no limit
  dnsAllow: string[];         // CIDRs besides loopback, host, cluster CIDR and allocations that may recurse
  dnsUdpSize: number;         // our EDNS0 UDP payload size (largest UDP reply), 512..4096
  dnsThreads: number;         // threads reading the UDP sockets in the one dns process; 0 = min(4, CPUs)
  httpListen: string;         // "ADDR:PORT" (ADDR may be empty for all addresses)
  dockerSocket: string;       // "" disables Docker
  dockerPluginSocket: string; // Docker network + IPAM driver socket; "" disables
  dockerDaemonJson: string;   // daemon.json the agent merges Docker's defaults into (agent/docker/defaults.ts); "" = off
  adminListen: string;        // per daemon: agent 127.0.0.1:9190, dns :9191, lb :9192 (status page `/` to loopback clients only)
  lbAdmin?: string;           // agent: this host's LB admin address, whose /gate `corral upgrade` reads ('' = the LB's default, or with `up` its own)
  logLevel: string;
  lb: LbOptions;
  mesh: MeshOptions;
}

/** The multi-host side: etcd session and the WireGuard overlay (flags --etcd-*, --lease-ttl, --overlay, --wg-*, --underlay-*, --key-rotation). */
export interface MeshOptions {
  etcdCa: string;             // PEM paths; TLS to etcd when etcdCa is set
  etcdCert: string;
  etcdKey: string;
  etcdUser: string;            // etcd password auth when set (--etcd-user, --etcd-password-file)
  etcdPasswordFile: string;
  leaseTtlS: number;          // a dead host leaves the registry after this
  overlay: 'auto' | 'off' | 'kernel' | 'wireguard-go'; // auto: on with etcd, kernel when the module exists
  wgInterface: string;        // corral0
  wgPort: number;             // 51820
  underlayAddress: string;    // published endpoint address; "" = the source address of the default route
  mtu: number;                // 0 = underlay MTU minus WireGuard overhead
  keyRotationMs: number;      // 0 = only on `corral rotate-keys`
}

export const MESH_DEFAULTS: MeshOptions = {
  etcdCa: '', etcdCert: '', etcdKey: '', etcdUser: '', etcdPasswordFile: '',
  leaseTtlS: 10,
  overlay: 'auto',
  wgInterface: 'corral0',
  wgPort: 51820,
  underlayAddress: '',
  mtu: 0,
  keyRotationMs: 0,
};

/** `corral lb` knobs (flags --lb-*, --tls-cert-dir, --https-listen; README "lb" says what each does). */
export interface LbOptions {
  balance: 'round-robin' | 'least-request';
  connectTimeoutMs: number;   // upstream TCP connect
  headersTimeoutMs: number;   // upstream response headers (504 when exceeded)
  idleTimeoutMs: number;      // idle keep-alive, client side and upstream side; an upstream silent mid-response
  requestTimeoutMs: number;   // a client must send its whole request within this (408)
  clientHeadersTimeoutMs: number; // a client must send its request headers within this (408)
  maxBodyBytes: number;       // request body limit (413); 0 = none
  maxHeaderBytes: number;     // request header block limit (431)
  tlsCertDir: string;         // <host>.crt + <host>.key per Host; "" = no HTTPS
  httpsListen: string;        // used when tlsCertDir has certificates
  accessLog: boolean;         // one pino line per request
  threads: number;            // threads serving HTTP(S) in the one lb process (SO_REUSEPORT); 0 = one per CPU
  authDir: string;            // basic-auth password files named by corral.http.auth.basic; "" = <state dir>/lb-auth
  acme: AcmeOptions;
  httpListen?: string;        // filled by runLb from --http-listen: TCP routes (lb/tcp/) listen on its address
}

/** ACME (lb/acme/): certificates for routes labelled corral.http.tls=acme (flags --acme-*). */
export interface AcmeOptions {
  directory: string;          // the ACME directory URL; "" = no ACME
  email: string;              // account contact
  ca: string;                 // PEM file of CAs trusted for the directory's own HTTPS ("" = the system's)
  allHosts: boolean;          // every exact route host gets a certificate, labelled or not
  challenge: 'http-01' | 'tls-alpn-01';
  renewBeforeMs: number;      // renew when this little validity is left; 0 = a third of the certificate's lifetime
  retryMs: number;            // first back-off after a failed order (doubles up to 6 h)
  dir: string;                // where the LB keeps ACME files: <state dir>/acme (set by the LB)
}

export const LB_DEFAULTS: LbOptions = {
  balance: 'round-robin',
  connectTimeoutMs: 5_000,
  headersTimeoutMs: 60_000,
  idleTimeoutMs: 60_000,
  requestTimeoutMs: 300_000,
  clientHeadersTimeoutMs: 20_000,
  maxBodyBytes: 0,
  maxHeaderBytes: 16 * 1024,
  tlsCertDir: '',
  httpsListen: ':443',
  accessLog: false,
  threads: 0,
  authDir: '',
  acme: { directory: '', email: '', ca: '', allHosts: false, challenge: 'http-01', renewBeforeMs: 0, retryMs: 60_000, dir: '' },
};

/**
 * Where each daemon's admin endpoint listens by default. dns and lb listen on all addresses so
 * Prometheus on another host can scrape /metrics (and probe /healthz, /readyz); their status page
 * `/` lists topology and answers loopback clients only (api/admin.ts). The agent's stays on loopback.
 */
export const ADMIN_DEFAULTS = { agent: '127.0.0.1:9190', dns: ':9191', lb: ':9192' } as const;

export function defaultOptions(): DaemonOptions {
  const runDir = '/run/corral';
  return {
    registry: 'embedded',
    stateDir: '/var/lib/corral',
    runDir,
    agentSocket: join(runDir, 'agent.sock'),
    nodeName: hostname(),
    clusterCidr: '10.42.0.0/16',
    dnsListen: ['gateway:53', '127.0.0.1:53'], // "gateway": this node's block gateway address(es)
    dnsDomain: 'corral.internal',
    dnsTtl: 5,
    dnsUpstream: [],
    dnsRateLimit: 2000,
    dnsAllow: [],
    dnsUdpSize: 1232,
    dnsThreads: 0,
    httpListen: ':80',
    dockerSocket: '/var/run/docker.sock',
    dockerPluginSocket: '/run/docker/plugins/corral.sock',
    dockerDaemonJson: '',
    adminListen: '',
    logLevel: 'info',
    lb: { ...LB_DEFAULTS },
    mesh: { ...MESH_DEFAULTS },
  };
}

/** An admin listen address as a client on this host reaches it (":9192" -> "127.0.0.1:9192"). */
export function localAddress(listen: string): string {
  const { host, port } = parseHostPort(listen, 'admin address');
  if (host === '' || host === '0.0.0.0') return `127.0.0.1:${port}`;
  if (host === '::') return `[::1]:${port}`;
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** "ADDR:PORT", "[v6]:PORT" or ":PORT" -> host and port. Throws with what is accepted. */
export function parseHostPort(text: string, what: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new Error(`${what} "${text}" is not ADDR:PORT (for example 127.0.0.1:53, [::1]:53 or :80)`);
  }
  return { host: m[1] ?? m[2] ?? '', port };
}
