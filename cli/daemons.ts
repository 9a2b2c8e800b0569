// `corral up | agent | dns | lb`: the daemons, in the foreground until SIGINT/SIGTERM.
import { join } from 'node:path';
import { logFormat, makeLogger, parseLogFormat, useLogFormat, type LogFormat } from '../api/log.js';
import { defaultOptions, parseHostPort, type DaemonOptions } from '../api/options.js';
import type { WatchSource } from '../api/watch.js';
import { type FlagSpec, type Parsed, UsageError } from './flags.js';

export const DAEMON_FLAGS: FlagSpec[] = [
  { name: 'registry', help: 'embedded (default) or etcd://h1:2379,h2:2379' },
  { name: 'state-dir', help: 'registry, IPAM journal and keys (default /var/lib/corral)' },
  { name: 'run-dir', help: 'agent socket and pid files (default /run/corral)' },
  { name: 'agent-socket', help: 'the agent API socket (default <run dir>/agent.sock)' },
  { name: 'node-name', help: 'this host in the registry (default: the hostname)' },
  { name: 'cluster-cidr', help: 'cluster CIDR (default 10.42.0.0/16)' },
  { name: 'dns-listen', help: 'ADDR:PORT[,...] for DNS; "gateway:PORT" = this node\'s block gateway (default gateway:53,127.0.0.1:53)' },
  { name: 'dns-domain', help: 'DNS domain (default corral.internal)' },
  { name: 'dns-ttl', help: 'TTL of service answers in seconds (default 5)' },
  { name: 'dns-upstream', help: 'ADDR[:PORT][,...] upstream resolvers (default: /etc/resolv.conf)' },
  { name: 'dns-rate-limit', help: 'queries per second per client address, loopback exempt; 0 = none (default 2000)' },
  { name: 'dns-allow', help: 'CIDR[,...] that may resolve names outside the Corral domain, besides loopback, this host, the cluster CIDR (default none)' },
  { name: 'dns-udp-size', help: 'largest UDP reply, our EDNS0 payload size, 512..4096 (default 1232)' },
  { name: 'dns-threads', help: 'threads answering UDP inside the one dns process, 1..16; 0 = min(4, CPUs) (default 0)' },
  { name: 'http-listen', help: 'ADDR:PORT for the load balancer (default :80)' },
  { name: 'docker-socket', help: 'Docker socket to watch; "" disables (default /var/run/docker.sock)' },
  { name: 'docker-daemon-json', help: 'merge Docker\'s defaults for this host (bip, address pools, dns, mtu) into this daemon.json, e.g. /etc/docker/daemon.json: plain `docker run` and Compose join Corral\'s network; keys you set are kept; restart dockerd when the agent says so (default "": off)' },
  { name: 'docker-plugin-socket', help: 'serve the Docker network and IPAM driver here; the file name is the driver name (`-d corral --ipam-driver corral`); "" disables (default /run/docker/plugins/corral.sock)' },
  { name: 'lb-admin', help: 'agent: ADDR:PORT of this host\'s LB admin endpoint, whose per-color figures gate `corral upgrade` (default :9192; with `up`, its own LB)' },
  { name: 'admin-listen', help: 'ADDR:PORT of the status page and /metrics (agent 127.0.0.1:9190, dns :9191, lb :9192; with `up`, dns and lb take the next two ports)' },
  { name: 'log-level', help: 'trace, debug, info, warn, error (default info)' },
  { name: 'log-format', help: 'json or pretty (default: pretty when stderr is a terminal, else JSON lines)' },
  { name: 'lb-balance', help: 'lb: round-robin (smooth weighted, default) or least-request (power of two choices)' },
  { name: 'lb-connect-timeout', help: 'lb: upstream connect timeout (default 5s)' },
  { name: 'lb-headers-timeout', help: 'lb: upstream response headers timeout, then 504 (default 60s)' },
  { name: 'lb-idle-timeout', help: 'lb: idle keep-alive connections, client and upstream side, and an upstream silent mid-response (default 60s)' },
  { name: 'lb-request-timeout', help: 'lb: a client must send its whole request within this, else 408 (default 300s)' },
  { name: 'lb-client-headers-timeout', help: 'lb: a client must send its request headers within this, else 408 (default 20s)' },
  { name: 'lb-max-body', help: 'lb: request body limit, then 413, e.g. 10m; 0 = none (default 0)' },
  { name: 'lb-max-header-size', help: 'lb: request header block limit, then 431 (default 16k)' },
  { name: 'lb-threads', help: 'lb: threads serving HTTP(S) inside the one lb process (same port, SO_REUSEPORT), 1..64; 0 = one per CPU (default 0)' },
  { name: 'lb-access-log', boolean: true, help: 'lb: one log line per request (default off)' },
  { name: 'tls-cert-dir', help: 'lb: directory of <host>.crt + <host>.key (wildcards: _.example.com.crt); enables HTTPS' },
  { name: 'etcd-ca', help: 'etcd: CA certificate (PEM); enables TLS to etcd' },
  { name: 'etcd-cert', help: 'etcd: client certificate (PEM)' },
  { name: 'etcd-key', help: 'etcd: client key (PEM)' },
  { name: 'etcd-user', help: 'etcd: user this host authenticates as when etcd\'s auth is on (`corral etcd-init` makes one per host); without it a client certificate\'s CN is the user' },
  { name: 'etcd-password-file', help: 'etcd: file holding the --etcd-user password; must not be readable by other users' },
  { name: 'lease-ttl', help: 'etcd: seconds a dead host stays in the registry (default 10)' },
  { name: 'overlay', help: 'auto (WireGuard when the registry is etcd), off, kernel or wireguard-go (default auto)' },
  { name: 'wg-interface', help: 'WireGuard interface (default corral0)' },
  { name: 'wg-port', help: 'WireGuard UDP port (default 51820)' },
  { name: 'underlay-address', help: 'address other hosts reach this one at (default: source address of the default route)' },
  { name: 'mtu', help: 'overlay MTU (default: underlay MTU minus 60 for IPv4, 80 for IPv6)' },
  { name: 'key-rotation', help: 'rotate the WireGuard key this often, e.g. 24h; 0 = only by `corral rotate-keys` (default 0)' },
  { name: 'https-listen', help: 'lb: ADDR:PORT for HTTPS when certificates are configured (default :443)' },
  { name: 'lb-auth-dir', help: 'lb: directory of the basic-auth password files that corral.http.auth.basic names (default <state dir>/lb-auth)' },
  { name: 'acme-directory', help: 'lb: ACME directory URL; routes labelled corral.http.tls=acme get certificates from it (enables HTTPS)' },
  { name: 'acme-email', help: 'lb: contact e-mail of the ACME account' },
  { name: 'acme-ca', help: 'lb: PEM file of CAs to trust for the ACME directory\'s own HTTPS (default: the system\'s)' },
  { name: 'acme-all-hosts', boolean: true, help: 'lb: every exact route host gets an ACME certificate, labelled or not (default off)' },
  { name: 'acme-challenge', help: 'lb: http-01 (answered on the HTTP port, default) or tls-alpn-01 (on the HTTPS port)' },
  { name: 'acme-renew-before', help: 'lb: renew a certificate when this little validity is left, e.g. 30d (default: a third of its lifetime)' },
  { name: 'acme-retry', help: 'lb: first back-off after a failed ACME order, doubling up to 6h (default 1m)' },
];

/** "90s", "30m", "12h", "30d" -> milliseconds. */
function longDurationFlag(text: string, flag: string): number {
  const m = /^(\d+)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!m) throw new UsageError(`--${flag} "${text}" is not a duration such as 90s, 30m, 12h or 30d`);
  return Number(m[1]) * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] ?? 's'] ?? 1000);
}

function durationFlag(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim());
  if (!m) throw new UsageError(`--${flag} "${text}" is not a duration such as 500ms, 5s or 1m`);
  return Math.round(Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 'm' ? 60_000 : 1000));
}

function sizeFlag(text: string, flag: string): number {
  const m = /^(\d+)([kmg]?)b?$/i.exec(text.trim());
  if (!m) throw new UsageError(`--${flag} "${text}" is not a size such as 16k, 10m or 1g`);
  const unit = m[2]!.toLowerCase();
  return Number(m[1]) * (unit === 'k' ? 1024 : unit === 'm' ? 1024 ** 2 : unit === 'g' ? 1024 ** 3 : 1);
}

export function daemonOptions(p: Parsed): DaemonOptions {
  const o = defaultOptions();
  const f = p.flags;
  const list = (s: string) => s.split(',').map((x) => x.trim()).filter(Boolean);
  if (f.has('registry')) o.registry = f.get('registry')!;
  if (f.has('state-dir')) o.stateDir = f.get('state-dir')!;
  if (f.has('run-dir')) {
    o.runDir = f.get('run-dir')!;
    o.agentSocket = join(o.runDir, 'agent.sock');
  }
  if (f.has('agent-socket')) o.agentSocket = f.get('agent-socket')!;
  if (f.has('node-name')) o.nodeName = f.get('node-name')!;
  if (f.has('cluster-cidr')) o.clusterCidr = f.get('cluster-cidr')!;
  if (f.has('dns-listen')) o.dnsListen = list(f.get('dns-listen')!);
  if (f.has('dns-domain')) o.dnsDomain = f.get('dns-domain')!.toLowerCase().replace(/\.$/, '');
  if (f.has('dns-ttl')) {
    const t = Number(f.get('dns-ttl'));
    if (!Number.isInteger(t) || t < 0 || t > 86400) throw new UsageError(`--dns-ttl "${f.get('dns-ttl')}" is not a whole number of seconds from 0 to 86400`);
    o.dnsTtl = t;
  }
  if (f.has('dns-upstream')) o.dnsUpstream = list(f.get('dns-upstream')!);
  if (f.has('dns-rate-limit')) {
    const r = Number(f.get('dns-rate-limit'));
    if (!Number.isInteger(r) || r < 0) throw new UsageError(`--dns-rate-limit "${f.get('dns-rate-limit')}" is not a whole number of queries per second (0 = no limit)`);
    o.dnsRateLimit = r;
  }
  if (f.has('dns-allow')) o.dnsAllow = list(f.get('dns-allow')!);
  if (f.has('dns-udp-size')) {
    const n = Number(f.get('dns-udp-size'));
    if (!Number.isInteger(n) || n < 512 || n > 4096) throw new UsageError(`--dns-udp-size "${f.get('dns-udp-size')}" is not a whole number of bytes from 512 to 4096`);
    o.dnsUdpSize = n;
  }
  if (f.has('dns-threads')) {
    const n = Number(f.get('dns-threads'));
    if (!Number.isInteger(n) || n < 0 || n > 16) throw new UsageError(`--dns-threads "${f.get('dns-threads')}" is not a whole number from 0 (automatic) to 16`);
    o.dnsThreads = n;
  }
  if (f.has('http-listen')) o.httpListen = f.get('http-listen')!;
  if (f.has('docker-socket')) o.dockerSocket = f.get('docker-socket')!;
  if (f.has('docker-plugin-socket')) {
    const v = f.get('docker-plugin-socket')!;
    if (v && !/^\/.+\.sock$/.test(v)) throw new UsageError(`--docker-plugin-socket "${v}" is not an absolute path ending in .sock, such as /run/docker/plugins/corral.sock`);
    o.dockerPluginSocket = v;
  }
  if (f.has('docker-daemon-json')) {
    const v = f.get('docker-daemon-json')!;
    if (v && !v.startsWith('/')) throw new UsageError(`--docker-daemon-json "${v}" is not an absolute path, such as /etc/docker/daemon.json`);
    o.dockerDaemonJson = v;
  }
  if (f.has('admin-listen')) o.adminListen = f.get('admin-listen')!;
  if (f.has('lb-admin')) o.lbAdmin = f.get('lb-admin')!;
  if (f.has('log-level')) o.logLevel = f.get('log-level')!;
  const lb = o.lb;
  if (f.has('lb-balance')) {
    const b = f.get('lb-balance')!;
    if (b !== 'round-robin' && b !== 'least-request') throw new UsageError(`--lb-balance "${b}" is not round-robin or least-request`);
    lb.balance = b;
  }
  if (f.has('lb-connect-timeout')) lb.connectTimeoutMs = durationFlag(f.get('lb-connect-timeout')!, 'lb-connect-timeout');
  if (f.has('lb-headers-timeout')) lb.headersTimeoutMs = durationFlag(f.get('lb-headers-timeout')!, 'lb-headers-timeout');
  if (f.has('lb-idle-timeout')) lb.idleTimeoutMs = durationFlag(f.get('lb-idle-timeout')!, 'lb-idle-timeout');
  if (f.has('lb-request-timeout')) lb.requestTimeoutMs = durationFlag(f.get('lb-request-timeout')!, 'lb-request-timeout');
  if (f.has('lb-client-headers-timeout')) lb.clientHeadersTimeoutMs = durationFlag(f.get('lb-client-headers-timeout')!, 'lb-client-headers-timeout');
  if (f.has('lb-max-body')) lb.maxBodyBytes = sizeFlag(f.get('lb-max-body')!, 'lb-max-body');
  if (f.has('lb-max-header-size')) lb.maxHeaderBytes = sizeFlag(f.get('lb-max-header-size')!, 'lb-max-header-size');
  if (p.bools.has('lb-access-log')) lb.accessLog = true;
  if (f.has('lb-threads')) {
    const n = Number(f.get('lb-threads'));
    if (!Number.isInteger(n) || n < 0 || n > 64) throw new UsageError(`--lb-threads "${f.get('lb-threads')}" is not a whole number from 0 (one per CPU) to 64`);
    lb.threads = n;
  }
  if (f.has('tls-cert-dir')) lb.tlsCertDir = f.get('tls-cert-dir')!;
  if (f.has('https-listen')) lb.httpsListen = f.get('https-listen')!;
  if (f.has('lb-auth-dir')) lb.authDir = f.get('lb-auth-dir')!;
  lb.acme = { ...lb.acme };
  if (f.has('acme-directory')) {
    const v = f.get('acme-directory')!;
    if (v && !/^https?:\/\/\S+$/.test(v)) throw new UsageError(`--acme-directory "${v}" is not an http(s):// URL, such as https://acme-v02.api.letsencrypt.org/directory`);
    lb.acme.directory = v;
  }
  if (f.has('acme-email')) lb.acme.email = f.get('acme-email')!;
  if (f.has('acme-ca')) lb.acme.ca = f.get('acme-ca')!;
  if (p.bools.has('acme-all-hosts')) lb.acme.allHosts = true;
  if (f.has('acme-challenge')) {
    const v = f.get('acme-challenge')!;
    if (v !== 'http-01' && v !== 'tls-alpn-01') throw new UsageError(`--acme-challenge "${v}" is not http-01 or tls-alpn-01`);
    lb.acme.challenge = v;
  }
  if (f.has('acme-renew-before')) lb.acme.renewBeforeMs = longDurationFlag(f.get('acme-renew-before')!, 'acme-renew-before');
  if (f.has('acme-retry')) lb.acme.retryMs = Math.max(1000, longDurationFlag(f.get('acme-retry')!, 'acme-retry'));
  if ((lb.acme.allHosts || f.has('acme-email')) && !lb.acme.directory) throw new UsageError('--acme-email and --acme-all-hosts need --acme-directory');
  const mesh = o.mesh;
  if (f.has('etcd-ca')) mesh.etcdCa = f.get('etcd-ca')!;
  if (f.has('etcd-cert')) mesh.etcdCert = f.get('etcd-cert')!;
  if (f.has('etcd-key')) mesh.etcdKey = f.get('etcd-key')!;
  if (f.has('etcd-user')) mesh.etcdUser = f.get('etcd-user')!;
  if (f.has('etcd-password-file')) mesh.etcdPasswordFile = f.get('etcd-password-file')!;
  if (!mesh.etcdUser !== !mesh.etcdPasswordFile) throw new UsageError('--etcd-user and --etcd-password-file go together');
  if (f.has('lease-ttl')) {
    const t = Number(f.get('lease-ttl'));
    if (!Number.isInteger(t) || t < 2 || t > 3600) throw new UsageError(`--lease-ttl "${f.get('lease-ttl')}" is not a whole number of seconds from 2 to 3600`);
    mesh.leaseTtlS = t;
  }
  if (f.has('overlay')) {
    const v = f.get('overlay')!;
    if (v !== 'auto' && v !== 'off' && v !== 'kernel' && v !== 'wireguard-go') throw new UsageError(`--overlay "${v}" is not auto, off, kernel or wireguard-go`);
    mesh.overlay = v;
  }
  if (f.has('wg-interface')) {
    const v = f.get('wg-interface')!;
    if (!/^[a-zA-Z0-9_.-]{1,15}$/.test(v)) throw new UsageError(`--wg-interface "${v}" is not an interface name (1 to 15 letters, digits, "_", "-", ".")`);
    mesh.wgInterface = v;
  }
  if (f.has('wg-port')) {
    const v = Number(f.get('wg-port'));
    if (!Number.isInteger(v) || v < 1 || v > 65535) throw new UsageError(`--wg-port "${f.get('wg-port')}" is not a port from 1 to 65535`);
    mesh.wgPort = v;
  }
  if (f.has('underlay-address')) mesh.underlayAddress = f.get('underlay-address')!;
  if (f.has('mtu')) {
    const v = Number(f.get('mtu'));
    if (!Number.isInteger(v) || (v !== 0 && (v < 1280 || v > 65535))) throw new UsageError(`--mtu "${f.get('mtu')}" is not 0 (derive from the underlay) or a whole number from 1280 to 65535`);
    mesh.mtu = v;
  }
  if (f.has('key-rotation')) {
    const v = f.get('key-rotation')!;
    const m = /^(\d+)(s|m|h|d)?$/.exec(v.trim());
    if (!m) throw new UsageError(`--key-rotation "${v}" is not a duration such as 12h, 7d or 0`);
    mesh.keyRotationMs = Number(m[1]) * ({ s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] ?? 's'] ?? 1000);
  }
  try {
    for (const a of o.dnsListen) parseHostPort(a, '--dns-listen');
    parseHostPort(o.httpListen, '--http-listen');
    if (o.adminListen) parseHostPort(o.adminListen, '--admin-listen');
    parseHostPort(lb.httpsListen, '--https-listen');
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(o.logLevel)) {
    throw new UsageError(`--log-level "${o.logLevel}" is not one of trace, debug, info, warn, error`);
  }
  return o;
}

/** --log-format (or CORRAL_LOG_FORMAT): json, pretty, or undefined to decide by the terminal. */
export function logFormatFlag(p: Parsed): LogFormat | undefined {
  try {
    return parseLogFormat(p.flags.get('log-format'));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

interface Closable { close(): Promise<void> }

/** Runs the named parts in this process until SIGINT/SIGTERM, then stops them in reverse. */
export async function runDaemons(parts: Array<'agent' | 'dns' | 'lb'>, o: DaemonOptions, format?: LogFormat): Promise<number> {
  const running: Closable[] = [];
  // Decided once, here: worker threads (no terminal of their own) log in the same format.
  const chosen = logFormat(format);
  useLogFormat(chosen);
  const log = makeLogger(parts.length > 1 ? 'up' : parts[0]!, o.logLevel, chosen);
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    for (const r of running.reverse()) await r.close().catch((err: Error) => log.error({ err }, 'error while stopping'));
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  const admin = o.adminListen ? parseHostPort(o.adminListen, '--admin-listen') : undefined;
  const adminFor = (offset: number) => (admin && parts.length > 1 ? `${admin.host.includes(':') ? `[${admin.host}]` : admin.host}:${admin.port === 0 ? 0 : admin.port + offset}` : o.adminListen);
  try {
    // With the agent in this process, DNS and LB take its events directly (no socket, no copies).
    let watch: WatchSource | undefined;
    if (parts.includes('agent')) {
      const { Agent } = await import('../agent/agent.js');
      const lbAdmin = o.lbAdmin || (parts.includes('lb') && adminFor(2) ? adminFor(2) : '');
      const agent = new Agent({ ...o, adminListen: adminFor(0), lbAdmin }, log.child({ component: 'agent' }));
      await agent.start();
      running.push({ close: () => agent.stop() });
      watch = (component, handlers, l) => agent.localWatch(component, handlers, l);
    }
    if (parts.includes('dns')) {
      const { runDns } = await import('../dns/main.js');
      running.push(await runDns({ ...o, adminListen: adminFor(1) }, log.child({ component: 'dns' }), { watch }));
    }
    if (parts.includes('lb')) {
      const { runLb } = await import('../lb/main.js');
      running.push(await runLb({ ...o, adminListen: adminFor(2) }, log.child({ component: 'lb' }), { watch }));
    }
  } catch (err) {
    log.error({ err: (err as Error).message }, 'cannot start');
    for (const r of running.reverse()) await r.close().catch(() => {});
    // Last, after whatever closing the started parts logged: the one line a user reads.
    process.stderr.write(`corral: ${(err as Error).message}\n`);
    return 1;
  }
  log.info({ parts }, 'running; stop with Ctrl-C');
  return new Promise<number>(() => {});
}
