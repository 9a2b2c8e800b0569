// `corral ipam ls|gc` and `corral install-cni`: the CNI/IPAM commands.
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { unary, type agentClient } from '../api/grpc.js';
import { DEFAULT_NAMESPACE, type IpamGcReply, type ListReply } from '../api/types.js';
import { type Parsed, UsageError } from './flags.js';

type Client = ReturnType<typeof agentClient>;

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n') + '\n';
}

function pluginBundle(): string {
  // Beside the entry (dist/corral.mjs) or one level above the chunk this code is bundled into.
  for (const rel of ['./corral-cni.mjs', '../corral-cni.mjs', '../dist/corral-cni.mjs']) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(p)) return p;
  }
  throw new Error('corral-cni.mjs is not beside the corral executable: rebuild (npm run build) or reinstall');
}

export const ipamCommands: Record<string, { usage: string; run(p: Parsed, c: Client): Promise<void> }> = {
  ipam: {
    usage: 'ipam ls|gc [--json]',
    async run(p, c) {
      const [sub] = p.args;
      const json = p.bools.has('json');
      if (sub === 'ls' && p.args.length === 1) {
        const l = await unary<object, ListReply>(c, 'List', { namespace: '', service: '' });
        const allocs = [...l.allocations].sort((a, b) => a.address.localeCompare(b.address, 'en', { numeric: true }));
        if (json) process.stdout.write(JSON.stringify({ revision: l.revision, allocations: allocs }, null, 2) + '\n');
        else process.stdout.write(table([['ADDRESS', 'NAMESPACE', 'OWNER', 'NODE', 'SINCE'], ...allocs.map((a) => [a.address, a.namespace, `${a.name || a.containerId.slice(0, 12)}/${a.ifname}`, a.node, new Date(a.sinceMs).toISOString()])]));
        return;
      }
      if (sub === 'gc' && p.args.length === 1) {
        const r = await unary<object, IpamGcReply>(c, 'IpamGc', {});
        if (json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
        else process.stdout.write(r.freed.length ? `freed ${r.freed.length}: ${r.freed.map((a) => `${a.address} (${a.containerId.slice(0, 12)}/${a.ifname})`).join(', ')}\n` : 'nothing to free: every allocation has a live container\n');
        return;
      }
      throw new UsageError('usage: corral ipam ls|gc [--json]');
    },
  },
  'install-cni': {
    usage: 'install-cni [--bin-dir /opt/cni/bin] [--conf-dir /etc/cni/net.d] [-n ns] [--namespace-from-pod] [--node-binary PATH]',
    async run(p) {
      if (p.args.length) throw new UsageError('usage: corral install-cni [--bin-dir DIR] [--conf-dir DIR] [-n ns] [--namespace-from-pod] [--node-binary PATH]');
      const nodeBin = p.flags.get('node-binary') ?? process.execPath;
      if (!nodeBin.startsWith('/')) throw new UsageError(`--node-binary "${nodeBin}" is not an absolute path: the runtime runs the plugin without a PATH to search`);
      const binDir = p.flags.get('bin-dir') ?? '/opt/cni/bin';
      const confDir = p.flags.get('conf-dir') ?? '/etc/cni/net.d';
      mkdirSync(binDir, { recursive: true });
      mkdirSync(confDir, { recursive: true });
      // The runtime execs the plugin with its own PATH: name this node explicitly.
      const body = readFileSync(pluginBundle(), 'utf8').replace(/^#!.*\n/, '');
      const bin = join(binDir, 'corral');
      writeFileSync(`${bin}.tmp`, `#!${nodeBin}\n${body}`, { mode: 0o755 });
      renameSync(`${bin}.tmp`, bin);
      // 1.0.0: the list's version applies to every plugin in it, and the reference portmap most
      // distributions ship (containernetworking-plugins 1.1) stops at 1.0.0.
      const conflist = {
        cniVersion: '1.0.0',
        name: 'corral',
        plugins: [
          { type: 'corral', namespace: p.flags.get('namespace') ?? DEFAULT_NAMESPACE, ...(p.bools.has('namespace-from-pod') ? { namespaceFromPod: true } : {}), ipMasq: true, ...(p.flags.has('agent-socket') ? { agentSocket: p.flags.get('agent-socket') } : {}) },
          { type: 'portmap', capabilities: { portMappings: true } },
        ],
      };
      const conf = join(confDir, '10-corral.conflist');
      writeFileSync(`${conf}.tmp`, JSON.stringify(conflist, null, 2) + '\n');
      renameSync(`${conf}.tmp`, conf);
      process.stdout.write(p.bools.has('json') ? JSON.stringify({ plugin: bin, conflist: conf }) + '\n' : `installed ${bin} and ${conf}\n`);
    },
  },
};
