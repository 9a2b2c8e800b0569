// nftables for attachments: namespace isolation (traffic between containers of different
// namespaces is dropped in the forward hook) and ipMasq (outbound traffic to non-cluster
// addresses is masqueraded). Per packet the kernel decides from sets and a verdict map; this
// file only changes set elements, with one `nft -f -` per ADD/DEL (nothing in the netlink
// package speaks nf_tables) and a full rebuild when the agent starts.
import { spawn } from 'node:child_process';

const TABLE = 'ip corral';

function chainOf(ns: string): string {
  return `ns_${ns.replace(/-/g, '_')}`;       // DNS labels have no "_", so this stays unique
}
function setOf(ns: string): string {
  return `m_${ns.replace(/-/g, '_')}`;
}

export interface PolicyMember {
  address: string;
  namespace: string;
  masq: boolean;
}

export class Policy {
  private readonly namespaces = new Set<string>();
  private ready = false;

  constructor(private readonly clusterCidr: string) {}

  /** Replaces the table with one holding exactly `members`. */
  async rebuild(members: PolicyMember[]): Promise<void> {
    this.namespaces.clear();
    const lines = [
      `table ${TABLE}`,
      `delete table ${TABLE}`,
      `table ${TABLE} {`,
      '  set pods { type ipv4_addr; }',
      '  set masq { type ipv4_addr; }',
      '  map nsof { type ipv4_addr : verdict; }',
      '  chain forward { type filter hook forward priority 0; policy accept; ip daddr vmap @nsof; }',
      `  chain postrouting { type nat hook postrouting priority 100; policy accept; ip saddr @masq ip daddr != ${this.clusterCidr} masquerade; }`,
      '}',
    ];
    for (const m of members) lines.push(...this.addLines(m));
    await nft(lines.join('\n'));
    this.ready = true;
  }

  get isReady(): boolean {
    return this.ready;
  }

  async add(m: PolicyMember): Promise<void> {
    await nft(this.addLines(m).join('\n'));
  }

  async remove(m: PolicyMember): Promise<void> {
    const lines = [
      `delete element ${TABLE} pods { ${m.address} }`,
      `delete element ${TABLE} nsof { ${m.address} }`,
      `delete element ${TABLE} ${setOf(m.namespace)} { ${m.address} }`,
    ];
    if (m.masq) lines.push(`delete element ${TABLE} masq { ${m.address} }`);
    // One transaction in the common case; one by one only when some element is already gone
    // (nft rejects the whole batch then, and the others must still go).
    await nft(lines.join('\n')).catch(async () => {
      for (const l of lines) await nft(l).catch(() => undefined);
    });
  }

  async close(): Promise<void> {
    if (this.ready) await nft(`delete table ${TABLE}`).catch(() => undefined);
    this.ready = false;
  }

  private addLines(m: PolicyMember): string[] {
    const out: string[] = [];
    if (!this.namespaces.has(m.namespace)) {
      const set = setOf(m.namespace);
      const chain = chainOf(m.namespace);
      out.push(
        `add set ${TABLE} ${set} { type ipv4_addr; }`,
        `add chain ${TABLE} ${chain}`,
        `flush chain ${TABLE} ${chain}`,
        `add rule ${TABLE} ${chain} ip saddr @${set} accept`,
        `add rule ${TABLE} ${chain} ip saddr @pods drop`,
      );
      this.namespaces.add(m.namespace);
    }
    out.push(
      `add element ${TABLE} pods { ${m.address} }`,
      `add element ${TABLE} ${setOf(m.namespace)} { ${m.address} }`,
      `add element ${TABLE} nsof { ${m.address} : jump ${chainOf(m.namespace)} }`,
    );
    if (m.masq) out.push(`add element ${TABLE} masq { ${m.address} }`);
    return out;
  }
}

function nft(script: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn('nft', ['-f', '-'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d: Buffer) => (err += d));
    c.once('error', (e) => reject(new Error(`cannot run nft (install nftables): ${e.message}`)));
    c.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`nft failed: ${err.trim()}`))));
    c.stdin.end(script + '\n');
  });
}
