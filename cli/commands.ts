// The client commands: they talk to the agent over its socket and print one readable result.
import { agentClient, grpc, unary } from '../api/grpc.js';
import { defaultOptions } from '../api/options.js';
import { activeColors, isServing } from '../api/traffic.js';
import { BALANCE_POLICIES, DEFAULT_NAMESPACE, UPGRADE_ENDED, isBalancePolicy, type Endpoint, type EndpointReply, type HealthCheck, type HostRow, type HostsReply, type ListReply, type RotateKeysReply, type Service, type ServiceReply, type StatusReply } from '../api/types.js';
import { duration } from '../agent/endpoints.js';
import type { ColorChanges } from '../agent/color-changes.js';
import { type FlagSpec, type Parsed, UsageError } from './flags.js';
import { describe } from '../agent/upgrade/describe.js';
import { consoleCommands } from './console.js';
import { ipamCommands } from './ipam.js';
import { UPGRADE_FLAGS, upgradeCommand } from './upgrade.js';

export const CLIENT_FLAGS: FlagSpec[] = [
  { name: 'agent-socket', help: 'the agent API socket (default /run/corral/agent.sock)' },
  { name: 'run-dir', help: 'run dir holding agent.sock (default /run/corral)' },
  { name: 'namespace', short: 'n', help: 'namespace (default "default")' },
  { name: 'json', boolean: true, help: 'machine-readable output' },
  { name: 'color', help: 'register: deployment color (default "default"); upgrade: the new containers\' color (default blue <-> green)' },
  { name: 'http-host', help: 'register: comma-separated Host names the LB routes here' },
  { name: 'http-path', help: 'register: path prefix (default /)' },
  { name: 'health-path', help: 'register: HTTP health check path' },
  { name: 'health-tcp', boolean: true, help: 'register: TCP connect health check' },
  { name: 'health-interval', help: 'register: check interval (default 2s)' },
  { name: 'weight', help: 'register: endpoint weight (default 1)' },
  { name: 'port-name', help: 'register: SRV port name (default http)' },
  { name: 'lb-balance', help: 'register: how the LB balances this service: round-robin or least-request (default: the LB\'s --lb-balance)' },
  { name: 'tcp-port', help: 'register: LB port that forwards raw TCP connections to this endpoint (corral.tcp.port)' },
  { name: 'tls-sni', help: 'register: TLS server names the LB routes to this endpoint without terminating TLS, comma-separated (corral.tls.sni)' },
  { name: 'label', repeat: true, help: 'register: a corral.http.* edge label as on a container, name=value (corral.http.redirect=https, corral.http.rate-limit=100/s, ...); repeatable' },
  { name: 'proxy-protocol', help: 'register: v2 to send a PROXY protocol v2 header on TCP/TLS routes (corral.tcp.proxy-protocol)' },
  { name: 'bin-dir', help: 'install-cni: CNI bin dir (default /opt/cni/bin)' },
  { name: 'conf-dir', help: 'install-cni: CNI config dir (default /etc/cni/net.d)' },
  { name: 'node-binary', help: 'install-cni: the node executable the plugin runs with on this host (default: the one running corral)' },
  { name: 'namespace-from-pod', boolean: true, help: 'install-cni: a Kubernetes pod\'s namespace is its Corral namespace (-n for the rest)' },
  { name: 'registry', help: 'switch, weight, rollback: write the service record in this etcd (etcd://h1:2379,...) as --etcd-user, not through the agent' },
  { name: 'etcd-ca', help: 'with --registry: CA certificate (PEM); enables TLS to etcd' },
  { name: 'etcd-cert', help: 'with --registry: client certificate (PEM); its CN is the etcd user when no --etcd-user is given' },
  { name: 'etcd-key', help: 'with --registry: client key (PEM)' },
  { name: 'etcd-user', help: 'with --registry: the operator\'s etcd user (`corral etcd-init` makes corral-operator)' },
  { name: 'etcd-password-file', help: 'with --registry: file holding its password (mode 600)' },
  ...UPGRADE_FLAGS,
  { name: 'log-format', help: 'with --registry: json or pretty for its warnings (default: pretty on a terminal)' },
  { name: 'state-dir', help: 'console: the agent\'s state dir, holding console.token (default /var/lib/corral)' },
  { name: 'admin-listen', help: 'console: the agent\'s --admin-listen (default 127.0.0.1:9190)' },
];

type Client = ReturnType<typeof agentClient>;

/** switch | weight | rollback --registry: the change made in etcd by this command (cli/operator.ts). */
async function colorChangeInEtcd(p: Parsed, change: (c: ColorChanges) => Promise<ServiceReply>): Promise<ServiceReply> {
  return (await import('./operator.js')).colorChangeInEtcd(p, change);
}

function socketOf(p: Parsed): string {
  if (p.flags.has('agent-socket')) return p.flags.get('agent-socket')!;
  if (p.flags.has('run-dir')) return `${p.flags.get('run-dir')}/agent.sock`;
  return defaultOptions().agentSocket;
}

/** One line that says what went wrong and what to do, for gRPC errors. */
export function explain(err: unknown, socket: string): string {
  const e = err as grpc.ServiceError;
  if (e && typeof e.code === 'number') {
    if (e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED) {
      return `cannot reach the agent at ${socket}: is \`corral up\` or \`corral agent\` running? (--agent-socket to use another)`;
    }
    return e.details || e.message;
  }
  return err instanceof Error ? err.message : String(err);
}

function out(p: Parsed, json: unknown, text: string): void {
  process.stdout.write(p.bools.has('json') ? JSON.stringify(json, null, 2) + '\n' : text.endsWith('\n') || text === '' ? text : text + '\n');
}

function table(rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n') + '\n';
}

function addrPort(text: string | undefined, what: string): { address: string; port: number } {
  const m = text ? /^(?:\[([^\]]+)\]|([^:\s]+)):(\d{1,5})$/.exec(text) : null;
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 1 || port > 65535) throw new UsageError(`${what} needs ADDR:PORT (for example 10.0.0.5:8080 or [fd00::5]:8080), got "${text ?? ''}"`);
  return { address: m[1] ?? m[2]!, port };
}

function tcpPortFlag(text: string): number {
  const n = /^\d{1,5}$/.test(text.trim()) ? Number(text) : NaN;
  if (!(n >= 1 && n <= 65535)) throw new UsageError(`--tcp-port "${text}" is not a port number from 1 to 65535`);
  return n;
}

/** `--label name=value` values as a map; the agent checks names and values as it checks container labels. */
function edgeLabels(values: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values) {
    const eq = v.indexOf('=');
    if (eq <= 0) throw new UsageError(`--label "${v}" is not name=value (for example corral.http.redirect=https)`);
    out[v.slice(0, eq).trim()] = v.slice(eq + 1);
  }
  return out;
}

function need(p: Parsed, n: number, usage: string): string[] {
  if (p.args.length !== n) throw new UsageError(`usage: corral ${usage}`);
  return p.args;
}

function durationMs(text: string | undefined, what: string): number {
  if (text === undefined) return 0;
  try {
    return duration(what, text);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function colorsText(active: Record<string, number>): string {
  const e = Object.entries(active);
  if (e.length === 1) return e[0]![0];
  return e.map(([c, w]) => `${c}=${w}`).join(' ');
}

export const commands: Record<string, { usage: string; run(p: Parsed, c: Client): Promise<void> }> = {
  status: {
    usage: 'status [--json]',
    async run(p, c) {
      const s = await unary<object, StatusReply>(c, 'Status', {});
      const comps = s.components.map((x) => `${x.component}: ${x.connected ? (x.appliedRevision >= s.revision ? `applied ${x.appliedRevision} (in sync)` : `applied ${x.appliedRevision} (behind)`) : `disconnected, last applied ${x.appliedRevision}`}`);
      out(p, s, [
        `node       ${s.node} (corral ${s.version})`,
        `registry   ${s.registry} at revision ${s.revision}; this host applied ${s.appliedRevision}${s.registryConnected ? '' : ` — STALE: registry unreachable since ${new Date(Number(s.registrySinceMs)).toISOString()} (${s.registryError}); serving the last state it saw`}`,
        ...(s.overlay ? [`overlay    ${s.overlay}, block ${s.block}, key ${s.publicKey}`, ...peerLines(s)] : []),
        `docker     ${s.dockerConnected ? 'connected' : `not connected: ${s.dockerError}`}`,
        `services   ${s.services}, endpoints ${s.endpoints} (${s.healthyEndpoints} serving)`,
        ...(comps.length ? comps.map((x, i) => `${i === 0 ? 'components ' : '           '}${x}`) : ['components none watching']),
        ...(s.upgrades ?? []).map((x, i) => `${i === 0 ? 'upgrades   ' : '           '}${x}`),
        ...s.problems.slice(0, PEER_LINES).map((x, i) => `${i === 0 ? 'problems   ' : '           '}${x}`),
        ...(s.problems.length > PEER_LINES ? [`           and ${s.problems.length - PEER_LINES} more (\`corral status --json\`)`] : []),
      ].join('\n'));
    },
  },
  hosts: {
    usage: 'hosts [<host>] [--json]',
    async run(p, c) {
      if (p.args.length > 1) throw new UsageError(`usage: corral ${this.usage}`);
      const r = await unary<object, HostsReply>(c, 'Hosts', { host: p.args[0] ?? '' });
      const now = Date.now();
      const ago = (ms: number) => (ms ? `${Math.max(0, Math.round((now - ms) / 1000))}s ago` : 'never');
      const problems = r.problems.map((x) => `problem: ${x}`);
      if (!p.args[0]) {
        // One line per host, whatever the fleet's size: its peers summed up, the worst one named.
        const peersText = (row: HostRow) => {
          const st = row.status;
          if (!row.host.publicKey) return '-';
          if (!st) return 'no report yet';
          if (st.peers === 0) return 'no peers';
          return `${st.handshaken}/${st.peers}${st.stale ? `, ${st.stale} stale` : ''}${st.worstPeer ? `, oldest ${st.worstPeer} ${ago(Number(st.worstHandshakeMs))}` : ''}`;
        };
        out(p, r, table([['HOST', 'BLOCK', 'UNDERLAY', 'APPLIED', 'PEERS (handshaken)', 'VERSION', 'REPORTED'], ...r.rows.map((row) => [
          row.host.name + (row.host.name === r.node ? ' (this host)' : ''), row.host.block || '-', row.host.underlay || '-',
          row.status ? String(row.status.appliedRevision) : '-', peersText(row), row.host.version || '-', row.status ? ago(Number(row.status.reportedMs)) : '-',
        ])]) + [`revision ${r.revision}; \`corral hosts <host>\` for one host`, ...problems].join('\n'));
        return;
      }
      const row = r.rows[0]!;
      const h = row.host;
      const st = row.status;
      const lines = [
        `host       ${h.name}${h.name === r.node ? ' (this host)' : ''}, corral ${h.version || '?'}`,
        `block      ${h.block || '-'}, underlay ${h.underlay ? `${h.underlay}:${h.wgPort}` : '-'}, ${h.overlay || 'no overlay'}${h.mtu ? `, MTU ${h.mtu}` : ''}`,
        `key        ${h.publicKey || '-'}${h.nextPublicKey ? ` (rotating to ${h.nextPublicKey})` : ''}`,
        st ? `report     ${ago(Number(st.reportedMs))}: applied revision ${st.appliedRevision}, ${st.handshaken}/${st.peers} peers handshaken, ${st.stale} stale` : 'report     none yet',
      ];
      if (h.name === r.node) {
        lines.push(...(r.peers.length ? table([['PEER', 'ENDPOINT', 'HANDSHAKE', 'RX', 'TX'], ...r.peers.map((x) => [x.host, x.endpoint || '-', ago(Number(x.lastHandshakeMs)), String(x.rxBytes), String(x.txBytes)])]).trimEnd().split('\n') : ['peers      none']));
      } else {
        lines.push(row.peer ? `from here  ${row.peer.endpoint || '?'}, handshake ${ago(Number(row.peer.lastHandshakeMs))}, rx ${row.peer.rxBytes} tx ${row.peer.txBytes}` : 'from here  not a peer of this host');
        lines.push(`           its own peer list: \`corral hosts ${h.name}\` on ${h.name} (peer state is read where it lives)`);
      }
      out(p, r, [...lines, ...problems].join('\n'));
    },
  },
  services: {
    usage: 'services [-n ns] [--json]',
    async run(p, c) {
      const ns = p.flags.get('namespace') ?? '';
      const l = await unary<object, ListReply>(c, 'List', { namespace: ns, service: '' });
      // A service with endpoints but no record yet (with etcd's auth on, only the operator writes
      // records) is listed too: every color present serves.
      const all = new Map(l.services.map((s) => [`${s.namespace}/${s.name}`, { namespace: s.namespace, name: s.name, record: s as Service | undefined }]));
      for (const e of l.endpoints) if (!all.has(`${e.namespace}/${e.service}`)) all.set(`${e.namespace}/${e.service}`, { namespace: e.namespace, name: e.service, record: undefined });
      const rows = [...all.values()]
        .sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`))
        .map((s) => {
          const eps = l.endpoints.filter((e) => e.namespace === s.namespace && e.service === s.name);
          const active = activeColors(s.record, eps);
          const serving = eps.filter((e) => active.has(e.color) && isServing(e)).length;
          const hosts = [...new Set(eps.flatMap((e) => e.httpHosts))].join(',') || '-';
          return [s.name, s.namespace, colorsText(Object.fromEntries(active)) || '-', `${serving}/${eps.length}`, hosts];
        });
      // Upgrades under way, one line each under the table (`corral upgrade <service> --watch` follows one).
      const upgrades = (l.upgrades ?? []).filter((u) => !UPGRADE_ENDED.has(u.phase)).map((u) => `upgrade ${u.name}.${u.namespace}: ${describe(u)}\n`).join('');
      out(p, { revision: l.revision, services: l.services, upgrades: l.upgrades ?? [] }, table([['SERVICE', 'NAMESPACE', 'ACTIVE', 'SERVING', 'HTTP HOSTS'], ...rows]) + upgrades + `revision ${l.revision}`);
    },
  },
  endpoints: {
    usage: 'endpoints <service> [-n ns] [--json]',
    async run(p, c) {
      const [service] = need(p, 1, this.usage);
      const ns = p.flags.get('namespace') ?? DEFAULT_NAMESPACE;
      const l = await unary<object, ListReply>(c, 'List', { namespace: ns, service });
      if (l.endpoints.length === 0 && l.services.length === 0) throw new OpFailed(`no service ${service} in namespace ${ns}; see \`corral services\``);
      const state = (e: Endpoint) => (e.draining ? 'draining' : e.healthy ? 'healthy' : 'unhealthy');
      out(p, { revision: l.revision, endpoints: l.endpoints, service: l.services[0] ?? null }, table([
        ['ADDRESS', 'COLOR', 'WEIGHT', 'STATE', 'ORIGIN', 'NODE', 'REASON'],
        ...l.endpoints.map((e) => [`${e.address.includes(':') ? `[${e.address}]` : e.address}:${e.port}`, e.color, String(e.weight), state(e), e.containerName ? `${e.origin} ${e.containerName}` : e.origin, e.node, e.healthReason]),
      ]) + `revision ${l.revision}`);
    },
  },
  register: {
    usage: 'register <service> <addr>:<port> [-n ns] [--color c] [--http-host h] [--http-path p] [--health-path p] [--weight w] [--lb-balance round-robin|least-request] [--tcp-port p] [--tls-sni names] [--proxy-protocol v2] [--label corral.http.<name>=<value> ...]',
    async run(p, c) {
      const [service, target] = need(p, 2, this.usage);
      const { address, port } = addrPort(target, 'register');
      const f = p.flags;
      const weight = f.has('weight') ? Number(f.get('weight')) : 0;
      if (f.has('weight') && !(Number.isInteger(weight) && weight >= 1)) throw new UsageError(`--weight "${f.get('weight')}" is not a whole number of 1 or more`);
      const lbBalance = f.has('lb-balance') ? f.get('lb-balance')!.trim().toLowerCase() : '';
      if (f.has('lb-balance') && !isBalancePolicy(lbBalance)) throw new UsageError(`--lb-balance "${f.get('lb-balance')}" is not ${BALANCE_POLICIES.join(' or ')}`);
      const healthCheck: HealthCheck | null = f.has('health-path') || p.bools.has('health-tcp')
        ? { path: f.get('health-path') ?? '', tcp: p.bools.has('health-tcp'), intervalMs: durationMs(f.get('health-interval'), '--health-interval'), timeoutMs: 0, rise: 0, fall: 0 }
        : null;
      const r = await unary<object, EndpointReply>(c, 'Register', {
        service, namespace: f.get('namespace') ?? DEFAULT_NAMESPACE, address, port, color: f.get('color') ?? '',
        httpHosts: f.has('http-host') ? [f.get('http-host')!] : [], httpPath: f.get('http-path') ?? '', weight, healthCheck, portName: f.get('port-name') ?? '', lbBalance,
        tcpPort: f.has('tcp-port') ? tcpPortFlag(f.get('tcp-port')!) : 0,
        tlsSni: f.has('tls-sni') ? f.get('tls-sni')!.split(',').map((h) => h.trim()).filter(Boolean) : [],
        proxyProtocol: f.get('proxy-protocol') ?? '',
        edge: edgeLabels(p.lists.get('label') ?? []),
      });
      out(p, r, `registered ${target} as ${r.endpoint?.service}.${r.endpoint?.namespace} (color ${r.endpoint?.color}) at revision ${r.revision}`);
    },
  },
  deregister: {
    usage: 'deregister <service> <addr>:<port> [-n ns]',
    async run(p, c) {
      const [service, target] = need(p, 2, this.usage);
      const { address, port } = addrPort(target, 'deregister');
      const r = await unary<object, EndpointReply>(c, 'Deregister', { service, namespace: p.flags.get('namespace') ?? DEFAULT_NAMESPACE, address, port });
      out(p, r, `deregistered ${target} from ${service} at revision ${r.revision}${r.endpoint?.draining ? ` (draining for ${r.endpoint.drainMs} ms)` : ''}`);
    },
  },
  switch: {
    usage: 'switch <service> <color> [-n ns] [--registry etcd://… --etcd-user U --etcd-password-file F]',
    async run(p, c) {
      const [service, color] = need(p, 2, this.usage);
      const req = { service, namespace: p.flags.get('namespace') ?? DEFAULT_NAMESPACE, color };
      const r = p.flags.has('registry') ? await colorChangeInEtcd(p, (cc) => cc.switchColor(req)) : await unary<object, ServiceReply>(c, 'Switch', req);
      out(p, r, `${service}: active color is now ${colorsText(r.service?.active ?? {})} at revision ${r.revision}`);
    },
  },
  weight: {
    usage: 'weight <service> <color>=<weight> [<color>=<weight> ...] [-n ns] [--registry etcd://… --etcd-user U --etcd-password-file F]',
    async run(p, c) {
      if (p.args.length < 2) throw new UsageError(`usage: corral ${this.usage}`);
      const [service, ...pairs] = p.args;
      const weights: Record<string, number> = {};
      for (const pair of pairs) {
        const m = /^([^=\s]+)=(\d+)$/.exec(pair);
        if (!m) throw new UsageError(`"${pair}" is not COLOR=WEIGHT (for example blue=90 green=10)`);
        weights[m[1]!] = Number(m[2]);
      }
      const req = { service: service!, namespace: p.flags.get('namespace') ?? DEFAULT_NAMESPACE, weights };
      const r = p.flags.has('registry') ? await colorChangeInEtcd(p, (cc) => cc.weight(req)) : await unary<object, ServiceReply>(c, 'Weight', req);
      out(p, r, `${service}: weights are now ${colorsText(r.service?.active ?? {})} at revision ${r.revision}`);
    },
  },
  rollback: {
    usage: 'rollback <service> [-n ns] [--registry etcd://… --etcd-user U --etcd-password-file F]',
    async run(p, c) {
      const [service] = need(p, 1, this.usage);
      const req = { service: service!, namespace: p.flags.get('namespace') ?? DEFAULT_NAMESPACE };
      const r = p.flags.has('registry') ? await colorChangeInEtcd(p, (cc) => cc.rollback(req)) : await unary<object, ServiceReply>(c, 'Rollback', req);
      out(p, r, `${service}: rolled back to ${colorsText(r.service?.active ?? {})} at revision ${r.revision}`);
    },
  },
  'rotate-keys': {
    usage: 'rotate-keys [--json]',
    async run(p, c) {
      const r = await unary<object, RotateKeysReply>(c, 'RotateKeys', {}, 60_000);
      out(p, r, `WireGuard key rotated: ${r.previousPublicKey} -> ${r.publicKey} at revision ${r.revision}${r.unconfirmed.length ? ` (not confirmed in time by ${r.unconfirmed.join(', ')}: they catch up when they see it)` : ''}`);
    },
  },
  upgrade: upgradeCommand,
  ...ipamCommands,
  ...consoleCommands,
};

/** Peers listed one per line up to this many; beyond, a count (`corral hosts <this host>` lists them all). */
const PEER_LINES = 10;

/** `corral status` lines for the overlay's peers; a peer without a handshake in 3 minutes is named. */
function peerLines(s: StatusReply): string[] {
  const now = Date.now();
  const stale = s.peers.filter((x) => !Number(x.lastHandshakeMs) || now - Number(x.lastHandshakeMs) > 180_000);
  const lines = s.peers.length > PEER_LINES
    ? [`${s.peers.length} peers, ${s.peers.length - stale.length} handshook within 3 minutes (\`corral hosts ${s.node}\` lists them)`]
    : s.peers.map((x) => `${x.host} at ${x.endpoint || '?'}: ${Number(x.lastHandshakeMs) ? `handshake ${Math.round((now - Number(x.lastHandshakeMs)) / 1000)}s ago` : 'no handshake yet'}`);
  const named = stale.slice(0, PEER_LINES).map((x) => x.host).join(', ') + (stale.length > PEER_LINES ? ` and ${stale.length - PEER_LINES} more` : '');
  return [
    ...(lines.length ? lines.map((x, i) => `${i === 0 ? 'peers      ' : '           '}${x}`) : ['peers      none']),
    stale.length ? `warning    no handshake within 3 minutes: ${named}` : `           every peer handshook within 3 minutes`,
  ];
}

/** The operation was understood but failed (exit 1). */
export class OpFailed extends Error {}

export async function runCommand(name: string, p: Parsed): Promise<number> {
  const cmd = commands[name]!;
  const socket = socketOf(p);
  const client = agentClient(socket);
  try {
    await cmd.run(p, client);
    return 0;
  } catch (err) {
    if (err instanceof UsageError) throw err;
    const e = err as grpc.ServiceError;
    if (typeof e?.code === 'number' && e.code === grpc.status.INVALID_ARGUMENT) throw new UsageError(explain(err, socket));
    process.stderr.write(`corral: ${explain(err, socket)}\n`);
    return 1;
  } finally {
    client.close();
  }
}
